"""The conv op every model uses, ``conv`` (NHWC/HWIO cross-correlation, the values of
``lax.conv_general_dilated``), and its backward pass per backend.

On GPU/TPU the backward is autodiff's own (their compilers map it to native conv-gradient kernels). On XLA:CPU
autodiff's transposed convs run through a slow generic emitter, so there the backward is written out as forward
convs in the canonical layout (:func:`conv_backward_cpu`), and convs with few output channels (:func:`is_narrow`)
run as matrix products, forward and backward. The choice is made per backend at lowering time
(``lax.platform_dependent``); the values are the same on every path (``tests/test_fast_paths.py``). What each form
gained on CPU is measured in benchmarks/README.md ("Formulation choices").
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from glean_jax.models.remat import after

DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def _conv_raw(x: jax.Array, w: jax.Array, stride: int, pad_h: int, pad_w: int, precision) -> jax.Array:
    return lax.conv_general_dilated(x, w, (stride, stride), ((pad_h, pad_h), (pad_w, pad_w)),
                                    dimension_numbers=DIMENSION_NUMBERS, precision=precision)


NARROW_MAX_OUT = 16


def is_narrow(w_shape: Sequence[int], stride: int) -> bool:
    """A stride-1 conv with few output channels (<= ``NARROW_MAX_OUT``) whose k*k*out columns fit in its input's
    channels (GLEAN's last conv, 64 -> 3 channels).

    XLA:CPU runs such a conv far below its matmul speed (64 -> 3 ch 3x3 at 1024x1024: ~20 GFLOP/s); on CPU it is
    computed by :func:`narrow_conv` and its backward by :func:`narrow_conv_backward`. The input gradient of a conv
    with few input channels (VGG16's first, 3 -> 64) is such a conv too, and takes the same path. With 32 or more
    output channels XLA's conv is efficient and the products lose (benchmarks/README.md, "Formulation choices")."""
    kh, kw, cin, cout = w_shape
    return stride == 1 and kh * kw > 1 and cout <= NARROW_MAX_OUT and kh * kw * cout <= cin


def _acc(dtype: Any) -> Any:
    """The accumulation type of a matrix product or conv over ``dtype``: float32, or float64 for float64 inputs."""
    return jnp.promote_types(dtype, jnp.float32)


def narrow_conv(x: jax.Array, w: jax.Array, pad_h: int, pad_w: int, precision=None) -> jax.Array:
    """Stride-1 ``conv`` as one matrix product and a shifted sum: ``z = x @ W`` with W as (in, kh*kw*out) -- every
    tap's contribution at every input pixel, reading the input once -- then ``y[p] = sum_ab z[p + (a, b) - pad, a,
    b]``. Accumulated in float32 (or float64)."""
    kh, kw, cin, cout = w.shape
    n, h, wd, _ = x.shape
    ho, wo = h + 2 * pad_h - kh + 1, wd + 2 * pad_w - kw + 1
    z = lax.dot_general(x, w.transpose(2, 0, 1, 3).reshape(cin, kh * kw * cout), (((3,), (0,)), ((), ())),
                        precision=precision, preferred_element_type=_acc(x.dtype))
    z = jnp.pad(z.reshape(n, h, wd, kh, kw, cout), ((0, 0), (pad_h, pad_h), (pad_w, pad_w), (0, 0), (0, 0), (0, 0)))
    y = sum(z[:, a:a + ho, b:b + wo, a, b] for a in range(kh) for b in range(kw))
    return y.astype(x.dtype)


def narrow_conv_backward(x: jax.Array, w: jax.Array, g: jax.Array, pad_h: int, pad_w: int,
                         precision=None) -> tuple[jax.Array, jax.Array]:
    """(dx, dw) of a stride-1 conv from the k*k shifted copies of its (narrow) output gradient, stacked once as
    ``gs[q, a, b] = g[q - (a, b) + pad]`` (zero outside): ``dx = gs @ W`` and ``dw = x^T gs``, two matrix products
    that read the input once."""
    kh, kw, cin, cout = w.shape
    n, h, wd, _ = x.shape
    gp = jnp.pad(g, ((0, 0), (kh - 1 - pad_h,) * 2, (kw - 1 - pad_w,) * 2, (0, 0)))
    gs = jnp.stack([gp[:, kh - 1 - a:kh - 1 - a + h, kw - 1 - b:kw - 1 - b + wd] for a in range(kh)
                    for b in range(kw)], axis=3).reshape(n * h * wd, kh * kw * cout)
    w_cols = w.transpose(0, 1, 3, 2).reshape(kh * kw * cout, cin)
    dx = lax.dot_general(gs, w_cols, (((1,), (0,)), ((), ())), precision=precision,
                         preferred_element_type=_acc(x.dtype)).reshape(x.shape).astype(x.dtype)
    dw = lax.dot_general(x.reshape(n * h * wd, cin), gs, (((0,), (0,)), ((), ())), precision=precision,
                         preferred_element_type=_acc(x.dtype))
    return dx, dw.reshape(cin, kh, kw, cout).transpose(1, 2, 0, 3).astype(w.dtype)


def _conv_cpu(x: jax.Array, w: jax.Array, stride: int, pad_h: int, pad_w: int, precision) -> jax.Array:
    """A forward conv as XLA:CPU runs it fastest: a narrow one as matrix products, any other as it is."""
    if is_narrow(w.shape, stride):
        return narrow_conv(x, w, pad_h, pad_w, precision)
    return _conv_raw(x, w, stride, pad_h, pad_w, precision)


def _conv_forward(x: jax.Array, w: jax.Array, stride: int, pad_h: int, pad_w: int, precision) -> jax.Array:
    if not is_narrow(w.shape, stride):
        return _conv_raw(x, w, stride, pad_h, pad_w, precision)
    return lax.platform_dependent(x, w, cpu=lambda x, w: _conv_cpu(x, w, stride, pad_h, pad_w, precision),
                                  default=lambda x, w: _conv_raw(x, w, stride, pad_h, pad_w, precision))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def conv(x: jax.Array, w: jax.Array, stride: int = 1, pad_h: int = 0, pad_w: int = 0, precision=None) -> jax.Array:
    """NHWC/HWIO cross-correlation with ``stride`` and symmetric zero padding ``(pad_h, pad_w)`` (0 <= pad < kernel).

    Same values as ``lax.conv_general_dilated``; only the backward pass differs. Autodiff's transpose lowers to
    convolutions XLA:CPU runs through a slow generic emitter -- the input gradient with an OI-swapped kernel (and,
    for stride 2, an lhs-dilated one), the weight gradient as a conv in a transposed layout with an image-sized
    window -- and inside a ``lax.scan`` (the RRDB trunk) every conv of the backward ran at ~7 GFLOP/s, 12-20x below
    the forward. Here, on CPU, every conv of the backward is a forward conv in the canonical NHWC/HWIO layout (other
    backends lower autodiff's own backward, which their compilers map to native conv-gradient kernels):

    * input gradient: stride-1 convs of the output gradient with the flipped kernel, materialised in HWIO; for
      stride s one conv per output phase (sub-kernel ``w[ry::s, rx::s]``), interleaved (no dilation);
    * weight gradient: the padded input transposed to (channels, H, W, batch) convolved with the output gradient
      as an image-sized (H, W, batch, out) kernel; for stride s one such conv per input phase. No per-tap copies
      of the input; accumulated in float32.

    Why these forms, and what they gained, is measured in benchmarks/README.md ("Formulation choices").

    A narrow conv (:func:`is_narrow`: few output channels, stride 1) runs on CPU as matrix products instead, forward
    (:func:`narrow_conv`) and backward (:func:`narrow_conv_backward`).
    """
    return _conv_forward(x, w, stride, pad_h, pad_w, precision)


def _conv_fwd(x, w, stride, pad_h, pad_w, precision):
    return _conv_forward(x, w, stride, pad_h, pad_w, precision), (x, w)


def _conv_input_grad(g: jax.Array, w: jax.Array, x_shape: tuple[int, ...], s: int, pad_h: int, pad_w: int,
                     precision) -> jax.Array:
    kh, kw, cin, _ = w.shape
    w_oi = w.transpose(0, 1, 3, 2)                           # HW(out)(in): convs of g with it give dx
    if s == 1:   # narrow when x has few channels (VGG16's first conv, 3 -> 64: dx has 3)
        return _conv_cpu(g, jnp.flip(w_oi, (0, 1)), 1, kh - 1 - pad_h, kw - 1 - pad_w, precision)
    n, h, wd, _ = x_shape
    ho, wo = g.shape[1:3]
    hp, wp = h + 2 * pad_h, wd + 2 * pad_w
    uy, ux = -(-hp // s), -(-wp // s)                        # phase rows/cols (the largest phase)
    # Padded-input row s*u + r collects taps a = r + s*j from output rows u - j: a stride-1 correlation of g with
    # the phase's sub-kernel w[r::s], flipped.
    phases = []
    for ry in range(s):
        row = []
        for rx in range(s):
            jy, jx = len(range(ry, kh, s)), len(range(rx, kw, s))
            if jy == 0 or jx == 0:
                row.append(jnp.zeros((n, uy, ux, cin), g.dtype))
                continue
            sub = jnp.flip(w_oi[ry::s, rx::s], (0, 1))
            gp = jnp.pad(g, ((0, 0), (jy - 1, uy - ho), (jx - 1, ux - wo), (0, 0)))
            row.append(_conv_cpu(gp, sub, 1, 0, 0, precision))
        phases.append(jnp.stack(row, axis=3))                # (n, uy, ux, s, cin)
    dxp = jnp.stack(phases, axis=2).reshape(n, uy * s, ux * s, cin)
    return dxp[:, pad_h:pad_h + h, pad_w:pad_w + wd]


def _conv_bwd(stride, pad_h, pad_w, precision, res, g):
    x, w = res
    kh, kw = w.shape[:2]
    if not (0 <= pad_h < kh and 0 <= pad_w < kw):
        raise ValueError(f"conv: padding ({pad_h}, {pad_w}) outside [0, kernel size {kh}x{kw})")
    # Chosen when lowering: GPU and TPU compilers have their own conv-backward kernels (cuDNN's backward-data and
    # backward-filter, the TPU conv emitter) for autodiff's transposed convs.
    geometry = dict(stride=stride, pad_h=pad_h, pad_w=pad_w, precision=precision)
    return lax.platform_dependent(x, w, g.astype(x.dtype), cpu=functools.partial(conv_backward_cpu, **geometry),
                                  default=functools.partial(conv_backward_native, **geometry))


def conv_backward_cpu(x: jax.Array, w: jax.Array, g: jax.Array, *, stride: int, pad_h: int, pad_w: int,
                      precision=None) -> tuple[jax.Array, jax.Array]:
    """(dx, dw) of :func:`conv` for output gradient ``g`` as canonical-layout forward convs (the CPU backward); a
    narrow conv's as matrix products. ``x`` is read only once ``g`` exists (:func:`remat.after`), else XLA:CPU
    makes the weight gradient's copies of it in the forward pass and holds them until the backward."""
    x = after(x, g)
    kh, kw = w.shape[:2]
    if is_narrow(w.shape, stride):
        return narrow_conv_backward(x, w, g, pad_h, pad_w, precision)
    dx = _conv_input_grad(g, w, x.shape, stride, pad_h, pad_w, precision)
    return dx, _weight_grad_fn(kh, kw, stride, pad_h, pad_w, precision)(x, g).astype(w.dtype)


def conv_backward_native(x: jax.Array, w: jax.Array, g: jax.Array, *, stride: int, pad_h: int, pad_w: int,
                         precision=None) -> tuple[jax.Array, jax.Array]:
    """(dx, dw) of :func:`conv` as autodiff's transposed convs (the backward on GPU/TPU)."""
    (dx,) = jax.linear_transpose(lambda x_: _conv_raw(x_, w, stride, pad_h, pad_w, precision), x)(g)
    (dw,) = jax.linear_transpose(lambda w_: _conv_raw(x, w_, stride, pad_h, pad_w, precision), w)(g)
    return dx, dw


def _conv_weight_grad_canonical(x: jax.Array, g: jax.Array, kh: int, kw: int, s: int, pad_h: int, pad_w: int,
                                precision) -> jax.Array:
    """``dw[a, b, ci, co] = sum_{n,h,w} xp[n, s h + a, s w + b, ci] g[n, h, w, co]`` (``xp`` the padded input).

    Computed as forward convs in XLA's canonical layout -- the input's channels as the batch, its batch as the
    features, ``g`` as an image-sized kernel -- which XLA:CPU runs on its fast conv path without copying the input
    once per tap. For stride s, one stride-1 conv per input phase ``xp[s u + ry, s v + rx]`` gives the taps
    ``(ry + s j, rx + s i)``. Accumulated in float32."""
    ho, wo = g.shape[1:3]
    xp = jnp.pad(x, ((0, 0), (pad_h, pad_h), (pad_w, pad_w), (0, 0)))
    rhs = g.transpose(1, 2, 0, 3)                            # (ho, wo, n, co): the kernel

    def corr(lhs: jax.Array) -> jax.Array:                   # (n, rows, cols, ci) -> (ci, rows-ho+1, cols-wo+1, co)
        return lax.conv_general_dilated(lhs.transpose(3, 1, 2, 0), rhs, (1, 1), "VALID",
                                        dimension_numbers=DIMENSION_NUMBERS, precision=precision,
                                        preferred_element_type=_acc(lhs.dtype))

    if s == 1:
        return corr(xp).transpose(1, 2, 0, 3)                # (ci, a, b, co) -> (a, b, ci, co)
    phase = {(ry, rx): corr(xp[:, ry::s, rx::s][:, :ho + (kh - ry - 1) // s, :wo + (kw - rx - 1) // s])
             for ry in range(min(s, kh)) for rx in range(min(s, kw))}
    return jnp.stack([jnp.stack([phase[a % s, b % s][:, a // s, b // s] for b in range(kw)]) for a in range(kh)])


@functools.cache
def _weight_grad_fn(kh: int, kw: int, s: int, pad_h: int, pad_w: int, precision) -> Callable:
    """The weight gradient ``(x, g) -> dw`` for one conv geometry: the canonical-layout convs, except under ``vmap``.

    Mapped (one weight gradient per slice), those convs would batch into a grouped conv whose group axis is the
    batch, and XLA's SPMD partitioner gets a grouped conv with that axis sharded wrong on CPU (jaxlib 0.10: wrong
    values, no error). The mapped case takes k*k matrix products of shifted input copies, which batch into plain
    batched dot products."""
    static = (kh, kw, s, pad_h, pad_w, precision)

    @jax.custom_batching.custom_vmap
    def weight_grad(x: jax.Array, g: jax.Array) -> jax.Array:
        return _conv_weight_grad_canonical(x, g, *static)

    @weight_grad.def_vmap
    def _mapped(axis_size: int, in_batched: list, x: jax.Array, g: jax.Array):
        x, g = (v if b else jnp.broadcast_to(v, (axis_size,) + v.shape)
                for v, b in zip((x, g), in_batched, strict=True))
        return jax.vmap(lambda x, g: _conv_weight_grad_taps(x, g, *static))(x, g), True

    return weight_grad


def _conv_weight_grad_taps(x: jax.Array, g: jax.Array, kh: int, kw: int, s: int, pad_h: int, pad_w: int,
                           precision) -> jax.Array:
    """The same weight gradient as k*k matrix products of the shifted (strided) padded input with ``g``."""
    n, ho, wo, cout = g.shape
    cin = x.shape[-1]
    xp = jnp.pad(x, ((0, 0), (pad_h, pad_h), (pad_w, pad_w), (0, 0)))
    g2 = g.reshape(n * ho * wo, cout)
    taps = [lax.dot_general(xp[:, a:a + s * (ho - 1) + 1:s, b:b + s * (wo - 1) + 1:s, :].reshape(n * ho * wo, cin),
                            g2, (((0,), (0,)), ((), ())), precision=precision, preferred_element_type=_acc(g2.dtype))
            for a in range(kh) for b in range(kw)]
    return jnp.stack(taps).reshape(kh, kw, cin, cout)


conv.defvjp(_conv_fwd, _conv_bwd)

"""Numerical building blocks shared by every model, NHWC, each equal to the mmagic/mmcv op it names.

* ``fused_leaky_relu``   = mmcv ``fused_bias_leakyrelu``: ``sqrt(2) * leaky_relu(x + b, 0.2)``.
* ``upfirdn2d``          = mmcv ``upfirdn2d`` for the separable FIR kernels StyleGAN2 uses
                           (``make_kernel(k) = outer(k, k) / sum``), computed as two 1-D passes.
* ``modulated_conv``     = mmagic ``ModulatedConv2d`` (grouped per-sample weights), computed in the
                           *input-scale* form ``conv(x * s, W) * d`` around one shared-weight conv: the same function,
                           5x (forward) to 9x (backward) faster in XLA than a grouped conv.
* ``conv``               = ``lax.conv_general_dilated`` (NHWC/HWIO) with a hand-written backward for XLA:CPU (canonical-
                           layout forward convs only; autodiff's backward lowers to slow generic convs there);
                           convs with few output channels (``is_narrow``) as matrix products on CPU.
* ``conv_transpose_s2``  = ``F.conv_transpose2d(x, W, stride=2, padding=0)`` (output 2H+1), computed by phase
                           (sub-pixel) decomposition into four plain convs: XLA:CPU differentiates an lhs-dilated conv
                           ~50x slower.

Weights are stored raw (as mmagic's ``weight_orig``) and the equalised-learning-rate scale is applied at run time.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from glean_jax.models.fir import fir_filter
from glean_jax.models.remat import after

SQRT2 = math.sqrt(2.0)
DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
BLUR_KERNEL = (1, 3, 3, 1)


def leaky_relu(x: jax.Array, negative_slope: float = 0.2) -> jax.Array:
    """``torch.nn.LeakyReLU(negative_slope)`` (no gain)."""
    return jnp.where(x >= 0, x, x * jnp.asarray(negative_slope, x.dtype))


def fused_leaky_relu(x: jax.Array, bias: jax.Array | None = None, negative_slope: float = 0.2,
                     scale: float = SQRT2) -> jax.Array:
    """mmcv ``fused_bias_leakyrelu``: ``scale * leaky_relu(x + bias, negative_slope)``, bias on the last axis."""
    if bias is not None:
        x = x + bias.astype(x.dtype)
    return leaky_relu(x, negative_slope) * jnp.asarray(scale, x.dtype)


def conv2d(x: jax.Array, w: jax.Array, stride: int = 1, padding: int = 0, precision=None) -> jax.Array:
    """``F.conv2d(x, w, stride=stride, padding=padding)`` in NHWC/HWIO (symmetric zero padding on both axes).

    Same values as ``lax.conv_general_dilated``; the gradient is computed by :func:`conv`'s fast formulations."""
    return conv(x, w.astype(x.dtype), int(stride), int(padding), int(padding), precision)


def _conv_raw(x: jax.Array, w: jax.Array, stride: int, pad_h: int, pad_w: int, precision) -> jax.Array:
    return lax.conv_general_dilated(x, w, (stride, stride), ((pad_h, pad_h), (pad_w, pad_w)),
                                    dimension_numbers=DIMENSION_NUMBERS, precision=precision)


NARROW_MAX_OUT = 16


def is_narrow(w_shape: Sequence[int], stride: int) -> bool:
    """A stride-1 conv with few output channels (<= ``NARROW_MAX_OUT``) whose k*k*out columns fit in its input's
    channels (GLEAN's last conv, 64 -> 3 channels).

    XLA:CPU runs such a conv far below its matmul speed (64 -> 3 ch 3x3 at 1024x1024: ~20 GFLOP/s); on CPU it is
    computed by :func:`narrow_conv` and its backward by :func:`narrow_conv_backward`. The input gradient of a conv
    with few input channels (VGG16's first, 3 -> 64) is such a conv too, and takes the same path. Measured (2-core
    CPU, batch 1, plain -> products): 3x3 64 -> 3 ch at 256^2 11.6 -> 2.1 ms, 128 -> 8 ch 25.4 -> 8.9 ms, 256 -> 16 ch
    at 128^2 11.8 -> 6.6 ms; but with 32 or more output channels XLA's conv is efficient and the products lose: the
    up-conv's 2x1 phase 64 -> 32 ch at 513x512 23.9 -> 42.2 ms, 256 -> 128 ch at 257x256 54.1 -> 64.1 ms."""
    kh, kw, cin, cout = w_shape
    return stride == 1 and kh * kw > 1 and cout <= NARROW_MAX_OUT and kh * kw * cout <= cin


def _acc(dtype: Any) -> Any:
    """The accumulation type of a matrix product or conv over ``dtype``: float32, or float64 for float64 inputs."""
    return jnp.promote_types(dtype, jnp.float32)


def narrow_conv(x: jax.Array, w: jax.Array, pad_h: int, pad_w: int, precision=None) -> jax.Array:
    """Stride-1 ``conv`` as one matrix product and a shifted sum: ``z = x @ W`` with W as (in, kh*kw*out) -- every
    tap's contribution at every input pixel, reading the input once -- then ``y[p] = sum_ab z[p + (a, b) - pad, a,
    b]``. Accumulated in float32. 64 -> 3 ch 3x3 at 1024x1024, batch 1, 2-core CPU: 171 -> 110 ms."""
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
    that read the input once. 64 -> 3 ch 3x3 at 1024x1024, forward + backward: 781 -> 291 ms."""
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

    Measured on the 2-core CPU (input + weight gradient, batch 1, float32) against the previous tap-wise matmul
    weight gradient: 32 ch at 1024x1024 907 -> 561 ms and 1153 -> 129 MB of XLA temporaries, 64 ch at 512x512
    645 -> 424 ms, 512 ch at 64x64 237 -> 213 ms, 160->32 ch at 32x32 4.3 -> 1.9 ms; the ffhq x16 train step's
    temporaries 12.6 -> 7.5 GB (autodiff's: 7.5 GB).

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


def fir_taps(kernel: Sequence[float] = BLUR_KERNEL, gain: float = 1.0) -> np.ndarray:
    """1-D taps whose outer product is mmagic's ``make_kernel(kernel) * gain`` (``gain`` = factor**2 for upsampling)."""
    k = np.asarray(kernel, np.float64)
    return k / k.sum() * math.sqrt(gain)


def make_kernel_2d(kernel: Sequence[float] = BLUR_KERNEL, gain: float = 1.0) -> np.ndarray:
    """mmagic ``make_kernel(kernel) * gain`` as float32 (what the ``*.kernel`` buffers hold)."""
    k = np.asarray(kernel, np.float32)
    k2 = np.outer(k, k)
    k2 = k2 / k2.sum()
    return (k2 * np.float32(gain)).astype(np.float32)


def _upfirdn_axis(x: jax.Array, taps: np.ndarray, up: int, down: int, pad0: int, pad1: int, axis: int) -> jax.Array:
    """One axis of upfirdn: zero insertion after each sample, pad/crop, true convolution, keep every ``down``-th."""
    if up == down == 1 and pad0 >= 0 and pad1 >= 0:
        return fir_filter(x, tuple(float(c) for c in np.asarray(taps)[::-1]), pad0, pad1, axis)
    if up > 1:
        shape = list(x.shape)
        z = jnp.zeros(shape[:axis + 1] + [up - 1] + shape[axis + 1:], x.dtype)
        x = jnp.concatenate([jnp.expand_dims(x, axis + 1), z], axis=axis + 1)
        shape[axis] *= up
        x = x.reshape(shape)
    if pad0 < 0:
        x = lax.slice_in_dim(x, -pad0, x.shape[axis], axis=axis)
        pad0 = 0
    if pad1 < 0:
        x = lax.slice_in_dim(x, 0, x.shape[axis] + pad1, axis=axis)
        pad1 = 0
    if pad0 or pad1:
        widths = [(0, 0)] * x.ndim
        widths[axis] = (pad0, pad1)
        x = jnp.pad(x, widths)
    flipped = np.asarray(taps)[::-1]
    n = x.shape[axis] - len(flipped) + 1
    n_out = (n - 1) // down + 1
    out = None
    for t, c in enumerate(flipped):
        if c == 0:
            continue
        term = lax.slice_in_dim(x, t, t + (n_out - 1) * down + 1, stride=down, axis=axis) * jnp.asarray(c, x.dtype)
        out = term if out is None else out + term
    return out


def upfirdn2d(x: jax.Array, taps: np.ndarray, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)) -> jax.Array:
    """mmcv ``upfirdn2d(x, outer(taps, taps), up, down, padding=(pad0, pad1, pad0, pad1))`` on NHWC input."""
    x = _upfirdn_axis(x, taps, up, down, pad[0], pad[1], axis=1)
    return _upfirdn_axis(x, taps, up, down, pad[0], pad[1], axis=2)


def conv_transpose_s2(x: jax.Array, w: jax.Array, precision=None) -> jax.Array:
    """``F.conv_transpose2d(x, W_t, stride=2, padding=0)`` for an odd HWIO kernel ``w`` with
    ``w[a, b, c, o] = W_t[c, o, a, b]``, i.e. ``y[2i+a, 2j+b, o] += x[i, j, c] w[a, b, c, o]``; 3x3 kernels, output
    (2H+1, 2W+1).

    Computed as four plain convolutions, one per output phase (even/odd rows x even/odd columns), interleaved.
    """
    if w.shape[:2] != (3, 3):
        raise ValueError(f"conv_transpose_s2 supports 3x3 kernels, got {w.shape[:2]}")
    w = w.astype(x.dtype)

    def phase(ker, pad_h, pad_w):
        return conv(x, ker, 1, pad_h, pad_w, precision)

    # Even outputs take taps (2, 0) in cross-correlation order over the 1-padded input; odd outputs tap 1.
    ee = phase(w[::-2, ::-2], 1, 1)           # (H+1, W+1)
    eo = phase(w[::-2, 1:2], 1, 0)            # (H+1, W)
    oe = phase(w[1:2, ::-2], 0, 1)            # (H, W+1)
    oo = phase(w[1:2, 1:2], 0, 0)             # (H, W)
    n, h, wd, _ = x.shape
    o = ee.shape[-1]
    eo = jnp.pad(eo, ((0, 0), (0, 0), (0, 1), (0, 0)))
    oe = jnp.pad(oe, ((0, 0), (0, 1), (0, 0), (0, 0)))
    oo = jnp.pad(oo, ((0, 0), (0, 1), (0, 1), (0, 0)))
    even_rows = jnp.stack([ee, eo], axis=3).reshape(n, h + 1, 2 * wd + 2, o)
    odd_rows = jnp.stack([oe, oo], axis=3).reshape(n, h + 1, 2 * wd + 2, o)
    full = jnp.stack([even_rows, odd_rows], axis=2).reshape(n, 2 * h + 2, 2 * wd + 2, o)
    return full[:, : 2 * h + 1, : 2 * wd + 1]


def modulated_conv(x: jax.Array, w: jax.Array, s: jax.Array, *, demodulate: bool = True, upsample: bool = False,
                   eps: float = 1e-8, blur_kernel: Sequence[float] = BLUR_KERNEL, precision=None) -> jax.Array:
    """mmagic ``ModulatedConv2d`` on NHWC ``x`` given the *effective* HWIO weight ``w`` (equalised-LR scale already
    applied) and the per-sample styles ``s`` (N, I) (after ``style_modulation``).

    Equal to the grouped form ``conv(x_n, W * s_n * d_n)`` with ``d = rsqrt(sum_{i,kh,kw} (W s)^2 + eps)``; computed
    as ``conv(x * s, W) * d``. With ``upsample`` the conv is a stride-2 transposed conv followed by the [1,3,3,1]
    blur (pad 1, 1), giving exactly 2H x 2W.
    """
    dtype = x.dtype
    x = x * s[:, None, None, :].astype(dtype)
    k = w.shape[0]
    if upsample:
        y = conv_transpose_s2(x, w, precision=precision)
    else:
        y = conv2d(x, w, 1, k // 2, precision=precision)
    if demodulate:
        wf = w.astype(jnp.float32)
        sf = s.astype(jnp.float32)
        d = lax.rsqrt(jnp.dot(sf * sf, jnp.sum(wf * wf, axis=(0, 1)), precision=precision) + eps)  # (N, O)
        y = y * d[:, None, None, :].astype(dtype)
    if upsample:
        # Blur(kernel, pad=(1, 1), upsample_factor=2): p = (4 - 2) - (k - 1); pad0 = (p + 1)//2 + 1, pad1 = p//2 + 1.
        p = (len(blur_kernel) - 2) - (k - 1)
        y = upfirdn2d(y, fir_taps(blur_kernel, gain=4.0), pad=((p + 1) // 2 + 1, p // 2 + 1))
    return y


def upsample_fir(x: jax.Array, blur_kernel: Sequence[float] = BLUR_KERNEL) -> jax.Array:
    """mmagic ``UpsampleUpFIRDn`` (factor 2): ``upfirdn2d(x, make_kernel(k) * 4, up=2, pad=(pad0, pad1))``."""
    p = len(blur_kernel) - 2
    return upfirdn2d(x, fir_taps(blur_kernel, gain=4.0), up=2, pad=((p + 1) // 2 + 1, p // 2))


def blur_down_pad(kernel_size: int, blur_kernel: Sequence[float] = BLUR_KERNEL) -> tuple[int, int]:
    """The pad of the Blur in front of a stride-2 conv of ``kernel_size`` (mmagic ``ConvDownLayer``)."""
    p = (len(blur_kernel) - 2) + (kernel_size - 1)
    return (p + 1) // 2, p // 2


def minibatch_stddev(x: jax.Array, group_size: int = 4, eps: float = 1e-8, shards: int = 1) -> jax.Array:
    """mmagic ``ModMBStddevLayer`` (channel_groups = 1) on NHWC: appends one channel of group-wise std.

    ``shards`` > 1: the batch is ``shards`` consecutive equal parts, each grouped on its own (as mmagic's per-GPU
    discriminator under DDP sees only its part)."""
    if shards > 1:
        if x.shape[0] % shards:
            raise ValueError(f"minibatch stddev: batch {x.shape[0]} does not split into {shards} equal shards")
        parts = x.reshape((shards, x.shape[0] // shards) + x.shape[1:])
        out = jax.vmap(lambda p: minibatch_stddev(p, group_size, eps))(parts)
        return out.reshape((x.shape[0],) + out.shape[2:])
    n, h, w, c = x.shape
    g = min(n, group_size)
    if n % g:
        raise ValueError(f"minibatch stddev needs a batch <= {group_size} or a multiple of it, got {n}")
    y = x.astype(jnp.float32).reshape(g, n // g, h, w, c)
    y = jnp.var(y, axis=0)
    y = jnp.sqrt(y + eps)
    y = jnp.mean(y, axis=(1, 2, 3))                     # (n // g,)
    y = jnp.tile(y, g)                                   # sample i uses group i mod (n // g)
    y = jnp.broadcast_to(y[:, None, None, None], (n, h, w, 1)).astype(x.dtype)
    return jnp.concatenate([x, y], axis=-1)


def pixel_norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """mmagic ``PixelNorm``: ``x / (sqrt(mean(x^2)) + eps)`` over the last axis (eps added to the RMS)."""
    return x / (jnp.sqrt(jnp.mean(x * x, axis=-1, keepdims=True)) + eps)


def nchw_flatten(x: jax.Array) -> jax.Array:
    """``x.view(N, -1)`` of the NCHW tensor equal to NHWC ``x`` (index ``c*H*W + h*W + w``)."""
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


def pixel_shuffle(x: jax.Array, r: int = 2) -> jax.Array:
    """``F.pixel_shuffle`` (PyTorch channel order: out[c, h*r+i, w*r+j] = in[c*r*r + i*r + j, h, w]) on NHWC."""
    n, h, w, c = x.shape
    oc = c // (r * r)
    x = x.reshape(n, h, w, oc, r, r)
    x = jnp.transpose(x, (0, 1, 4, 2, 5, 3))
    return x.reshape(n, h * r, w * r, oc)

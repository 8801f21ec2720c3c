"""Numerical building blocks shared by every model, NHWC, each equal to the mmagic/mmcv op it names.

* ``fused_leaky_relu``   = mmcv ``fused_bias_leakyrelu``: ``sqrt(2) * leaky_relu(x + b, 0.2)``.
* ``upfirdn2d``          = mmcv ``upfirdn2d`` for the separable FIR kernels StyleGAN2 uses
                           (``make_kernel(k) = outer(k, k) / sum``), computed as two 1-D passes.
* ``modulated_conv``     = mmagic ``ModulatedConv2d`` (grouped per-sample weights), computed in the
                           *input-scale* form ``conv(x * s, W) * d`` around one shared-weight conv: the same function,
                           5x (forward) to 9x (backward) faster in XLA than a grouped conv.
* ``conv2d``             = ``F.conv2d`` (NHWC/HWIO) through :func:`glean_jax.models.conv.conv`: the same values, with a
                           hand-written backward for XLA:CPU (the conv backend lives in that module).
* ``conv_transpose_s2``  = ``F.conv_transpose2d(x, W, stride=2, padding=0)`` (output 2H+1), computed by phase
                           (sub-pixel) decomposition into four plain convs: XLA:CPU differentiates an lhs-dilated conv
                           ~50x slower.

Weights are stored raw (as mmagic's ``weight_orig``) and the equalised-learning-rate scale is applied at run time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from glean_jax.models.conv import conv
from glean_jax.models.fir import fir_filter

SQRT2 = math.sqrt(2.0)
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

"""A 1-D FIR filter along one axis with zero padding (``upfirdn`` with ``up = down = 1``) and its adjoint.

Autodiff's transpose of the filter (a sum of shifted slices) is one zero-padded full-size copy of the output
gradient per tap, summed; XLA:CPU materialised all of them (four 128 MB copies per axis for the discriminator's blur
at 1024x1024, in the train step's backward). The adjoint is itself a FIR filter -- the same taps reversed over the
gradient padded by ``len(taps) - 1`` on both sides -- computed here as one pad and one fused sum of slices.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax


def _fir(x: jax.Array, taps: tuple[float, ...], pad0: int, pad1: int, axis: int) -> jax.Array:
    """``y[i] = sum_t taps[t] xp[i + t]`` along ``axis``, ``xp`` = ``x`` zero-padded by (pad0, pad1)."""
    widths = [(0, 0)] * x.ndim
    widths[axis] = (pad0, pad1)
    xp = jnp.pad(x, widths)
    n = xp.shape[axis] - len(taps) + 1
    out = None
    for t, c in enumerate(taps):
        if c == 0:
            continue
        term = lax.slice_in_dim(xp, t, t + n, axis=axis) * jnp.asarray(c, x.dtype)
        out = term if out is None else out + term
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def fir_filter(x: jax.Array, taps: tuple[float, ...], pad0: int, pad1: int, axis: int) -> jax.Array:
    """Cross-correlation of ``x`` with ``taps`` along ``axis`` after zero padding ``(pad0, pad1)`` (both >= 0);
    output length ``len + pad0 + pad1 - len(taps) + 1``. The backward is the adjoint filter (module docstring)."""
    return _fir(x, taps, pad0, pad1, axis)


def _fir_fwd(x, taps, pad0, pad1, axis):
    return _fir(x, taps, pad0, pad1, axis), x.shape[axis]


def _fir_bwd(taps, pad0, pad1, axis, n, g):
    # dxp[j] = sum_t taps[t] g[j - t]: the reversed taps over g padded by T - 1; dx = dxp[pad0 : pad0 + n].
    k = len(taps) - 1
    dxp = _fir(g, taps[::-1], k, k, axis)
    return (lax.slice_in_dim(dxp, pad0, pad0 + n, axis=axis),)


fir_filter.defvjp(_fir_fwd, _fir_bwd)

"""Ordering and rematerialisation helpers for XLA:CPU's scheduler.

XLA drops ``lax.optimization_barrier`` before it schedules on CPU (``OptimizationBarrierExpander`` removes the op and
keeps no ordering), and its sequential scheduler is free to run any op as soon as its operands exist. Two costly
consequences in the train step, seen in the compiled step's live ranges (``--xla_dump_to``, ``*-live-range.txt``):

* the weight gradient of a conv needs only the conv's input, so the copies of it that the gradient reads
  (transposed, padded: :func:`glean_jax.models.conv.conv`'s CPU backward) were made in the *forward* pass and held
  until the backward reached the conv;
* the recomputation of a ``jax.checkpoint`` block needs only the block's saved inputs, so it was hoisted into the
  forward pass too -- the block's activations were then kept twice instead of not at all.

:func:`after` makes a value depend on a cotangent (``x + 0 * g[:, 0, ...]``, one multiply-add per element that XLA
fuses into the consumer), and :func:`remat` is a checkpoint whose recomputation waits for the block's output
cotangent that way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def after(x: jax.Array, g: jax.Array) -> jax.Array:
    """``x`` (N, ...), made to depend on ``g`` (N, ...) so XLA cannot compute what uses it before ``g`` exists.

    Adds ``0 * g[n, 0, ..., 0]`` per sample (a per-sample scalar keeps the dependency local under batch sharding):
    the same values for finite ``g`` (a ``-0.0`` in ``x`` becomes ``+0.0``); XLA does not fold a float
    ``0 * y``, which is NaN for an infinite ``y``."""
    if not (jnp.issubdtype(x.dtype, jnp.floating) and x.ndim and g.ndim and x.shape[0] == g.shape[0]):
        raise ValueError(f"after: expected float arrays with the same leading (batch) size, got {x.shape} "
                         f"{x.dtype} and {g.shape}")
    t = g[(slice(None),) + (0,) * (g.ndim - 1)].astype(x.dtype) * jnp.zeros((), x.dtype)
    return x + t.reshape((x.shape[0],) + (1,) * (x.ndim - 1))


def remat(f: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    """``f(consts, x, *batched) -> y`` (N, ...) that keeps only its arguments for the backward pass and recomputes
    the rest once ``y``'s cotangent exists (``jax.checkpoint`` with the recomputation tied to the cotangent).

    ``consts`` is any pytree of float arrays (parameters); ``x`` and ``batched`` are float arrays (or None) with the
    batch leading, tied to the cotangent with :func:`after`. The gradient is ``jax.vjp`` of ``f`` itself."""

    @jax.custom_vjp
    def run(consts: Any, x: jax.Array, *batched: jax.Array | None) -> jax.Array:
        return f(consts, x, *batched)

    def fwd(consts: Any, x: jax.Array, *batched: jax.Array | None) -> tuple[jax.Array, tuple]:
        return f(consts, x, *batched), (consts, x, batched)

    def bwd(res: tuple, g: jax.Array) -> tuple:
        consts, x, batched = res
        x = after(x, g)
        batched = tuple(None if b is None else after(b, g) for b in batched)
        _, vjp = jax.vjp(f, consts, x, *batched)
        return vjp(g)

    run.defvjp(fwd, bwd)
    return run

"""Plain PyTorch-style layers (``nn.Conv2d``, ``nn.Linear``) with PyTorch's parameter names and initialisers.

Weights are stored in our layouts (HWIO, (in, out)); names match PyTorch (``weight``, ``bias``) so the converter's
tables stay mechanical.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from glean_jax.models import ops

Dtype = Any


def torch_default_init(fan_in_axes: tuple[int, ...]):
    """PyTorch's default Conv2d/Linear init: kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    def init(key, shape, dtype=jnp.float32):
        fan_in = math.prod(shape[a] for a in fan_in_axes)
        bound = 1.0 / math.sqrt(fan_in)
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def kaiming_normal_scaled(scale: float, fan_in_axes: tuple[int, ...] = (0, 1, 2)):
    """mmagic ``default_init_weights(scale)``: kaiming_normal (fan_in, ReLU gain) times ``scale``."""
    def init(key, shape, dtype=jnp.float32):
        fan_in = math.prod(shape[a] for a in fan_in_axes)
        return jax.random.normal(key, shape, dtype) * (math.sqrt(2.0 / fan_in) * scale)
    return init


class Conv(nn.Module):
    """``nn.Conv2d(in, features, k, stride, padding)`` with symmetric zero padding, NHWC/HWIO."""

    features: int
    kernel_size: int = 3
    stride: int = 1
    padding: int = 1
    init_scale: float | None = None  # None: PyTorch default init; else kaiming_normal * init_scale with zero bias
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, cin = self.kernel_size, x.shape[-1]
        shape = (k, k, cin, self.features)
        if self.init_scale is None:
            bound = 1.0 / math.sqrt(k * k * cin)
            w = self.param("weight", torch_default_init((0, 1, 2)), shape)
            b = self.param("bias", lambda key, s, d=jnp.float32: jax.random.uniform(key, s, d, -bound, bound),
                           (self.features,))
        else:
            w = self.param("weight", kaiming_normal_scaled(self.init_scale), shape)
            b = self.param("bias", nn.initializers.zeros, (self.features,))
        x = x.astype(self.dtype)
        return ops.conv2d(x, w.astype(self.dtype), self.stride, self.padding) + b.astype(self.dtype)


class Linear(nn.Module):
    """``nn.Linear(in, features)``; weight stored (in, out)."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1]
        w = self.param("weight", torch_default_init((0,)), (fan_in, self.features))
        bound = 1.0 / math.sqrt(fan_in)
        b = self.param("bias", lambda key, s, d=jnp.float32: jax.random.uniform(key, s, d, -bound, bound),
                       (self.features,))
        x = x.astype(self.dtype)
        return jnp.dot(x, w.astype(self.dtype)) + b.astype(self.dtype)

"""ESRGAN's RRDB trunk, equal to mmagic ``RRDBFeatureExtractor`` (rrdb_net.py), NHWC."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from glean_jax.models import ops
from glean_jax.models.layers import Conv

Dtype = Any


class ResidualDenseBlock(nn.Module):
    """``x_i = lrelu(conv_i(cat(x, x_1, ..., x_{i-1})))`` for i < 5, ``x + 0.2 * conv5(cat(...))``.

    The convs take kaiming-normal init x 0.1 with zero bias, as mmagic."""

    mid_channels: int = 64
    growth_channels: int = 32
    dtype: Dtype = jnp.float32

    def setup(self):
        kw = dict(init_scale=0.1, dtype=self.dtype)
        self.conv1 = Conv(self.growth_channels, **kw)
        self.conv2 = Conv(self.growth_channels, **kw)
        self.conv3 = Conv(self.growth_channels, **kw)
        self.conv4 = Conv(self.growth_channels, **kw)
        self.conv5 = Conv(self.mid_channels, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        feats = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            feats.append(ops.leaky_relu(conv(jnp.concatenate(feats, axis=-1))))
        x5 = self.conv5(jnp.concatenate(feats, axis=-1))
        return x5 * jnp.asarray(0.2, x5.dtype) + x


class RRDB(nn.Module):
    """Residual-in-residual dense block: ``x + 0.2 * rdb3(rdb2(rdb1(x)))``."""

    mid_channels: int = 64
    growth_channels: int = 32
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out = x
        for name in ("rdb1", "rdb2", "rdb3"):
            out = ResidualDenseBlock(self.mid_channels, self.growth_channels, self.dtype, name=name)(out)
        return out * jnp.asarray(0.2, out.dtype) + x


class RRDBFeatureExtractor(nn.Module):
    """``feat = conv_first(x); feat + conv_body(body(feat))`` with ``num_blocks`` RRDBs.

    ``remat`` recomputes each RRDB's activations in the backward pass instead of storing them (memory for speed)."""

    mid_channels: int = 64
    num_blocks: int = 23
    growth_channels: int = 32
    remat: bool = False
    dtype: Dtype = jnp.float32

    def setup(self):
        block = nn.remat(RRDB) if self.remat else RRDB
        self.conv_first = Conv(self.mid_channels, dtype=self.dtype)
        self.body = [block(self.mid_channels, self.growth_channels, self.dtype) for _ in range(self.num_blocks)]
        self.conv_body = Conv(self.mid_channels, dtype=self.dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        feat = self.conv_first(x)
        if self.is_initializing() or len(self.body) < 2:
            body = feat
            for block in self.body:
                body = block(body)
        else:
            # The same blocks, run as one lax.scan over their parameters stacked at run time (the parameter tree
            # keeps one entry per block): XLA compiles one RRDB instead of 23 unrolled copies, which cut the CPU
            # compile of the cat x8 train step (it had not finished after 20 min, 16 GB, unrolled).
            params = [block.variables["params"] for block in self.body]
            stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *params)
            rrdb = RRDB(self.mid_channels, self.growth_channels, self.dtype, parent=None)

            def step(h: jax.Array, p: dict) -> tuple[jax.Array, None]:
                return rrdb.apply({"params": p}, h), None

            if self.remat:
                step = jax.checkpoint(step)
            body, _ = jax.lax.scan(step, feat, stacked)
        return feat + self.conv_body(body)

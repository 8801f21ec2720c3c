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

    The blocks' parameters are ``body_0`` .. ``body_{n-1}`` (mmagic's ``body.0`` ..), each an RRDB's tree, and the
    trunk runs as ONE ``lax.scan`` over them, stacked at run time: XLA compiles one RRDB instead of 23 unrolled copies
    (the unrolled cat x8 train step had not compiled after 20 min at 16 GB on CPU). Initialisation likewise draws all
    blocks' parameters with one vmapped RRDB init (unrolled, the 23 blocks' initialisers cost ~40 s of compile).

    ``remat`` recomputes each RRDB's activations in the backward pass instead of storing them (memory for speed).
    """

    mid_channels: int = 64
    num_blocks: int = 23
    growth_channels: int = 32
    remat: bool = False
    dtype: Dtype = jnp.float32

    def _block(self) -> RRDB:
        return RRDB(self.mid_channels, self.growth_channels, self.dtype, parent=None)

    def _init_blocks(self, rng: jax.Array) -> dict:
        """All blocks' params stacked on a leading axis (one vmapped init of a single RRDB)."""
        probe = jnp.zeros((1, 1, 1, self.mid_channels), self.dtype)  # the params do not depend on the input size
        keys = jax.random.split(rng, self.num_blocks)
        return jax.vmap(lambda k: self._block().init(k, probe)["params"])(keys)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        feat = Conv(self.mid_channels, dtype=self.dtype, name="conv_first")(x)
        stacked = self._init_blocks(self.make_rng("params")) if self.is_initializing() else None
        params = []
        for i in range(self.num_blocks):
            def init(_: jax.Array, i: int = i) -> dict:
                return jax.tree_util.tree_map(lambda a: a[i], stacked)

            params.append(self.param(f"body_{i}", init))
        rrdb = self._block()

        def step(h: jax.Array, p: dict) -> tuple[jax.Array, None]:
            return rrdb.apply({"params": p}, h), None

        if self.remat:
            step = jax.checkpoint(step)
        if len(params) == 1:
            body, _ = step(feat, params[0])
        else:
            body, _ = jax.lax.scan(step, feat, jax.tree_util.tree_map(lambda *a: jnp.stack(a), *params))
        return feat + Conv(self.mid_channels, dtype=self.dtype, name="conv_body")(body)

"""GLEAN, equal to mmagic 1.2.0 ``GLEANStyleGANv2`` (mmagic/models/editors/glean/glean_styleganv2.py), NHWC.

Data flow (``GLEANStyleGANv2.forward``): the :class:`Encoder` (an RRDB trunk, stride-2 conv blocks down to 4x4 and a
linear head) turns the low-resolution input into multi-scale features and W+ latents; the frozen StyleGAN2 ``bank``
is driven level by level with those latents and its fixed noise buffers, its features fused with the encoder's up to
``in_size`` (:class:`Fusion`); the :class:`Decoder`'s PixelShuffle up-samplers combine the encoder feature with the
bank's features above ``in_size`` into the output (N, out, out, 3), RGB, nominally in [-1, 1] and not clipped.

The parameter tree (``params``; ``buffers`` holds the bank's noise)::

    bank/        the StyleGAN2 generator (glean_jax.models.stylegan2.StyleGAN2Generator)
    encoder/     rrdb (RRDBFeatureExtractor), rrdb_conv, down_<r>/{conv_down, conv} for r = in_size/2 .. 4,
                 to_latent/{conv, linear}
    fusion/      feat_<r> (bank + encoder features at r = 4 .. in_size), rgb_<r> (the RGB skip's)
    decoder/     up_<r>/conv for r = 2 in_size .. out_size, out_conv1, out_conv2

mmagic's RGB skip branch (the bank's ``to_rgb``s and ``fusion/rgb_<r>``) never reaches the output: its parameters
exist (so checkpoints round-trip) but it is only evaluated when the variables are initialised. The mapping to
mmagic's ``state_dict`` keys lives in ``convert/glean_rules.py``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from glean_jax.arch import GleanArch
from glean_jax.models import ops
from glean_jax.models.layers import Conv, Linear
from glean_jax.models.remat import remat
from glean_jax.models.rrdb import RRDBFeatureExtractor
from glean_jax.models.stylegan2 import StyleGAN2Generator

Dtype = Any


class DownBlock(nn.Module):
    """An encoder block (mmagic ``encoder[k]``): a stride-2 conv and a conv, each followed by a leaky ReLU."""

    channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = ops.leaky_relu(Conv(self.channels, stride=2, padding=1, dtype=self.dtype, name="conv_down")(x))
        return ops.leaky_relu(Conv(self.channels, dtype=self.dtype, name="conv")(x))


class LatentHead(nn.Module):
    """The encoder's last block (mmagic ``encoder[-1]``, at 4x4): conv, leaky ReLU, NCHW flatten, linear -> W+."""

    channels: int
    num_latents: int
    style_channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = ops.leaky_relu(Conv(self.channels, dtype=self.dtype, name="conv")(x))
        latent = Linear(self.num_latents * self.style_channels, dtype=self.dtype, name="linear")(ops.nchw_flatten(x))
        return latent.reshape(x.shape[0], self.num_latents, self.style_channels)


class Encoder(nn.Module):
    """lq -> (W+ latents (N, num_latents, style_channels), {r: encoder feature at r x r} for r = 4 .. in_size).

    ``rrdb`` (the RRDB trunk) and ``rrdb_conv`` map the input to the bank's channels at ``in_size`` (mmagic
    ``encoder[0]``); ``down_<r>`` halve the resolution down to 4; ``to_latent`` predicts the latents."""

    arch: GleanArch
    remat: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, lq: jax.Array) -> tuple[jax.Array, dict[int, jax.Array]]:
        a, kw = self.arch, dict(dtype=self.dtype)
        x = RRDBFeatureExtractor(a.rrdb_channels, a.num_rrdbs, remat=self.remat, name="rrdb", **kw)(lq)
        x = ops.leaky_relu(Conv(a.channels[a.in_size], name="rrdb_conv", **kw)(x))
        feats = {a.in_size: x}
        for r in a.encoder_sizes[1:]:
            x = feats[r] = DownBlock(a.channels[r], name=f"down_{r}", **kw)(x)
        latent = LatentHead(a.channels[4], a.num_latents, a.style_channels, name="to_latent", **kw)(x)
        return latent, feats


class Fusion(nn.Module):
    """mmagic ``fusion_out`` / ``fusion_skip``: 3x3 convs over the concatenation of a bank feature (or the RGB
    skip) with the encoder feature of the same resolution, at 4 .. in_size."""

    arch: GleanArch
    dtype: Dtype = jnp.float32

    def setup(self):
        sizes = self.arch.encoder_sizes
        self.feat = {r: Conv(self.arch.channels[r], dtype=self.dtype) for r in sizes}
        self.rgb = {r: Conv(3, dtype=self.dtype) for r in sizes}

    def fuse(self, r: int, bank: jax.Array, enc: jax.Array) -> jax.Array:
        return self.feat[r](jnp.concatenate([bank.astype(self.dtype), enc], axis=-1))

    def fuse_rgb(self, r: int, skip: jax.Array, enc: jax.Array) -> jax.Array:
        return self.rgb[r](jnp.concatenate([skip, enc.astype(skip.dtype)], axis=-1))


class PixelShufflePack(nn.Module):
    """mmagic ``PixelShufflePack(in, out, 2, 3)``: ``pixel_shuffle(conv(x), 2)`` (no activation)."""

    out_channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = Conv(self.out_channels * 4, init_scale=1.0, dtype=self.dtype, name="conv")(x)
        return ops.pixel_shuffle(y, 2)


class Decoder(nn.Module):
    """mmagic ``decoder``: ``up_<r>`` (:class:`PixelShufflePack`) doubles the resolution up to ``out_size``, each
    level after the first taking the bank's feature of its input resolution too; ``out_conv1``, leaky ReLU and
    ``out_conv2`` turn the last level with the bank's output-size feature into RGB.

    ``remat``: each level's activations are recomputed in the backward pass, once its output's gradient is there
    (:func:`glean_jax.models.remat.remat`)."""

    arch: GleanArch
    remat: bool = False
    dtype: Dtype = jnp.float32

    def setup(self):
        ch, kw = self.arch.channels, dict(dtype=self.dtype)
        self.up = {r: PixelShufflePack(ch[r], **kw) for r in self.arch.upsample_sizes}
        self.out_conv1 = Conv(64, **kw)
        self.out_conv2 = Conv(3, **kw)

    def __call__(self, feat: jax.Array, bank: dict[int, jax.Array]) -> jax.Array:
        """``feat``: the encoder's ``in_size`` feature; ``bank``: the bank's features above ``in_size``."""
        levels = [((self.up[r],), bank.get(r // 2)) for r in self.arch.upsample_sizes]
        levels.append(((self.out_conv1, self.out_conv2), bank[self.arch.out_size]))
        x = feat
        for mods, bank_feat in levels:
            if self.remat and not self.is_initializing():
                unbound = tuple(m.clone(parent=None) for m in mods)
                x = remat(lambda v, x, f, u=unbound: _decode(u, v, x, f))(tuple(m.variables for m in mods), x,
                                                                            bank_feat)
            else:
                x = _decode(mods, None, x, bank_feat)
        return x


def _decode(mods: tuple[nn.Module, ...], variables: tuple | None, x: jax.Array, bank_feat: jax.Array | None
            ) -> jax.Array:
    """One decoder level: its input concatenated with the bank's feature (not at the first level), then its convs
    (an up-sampler, or the output convs with a leaky ReLU between); ``variables`` given: the modules are unbound."""
    def call(k: int, x: jax.Array) -> jax.Array:
        return mods[k](x) if variables is None else mods[k].apply(variables[k], x)

    if bank_feat is not None:
        x = jnp.concatenate([x, bank_feat.astype(x.dtype)], axis=-1)
    if len(mods) == 1:
        return call(0, x)
    return call(1, ops.leaky_relu(call(0, x)))


class GLEAN(nn.Module):
    """``GLEAN(arch)(lq)``: lq (N, in, in, 3) in [-1, 1] -> (N, out, out, 3).

    Variables: ``params`` (``bank``, kept frozen in training; ``encoder``, ``fusion``, ``decoder``) and ``buffers``
    (``bank/noise_*``).

    ``remat`` (memory for compute in training; the same function and parameters): the backward pass recomputes,
    instead of keeping, the activations of each RRDB of the trunk, of each bank level above ``in_size`` and of
    each decoder level -- what holds most of the forward's memory at high resolution (a 1024x1024 output). The
    latter two wait for their output's gradient before recomputing (:func:`glean_jax.models.remat.remat`).
    """

    arch: GleanArch
    remat: bool = False
    dtype: Dtype = jnp.float32

    @property
    def in_size(self) -> int:
        return self.arch.in_size

    @property
    def out_size(self) -> int:
        return self.arch.out_size

    def setup(self):
        a, kw = self.arch, dict(remat=self.remat, dtype=self.dtype)
        self.bank = StyleGAN2Generator(**a.bank(), remat_above=a.in_size if self.remat else None, dtype=self.dtype)
        self.encoder = Encoder(a, **kw)
        self.fusion = Fusion(a, dtype=self.dtype)
        self.decoder = Decoder(a, **kw)

    def _skip_branch(self, latent: jax.Array, bank: dict[int, jax.Array], enc: dict[int, jax.Array]) -> jax.Array:
        """mmagic's dead RGB skip path; evaluated only at initialisation to create its parameters."""
        g = self.bank
        skip = g.to_rgb_4(bank[4], latent[:, 1])
        for k, r in enumerate(self.arch.bank_sizes):
            if r // 2 in enc:
                skip = self.fusion.fuse_rgb(r // 2, skip, enc[r // 2])
            skip = g.level[r].to_rgb(bank[r], latent[:, 2 * k + 3], skip)
        return skip

    def __call__(self, lq: jax.Array) -> jax.Array:
        a = self.arch
        if lq.ndim != 4 or lq.shape[1:] != (a.in_size, a.in_size, 3):
            raise ValueError(f"GLEAN({a.in_size}->{a.out_size}) expects input (N, {a.in_size}, {a.in_size}, 3), "
                             f"got {tuple(lq.shape)}")
        latent, enc = self.encoder(lq.astype(self.dtype))
        g, n = self.bank, lq.shape[0]
        noise = g.noise_maps("fixed", n)
        out = jnp.broadcast_to(g.const, (n,) + g.const.shape[1:]).astype(self.dtype)
        bank = {4: g.conv_4(out, latent[:, 0], noise[0])}
        for k, r in enumerate(a.bank_sizes):
            x = bank[r // 2]
            if r // 2 in enc:
                x = self.fusion.fuse(r // 2, x, enc[r // 2])
            bank[r] = g.style_level(r, x, (latent[:, 2 * k + 1], latent[:, 2 * k + 2]),
                                    (noise[2 * k + 1], noise[2 * k + 2]))
        if self.is_initializing():
            g.mapping(jnp.zeros((1, a.style_channels), jnp.float32))
            self._skip_branch(latent, bank, enc)
        hr = self.decoder(enc[a.in_size], {r: f for r, f in bank.items() if r > a.in_size})
        return hr.astype(jnp.float32)

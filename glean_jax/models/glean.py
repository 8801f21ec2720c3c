"""GLEAN, equal to mmagic 1.2.0 ``GLEANStyleGANv2`` (glean_styleganv2.py), NHWC.

Data flow (``GLEANStyleGANv2.forward``): an RRDB encoder and stride-2 conv blocks turn the low-resolution input into
multi-scale features and, through a 4x4 linear layer, W+ latents; the frozen StyleGAN2 bank is driven layer by layer
with those latents and its fixed noise buffers, its features fused with the encoder's up to ``in_size``; a
PixelShuffle decoder combines the encoder feature with the bank's features above ``in_size`` into the output (N, out,
out, 3), RGB, nominally in [-1, 1] and not clipped.

mmagic's RGB skip branch (``to_rgb1``, ``to_rgbs``, ``fusion_skip``) never reaches the output: its parameters exist
(so checkpoints round-trip) but it is only evaluated when the variables are initialised.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from glean_jax.models import ops
from glean_jax.models.layers import Conv, Linear
from glean_jax.models.remat import remat
from glean_jax.models.rrdb import RRDBFeatureExtractor
from glean_jax.models.stylegan2 import StyleGAN2Generator, check_size, stylegan2_channels

Dtype = Any


def check_geometry(in_size: int, out_size: int) -> None:
    """GLEAN accepts power-of-two sizes with 4 <= in_size < out_size <= 1024."""
    check_size(out_size, "out_size")
    if not isinstance(in_size, int) or in_size < 4 or in_size & (in_size - 1):
        raise ValueError(f"in_size must be a power of two >= 4, got {in_size!r}")
    if in_size >= out_size:
        raise ValueError(f"in_size must be smaller than out_size, got in_size={in_size}, out_size={out_size}")


class PixelShufflePack(nn.Module):
    """mmagic ``PixelShufflePack(in, out, 2, 3)``: ``pixel_shuffle(upsample_conv(x), 2)`` (no activation)."""

    out_channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = Conv(self.out_channels * 4, init_scale=1.0, dtype=self.dtype, name="upsample_conv")(x)
        return ops.pixel_shuffle(y, 2)


class GLEAN(nn.Module):
    """``GLEAN(in_size, out_size)(lq)``: lq (N, in, in, 3) in [-1, 1] -> (N, out, out, 3).

    Variables: ``params`` (``generator`` = the StyleGAN2 bank, kept frozen in training; ``encoder_*``,
    ``fusion_out_*``, ``fusion_skip_*``, ``decoder_*``) and ``buffers`` (``generator/injected_noise_i``).

    ``remat`` (memory for compute in training; the same function and parameters): the backward pass recomputes,
    instead of keeping, the activations of each RRDB of the trunk, of each bank level above ``in_size`` and of
    each decoder level -- what holds most of the forward's memory at high resolution (a 1024x1024 output). The
    latter two wait for their output's gradient before recomputing (:func:`glean_jax.models.remat.remat`).
    """

    in_size: int
    out_size: int
    rrdb_channels: int = 64
    num_rrdbs: int = 23
    style_channels: int = 512
    channel_multiplier: int = 2
    fp16_enabled: bool = False
    remat: bool = False
    dtype: Dtype = jnp.float32

    @classmethod
    def from_arch(cls, arch: dict, dtype: Dtype = jnp.float32, remat: bool = False) -> GLEAN:
        return cls(in_size=int(arch["in_size"]), out_size=int(arch["out_size"]),
                   rrdb_channels=int(arch.get("rrdb_channels", 64)), num_rrdbs=int(arch.get("num_rrdbs", 23)),
                   style_channels=int(arch.get("style_channels", 512)),
                   channel_multiplier=int(arch.get("channel_multiplier", 2)),
                   fp16_enabled=bool(arch.get("fp16_enabled", False)), remat=remat, dtype=dtype)

    def arch(self) -> dict:
        return {"in_size": self.in_size, "out_size": self.out_size, "rrdb_channels": self.rrdb_channels,
                "num_rrdbs": self.num_rrdbs, "style_channels": self.style_channels,
                "channel_multiplier": self.channel_multiplier, "fp16_enabled": self.fp16_enabled}

    def setup(self):
        check_geometry(self.in_size, self.out_size)
        ch = stylegan2_channels(self.channel_multiplier)
        kw = dict(dtype=self.dtype)
        self.num_styles = 2 * int(math.log2(self.out_size)) - 2
        self.generator = StyleGAN2Generator(self.out_size, self.style_channels,
                                            channel_multiplier=self.channel_multiplier,
                                            fp16_enabled=self.fp16_enabled,
                                            remat_above=self.in_size if self.remat else None, dtype=self.dtype)
        # encoder.0 = Sequential(RRDBFeatureExtractor, Conv2d, LeakyReLU); encoder.k = stride-2 blocks; the last
        # block (4x4) = Sequential(Conv2d, LeakyReLU, Flatten, Linear). None marks parameter-free positions.
        self.encoder_res = [2 ** i for i in range(int(math.log2(self.in_size)), 1, -1)]
        encoder = [[RRDBFeatureExtractor(self.rrdb_channels, self.num_rrdbs, remat=self.remat, **kw),
                    Conv(ch[self.in_size], **kw)]]
        for res in self.encoder_res:
            if res > 4:
                encoder.append([Conv(ch[res // 2], stride=2, padding=1, **kw), None, Conv(ch[res // 2], **kw)])
            else:
                encoder.append([Conv(ch[4], **kw), None, None, Linear(self.num_styles * self.style_channels, **kw)])
        self.encoder = encoder
        fusion_res = self.encoder_res[::-1]
        self.fusion_out = [Conv(ch[r], **kw) for r in fusion_res]
        self.fusion_skip = [Conv(3, **kw) for _ in fusion_res]
        decoder_res = [2 ** i for i in range(int(math.log2(self.in_size)), int(math.log2(self.out_size)) + 1)]
        decoder = []
        for res in decoder_res:
            if res < self.out_size:
                decoder.append(PixelShufflePack(ch[res * 2], **kw))
            else:
                decoder.append([Conv(64, **kw), None, Conv(3, **kw)])
        self.decoder = decoder

    def encode(self, lq: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        """lq -> (W+ latents (N, num_styles, style_channels), encoder features at 4, 8, ..., in_size)."""
        x = lq.astype(self.dtype)
        x = ops.leaky_relu(self.encoder[0][1](self.encoder[0][0](x)))
        feats = [x]
        for block in self.encoder[1:-1]:
            x = ops.leaky_relu(block[0](x))
            x = ops.leaky_relu(block[2](x))
            feats.append(x)
        last = self.encoder[-1]
        x = ops.leaky_relu(last[0](x))
        latent = last[3](ops.nchw_flatten(x))
        return latent.reshape(x.shape[0], self.num_styles, self.style_channels), feats[::-1]

    def _skip_branch(self, latent: jax.Array, bank_feats: list[jax.Array], enc_feats: list[jax.Array]) -> jax.Array:
        """mmagic's dead RGB skip path; evaluated only at initialisation to create its parameters."""
        g = self.generator
        skip = g.to_rgb1(bank_feats[0], latent[:, 1])
        for k, to_rgb in enumerate(g.to_rgbs):
            if k < len(enc_feats):
                skip = self.fusion_skip[k](jnp.concatenate([skip, enc_feats[k].astype(skip.dtype)], axis=-1))
            skip = to_rgb(bank_feats[k + 1], latent[:, 2 * k + 3], skip)
        return skip

    def __call__(self, lq: jax.Array) -> jax.Array:
        if lq.ndim != 4 or lq.shape[1:] != (self.in_size, self.in_size, 3):
            raise ValueError(f"GLEAN({self.in_size}->{self.out_size}) expects input (N, {self.in_size}, "
                             f"{self.in_size}, 3), got {tuple(lq.shape)}")
        latent, enc_feats = self.encode(lq)
        g = self.generator
        noise = g.noise_maps("fixed", lq.shape[0])
        out = jnp.broadcast_to(g.constant_input, (lq.shape[0],) + g.constant_input.shape[1:]).astype(self.dtype)
        out = g.conv1(out, latent[:, 0], noise[0])
        bank_feats = [out]   # only kept for the skip branch at init
        gen_feats = []
        for k in range(len(g.to_rgbs)):
            r = 4 * 2 ** k
            if r <= self.in_size:
                out = self.fusion_out[k](jnp.concatenate([out.astype(self.dtype), enc_feats[k]], axis=-1))
            out = g.style_level(k, out, (latent[:, 2 * k + 1], latent[:, 2 * k + 2]),
                                (noise[2 * k + 1], noise[2 * k + 2]))
            bank_feats.append(out)
            if 2 * r > self.in_size:
                gen_feats.append(out)
        if self.is_initializing():
            g.mapping(jnp.zeros((1, self.style_channels), jnp.float32))
            self._skip_branch(latent, bank_feats, enc_feats)
        hr = enc_feats[-1]
        for i, block in enumerate(self.decoder):
            mods = (block,) if isinstance(block, PixelShufflePack) else (block[0], block[2])
            if self.remat and not self.is_initializing():
                unbound = tuple(m.clone(parent=None) for m in mods)
                hr = remat(lambda v, hr, f, u=unbound: _decode(u, v, hr, f))(
                    tuple(m.variables for m in mods), hr, gen_feats[i - 1] if i > 0 else None)
            else:
                hr = _decode(mods, None, hr, gen_feats[i - 1] if i > 0 else None)
        return hr.astype(jnp.float32)


def _decode(mods: tuple[nn.Module, ...], variables: tuple | None, hr: jax.Array, gen_feat: jax.Array | None
            ) -> jax.Array:
    """One decoder level: its input concatenated with the bank's feature (not at the first level), then its convs
    (a PixelShufflePack, or the last level's conv, leaky ReLU, conv); ``variables`` given: the modules are unbound."""
    def call(k: int, x: jax.Array) -> jax.Array:
        return mods[k](x) if variables is None else mods[k].apply(variables[k], x)

    if gen_feat is not None:
        hr = jnp.concatenate([hr, gen_feat.astype(hr.dtype)], axis=-1)
    if len(mods) == 1:
        return call(0, hr)
    return call(1, ops.leaky_relu(call(0, hr)))

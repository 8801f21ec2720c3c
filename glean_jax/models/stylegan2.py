"""StyleGAN2 generator (GLEAN's latent bank) and discriminator, equal to mmagic 1.2.0's
``StyleGAN2Generator`` / ``StyleGAN2Discriminator`` (config-f), NHWC.

Parameters are float32 and raw (mmagic's ``weight_orig``); the equalised-learning-rate scale ``lr_mul / sqrt(fan_in)``
is applied at run time, so a converted checkpoint is a pure re-layout of mmagic's. ``dtype`` selects the compute dtype
(float32, bfloat16, float16). ``fp16_enabled`` reproduces mmagic's ``fp16_enabled=True`` numerics (weight/style
pre-normalisation in demodulated convs and the +-256 output clamps); it changes the function (mmagic's
``ModulatedConv2d`` / ``ModulatedStyleConv``) and is only meant for the fp16 seed configs.

Variable collections: ``params`` (trainable) and ``buffers`` (the generator's fixed noise maps, shape (1, r, r, 1)).
The trees are named for what each part is (``mapping/dense_1``, ``level_64/conv_up``, ``block_256`` ...); the
mapping to mmagic's ``state_dict`` keys lives in the converter's tables (``convert/stylegan2_rules.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from glean_jax.arch import bank_sizes, check_size, num_latents, stylegan2_channels
from glean_jax.models import ops
from glean_jax.models.remat import remat

Dtype = Any


def noise_layers(out_size: int) -> list[tuple[str, int]]:
    """(name, resolution) of each fixed noise buffer, in mmagic's order (``injected_noise_0``, ``_1``, ...): the 4x4
    style conv's, then each level's up-sampling conv's and conv's."""
    out = [("noise_4", 4)]
    for r in bank_sizes(out_size):
        out += [(f"noise_{r}_up", r), (f"noise_{r}", r)]
    return out


def truncate(w: jax.Array, mean: jax.Array, psi: float) -> jax.Array:
    """The truncation trick, as mmagic: ``mean + psi * (w - mean)`` (psi = 1: no change)."""
    return mean + jnp.asarray(psi, w.dtype) * (w - mean)


class EqualLinear(nn.Module):
    """mmagic ``EqualLinearActModule``: ``x @ (W * lr_mul / sqrt(in))`` + ``bias * lr_mul``, optionally followed by
    the fused bias leaky ReLU (x sqrt 2). Weight stored raw as (in, out) = ``linear.weight_orig.T``."""

    features: int
    lr_mul: float = 1.0
    bias_init: float = 0.0
    activate: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1]
        w = self.param("weight", nn.initializers.normal(1.0 / self.lr_mul), (fan_in, self.features))
        b = self.param("bias", nn.initializers.constant(self.bias_init), (self.features,))
        x = x.astype(self.dtype)
        y = jnp.dot(x, (w * (self.lr_mul / math.sqrt(fan_in))).astype(self.dtype))
        bias = (b * self.lr_mul).astype(self.dtype)
        if self.activate:
            return ops.fused_leaky_relu(y, bias)
        return y + bias


class ModulatedConv2d(nn.Module):
    """mmagic ``ModulatedConv2d`` (input-scale formulation, see :func:`ops.modulated_conv`)."""

    out_channels: int
    kernel_size: int = 3
    demodulate: bool = True
    upsample: bool = False
    fp16_enabled: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, style: jax.Array) -> jax.Array:
        cin, k = x.shape[-1], self.kernel_size
        weight = self.param("weight", nn.initializers.normal(1.0), (k, k, cin, self.out_channels))
        scale = 1.0 / math.sqrt(cin * k * k)
        style = style.astype(jnp.float32)
        if self.fp16_enabled and self.demodulate:
            # mmagic fp16: W * (1/sqrt(I k k)) / max|W| over (O, I, kh) -- one scale per kernel column kw -- and the
            # style divided by its max |.| before the affine.
            weight = weight * scale
            weight = weight * (scale / jnp.max(jnp.abs(weight), axis=(0, 2, 3), keepdims=True))
            style = style / jnp.max(jnp.abs(style), axis=-1, keepdims=True)
        s = EqualLinear(cin, bias_init=1.0, name="style_modulation")(style)
        if not (self.fp16_enabled and self.demodulate):
            # The equalised-LR scale rides on the per-sample styles (N, I) rather than the (k, k, I, O) weight:
            # conv(x * s, W * c) = conv(x * (s c), W), and the demodulation sums see the same products -- the same
            # function without a pass over the weight each call (the bank's 3x3x512x512 weights: ~55 ms of the cat
            # x8 forward at batch 1).
            s = s * scale
        return ops.modulated_conv(x.astype(self.dtype), weight.astype(self.dtype), s,
                                  demodulate=self.demodulate, upsample=self.upsample)


class StyleConv(nn.Module):
    """mmagic ``ModulatedStyleConv``: modulated conv, ``+ noise_weight * noise``, fused bias leaky ReLU."""

    out_channels: int
    upsample: bool = False
    fp16_enabled: bool = False
    conv_clamp: float = 256.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, style: jax.Array, noise: jax.Array | None) -> jax.Array:
        y = ModulatedConv2d(self.out_channels, 3, upsample=self.upsample, fp16_enabled=self.fp16_enabled,
                            dtype=self.dtype, name="conv")(x, style)
        noise_weight = self.param("noise_weight", nn.initializers.zeros, (1,))
        if noise is not None:
            y = y + noise_weight.astype(y.dtype) * noise.astype(y.dtype)
        bias = self.param("activate_bias", nn.initializers.zeros, (self.out_channels,))
        y = ops.fused_leaky_relu(y, bias)
        if self.fp16_enabled:
            y = jnp.clip(y, -self.conv_clamp, self.conv_clamp)
        return y


class ToRGB(nn.Module):
    """mmagic ``ModulatedToRGB``: 1x1 modulated conv without demodulation, + bias, + FIR-upsampled skip."""

    upsample: bool = True
    out_channels: int = 3
    fp16_enabled: bool = False
    conv_clamp: float = 256.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, style: jax.Array, skip: jax.Array | None = None) -> jax.Array:
        y = ModulatedConv2d(self.out_channels, 1, demodulate=False, fp16_enabled=self.fp16_enabled,
                            dtype=self.dtype, name="conv")(x, style)
        bias = self.param("bias", nn.initializers.zeros, (self.out_channels,))
        y = y + bias.astype(y.dtype)
        if self.fp16_enabled:
            y = jnp.clip(y, -self.conv_clamp, self.conv_clamp)
        if skip is not None:
            if self.upsample:
                skip = ops.upsample_fir(skip.astype(y.dtype))
            y = y + skip.astype(y.dtype)
        return y.astype(jnp.float32)


class MappingNetwork(nn.Module):
    """mmagic's ``style_mapping``: PixelNorm, then ``num_mlps`` equalised linear layers ``dense_1`` ..
    ``dense_<num_mlps>`` with the fused leaky ReLU and learning-rate multiplier ``lr_mlp``: z -> W."""

    style_channels: int = 512
    num_mlps: int = 8
    lr_mlp: float = 0.01

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        x = ops.pixel_norm(z.astype(jnp.float32))
        for i in range(1, self.num_mlps + 1):
            x = EqualLinear(self.style_channels, lr_mul=self.lr_mlp, activate=True, name=f"dense_{i}")(x)
        return x


class StyleLevel(nn.Module):
    """One resolution level of the synthesis network (mmagic's ``convs[2k]``, ``convs[2k + 1]``, ``to_rgbs[k]``):
    ``conv_up`` (2x up-sampling style conv), ``conv`` (style conv) and ``to_rgb`` (this level's RGB, added to the
    up-sampled skip). Calling it runs the two convs."""

    channels: int
    fp16_enabled: bool = False
    dtype: Dtype = jnp.float32

    def setup(self):
        kw = dict(fp16_enabled=self.fp16_enabled, dtype=self.dtype)
        self.conv_up = StyleConv(self.channels, upsample=True, **kw)
        self.conv = StyleConv(self.channels, **kw)
        self.to_rgb = ToRGB(upsample=True, **kw)

    def __call__(self, x: jax.Array, styles: tuple[jax.Array, jax.Array],
                 noises: tuple[jax.Array | None, jax.Array | None]) -> jax.Array:
        return self.conv(self.conv_up(x, styles[0], noises[0]), styles[1], noises[1])


class StyleGAN2Generator(nn.Module):
    """mmagic ``StyleGAN2Generator`` (unconditional, config-f).

    Parameters: ``mapping`` (:class:`MappingNetwork`), ``const`` (the learned 4x4 input), ``conv_4`` and ``to_rgb_4``
    (the 4x4 style conv and its RGB), ``level_8`` .. ``level_<out_size>`` (:class:`StyleLevel`); buffers: the fixed
    noise maps ``noise_4``, ``noise_<r>_up``, ``noise_<r>`` (:func:`noise_layers`; shape (1, r, r, 1)).

    ``__call__(styles, ...)`` follows mmagic's ``forward``: ``styles`` is z (N, noise) -- or W / W+ with
    ``input_is_latent`` -- or a list of two such arrays for style mixing at ``inject_index``; ``truncation`` < 1
    interpolates toward ``truncation_latent``; ``noise`` is ``'random'`` (fresh N(0,1) maps from the ``'noise'`` rng),
    ``'fixed'`` (the stored noise buffers, mmagic's ``randomize_noise=False``), ``'none'``, or a list of arrays.
    Returns the RGB image (N, H, W, 3) float32 in the model's [-1, 1] range (not clipped).

    ``remat_above``: in :meth:`style_level`, the levels producing a resolution above it keep only their input
    for the backward pass and recompute the rest there (:func:`glean_jax.models.remat.remat`; the same function and
    parameter tree); None = none.
    """

    out_size: int
    style_channels: int = 512
    num_mlps: int = 8
    channel_multiplier: int = 2
    lr_mlp: float = 0.01
    fp16_enabled: bool = False
    remat_above: int | None = None
    dtype: Dtype = jnp.float32

    def setup(self):
        check_size(self.out_size, "out_size")
        ch = stylegan2_channels(self.channel_multiplier)
        self.num_latents = num_latents(self.out_size)
        self.sizes = bank_sizes(self.out_size)
        kw = dict(fp16_enabled=self.fp16_enabled, dtype=self.dtype)
        self.mapping = MappingNetwork(self.style_channels, self.num_mlps, self.lr_mlp)
        self.const = self.param("const", nn.initializers.normal(1.0), (1, 4, 4, ch[4]))
        self.conv_4 = StyleConv(ch[4], **kw)
        self.to_rgb_4 = ToRGB(upsample=False, **kw)
        self.level = {r: StyleLevel(ch[r], **kw) for r in self.sizes}
        self.noise = [self.variable("buffers", name,
                                    lambda r=r: jax.random.normal(self.make_rng("params"), (1, r, r, 1), jnp.float32))
                      for name, r in noise_layers(self.out_size)]

    def style_level(self, r: int, x: jax.Array, styles: tuple[jax.Array, jax.Array],
                    noises: tuple[jax.Array | None, jax.Array | None]) -> jax.Array:
        """The two convs of the level of output ``r``; one rematerialised block above ``remat_above``. (The level,
        not each conv: the up-conv's output is never one buffer in XLA -- its blur is fused into every consumer --
        so as a block boundary it would keep the blur's three full-size inputs instead.)"""
        level = self.level[r]
        if self.remat_above is None or self.is_initializing() or r <= self.remat_above:
            return level(x, styles, noises)
        unbound = level.clone(parent=None)

        def run(c: tuple, x: jax.Array) -> jax.Array:
            variables, styles, noises = c
            return unbound.apply(variables, x, styles, noises)

        return remat(run)((level.variables, styles, noises), x)

    def noise_maps(self, mode: str | Sequence[jax.Array], batch: int) -> list[jax.Array | None]:
        """The per-layer noise inputs for ``mode`` ('fixed' | 'random' | 'none' | explicit list)."""
        n = len(self.noise)
        if not isinstance(mode, str):
            if len(mode) != n:
                raise ValueError(f"expected {n} noise maps, got {len(mode)}")
            return list(mode)
        if mode == "fixed":
            return [v.value for v in self.noise]
        if mode == "none":
            return [None] * n
        if mode == "random":
            rng = self.make_rng("noise")
            keys = jax.random.split(rng, n)
            return [jax.random.normal(k, (batch,) + v.value.shape[1:], jnp.float32)
                    for k, v in zip(keys, self.noise, strict=True)]
        raise ValueError(f"noise must be 'fixed', 'random', 'none' or a list of arrays, got {mode!r}")

    def synthesis(self, latent: jax.Array, noise: str | Sequence[jax.Array] = "fixed") -> jax.Array:
        """W+ latents (N, num_latents, style_channels) -> RGB image (N, out, out, 3)."""
        n = latent.shape[0]
        if latent.ndim != 3 or latent.shape[1] != self.num_latents:
            raise ValueError(f"expected W+ latents of shape (N, {self.num_latents}, {self.style_channels}), "
                             f"got {tuple(latent.shape)}")
        noises = self.noise_maps(noise, n)
        out = jnp.broadcast_to(self.const, (n,) + self.const.shape[1:]).astype(self.dtype)
        out = self.conv_4(out, latent[:, 0], noises[0])
        skip = self.to_rgb_4(out, latent[:, 1])
        for k, r in enumerate(self.sizes):
            level = self.level[r]
            out = level.conv_up(out, latent[:, 2 * k + 1], noises[2 * k + 1])
            out = level.conv(out, latent[:, 2 * k + 2], noises[2 * k + 2])
            skip = level.to_rgb(out, latent[:, 2 * k + 3], skip)
        return skip.astype(jnp.float32)

    def mean_latent(self, z: jax.Array | int = 4096) -> jax.Array:
        """Mean of W = mapping(z), (1, style_channels) (mmagic ``get_mean_latent``): over the given z (N,
        style_channels), or over that many z ~ N(0, I) drawn from the ``'latent'`` rng. ``glean_jax.generate``'s
        truncation uses it too."""
        if isinstance(z, int):
            z = jax.random.normal(self.make_rng("latent"), (z, self.style_channels), jnp.float32)
        return jnp.mean(self.mapping(z), axis=0, keepdims=True)

    def __call__(self, styles: jax.Array | Sequence[jax.Array], *, input_is_latent: bool = False,
                 truncation: float = 1.0, truncation_latent: jax.Array | None = None,
                 inject_index: int | None = None, noise: str | Sequence[jax.Array] = "random") -> jax.Array:
        if self.is_initializing():
            self.mapping(jnp.zeros((1, self.style_channels), jnp.float32))  # create the mapping parameters
        styles = [styles] if not isinstance(styles, list | tuple) else list(styles)
        if not input_is_latent:
            styles = [self.mapping(s) for s in styles]
        if truncation < 1:
            if truncation_latent is None:
                truncation_latent = self.mean_latent()
            styles = [truncate(s, truncation_latent, truncation) for s in styles]
        if len(styles) == 1:
            s = styles[0]
            latent = s if s.ndim == 3 else jnp.repeat(s[:, None], self.num_latents, axis=1)
        elif len(styles) == 2:
            # The first inject_index latents from styles[0], the rest from styles[1]. A drawn index (mmagic:
            # random.randint(1, num_latents - 1)) stays a traced value, so this also runs under jit.
            if inject_index is None:
                inject_index = jax.random.randint(self.make_rng("mix"), (), 1, self.num_latents)
            elif not 1 <= inject_index < self.num_latents:
                raise ValueError(f"inject_index must be in [1, {self.num_latents - 1}], got {inject_index}")
            first = (jnp.arange(self.num_latents) < inject_index)[None, :, None]
            latent = jnp.where(first, styles[0][:, None], styles[1][:, None])
        else:
            raise ValueError(f"style mixing takes at most 2 style arrays, got {len(styles)}")
        return self.synthesis(latent, noise)


class ConvDownLayer(nn.Module):
    """mmagic ``ConvDownLayer``: [Blur when downsampling] + equalised-LR conv (no bias) + fused bias leaky ReLU."""

    out_channels: int
    kernel_size: int
    downsample: bool = False
    activate: bool = True
    fp16_enabled: bool = False
    conv_clamp: float = 256.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cin, k = x.shape[-1], self.kernel_size
        weight = self.param("weight", nn.initializers.normal(1.0), (k, k, cin, self.out_channels))
        weight = (weight * (1.0 / math.sqrt(cin * k * k))).astype(self.dtype)
        x = x.astype(self.dtype)
        if self.downsample:
            x = ops.upfirdn2d(x, ops.fir_taps(), pad=ops.blur_down_pad(k))
            y = ops.conv2d(x, weight, stride=2, padding=0)
        else:
            y = ops.conv2d(x, weight, stride=1, padding=k // 2)
        if self.activate:
            y = ops.fused_leaky_relu(y, self.param("bias", nn.initializers.zeros, (self.out_channels,)))
        if self.fp16_enabled:
            y = jnp.clip(y, -self.conv_clamp, self.conv_clamp)
        return y


class ResBlock(nn.Module):
    """mmagic ``ResBlock`` of the StyleGAN2 discriminator: ``(conv2(conv1(x)) + skip(x)) / sqrt(2)``."""

    out_channels: int
    fp16_enabled: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(fp16_enabled=self.fp16_enabled, dtype=self.dtype)
        out = ConvDownLayer(x.shape[-1], 3, name="conv1", **kw)(x)
        out = ConvDownLayer(self.out_channels, 3, downsample=True, name="conv2", **kw)(out)
        skip = ConvDownLayer(self.out_channels, 1, downsample=True, activate=False, name="skip", **kw)(x)
        return (out + skip) * jnp.asarray(1.0 / math.sqrt(2.0), out.dtype)


class StyleGAN2Discriminator(nn.Module):
    """mmagic ``StyleGAN2Discriminator`` (unconditional): RGB (N, in, in, 3) -> logits (N, 1) float32.

    Parameters: ``from_rgb`` (1x1 conv), ``block_<r>`` for r = in_size .. 8 (the ResBlock from r x r to r/2 x r/2),
    ``final_conv`` (after the minibatch-stddev channel), ``final_linear`` and ``logit``.

    The minibatch-stddev layer groups the batch in groups of ``mbstd_group_size`` (batch <= 4 or a multiple of 4),
    within each of ``mbstd_shards`` consecutive equal parts of the batch (the call argument; 1 = the whole batch):
    mmagic's discriminator runs per GPU, so its groups never cross GPUs (see the training step). Every other layer
    is per sample.

    ``remat``: the ResBlocks at the two highest resolutions (``in_size`` and ``in_size / 2``) keep only their input
    for the backward pass and recompute the rest there (:func:`glean_jax.models.remat.remat`); the same values.
    """

    in_size: int
    channel_multiplier: int = 2
    mbstd_group_size: int = 4
    fp16_enabled: bool = False
    remat: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mbstd_shards: int = 1) -> jax.Array:
        log_size = check_size(self.in_size, "in_size")
        if x.shape[1:3] != (self.in_size, self.in_size):
            raise ValueError(f"discriminator expects {self.in_size}x{self.in_size} input, got {x.shape[1:3]}")
        ch = stylegan2_channels(self.channel_multiplier)
        kw = dict(fp16_enabled=self.fp16_enabled, dtype=self.dtype)
        x = ConvDownLayer(ch[self.in_size], 1, name="from_rgb", **kw)(x)
        for n, r in enumerate(2 ** i for i in range(log_size, 2, -1)):
            name = f"block_{r}"   # the ResBlock taking r x r to r/2 x r/2
            if self.remat and n < 2 and not self.is_initializing():
                block = ResBlock(ch[r // 2], parent=None, **kw)
                x = remat(lambda v, x, b=block: b.apply({"params": v}, x))(self.variables["params"][name], x)
            else:
                x = ResBlock(ch[r // 2], name=name, **kw)(x)
        x = ops.minibatch_stddev(x, self.mbstd_group_size, shards=mbstd_shards)
        x = ConvDownLayer(ch[4], 3, name="final_conv", **kw)(x)
        x = ops.nchw_flatten(x.astype(jnp.float32))
        x = EqualLinear(ch[4], activate=True, name="final_linear")(x)
        x = EqualLinear(1, name="logit")(x)
        return x.astype(jnp.float32)

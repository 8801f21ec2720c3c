"""Build models from the architecture descriptions stored in ``model.json`` and compute their variable shapes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from glean_jax import runtime
from glean_jax.arch import GleanArch
from glean_jax.models.glean import GLEAN
from glean_jax.models.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def compute_dtype(name: str) -> Any:
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def build_generator(arch: dict, dtype: str = "float32") -> StyleGAN2Generator:
    """``arch``: {out_size, style_channels, num_mlps, channel_multiplier, [lr_mlp], [fp16_enabled]}."""
    return StyleGAN2Generator(out_size=int(arch["out_size"]), style_channels=int(arch.get("style_channels", 512)),
                              num_mlps=int(arch.get("num_mlps", 8)),
                              channel_multiplier=int(arch.get("channel_multiplier", 2)),
                              lr_mlp=float(arch.get("lr_mlp", 0.01)),
                              fp16_enabled=bool(arch.get("fp16_enabled", False)), dtype=compute_dtype(dtype))


def build_discriminator(arch: dict, dtype: str = "float32") -> StyleGAN2Discriminator:
    """``arch``: {in_size, channel_multiplier, [fp16_enabled]}."""
    return StyleGAN2Discriminator(in_size=int(arch["in_size"]),
                                  channel_multiplier=int(arch.get("channel_multiplier", 2)),
                                  fp16_enabled=bool(arch.get("fp16_enabled", False)), dtype=compute_dtype(dtype))


def build_glean(arch: dict | GleanArch, dtype: str = "float32", remat: bool = False) -> nn.Module:
    """``arch``: a :class:`GleanArch` or its dict (``model.json``'s ``generator``)."""
    if not isinstance(arch, GleanArch):
        arch = GleanArch.from_dict(arch, "GLEAN architecture")
    return GLEAN(arch, remat=remat, dtype=compute_dtype(dtype))


def build(kind: str, arch: dict, dtype: str = "float32") -> nn.Module:
    builders = {"stylegan2_generator": build_generator, "stylegan2_discriminator": build_discriminator,
                "glean": build_glean}
    if kind not in builders:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {sorted(builders)}")
    return builders[kind](arch, dtype)


def example_input(kind: str, module: nn.Module, batch: int = 1) -> tuple:
    if kind == "stylegan2_generator":
        return (jnp.zeros((batch, module.style_channels), jnp.float32),)
    if kind == "stylegan2_discriminator":
        return (jnp.zeros((batch, module.in_size, module.in_size, 3), jnp.float32),)
    return (jnp.zeros((batch, module.in_size, module.in_size, 3), jnp.float32),)


def init_fn(kind: str, module: nn.Module, batch: int = 1) -> Callable[[jax.Array], dict]:
    """The jitted ``rng -> variables`` behind :func:`init_variables` (un-jitted, the init of a 1024 bank takes tens
    of seconds on CPU); keep it to initialise again without compiling again."""
    return runtime.jit(lambda rng: module.init({"params": rng, "noise": jax.random.fold_in(rng, 1)},
                                               *example_input(kind, module, batch)))


def init_variables(kind: str, module: nn.Module, rng: jax.Array, batch: int = 1) -> dict:
    """Random initial variables of a ``kind`` module (:func:`init_fn`)."""
    return init_fn(kind, module, batch)(rng)


def variable_shapes(kind: str, module: nn.Module) -> dict:
    """The variables' ShapeDtypeStructs, without computing anything."""
    rngs = {"params": jax.random.key(0), "noise": jax.random.key(1)}
    return jax.eval_shape(lambda: module.init(rngs, *example_input(kind, module)))

"""Shared pieces of the seed configs (not a config itself)."""

from ml_collections import ConfigDict

from glean_jax.training.config import base_config

STYLEGAN2_CAT = "pretrained/stylegan2_cat256"
STYLEGAN2_FFHQ = "pretrained/stylegan2_ffhq1024"
VGG16 = "pretrained/vgg16"


def seed_config(in_size: int, out_size: int, batch_size: int, gpus: int, stylegan2: str) -> ConfigDict:
    """mmagic's base_glean recipe at a given geometry; ``gpus`` = mmagic's DDP world size (D's mbstd shards)."""
    c = base_config()
    c.model.in_size = c.data.in_size = in_size
    c.model.out_size = c.data.out_size = out_size
    c.model.mbstd_shards = gpus
    c.batch_size = batch_size
    c.pretrained.stylegan2 = stylegan2
    c.pretrained.vgg16 = VGG16
    c.data.num_threads = 8
    return c


def to_fp16(c: ConfigDict) -> ConfigDict:
    """mmagic's *-fp16 variants: generator.fp16_enabled = discriminator.fp16_enabled = True (mmagic
    ``configs/glean/glean_x8-fp16_2xb8_cat.py`` and its siblings).

    Differences from mmagic: mmagic's fp16 configs keep a plain OptimWrapper (no loss scaler) and run only the
    StyleGAN2 layers under fp16 autocast while GLEAN's own layers stay fp32. Here ``precision='float16'`` computes
    every layer in float16 (float32 params and losses) and scales the losses with flax ``DynamicScale`` (an
    overflowing step is skipped and the scale halved), because unscaled float16 gradients underflow/overflow.
    ``model.fp16_enabled`` reproduces mmagic's fp16 numerics in the bank and D (weight/style pre-normalisation and
    the +-256 clamps). No fp16 GLEAN was ever released, so there is no number to compare with.
    """
    c.precision = "float16"
    c.model.fp16_enabled = True
    return c

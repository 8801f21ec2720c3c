"""python -m glean_jax.train --config configs/cat_x8_fp16.py --workdir runs/cat_x8_fp16

Mirrors mmagic ``configs/glean/glean_x8-fp16_2xb8_cat.py``:
configs/cat_x8.py with ``generator.fp16_enabled=True`` and
``discriminator.fp16_enabled=True`` (mmagic's fp16 variant); no fp16 model or number was released.

Where we differ from mmagic: mmagic keeps a plain OptimWrapper (no loss scaler) and runs only the StyleGAN2 layers
in fp16 (GLEAN's encoder/fusion/decoder stay fp32). Here ``precision='float16'`` computes every layer in float16
with float32 params and losses, and scales the losses with flax ``DynamicScale`` (an overflowing step is skipped
and its scale halved, the scale doubles after ``loss_scale.growth_interval`` good steps), because unscaled
float16 gradients underflow or overflow. ``model.fp16_enabled=True`` reproduces mmagic's fp16 numerics of the bank
and D (weight/style pre-normalisation, +-256 clamps). On GPUs without fast fp16 prefer
``--config.precision=bfloat16`` (no loss scaling needed).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import to_fp16  # noqa: E402
from cat_x8 import get_config as base_config  # noqa: E402


def get_config():
    return to_fp16(base_config())

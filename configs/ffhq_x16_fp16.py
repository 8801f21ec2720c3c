"""python -m glean_jax.train --config configs/ffhq_x16_fp16.py --workdir runs/ffhq_x16_fp16

Mirrors mmagic ``configs/glean/glean_x16-fp16_2xb8_ffhq.py``: configs/ffhq_x16.py in float16 with mmagic's fp16 numerics
(``generator.fp16_enabled`` / ``discriminator.fp16_enabled``). Where and why we differ from mmagic:
:func:`glean_jax.training.recipes.to_fp16`.
"""

from glean_jax.training.recipes import sibling_config, to_fp16


def get_config():
    return to_fp16(sibling_config(__file__, "ffhq_x16.py"))

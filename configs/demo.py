"""python -m glean_jax.train --config configs/demo.py --workdir runs/demo

A tiny GLEAN (4 -> 16, x4, one RRDB of 16 channels) trained for 40 steps on synthetic textures (their LQ made with
the MATLAB bicubic of mmagic's preprocessing), with random StyleGAN2 bank, discriminator and VGG16 weights
(``pretrained.allow_random=True``): no downloads, no files; about 3 minutes on an idle 2-core CPU (8 minutes
measured on a heavily shared one). It exercises the whole recipe of mmagic's ``glean_x8_2xb8_cat`` (losses, G/D
steps, checkpoints, evaluation, exports) at toy size; its numbers say nothing about GLEAN's quality. The learning
rate stays at mmagic's 1e-4 (constant: a cosine over 40 steps would only slow the toy run down). The validation
PSNR rises from about 13.9 dB to about 17.3 dB. ``python -m glean_jax.upscale --checkpoint runs/demo/model ...``
then uses the trained model.
"""

from ml_collections import ConfigDict

from glean_jax.training.config import base_config


def get_config() -> ConfigDict:
    c = base_config()
    c.model.in_size = 4
    c.model.out_size = 16
    c.model.num_rrdbs = 1
    c.model.rrdb_channels = 16
    c.model.mbstd_shards = 1
    c.pretrained.allow_random = True
    c.data.source = "synthetic"
    c.data.synthetic_size = 64
    c.data.synthetic_test_size = 8
    c.data.num_threads = 2
    c.data.prefetch = 2
    c.optim.schedule = "constant"
    c.batch_size = 4
    c.total_steps = 40
    c.log_every = 5
    c.checkpoint_every = 20
    c.keep_checkpoints = 1
    c.sample_every = 10
    c.eval_every = 10
    c.eval_max_images = 8
    c.max_bad_steps = 10
    return c

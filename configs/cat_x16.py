"""python -m glean_jax.train --config configs/cat_x16.py --workdir runs/cat_x16

Mirrors mmagic ``configs/glean/glean_x16_2xb8_cat.py`` (released as glean_cat_16x, PSNR 20.88 on Cat100): GLEAN
16 -> 256, otherwise the recipe of ``configs/cat_x8.py`` (cat-256 bank and D, 2 GPUs x 8, Adam 1e-4, 300k
iterations, cosine 1e-4 -> 1e-7, norm_img=False), with the BIx16_down inputs.

Needs ``data/cat_train/{BIx16_down,GT}`` + ``meta_info_LSUNcat_GT.txt``, ``data/cat_test/{BIx16_down,GT}`` +
``meta_info_Cat100_GT.txt``; the bank ``stylegan2_cat256`` comes from the zoo (see configs/cat_x8.py).
"""

from glean_jax.training.recipes import STYLEGAN2_CAT, seed_config


def get_config():
    c = seed_config(16, 256, batch_size=16, gpus=2, stylegan2=STYLEGAN2_CAT)
    c.data.root, c.data.lq_dir, c.data.gt_dir = "data/cat_train", "BIx16_down", "GT"
    c.data.meta_info = "meta_info_LSUNcat_GT.txt"
    c.data.test_root, c.data.test_lq_dir, c.data.test_gt_dir = "data/cat_test", "BIx16_down", "GT"
    c.data.test_meta_info = "meta_info_Cat100_GT.txt"
    return c

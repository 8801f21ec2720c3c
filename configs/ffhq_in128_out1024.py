"""python -m glean_jax.train --config configs/ffhq_in128_out1024.py --workdir runs/ffhq_in128_out1024

Mirrors mmagic ``configs/glean/glean_in128out1024_4xb2-300k_ffhq-celeba-hq.py`` (released as
glean_in128out1024_4x2_300k_ffhq_celebahq, PSNR 27.94 on CelebA-HQ BIx8 val100): GLEAN 128 -> 1024 trained on
FFHQ + CelebA-HQ with the blind degradation chain made online from the 1024 GT (``data.degradation='blind'``: blur,
random down-resize, noise, JPEG, resize back, area resize to 128, flip), 4 GPUs x 2 (global batch 8, D's
minibatch-stddev per 2-image shard), the FFHQ-1024 bank and D, perceptual loss with ``norm_img=True``, Adam 1e-4,
300k iterations, cosine 1e-4 -> 1e-7. Validation on the bicubic CelebA-HQ BIx8_down set.

Needs ``data/FFHQ_CelebAHQ/GT`` (whole folder), ``data/CelebA-HQ/{BIx8_down,GT}`` +
``meta_info_CelebAHQ_val100_GT.txt``; the bank ``stylegan2_ffhq1024`` comes from the zoo (see configs/cat_x8.py).
"""

from glean_jax.training.recipes import STYLEGAN2_FFHQ, seed_config


def get_config():
    c = seed_config(128, 1024, batch_size=8, gpus=4, stylegan2=STYLEGAN2_FFHQ)
    c.data.root, c.data.gt_dir = "data/FFHQ_CelebAHQ", "GT"
    c.data.degradation = "blind"
    c.data.test_root, c.data.test_lq_dir, c.data.test_gt_dir = "data/CelebA-HQ", "BIx8_down", "GT"
    c.data.test_meta_info = "meta_info_CelebAHQ_val100_GT.txt"
    c.data.num_threads = 6
    c.loss.norm_img = True
    return c

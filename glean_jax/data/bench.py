"""Measures the training loader's throughput (images/s) on synthetic PNG folders of the real GLEAN sizes.

    python -m glean_jax.data.bench --setup cat_x8 [--batch 8] [--batches 20] [--threads 4] [--workers 0]

Setups: ``cat_x8`` (32 -> 256 pairs), ``cat_x16`` (16 -> 256), ``ffhq_x16`` (64 -> 1024 pairs) and ``blind``
(1024 GT only, LQ 128 made online by the in128out1024 degradation chain). The images are random textures written
once as PNG to ``--dir`` (default: a temporary folder), so decoding costs are real; the timing covers reading,
decoding, flip, (blind degradation), batching and normalisation, after two warm-up batches.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from glean_jax.data import default_data_config
from glean_jax.data.datasets import synthetic_texture
from glean_jax.data.loader import make_train_iterator
from glean_jax.data.resize import imresize_uint8
from glean_jax.errors import UserError, cli_entry
from glean_jax.images import write_png

SETUPS = {"cat_x8": (32, 256, False), "cat_x16": (16, 256, False), "ffhq_x16": (64, 1024, False),
          "blind": (128, 1024, True)}


def write_folder(root: Path, n: int, in_size: int, out_size: int, gt_only: bool) -> None:
    """n random-texture GT PNGs (and their MATLAB-bicubic LQ unless gt_only) under root/GT and root/LQ."""
    (root / "GT").mkdir(parents=True, exist_ok=True)
    (root / "LQ").mkdir(exist_ok=True)
    for i in range(n):
        gt_path, lq_path = root / "GT" / f"{i:05d}.png", root / "LQ" / f"{i:05d}.png"
        if gt_path.exists() and (gt_only or lq_path.exists()):
            continue
        gt = synthetic_texture(out_size, np.random.default_rng([12345, i]))
        if not gt_only:
            write_png(lq_path, imresize_uint8(gt, output_shape=(in_size, in_size)))
        write_png(gt_path, gt)


def measure(root: Path, setup: str, batch: int, batches: int, threads: int, workers: int) -> float:
    """Images per second of make_train_iterator over root (after two warm-up batches)."""
    in_size, out_size, blind = SETUPS[setup]
    cfg = default_data_config()
    cfg.update(dict(source="folder", root=str(root), lq_dir="LQ", gt_dir="GT", in_size=in_size, out_size=out_size,
                    degradation="blind" if blind else None, num_threads=threads, prefetch=2 * batch,
                    num_workers=workers))
    it = make_train_iterator(cfg, global_batch_size=batch, seed=0)
    try:
        for _ in range(2):
            next(it)
        t = time.perf_counter()
        for _ in range(batches):
            next(it)
        return batches * batch / (time.perf_counter() - t)
    finally:
        it.close()


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m glean_jax.data.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--setup", choices=sorted(SETUPS), required=True)
    p.add_argument("--images", type=int, default=32, help="distinct images in the folder")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--batches", type=int, default=20, help="timed batches")
    p.add_argument("--threads", type=int, default=4, help="grain reader threads")
    p.add_argument("--workers", type=int, default=0, help="grain multiprocess prefetch workers")
    p.add_argument("--dir", default=None, help="folder for the synthetic PNGs (kept); default: a temporary one")
    a = p.parse_args(argv)
    if min(a.images, a.batch, a.batches) < 1 or min(a.threads, a.workers) < 0:
        raise UserError("--images, --batch and --batches must be positive; --threads, --workers non-negative")
    in_size, out_size, blind = SETUPS[a.setup]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.dir) if a.dir else Path(tmp)
        write_folder(root, a.images, in_size, out_size, blind)
        ips = measure(root, a.setup, a.batch, a.batches, a.threads, a.workers)
    print(f"{a.setup}: {in_size}->{out_size}{' (blind LQ online)' if blind else ''}, batch {a.batch}, "
          f"threads {a.threads}, workers {a.workers}: {ips:.1f} images/s")
    return 0


if __name__ == "__main__":
    cli_entry(main)

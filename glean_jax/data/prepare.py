"""Makes mmagic/GLEAN-style training folders from a folder of GT images.

    python -m glean_jax.data.prepare --gt-dir G --out-dir O --scale 8 [16 ...] [--size 256] [--workers N]
                                     [--meta-info M]

Writes ``O/GT/<stem>.png`` and ``O/BIx<scale>_down/<stem>.png`` (root = O, gt_dir = GT, lq_dir = BIx8_down),
exactly as mmagic's ``tools/dataset_converters/glean/preprocess_*_dataset.py``:

* with ``--size S`` (the cat scripts): GT = MATLAB-bicubic resize of the input to exactly S x S (aspect ratio
  not kept), saved as PNG; each LQ = MATLAB-bicubic resize of that saved uint8 GT by 1/scale;
* without ``--size`` (the FFHQ / CelebA-HQ script): the GT is used as it is and each LQ = resize by 1/scale.
  A GT that already is an 8-bit RGB PNG is hard-linked into ``O/GT`` (copied across file systems); others are
  decoded to RGB and saved as PNG, so that LQ and GT names match as mmagic's ``BasicImageDataset`` expects.

Every resize is :func:`glean_jax.data.resize.imresize_uint8` (float via /255, clip, x255, round), equal bit for bit
to mmagic's. The work runs in ``--workers`` processes with a progress bar; an image whose outputs all exist is
skipped (so an interrupted run resumes), and every file is written atomically (no partial PNGs).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from glean_jax.data.datasets import read_meta_info
from glean_jax.data.resize import imresize_uint8
from glean_jax.errors import UserError, cli_entry
from glean_jax.images import IMAGE_EXTENSIONS, read_rgb, write_png


def lq_dir_name(scale: int) -> str:
    """mmagic's LQ folder name for a scale: ``BIx8_down``."""
    return f"BIx{scale}_down"


def _is_rgb8_png(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            return im.format == "PNG" and im.mode == "RGB"
    except (OSError, ValueError, SyntaxError):
        return False


def _link_or_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"{dst}: cannot write ({e.strerror or e})") from e


def process_one(src: Path, out_dir: Path, scales: Sequence[int], size: int | None) -> str:
    """Makes the GT and LQ files of one image; returns 'done' or 'skipped' (all outputs already there)."""
    name = src.stem + ".png"
    gt_path = out_dir / "GT" / name
    lq_paths = [out_dir / lq_dir_name(s) / name for s in scales]
    if gt_path.is_file() and all(p.is_file() for p in lq_paths):
        return "skipped"
    img = read_rgb(src)
    if size is not None:
        gt = imresize_uint8(img, output_shape=(size, size))
    else:
        gt = img
        for s in scales:
            if gt.shape[0] % s or gt.shape[1] % s:
                raise UserError(f"{src}: {gt.shape[1]}x{gt.shape[0]} is not divisible by the scale {s}; "
                                "expected a multiple (or pass --size)")
    for s, p in zip(scales, lq_paths, strict=True):
        if not p.is_file():
            write_png(p, imresize_uint8(gt, scale=1 / s))
    if not gt_path.is_file():  # written last: its presence marks the image as done
        if size is None and src.suffix.lower() == ".png" and _is_rgb8_png(src):
            _link_or_copy(src, gt_path)
        else:
            write_png(gt_path, gt)
    return "done"


def _worker(args: tuple[Path, Path, tuple[int, ...], int | None]) -> tuple[str, str]:
    src = args[0]
    try:
        return process_one(*args), ""
    except UserError as e:
        return "failed", str(e)
    except Exception as e:  # noqa: BLE001 - reported per file, the run goes on
        return "failed", f"{src}: {type(e).__name__}: {e}"


def list_sources(gt_dir: Path, meta_info: str | None) -> list[Path]:
    """The input images: all images in ``gt_dir`` (sorted), or those whose stem a meta-info file lists."""
    if not gt_dir.is_dir():
        raise UserError(f"{gt_dir}: GT folder not found")
    files = sorted(f for f in gt_dir.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
    if meta_info is None:
        if not files:
            raise UserError(f"{gt_dir}: folder holds no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
        stems = [f.stem for f in files]
        dup = sorted({s for s in stems if stems.count(s) > 1})
        if dup:
            raise UserError(f"{gt_dir}: several files share the name(s) {', '.join(dup[:5])}; expected one image "
                            "per name (outputs are <name>.png)")
        return files
    by_stem: dict[str, Path] = {}
    for f in files:
        by_stem.setdefault(f.stem, f)
    out, missing = [], []
    for line, name in read_meta_info(meta_info):
        stem = name.split(".")[0]  # as mmagic's scripts: the name up to the first dot
        if stem in by_stem:
            out.append(by_stem[stem])
        else:
            missing.append(f"{meta_info} line {line}: no image named {stem}.* in {gt_dir}")
    if missing:
        more = f"; and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise UserError(f"{len(missing)} listed image(s) missing: {'; '.join(missing[:10])}{more}")
    return out


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m glean_jax.data.prepare", description=__doc__.split("\n\n")[0])
    p.add_argument("--gt-dir", required=True, help="folder of GT images (PNG/JPEG/WebP/BMP)")
    p.add_argument("--out-dir", required=True, help="output root: writes GT/ and BIx<scale>_down/")
    p.add_argument("--scale", type=int, nargs="+", required=True, help="downscale factor(s), e.g. 8 16")
    p.add_argument("--size", type=int, default=None, help="first resize every GT to size x size (cat: 256)")
    p.add_argument("--meta-info", default=None, help="process only the images this meta-info file lists")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    if any(s < 1 for s in a.scale):
        raise UserError(f"--scale {a.scale}: expected positive integers")
    if a.size is not None and (a.size < 1 or any(a.size % s for s in a.scale)):
        raise UserError(f"--size {a.size}: expected a positive multiple of every scale {a.scale}")
    if a.workers < 1:
        raise UserError(f"--workers {a.workers}: expected at least 1")
    scales = tuple(dict.fromkeys(a.scale))
    sources = list_sources(Path(a.gt_dir), a.meta_info)
    out = Path(a.out_dir)
    try:
        for sub in ["GT", *[lq_dir_name(s) for s in scales]]:
            (out / sub).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{out}: cannot create the output folders ({e.strerror or e})") from e
    from tqdm import tqdm

    jobs = [(src, out, scales, a.size) for src in sources]
    counts = {"done": 0, "skipped": 0, "failed": 0}
    errors: list[str] = []
    bar = tqdm(total=len(jobs), unit="img", disable=a.no_progress, file=sys.stderr)
    if a.workers == 1:
        results = map(_worker, jobs)
        pool = None
    else:
        pool = multiprocessing.get_context("spawn").Pool(min(a.workers, len(jobs)))
        results = pool.imap_unordered(_worker, jobs, chunksize=4)
    try:
        for status, err in results:
            counts[status] += 1
            if err:
                errors.append(err)
            bar.update()
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    print(f"{out}: {counts['done']} made, {counts['skipped']} already done, {counts['failed']} failed "
          f"(GT in {out / 'GT'}, LQ in {', '.join(str(out / lq_dir_name(s)) for s in scales)})")
    if errors:
        for e in errors:
            print(f"failed: {e}", file=sys.stderr)
        raise UserError(f"{len(errors)} image(s) could not be prepared (listed above); fix them and run again "
                        "(finished images are skipped)")
    return 0


if __name__ == "__main__":
    cli_entry(main)

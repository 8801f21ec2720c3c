"""Checks a dataset folder before training and reports every problem at once.

    python -m glean_jax.data.check --root R --lq-dir L --gt-dir G [--meta-info M] --in-size 32 --out-size 256
    python -m glean_jax.data.check --root R --gt-dir G --gt-only --out-size 1024      # blind (GT-only) data
    python -m glean_jax.data.check --tfds NAME [--tfds-data-dir D] [--split train --split test] --in-size 32 \
        --out-size 256                                                                 # a TFDS (array_record) dataset

Reads the layout the way :class:`glean_jax.data.datasets.PairedImageFolder` (mmagic's ``BasicImageDataset``)
does, then decodes every image fully and reports: files named in the meta-info but missing, unreadable or
truncated images, wrong sizes, and (as notes, not problems) grayscale, alpha, palette and 16-bit files with what
the loader will do to them. A TFDS dataset is opened as :class:`glean_jax.data.tfds_data.TFDSPairs` (the training
reader) and every record of each split is read: missing splits or features, declared sizes, unreadable records and
decoded sizes are reported. Exit status 0 when there is no problem, 2 otherwise.
"""

from __future__ import annotations

import argparse
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from glean_jax.data.datasets import _list_names, _resolve_meta, image_header, read_meta_info
from glean_jax.errors import UserError, cli_entry
from glean_jax.images import read_rgb

MODE_NOTES = {
    "L": "grayscale: the gray channel will be repeated to RGB",
    "1": "1-bit: will be converted to 8-bit gray and repeated to RGB",
    "P": "palette: will be expanded to RGB",
    "PA": "palette with alpha: will be expanded to RGB, alpha dropped",
    "LA": "grayscale with alpha: alpha dropped, gray repeated to RGB",
    "RGBA": "has an alpha channel: it will be dropped",
    "I;16": "16-bit: will keep its high byte (x >> 8, as OpenCV) and be repeated to RGB",
    "I;16B": "16-bit: will keep its high byte (x >> 8, as OpenCV) and be repeated to RGB",
    "I;16L": "16-bit: will keep its high byte (x >> 8, as OpenCV) and be repeated to RGB",
    "I": "32-bit integer: will be scaled to 8 bits and repeated to RGB",
    "F": "float: will be rounded and clipped to 8 bits and repeated to RGB",
    "CMYK": "CMYK: will be converted to RGB",
    "YCbCr": "YCbCr: will be converted to RGB",
}


def check_file(path: Path, want_hw: tuple[int, int] | None, kind: str) -> tuple[list[str], list[str], tuple]:
    """(problems, notes, (h, w) or ()) for one image: full decode, size, mode."""
    try:
        h, w, mode = image_header(path)
    except UserError as e:
        return [str(e)], [], ()
    notes = [f"{path}: {MODE_NOTES[mode]}"] if mode in MODE_NOTES else []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            read_rgb(path)
    except UserError as e:
        return [str(e)], notes, ()
    problems = []
    if want_hw is not None and (h, w) != want_hw:
        problems.append(f"{path}: {kind} is {w}x{h}; expected {want_hw[1]}x{want_hw[0]}")
    return problems, notes, (h, w)


def check_dataset(root: str | os.PathLike, gt_dir: str, lq_dir: str | None = None, meta_info: str | None = None,
                  in_size: int | None = None, out_size: int | None = None,
                  threads: int = 8) -> tuple[int, list[str], list[str]]:
    """Checks a paired (``lq_dir`` given) or GT-only dataset; returns (items, problems, notes)."""
    root = Path(root)
    if not root.is_dir():
        return 0, [f"{root}: dataset root folder not found"], []
    problems: list[str] = []
    folders = {"GT": root / gt_dir}
    if lq_dir is not None:
        folders = {"LQ": root / lq_dir, "GT": root / gt_dir}
    for kind, folder in folders.items():
        if not folder.is_dir():
            problems.append(f"{folder}: {kind} folder not found")
    if problems:
        return 0, problems, []
    if meta_info:
        try:
            meta = _resolve_meta(root, meta_info)
            entries = [(f"{meta} line {ln}", n) for ln, n in read_meta_info(meta)]
        except UserError as e:
            return 0, [str(e)], []
    else:
        first = folders["LQ"] if lq_dir is not None else folders["GT"]
        try:
            entries = [(str(first), n) for n in _list_names(first)]
        except UserError as e:
            return 0, [str(e)], []
    notes: list[str] = []
    present = []
    for where, name in entries:
        ok = True
        for kind, folder in folders.items():
            if not (folder / name).is_file():
                problems.append(f"{where}: {kind} file {folder / name} not found")
                ok = False
        if ok:
            present.append(name)
    want = {"LQ": None if in_size is None else (in_size, in_size),
            "GT": None if out_size is None else (out_size, out_size)}
    jobs = [(folders[k] / n, want[k], k) for n in present for k in folders]
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        results = list(pool.map(lambda j: check_file(*j), jobs))
    sizes: dict[tuple[str, str], tuple] = {}
    for (path, _, kind), (probs, nts, hw) in zip(jobs, results, strict=True):
        problems += probs
        notes += nts
        sizes[(path.name, kind)] = hw
    if lq_dir is not None and (in_size is None or out_size is None):
        for name in present:
            lq, gt = sizes.get((name, "LQ")), sizes.get((name, "GT"))
            if lq and gt and (gt[0] % lq[0] or gt[1] % lq[1] or gt[0] // lq[0] != gt[1] // lq[1]):
                problems.append(f"{folders['GT'] / name}: GT {gt[1]}x{gt[0]} is not an integer multiple of LQ "
                                f"{lq[1]}x{lq[0]}; expected the same scale on both axes")
    return len(entries), problems, notes


def check_tfds(name: str, data_dir: str | None, splits: Sequence[str], gt_only: bool = False,
               in_size: int | None = None, out_size: int | None = None, gt_key: str | None = None,
               lq_key: str | None = None) -> tuple[int, list[str], list[str]]:
    """Reads every record of each split of a TFDS dataset as training would; returns (records, problems, notes)."""
    from glean_jax.data import tfds_data

    keys = {"gt_key": gt_key or tfds_data.GT_KEY, "lq_key": lq_key or tfds_data.LQ_KEY}
    total, problems, notes = 0, [], []
    for split in splits:
        try:
            ds = tfds_data.TFDSPairs(name, split, data_dir, in_size=in_size, out_size=out_size, gt_only=gt_only,
                                     **keys)
        except UserError as e:
            problems.append(str(e))
            continue
        total += len(ds)
        for i in range(len(ds)):
            try:
                ds[i]
            except UserError as e:
                problems.append(str(e))
        notes.append(f"{ds.label}, split {split!r}: {len(ds)} records read")
    return total, problems, notes


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m glean_jax.data.check", description=__doc__.split("\n\n")[0])
    p.add_argument("root_pos", nargs="?", default=None, metavar="ROOT", help="dataset root (or use --root)")
    p.add_argument("--root", default=None, help="dataset root folder")
    p.add_argument("--lq-dir", default=None, help="LQ folder under root, e.g. BIx8_down")
    p.add_argument("--gt-dir", default="GT", help="GT folder under root (default GT)")
    p.add_argument("--meta-info", default=None, help="meta-info file (relative to root or absolute)")
    p.add_argument("--gt-only", action="store_true", help="GT-only dataset (blind degradation); no LQ folder")
    p.add_argument("--in-size", type=int, default=None, help="expected LQ size (square)")
    p.add_argument("--out-size", type=int, default=None, help="expected GT size (square)")
    p.add_argument("--tfds", default=None, metavar="NAME",
                   help="check a TFDS (array_record) dataset instead of folders: its name or version folder")
    p.add_argument("--tfds-data-dir", default=None, help="TFDS data dir holding NAME (default: TFDS's own)")
    p.add_argument("--split", action="append", default=None, help="TFDS split to read (repeatable; default train)")
    p.add_argument("--gt-key", default=None, help="TFDS GT image feature (default gt)")
    p.add_argument("--lq-key", default=None, help="TFDS LQ image feature (default lq)")
    p.add_argument("--threads", type=int, default=8, help="reader threads")
    p.add_argument("--max-lines", type=int, default=200, help="print at most this many problem/note lines each")
    a = p.parse_args(argv)
    root = a.root or a.root_pos
    if a.tfds is not None:
        if root is not None or a.lq_dir is not None or a.meta_info is not None:
            raise UserError("--tfds checks a TFDS dataset: expected no ROOT/--root, --lq-dir or --meta-info with it")
        n, problems, notes = check_tfds(a.tfds, a.tfds_data_dir, a.split or ["train"], a.gt_only, a.in_size,
                                        a.out_size, a.gt_key, a.lq_key)
        root = a.tfds
    else:
        if root is None:
            raise UserError("no dataset root given; expected ROOT or --root (or --tfds NAME)")
        if a.split or a.tfds_data_dir or a.gt_key or a.lq_key:
            raise UserError("--split/--tfds-data-dir/--gt-key/--lq-key apply to --tfds only; expected --tfds NAME")
        if not a.gt_only and a.lq_dir is None:
            raise UserError("--lq-dir is missing; expected the LQ folder name (e.g. BIx8_down), or --gt-only")
        n, problems, notes = check_dataset(root, a.gt_dir, None if a.gt_only else a.lq_dir, a.meta_info,
                                           a.in_size, a.out_size, a.threads)
    for label, lines in (("problem", problems), ("note", notes)):
        for line in lines[:a.max_lines]:
            print(f"{label}: {line}")
        if len(lines) > a.max_lines:
            print(f"{label}: ... and {len(lines) - a.max_lines} more")
    kind = "records" if a.tfds else "GT images" if a.gt_only else "LQ/GT pairs"
    verdict = "OK" if not problems else "NOT OK"
    print(f"{root}: {n} {kind} listed, {len(problems)} problem(s), {len(notes)} note(s): {verdict}")
    return 0 if not problems else 2


if __name__ == "__main__":
    cli_entry(main)

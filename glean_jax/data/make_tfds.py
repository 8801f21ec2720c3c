"""Packs mmagic-layout image folders into an array_record TFDS dataset (for ``data.source='tfds'``).

    python -m glean_jax.data.make_tfds --name cat_x8 --out-dir data/tfds \\
        --split train=data/cat_train --split test=data/cat_test --lq-dir BIx8_down --gt-dir GT \\
        [--meta-info train=meta_info.txt] [--in-size 32 --out-size 256] [--gt-only] [--version 1.0.0]

Each ``--split NAME=ROOT`` is read exactly as the folder source reads it (``ROOT/<lq-dir>/<name>`` and
``ROOT/<gt-dir>/<name>``, names from the split's meta-info file or the LQ folder; with ``--gt-only`` the GT folder
only, for the blind in128out1024 set-up) and is checked whole before anything is written, so one error lists every
missing file and wrong size. Images are stored as PNG (lossless): training on the TFDS dataset sees the same pixels
as training on the folders. Needs ``pip install 'glean-jax[tfds]'`` (no TensorFlow). Output:
``OUT_DIR/NAME/VERSION``, written to a temporary folder and renamed when complete. Train on it with
``--config.data.source=tfds --config.data.tfds_name=NAME --config.data.tfds_data_dir=OUT_DIR``.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence

from glean_jax.data.datasets import GTImageFolder, PairedImageFolder
from glean_jax.errors import UserError, cli_entry

NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
SPLIT_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def _pairs(values: Sequence[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        split, sep, path = v.partition("=")
        if not sep or not path or not SPLIT_RE.match(split):
            raise UserError(f"{flag} {v!r}: expected SPLIT=PATH with a split name of letters, digits and _")
        if split in out:
            raise UserError(f"{flag} {v!r}: split {split!r} given twice")
        out[split] = path
    return out


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m glean_jax.data.make_tfds", description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True, help="dataset name (lower case, digits, _), e.g. cat_x8")
    p.add_argument("--out-dir", required=True, help="TFDS data dir: writes OUT_DIR/NAME/VERSION")
    p.add_argument("--split", action="append", required=True, metavar="NAME=ROOT",
                   help="a split and its dataset root (repeat for train, test, ...)")
    p.add_argument("--lq-dir", default="BIx8_down", help="LQ folder under each root (default BIx8_down)")
    p.add_argument("--gt-dir", default="GT", help="GT folder under each root (default GT)")
    p.add_argument("--meta-info", action="append", default=[], metavar="NAME=FILE",
                   help="a split's meta-info file (relative to its root); default: list the folder")
    p.add_argument("--gt-only", action="store_true", help="GT images only (LQ made online: the blind set-up)")
    p.add_argument("--in-size", type=int, default=None, help="every LQ must be in-size x in-size")
    p.add_argument("--out-size", type=int, default=None, help="every GT must be out-size x out-size")
    p.add_argument("--version", default="1.0.0", help="dataset version, X.Y.Z (default 1.0.0)")
    a = p.parse_args(argv)
    if not NAME_RE.match(a.name):
        raise UserError(f"--name {a.name!r}: expected lower-case letters, digits and _ starting with a letter")
    if not VERSION_RE.match(a.version):
        raise UserError(f"--version {a.version!r}: expected X.Y.Z, e.g. 1.0.0")
    for flag, v in (("--in-size", a.in_size), ("--out-size", a.out_size)):
        if v is not None and v < 1:
            raise UserError(f"{flag} {v}: expected a positive integer")
    roots = _pairs(a.split, "--split")
    metas = _pairs(a.meta_info, "--meta-info")
    unknown = sorted(set(metas) - set(roots))
    if unknown:
        raise UserError(f"--meta-info for split(s) {', '.join(unknown)} that no --split names")
    from glean_jax.data.tfds_data import import_tfds, write_dataset

    import_tfds()  # the install hint before any reading
    sources = {}
    for split, root in roots.items():
        if a.gt_only:
            sources[split] = GTImageFolder(root, a.gt_dir, metas.get(split), out_size=a.out_size)
        else:
            sources[split] = PairedImageFolder(root, a.lq_dir, a.gt_dir, metas.get(split), in_size=a.in_size,
                                               out_size=a.out_size)
    out = write_dataset(a.name, a.out_dir, sources, version=a.version, in_size=None if a.gt_only else a.in_size,
                        out_size=a.out_size)
    counts = ", ".join(f"{split} {len(src)}" for split, src in sources.items())
    print(f"{out}: {counts} records ({'GT only' if a.gt_only else 'LQ + GT'})")
    return 0


if __name__ == "__main__":
    cli_entry(main)

"""Image-folder datasets in mmagic's ``BasicImageDataset`` layout, plus a synthetic source.

mmagic's GLEAN configs read ``data_root/<img prefix>/<name>`` (LQ) and ``data_root/<gt prefix>/<name>`` (GT).
With an annotation (meta-info) file, each non-blank line's first token is ``<name>``; without one, mmagic lists
the first data prefix's folder (the LQ folder for paired data, the GT folder for GT-only data). The images are
loaded as uint8 RGB and used whole (no crop). The classes here are random-access sources (``__len__`` and
``__getitem__``), which is what grain's ``MapDataset.source`` takes.

Problems are found when the dataset is built, not mid-epoch: a missing folder or file (named with its meta-info
line), an unreadable image header, and sizes that do not fit (in_size, out_size). Only a file whose pixel data
is corrupt behind a valid header is found when it is read.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from glean_jax.data.resize import imresize_uint8
from glean_jax.errors import UserError
from glean_jax.images import IMAGE_EXTENSIONS, read_rgb

MAX_LISTED = 10  # problems quoted in one error message; the rest are counted


def _problems_error(what: str, problems: Sequence[str]) -> UserError:
    shown = "; ".join(problems[:MAX_LISTED])
    more = f"; and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return UserError(f"{what}: {len(problems)} problem(s): {shown}{more}")


def read_meta_info(path: str | os.PathLike) -> list[tuple[int, str]]:
    """[(line number, file name)] from an mmagic meta-info file: the first whitespace token of each non-blank line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: meta-info file not found; expected a text file with one image name per line")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read meta-info file ({e}); expected UTF-8 text") from e
    entries = [(i, line.split()[0]) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not entries:
        raise UserError(f"{path}: meta-info file lists no images; expected one image name per line")
    return entries


def _folder(root: Path, sub: str, what: str) -> Path:
    if not root.is_dir():
        raise UserError(f"{root}: dataset root folder not found")
    d = root / sub if sub else root
    if not d.is_dir():
        raise UserError(f"{d}: {what} folder not found (root {root}, {what} dir {sub!r})")
    return d


def _list_names(folder: Path) -> list[str]:
    names = sorted(f.name for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
    if not names:
        raise UserError(f"{folder}: folder holds no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return names


def _resolve_meta(root: Path, meta_info: str | os.PathLike) -> Path:
    """mmagic joins the annotation file to data_root; a path that exists as given is accepted too."""
    p = Path(meta_info)
    if p.is_absolute() or (root / p).exists() or not p.exists():
        return p if p.is_absolute() else root / p
    return p


def image_header(path: Path) -> tuple[int, int, str]:
    """(height, width, PIL mode) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            return h, w, im.mode
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"{path}: cannot read image header ({e}); expected a valid PNG/JPEG/WebP/BMP file") from e


def _headers(paths: Sequence[Path], threads: int = 8) -> list[tuple[int, int, str] | str]:
    """Headers of many files in parallel (I/O bound); a string in place of a header is the error message."""

    def one(p: Path) -> tuple[int, int, str] | str:
        try:
            return image_header(p)
        except UserError as e:
            return str(e)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        return list(pool.map(one, paths, chunksize=64))


def _wh(hw: Sequence[int]) -> str:
    return f"{hw[1]}x{hw[0]}"


def _square(size: int | None) -> tuple[int, int] | None:
    return None if size is None else (int(size), int(size))


class PairedImageFolder:
    """LQ/GT pairs in mmagic's ``BasicImageDataset`` layout: ``root/lq_dir/<name>`` and ``root/gt_dir/<name>``.

    ``meta_info`` (relative to ``root`` unless absolute or existing) lists the names (first whitespace token
    per line); without it the LQ folder is listed, sorted. ``in_size`` / ``out_size`` (square sizes) are checked
    on every header at construction (``check_headers=True``) and on every decoded image; without them the GT
    size must be the same integer multiple of the LQ size on both axes.
    Items: ``{'lq': uint8 (h, w, 3), 'gt': uint8 (H, W, 3), 'name': str}``.
    """

    def __init__(self, root: str | os.PathLike, lq_dir: str, gt_dir: str, meta_info: str | None = None, *,
                 in_size: int | None = None, out_size: int | None = None, check_headers: bool = True) -> None:
        self.root = Path(root)
        self.lq_folder = _folder(self.root, lq_dir, "LQ")
        self.gt_folder = _folder(self.root, gt_dir, "GT")
        self.lq_hw = _square(in_size)
        self.gt_hw = _square(out_size)
        if meta_info:
            meta = _resolve_meta(self.root, meta_info)
            entries = [(f"{meta} line {ln}", name) for ln, name in read_meta_info(meta)]
        else:
            entries = [(f"{self.lq_folder}", name) for name in _list_names(self.lq_folder)]
        problems = []
        for where, name in entries:
            for folder, kind in ((self.lq_folder, "LQ"), (self.gt_folder, "GT")):
                if not (folder / name).is_file():
                    problems.append(f"{where}: {kind} file {folder / name} not found")
        if problems:
            raise _problems_error(f"dataset {self.root}", problems)
        self.names = [name for _, name in entries]
        if check_headers:
            self._check_headers()

    def _check_headers(self) -> None:
        lq = _headers([self.lq_folder / n for n in self.names])
        gt = _headers([self.gt_folder / n for n in self.names])
        problems = []
        scales: dict[str, int] = {}
        for name, a, b in zip(self.names, lq, gt, strict=True):
            if isinstance(a, str) or isinstance(b, str):
                problems += [x for x in (a, b) if isinstance(x, str)]
                continue
            found = self._size_problems(name, a[:2], b[:2])
            problems += found
            if not found:
                scales[name] = b[0] // a[0]
        if scales and len(set(scales.values())) > 1:  # one scale for the whole dataset
            values = list(scales.values())
            common = max(set(values), key=values.count)
            problems += [f"{self.gt_folder / n}: GT/LQ scale is x{s}; expected x{common} like most pairs"
                         for n, s in scales.items() if s != common]
        if problems:
            raise _problems_error(f"dataset {self.root}", problems)

    def _size_problems(self, name: str, lq_hw: Sequence[int], gt_hw: Sequence[int]) -> list[str]:
        lq_hw, gt_hw = tuple(lq_hw), tuple(gt_hw)
        out = []
        for kind, folder, got, want in (("LQ", self.lq_folder, lq_hw, self.lq_hw),
                                        ("GT", self.gt_folder, gt_hw, self.gt_hw)):
            if want is not None and got != want:
                out.append(f"{folder / name}: {kind} is {_wh(got)}; expected {_wh(want)} (W x H)")
        if not out and (self.lq_hw is None or self.gt_hw is None):
            sh, rh = divmod(gt_hw[0], lq_hw[0])
            sw, rw = divmod(gt_hw[1], lq_hw[1])
            if rh or rw or sh != sw or sh < 1:
                out.append(f"{self.gt_folder / name}: GT {_wh(gt_hw)} is not an integer multiple of LQ {_wh(lq_hw)}; "
                           "expected the same scale on both axes")
        return out

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict[str, Any]:
        name = self.names[index]
        lq = read_rgb(self.lq_folder / name)
        gt = read_rgb(self.gt_folder / name)
        problems = self._size_problems(name, lq.shape[:2], gt.shape[:2])
        if problems:
            raise UserError("; ".join(problems))
        return {"lq": lq, "gt": gt, "name": name}

    def __repr__(self) -> str:
        return f"PairedImageFolder({self.lq_folder}, {self.gt_folder}, {len(self)} pairs)"


class GTImageFolder:
    """GT-only images (``root/gt_dir/<name>``, optional meta-info) for on-the-fly LQ (the in128out1024 setup).

    Items: ``{'gt': uint8 (H, W, 3), 'name': str}``; ``out_size`` (square) is checked like in
    :class:`PairedImageFolder`.
    """

    def __init__(self, root: str | os.PathLike, gt_dir: str, meta_info: str | None = None, *,
                 out_size: int | None = None, check_headers: bool = True) -> None:
        self.root = Path(root)
        self.gt_folder = _folder(self.root, gt_dir, "GT")
        self.gt_hw = _square(out_size)
        if meta_info:
            meta = _resolve_meta(self.root, meta_info)
            entries = read_meta_info(meta)
            problems = [f"{meta} line {ln}: GT file {self.gt_folder / n} not found"
                        for ln, n in entries if not (self.gt_folder / n).is_file()]
            if problems:
                raise _problems_error(f"dataset {self.root}", problems)
            self.names = [n for _, n in entries]
        else:
            self.names = _list_names(self.gt_folder)
        if check_headers:
            problems = []
            for name, h in zip(self.names, _headers([self.gt_folder / n for n in self.names]), strict=True):
                if isinstance(h, str):
                    problems.append(h)
                elif self.gt_hw is not None and h[:2] != self.gt_hw:
                    problems.append(self._size_msg(name, h[:2]))
            if problems:
                raise _problems_error(f"dataset {self.root}", problems)

    def _size_msg(self, name: str, hw: Sequence[int]) -> str:
        assert self.gt_hw is not None
        return f"{self.gt_folder / name}: GT is {_wh(hw)}; expected {_wh(self.gt_hw)} (W x H)"

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict[str, Any]:
        name = self.names[index]
        gt = read_rgb(self.gt_folder / name)
        if self.gt_hw is not None and gt.shape[:2] != self.gt_hw:
            raise UserError(self._size_msg(name, gt.shape[:2]))
        return {"gt": gt, "name": name}

    def __repr__(self) -> str:
        return f"GTImageFolder({self.gt_folder}, {len(self)} images)"


def synthetic_texture(size: int, rng: np.random.Generator) -> np.ndarray:
    """A random colour texture, uint8 (size, size, 3): oriented sinusoids, smooth blobs and a little noise."""
    yy, xx = np.meshgrid(np.arange(size, dtype=np.float32) / size, np.arange(size, dtype=np.float32) / size,
                         indexing="ij")
    img = np.zeros((size, size, 3), np.float32)
    for _ in range(6):
        theta = rng.uniform(0, np.pi)
        freq = rng.uniform(1.0, size / 8.0)
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * freq * (np.cos(theta) * xx + np.sin(theta) * yy) + phase)
        img += wave[:, :, None] * rng.uniform(-0.25, 0.25, size=3).astype(np.float32)
    for _ in range(4):
        cy, cx = rng.uniform(0, 1, size=2)
        r = rng.uniform(0.05, 0.4)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        img += blob[:, :, None] * rng.uniform(-0.5, 0.5, size=3).astype(np.float32)
    img += rng.standard_normal((size, size, 3), dtype=np.float32) * 0.03
    img = (img - img.min()) / max(float(img.max() - img.min()), 1e-6)
    return np.round(img * 255).astype(np.uint8)


class SyntheticPairs:
    """Deterministic synthetic LQ/GT pairs: a random texture GT of ``out_size`` (from ``(seed, index)``) and its
    MATLAB-bicubic LQ of ``in_size`` (:func:`imresize_uint8`, as mmagic's preprocessing). No files needed."""

    def __init__(self, num: int, in_size: int, out_size: int, seed: int = 0) -> None:
        if num < 1:
            raise UserError(f"synthetic dataset size {num}: expected at least 1")
        if in_size < 1 or out_size < in_size:
            raise UserError(f"synthetic sizes in_size={in_size} out_size={out_size}; expected 1 <= in_size <= out_size")
        self.num, self.in_size, self.out_size, self.seed = int(num), int(in_size), int(out_size), int(seed)

    def __len__(self) -> int:
        return self.num

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num:
            raise IndexError(index)
        gt = synthetic_texture(self.out_size, np.random.default_rng([self.seed, index]))
        lq = imresize_uint8(gt, output_shape=(self.in_size, self.in_size))
        return {"lq": lq, "gt": gt, "name": f"synthetic_{index:06d}.png"}

    def __repr__(self) -> str:
        return f"SyntheticPairs({self.num}, {self.in_size}->{self.out_size}, seed={self.seed})"

"""Image reading and writing shared by every command.

``read_rgb`` always returns ``uint8`` RGB ``(H, W, 3)``: grayscale is repeated to 3 channels, an alpha
channel is dropped with a warning, 16-bit images keep their high byte (as OpenCV, which mmagic reads with),
palette images are expanded.
Every failure is a :class:`UserError` naming the file.
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from glean_jax.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# Refuse absurd images before decoding them (PIL's own bomb check only warns below 2x its limit).
MAX_PIXELS = 16384 * 16384


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Reads an image file as uint8 RGB (H, W, 3)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: file is empty (0 bytes); expected an image")
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise UserError(f"{path}: image is {w}x{h}, larger than the {MAX_PIXELS} pixel limit")
            im.load()
            arr = _to_rgb_uint8(im, path)
    except UserError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"{path}: cannot decode image ({e}); expected a valid PNG/JPEG/WebP/BMP file") from e
    return arr


def read_input(path: str | os.PathLike) -> np.ndarray:
    """:func:`read_rgb` for a command's input: its warnings (alpha dropped, 16-bit scaled) printed as one
    ``warning:`` line each on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        img = read_rgb(path)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    return img


def _to_rgb_uint8(im: Image.Image, path: Path) -> np.ndarray:
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        warnings.warn(f"{path}: alpha channel dropped", stacklevel=3)
        im = im.convert("RGB" if mode != "LA" and mode != "La" else "L")
        mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit -> 8-bit as OpenCV's IMREAD_COLOR does (mmagic's loader): keep the high byte (x >> 8).
        a = np.asarray(im).astype(np.int64)
        a = np.clip(a >> 8 if mode.startswith("I;16") or a.max(initial=0) > 255 else a, 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if mode == "F":
        a = np.asarray(im)
        a = np.clip(np.round(a), 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if mode in ("L", "1"):
        a = np.asarray(im.convert("L"))
        return np.repeat(a[..., None], 3, axis=2)
    if mode != "RGB":
        im = im.convert("RGB")
    a = np.asarray(im)
    if a.dtype != np.uint8:
        a = np.clip(np.round(a), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(a)


def list_images(inputs: Iterable[str | os.PathLike], what: str = "input") -> list[Path]:
    """Expands files and folders (non-recursive, sorted) into a list of image files."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise UserError(f"{p}: folder holds no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
            out.extend(files)
        elif p.is_file():
            out.append(p)
        else:
            raise UserError(f"{p}: no such {what} file or folder")
    return out


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Model output in [-1, 1] (any float dtype) -> uint8 the way mmagic does: x*127.5+127.5, clip, round."""
    return np.clip(np.round(np.asarray(img, np.float32) * 127.5 + 127.5), 0, 255).astype(np.uint8)


def normalize(img_uint8: np.ndarray) -> np.ndarray:
    """uint8 RGB -> float32 in [-1, 1], as mmagic's DataPreprocessor (mean = std = 127.5)."""
    return (np.asarray(img_uint8, np.float32) - 127.5) / 127.5


def check_output_file(path: str | os.PathLike, flag: str, suffix: str | None = None) -> Path:
    """The output file a command was given, checked before any work: one line when it has the wrong suffix, is a
    folder, or its folder is missing or not writable."""
    p = Path(path)
    if suffix is not None and p.suffix.lower() != suffix:
        raise UserError(f"{flag} {p}: expected a {suffix} file name")
    if p.is_dir():
        raise UserError(f"{flag} {p}: is a folder; expected a file name")
    parent = p.parent
    if not parent.exists():
        raise UserError(f"{flag} {p}: folder {parent} does not exist")
    if not parent.is_dir():
        raise UserError(f"{flag} {p}: {parent} is not a folder")
    if not os.access(parent, os.W_OK):
        raise UserError(f"{flag} {p}: cannot write to {parent} (permission denied)")
    return p


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically (:func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """``write(f)`` into a temporary file in the folder of ``path``, renamed to ``path`` once complete: no partial
    files. The file gets the permissions a plain ``open(path, 'w')`` would give it (0666 less the umask; ``mkstemp``
    makes 0600)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


FAST_PNG_PIXELS = 1 << 24


def write_png(path: str | os.PathLike, img_uint8: np.ndarray) -> None:
    """Writes uint8 (H, W, 3) as PNG atomically. Pictures over 16 MP (:data:`FAST_PNG_PIXELS`; a face restoration's
    8192 x 8192 result) use zlib level 1: 5 s instead of 17 s at the default level 6, for a file ~30 % larger."""
    import io

    img = np.asarray(img_uint8, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=1 if img.shape[0] * img.shape[1] > FAST_PNG_PIXELS
                              else 6)
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError as e:
        raise UserError(f"{path}: cannot write ({e.strerror or e})") from e


def write_npy(path: str | os.PathLike, arr: np.ndarray) -> None:
    """Writes a .npy file atomically."""
    import io

    buf = io.BytesIO()
    np.save(buf, np.asarray(arr))
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError as e:
        raise UserError(f"{path}: cannot write ({e.strerror or e})") from e


def make_grid(images: np.ndarray, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """Tiles uint8 (N, H, W, 3) into one uint8 image with ``pad`` black pixels between tiles."""
    images = np.asarray(images)
    n, h, w, c = images.shape
    ncol = nrow or int(np.ceil(np.sqrt(n)))
    nrows = int(np.ceil(n / ncol))
    grid = np.zeros((nrows * (h + pad) + pad, ncol * (w + pad) + pad, c), images.dtype)
    for i in range(n):
        r, q = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        grid[y:y + h, x:x + w] = images[i]
    return grid


T = TypeVar("T")
L = TypeVar("L")


def load_each(items: Sequence[T], load: Callable[[T], L], count: int | None = None) -> tuple[list[tuple[T, L]], int]:
    """``load`` of every item before any model work, as the CLIs that take many inputs do: the items that loaded with
    their values, and how many failed (each failure printed as one ``error:`` line). A lone input that fails, or every
    input failing, is a UserError (nothing gets written)."""
    good: list[tuple[T, L]] = []
    bad: list[str] = []
    for item in items:
        try:
            good.append((item, load(item)))
        except UserError as e:
            bad.append(str(e))
    if len(bad) == 1 and not good:
        raise UserError(bad[0])
    for message in bad:
        print(f"error: {message}", file=sys.stderr)
    if not good:
        raise UserError(f"none of the {len(items)} inputs could be used (listed above); nothing written")
    return good, len(bad)

"""Helpers of the reliability tests: generators of bad input files (``tests/test_bad_inputs.py``) and a
fault-injecting wrapper of ``python -m glean_jax.train`` (``tests/test_faults.py``).

Bad files are made on the fly (no binary blobs): truncated/corrupt PNG and JPEG, zero-byte files, text with an
image extension, a PNG whose IHDR claims 100000 x 100000 pixels (crafted, nothing allocated), 16-bit/palette/gray/
RGBA images.

The training wrapper (``python -m tests.corpus train ARGS...``) runs the real ``glean_jax.train`` CLI entry point
(``cli_entry(main)``) with faults switched on by environment variables; nothing in the package is changed:

* ``GLEAN_FAULT_DIR``: folder for marker files the test polls (required with any fault below).
* ``GLEAN_FAULT_PAUSE_AT=k``: before step ``k`` runs (steps 1-based, as the loop counts them), write
  ``paused_at_k`` and wait until the test creates ``resume_k`` (a kill between steps lands exactly here).
* ``GLEAN_FAULT_NAN_STEPS=3,4,5`` / ``GLEAN_FAULT_INF_STEPS=...``: the ``lq`` batch of those steps becomes NaN / inf.
* ``GLEAN_FAULT_HANG_WRITE=k``: the checkpoint writer hangs while writing checkpoint ``k`` (its JSON item, inside
  orbax's temporary directory) after writing ``writing_k`` -- a kill then leaves a half-written checkpoint.
* ``GLEAN_FAULT_ENOSPC_WRITE=k``: the same write raises ``OSError(ENOSPC)``, as a full disk would.
"""

from __future__ import annotations

import errno
import os
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np

# --------------------------------------------------------------------------------------------------- bad files


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG signature + IHDR (8-bit RGB) claiming ``width x height``, then one tiny IDAT and IEND: decoders
    that trust the header would try to allocate width*height*3 bytes (30 GB for the default)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def encode(img: np.ndarray, ext: str = ".png") -> bytes:
    """``img`` (uint8/uint16, HW or HWC in RGB(A) order) encoded by OpenCV."""
    import cv2

    if img.ndim == 3 and img.shape[2] == 3:
        img = img[..., ::-1]
    elif img.ndim == 3 and img.shape[2] == 4:
        img = img[..., [2, 1, 0, 3]]
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(img))
    assert ok
    return buf.tobytes()


def palette_png(img: np.ndarray) -> bytes:
    """``img`` (uint8 RGB) saved as an 8-bit palette PNG (PIL, adaptive palette)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(buf, format="PNG")
    return buf.getvalue()


def random_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def tree_snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` (relative) -> file content (None for folders): compare before/after a command."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = None
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = Path(p).read_bytes() if os.path.isfile(p) else b"<special>"
    return out


# ------------------------------------------------------------------------------------- fault-injecting training


def _install_faults() -> None:
    fault_dir = Path(os.environ["GLEAN_FAULT_DIR"])
    fault_dir.mkdir(parents=True, exist_ok=True)

    def marker(name: str) -> None:
        (fault_dir / name).write_text(str(time.time()))

    from glean_jax.data import loader
    from glean_jax.training import checkpointing

    pause_at = int(os.environ.get("GLEAN_FAULT_PAUSE_AT", "0"))
    bad_values = {int(s): np.nan for s in os.environ.get("GLEAN_FAULT_NAN_STEPS", "").split(",") if s}
    bad_values.update({int(s): np.inf for s in os.environ.get("GLEAN_FAULT_INF_STEPS", "").split(",") if s})
    counter = {"start": 0, "n": 0}

    orig_restore = checkpointing.RunCheckpoints.restore

    def restore(self, step, abstract_state, data_iter):   # records where the run resumes
        counter["start"] = int(step)
        marker(f"resumed_from_{step}")
        return orig_restore(self, step, abstract_state, data_iter)

    checkpointing.RunCheckpoints.restore = restore
    orig_to_global = loader.to_global_batch

    def to_global_batch(batch, mesh, *a, **kw):   # called once per step, just before it
        counter["n"] += 1
        step = counter["start"] + counter["n"]
        if step == pause_at:
            marker(f"paused_at_{step}")
            while not (fault_dir / f"resume_{step}").exists():
                time.sleep(0.02)
        if step in bad_values:
            batch = dict(batch)
            batch["lq"] = np.full_like(np.asarray(batch["lq"]), bad_values[step])
            marker(f"bad_batch_{step}")
        return orig_to_global(batch, mesh, *a, **kw)

    loader.to_global_batch = to_global_batch

    hang = int(os.environ.get("GLEAN_FAULT_HANG_WRITE", "-1"))
    enospc = int(os.environ.get("GLEAN_FAULT_ENOSPC_WRITE", "-1"))
    if hang >= 0 or enospc >= 0:
        from etils import epath

        cls = type(epath.Path("/"))
        orig_write_text = cls.write_text

        def write_text(self, data, *a, **kw):   # the JSON items (meta, data iterator) of a checkpoint
            parts = Path(str(self)).parts
            for k, act in ((hang, "hang"), (enospc, "enospc")):
                if k >= 0 and any(p.startswith(f"{k}.orbax-checkpoint-tmp") for p in parts):
                    if act == "hang":
                        marker(f"writing_{k}")
                        while True:
                            time.sleep(1)
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
            return orig_write_text(self, data, *a, **kw)

        cls.write_text = write_text


def train_with_faults(argv: list[str]) -> None:
    _install_faults()
    from glean_jax.errors import cli_entry
    from glean_jax.train import main

    sys.argv = ["glean_jax.train", *argv]
    cli_entry(main)


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] != "train":
        raise SystemExit("usage: python -m tests.corpus train ARGS...")
    train_with_faults(sys.argv[2:])

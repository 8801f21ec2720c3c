"""Run a GLEAN exported by ``python -m glean_jax.export --format stablehlo`` with jax alone (no flax, no model code).

::

    python -m glean_jax.stablehlo_runner MODEL.npz INPUT.png OUTPUT.png

The container is an uncompressed .npz: ``stablehlo`` (``jax.export.Exported.serialize()`` bytes of
``(weights, lq) -> hr``), ``meta`` (JSON: in_size, out_size, batch, dtype, ...) and the weights ``w0000``, ``w0001``,
... (glean_jax/export.py). The image is normalised as glean_jax/upscale.py does (``(x - 127.5) / 127.5`` in,
``x * 127.5 + 127.5`` clipped and rounded out); a batch-N program gets the image repeated N times.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Sequence

import numpy as np

from glean_jax.errors import UserError, cli_entry
from glean_jax.images import normalize, read_rgb, to_uint8, write_png


class StableHLOModel:
    """``StableHLOModel(path)(lq)``: float32 (N, in, in, 3) in [-1, 1] -> float32 (N, out, out, 3)."""

    def __init__(self, path: str | os.PathLike):
        import jax

        from glean_jax import runtime

        try:
            with np.load(path, allow_pickle=False) as z:
                self.meta = json.loads(bytes(z["meta"]).decode())
                blob = bytes(z["stablehlo"])
                names = sorted(k for k in z.files if k.startswith("w"))
                weights = [z[k] for k in names]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as e:
            raise UserError(f"{path}: not a StableHLO export of glean_jax.export ({type(e).__name__}: {e})") from None
        self.in_size, self.out_size = int(self.meta["in_size"]), int(self.meta["out_size"])
        self.batch = int(self.meta["batch"])
        self.exported = jax.export.deserialize(bytearray(blob))
        self.weights = jax.device_put(weights)
        self._call = runtime.jit(self.exported.call)

    def __call__(self, lq: np.ndarray) -> np.ndarray:
        lq = np.asarray(lq, np.float32)
        want = (self.batch, self.in_size, self.in_size, 3)
        if lq.shape != want:
            raise UserError(f"input batch has shape {lq.shape}; expected {want} (the exported batch size)")
        return np.asarray(self._call(self.weights, lq), np.float32)

    def upscale_uint8(self, img: np.ndarray) -> np.ndarray:
        """uint8 (in, in, 3) RGB -> uint8 (out, out, 3), as glean_jax.upscale writes it."""
        img = np.asarray(img)
        if img.shape != (self.in_size, self.in_size, 3):
            raise UserError(f"image is {img.shape[1]}x{img.shape[0]}; expected {self.in_size}x{self.in_size}")
        batch = np.repeat(normalize(img)[None], self.batch, axis=0)
        return to_uint8(self(batch)[0])


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m glean_jax.stablehlo_runner",
                                description="Upscale one PNG with a StableHLO export of glean_jax.export.")
    p.add_argument("model", help="the .npz written by python -m glean_jax.export --format stablehlo")
    p.add_argument("input", help="an in_size x in_size RGB image")
    p.add_argument("output", help="the PNG to write")
    args = p.parse_args(argv)
    model = StableHLOModel(args.model)
    img = read_rgb(args.input)
    try:
        out = model.upscale_uint8(img)
    except UserError as e:
        raise UserError(f"{args.input}: {e}") from None
    write_png(args.output, out)
    print(f"upscaled {args.input} {model.in_size}->{model.out_size} to {args.output}")
    return 0


if __name__ == "__main__":
    cli_entry(main)

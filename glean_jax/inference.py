"""Load a GLEAN checkpoint for inference and run it on batches (used by ``upscale`` and ``evaluate``)."""

from __future__ import annotations

import os

import jax
import numpy as np

from glean_jax import runtime
from glean_jax.arch import GleanArch
from glean_jax.checkpoint import check_variables, load_model
from glean_jax.errors import UserError
from glean_jax.images import normalize
from glean_jax.models.build import DTYPES, build_glean, variable_shapes


class SRModel:
    """A converted or trained GLEAN generator, jitted.

    ``model(lq)`` maps float32 (N, in, in, 3) in [-1, 1] to float32 (N, out, out, 3) (the raw, unclipped output);
    ``model.upscale_uint8(images)`` takes uint8 RGB images and normalises them as mmagic does.
    """

    def __init__(self, ckpt_dir: str | os.PathLike, dtype: str = "float32"):
        if dtype not in DTYPES:
            raise UserError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
        meta, variables = load_model(ckpt_dir)
        gen = meta.get("generator") or {}
        if meta.get("kind") != "glean" or gen.get("kind") != "glean":
            raise UserError(f"{ckpt_dir}: holds a {meta.get('kind')!r} model; expected a GLEAN checkpoint (convert a "
                            "GLEAN restorer checkpoint with `python -m convert.mmagic`, or train one)")
        self.meta = meta
        self.arch = gen
        self.in_size = int(gen["in_size"])
        self.out_size = int(gen["out_size"])
        self.dtype = dtype
        self.module = build_glean(GleanArch.from_dict(gen, f"{ckpt_dir}/model.json generator"), dtype)
        check_variables(variables.get("generator"), variable_shapes("glean", self.module), str(ckpt_dir),
                        f"GLEAN {self.in_size}->{self.out_size} as model.json describes it")
        self.variables = jax.device_put(variables["generator"])
        self._apply = runtime.jit(self.module.apply)

    def __call__(self, lq: np.ndarray) -> np.ndarray:
        lq = np.asarray(lq, np.float32)
        if lq.ndim != 4 or lq.shape[1:] != (self.in_size, self.in_size, 3):
            raise UserError(f"input batch has shape {lq.shape}; expected (N, {self.in_size}, {self.in_size}, 3)")
        return np.asarray(self._apply(self.variables, lq), np.float32)

    def upscale_uint8(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, in, in, 3) RGB -> raw float32 model output (N, out, out, 3)."""
        return self(normalize(images))

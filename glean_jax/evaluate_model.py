"""``python -m glean_jax.evaluate --checkpoint DIR --config CFG``: a model's metrics on a config's test set.

Equal to mmagic's test loop for GLEAN (``test_pipeline`` of the GLEAN configs, ``mmagic/evaluation/metrics``): each
test pair is read as uint8 RGB, the LQ normalised as mmagic's ``DataPreprocessor`` ((x - 127.5) / 127.5), the model's
raw output turned into the prediction with the chosen convention (1.x: ``clamp(x * 127.5 + 127.5, 0, 255)`` as float,
the default; 0.x: rounded to uint8) and scored against the GT by the same
:class:`glean_jax.metrics.MetricAccumulator` as ``--pred-dir`` mode (PSNR, SSIM, MAE equal to mmagic's metric
classes, mean = mmagic's average; LPIPS with ``--metrics ... LPIPS``, equal to the ``lpips`` package's).

Configs are Python files with ``get_config()`` returning an ``ml_collections.ConfigDict`` (``configs/*.py``);
``CFG:ARG`` calls ``get_config(ARG)``. They are read as ``train`` reads them, by ``config_flags``
(:mod:`glean_jax.config_cli`): ``--config.data.test_root=PATH`` or ``--config.data.test_root PATH``; an unknown
field or a value of the wrong type is an error naming it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ml_collections import ConfigDict

from glean_jax.errors import UserError


# ---------------------------------------------------------------------------------------------- the run
def check_geometry(config: ConfigDict, in_size: int, out_size: int, ckpt_dir: str | Path, cfg_name: str) -> None:
    """The checkpoint's in/out size must equal ``config.model`` and ``config.data`` sizes (when present)."""
    for group in ("model", "data"):
        sub = config.get(group)
        if not isinstance(sub, ConfigDict) or "in_size" not in sub or "out_size" not in sub:
            if group == "data":
                raise UserError(f"--config {cfg_name}: has no config.data.in_size/out_size; expected a config whose "
                                "data field describes the test set")
            continue
        if (sub.in_size, sub.out_size) != (in_size, out_size):
            raise UserError(f"--checkpoint {ckpt_dir}: model is {in_size}->{out_size} but {cfg_name} has "
                            f"config.{group}.in_size={sub.in_size}, out_size={sub.out_size}; expected the same "
                            "geometry (pick the config that matches the checkpoint)")


def evaluate_checkpoint(ckpt_dir: str | Path, config: ConfigDict, accumulator: Any, *, cfg_name: str = "config",
                        batch_size: int = 1, dtype: str = "float32", save_images: str | Path | None = None,
                        progress: bool | None = None) -> Any:
    """Runs the checkpoint over ``make_eval_dataset(config.data)`` and adds every image to ``accumulator``.

    Images are keyed by their file-name stem (as ``--pred-dir`` mode keys them). With ``save_images`` the outputs
    are also written there as ``<stem>.png`` (x * 127.5 + 127.5, clipped, rounded). Returns the accumulator.
    """
    from tqdm import tqdm

    from glean_jax.checkpoint import glean_geometry
    from glean_jax.data import make_eval_dataset
    from glean_jax.images import to_uint8, write_png

    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: expected an integer >= 1")
    in_size, out_size = glean_geometry(ckpt_dir)
    check_geometry(config, in_size, out_size, ckpt_dir, cfg_name)
    dataset = make_eval_dataset(config.data)
    n = len(dataset)
    if n == 0:
        raise UserError(f"--config {cfg_name}: the test set is empty; expected at least one image pair")
    out_dir = None
    if save_images is not None:
        out_dir = Path(save_images)
        if out_dir.exists() and not out_dir.is_dir():
            raise UserError(f"--save-images {out_dir}: exists and is not a folder; expected a folder")

    from glean_jax.inference import SRModel

    model = SRModel(ckpt_dir, dtype)
    if out_dir is not None:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"--save-images {out_dir}: cannot create the folder ({e.strerror or e})") from e
    bar = tqdm(total=n, desc="evaluate", unit="img", disable=None if progress is None else not progress)
    for start in range(0, n, batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, n))]
        lq = np.stack([it["lq"] for it in items])
        if len(items) < batch_size and n > batch_size:  # one compiled shape for the whole run
            lq = np.concatenate([lq, np.repeat(lq[-1:], batch_size - len(items), axis=0)])
        raw = model.upscale_uint8(lq)
        for it, out in zip(items, raw, strict=False):
            stem = Path(it["name"]).stem
            accumulator.add(stem, out, it["gt"], label=f"{it['name']} of {config.data.test_root}")
            if out_dir is not None:
                write_png(out_dir / f"{stem}.png", to_uint8(out))
        bar.update(len(items))
    bar.close()
    accumulator.info.update({"checkpoint": str(ckpt_dir), "config": cfg_name, "dtype": dtype,
                             "test_root": str(config.data.get("test_root", "")),
                             "geometry": f"{in_size}->{out_size}"})
    return accumulator


def run(args: Any, overrides: Sequence[tuple[str, str]]) -> Any:
    """The ``--checkpoint`` mode of :func:`glean_jax.evaluate.main` (``args`` from its parser)."""
    from glean_jax.config_cli import load_config
    from glean_jax.metrics import METRIC_NAMES, MetricAccumulator

    config = load_config(args.config, overrides)
    # LPIPS weights are read here, before the model is loaded and any image scored
    acc = MetricAccumulator(args.convention, args.crop_border, args.y_channel,
                            metric_names=tuple(getattr(args, "metrics", METRIC_NAMES)),
                            lpips_net=getattr(args, "lpips_net", None) or "alex")
    evaluate_checkpoint(args.checkpoint, config, acc, cfg_name=args.config, batch_size=args.batch_size,
                        dtype=args.dtype, save_images=args.save_images)
    print(f"evaluated {args.checkpoint} on {config.data.get('test_root', '')} ({len(acc)} images)", file=sys.stderr)
    return acc

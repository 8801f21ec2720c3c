"""Evaluation during training: PSNR/SSIM/MAE (and LPIPS, ``config.eval_lpips_net``) on the config's test set, as
``python -m glean_jax.evaluate --checkpoint [--metrics PSNR SSIM MAE LPIPS --lpips-net NET]`` computes them, and the
sample grids (LR | bicubic | output | GT)."""

from __future__ import annotations

import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from glean_jax import metrics as metrics_lib
from glean_jax import runtime
from glean_jax.errors import UserError
from glean_jax.images import make_grid, normalize, to_uint8
from glean_jax.training import step as step_lib
from glean_jax.training.weights import to_host

log = logging.getLogger("glean_jax.train")


def _grid_rows(lq: np.ndarray, out: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Tiles LR (nearest) | bicubic | output | GT for each image (inputs in [-1, 1], NHWC)."""
    n, s = out.shape[0], out.shape[1]
    nearest = np.repeat(np.repeat(lq, s // lq.shape[1], axis=1), s // lq.shape[2], axis=2)
    bicubic = np.asarray(jax.image.resize(jnp.asarray(lq), (n, s, s, 3), "bicubic"))
    tiles = np.stack([to_uint8(nearest), to_uint8(bicubic), to_uint8(out), to_uint8(gt)], axis=1)
    return make_grid(tiles.reshape((-1,) + tiles.shape[2:]), nrow=4)


class Evaluator:
    """PSNR/SSIM/MAE of the generator on the config's test set (batch 1, replicated, as mmagic's val loop), and
    LPIPS v0.1 with the backbone ``cfg.eval_lpips_net`` ('alex', 'vgg'; None: no LPIPS). The LPIPS weights are
    loaded once, here (a missing or corrupt file is a one-line :class:`UserError` before training starts)."""

    def __init__(self, cfg: ConfigDict, g: Any, mesh: Mesh, frozen_sharding: Any, g_sharding: Any,
                 jit_cache: runtime.JitCache, cache_key: Any = None) -> None:
        from glean_jax.data.loader import make_eval_dataset

        self.dataset = None
        try:
            self.dataset = make_eval_dataset(cfg.data)
        except UserError as e:
            log.warning("no evaluation: the test set is not usable (%s)", e)
        self.max_images = cfg.eval_max_images
        self.lpips_net = cfg.get("eval_lpips_net", None)
        self.lpips = None
        self._lpips_warned = False
        if self.lpips_net is not None and self.dataset is not None:
            try:
                self.lpips = metrics_lib.load_lpips(self.lpips_net)
            except UserError as e:
                raise UserError(f"{e}; config.eval_lpips_net={self.lpips_net!r} needs them (or set it to None for "
                                "an evaluation without LPIPS)") from None
        self.mesh = mesh
        self.replicated = NamedSharding(mesh, P())
        self.apply = jit_cache.get(("eval", cache_key), lambda: runtime.jit(
            lambda tp, frozen, lq: g.apply(step_lib.glean_variables(tp, frozen), lq),
            in_shardings=(g_sharding, frozen_sharding, self.replicated), out_shardings=self.replicated))

    def _items(self, limit: int) -> list[dict]:
        n = min(len(self.dataset), limit) if self.dataset is not None else 0
        return [self.dataset[i] for i in range(n)]

    def _run(self, g_params: Any, frozen: Any, lq_uint8: np.ndarray) -> np.ndarray:
        lq = normalize(lq_uint8)[None]
        lq = jax.make_array_from_callback(lq.shape, self.replicated, lambda idx: lq[idx])
        return to_host(self.apply(g_params, frozen, lq))[0]

    def evaluate(self, g_params: Any, frozen: Any) -> dict[str, float]:
        """Mean ``psnr``, ``ssim``, ``mae`` and, with ``eval_lpips_net``, ``lpips`` as ``python -m glean_jax.evaluate
        --checkpoint`` computes them (its :class:`~glean_jax.metrics.MetricAccumulator`, mmagic 1.x's output
        convention); no ``ssim`` for images smaller than its window, no ``lpips`` for images smaller than the LPIPS
        backbone's minimum (alex 31, vgg 16 px; logged once)."""
        items = self._items(self.max_images)
        if not items:
            return {}
        smallest = min(min(it["gt"].shape[:2]) for it in items)
        names = ["PSNR", "MAE"] if smallest < metrics_lib.SSIM_WINDOW else list(metrics_lib.METRIC_NAMES)
        if self.lpips is not None:
            minimum = metrics_lib.lpips_min_size(self.lpips_net)
            if smallest >= minimum:
                names.append("LPIPS")
            elif not self._lpips_warned:
                self._lpips_warned = True
                log.warning("no LPIPS in the evaluation: test images of %d px are smaller than LPIPS net=%r's "
                            "minimum of %d px", smallest, self.lpips_net, minimum)
        acc = metrics_lib.MetricAccumulator("1.x", metric_names=tuple(names), lpips_net=self.lpips_net or "alex",
                                            lpips_fn=self.lpips)
        for i, item in enumerate(items):
            acc.add(str(i), self._run(g_params, frozen, item["lq"]), item["gt"])
        return {k.lower(): v for k, v in acc.summary()["mean"].items()}

    def grid(self, g_params: Any, frozen: Any, n: int = 4) -> np.ndarray | None:
        items = self._items(n)
        if not items:
            return None
        outs = np.stack([self._run(g_params, frozen, it["lq"]) for it in items])
        lq = np.stack([normalize(it["lq"]) for it in items])
        gt = np.stack([normalize(it["gt"]) for it in items])
        return _grid_rows(lq, outs, gt)

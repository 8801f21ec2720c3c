"""Export speed: onnxruntime (CPU) running ``python -m glean_jax.export --format onnx`` against our jitted JAX model
and mmagic (PyTorch CPU, ``torch.no_grad()``), same weights, same run.

    python benchmarks/export_speed.py [--batches 1 4] [--warmup 1] [--repeats 3] [--json OUT.json]

The model is cat x8 (``GleanArch(32, 256)``, default widths, 23 RRDBs) with random weights: mmagic's
``GLEANStyleGANv2`` built by the oracle (``glean_jax.mmagic_reference.build_glean``), converted by ``convert.mmagic``
for JAX and exported to ONNX from those variables. Per batch size: each side warmed up (JAX: including its compile),
then the three called in turn (JAX, ONNX, mmagic) ``--repeats`` times; the median of each is reported with the max
abs difference of the ONNX and mmagic outputs from JAX's. Every call is synchronous. Needs the oracle
(requirements/oracle.txt) and requirements/export.txt. Not a test.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run(batches: Sequence[int], warmup: int, repeats: int) -> dict[str, Any]:
    """The measurements (see the module docstring)."""
    import jax

    from convert import mmagic as convert_mmagic
    from glean_jax import export, runtime
    from glean_jax import mmagic_reference as mo
    from glean_jax.arch import GleanArch
    from glean_jax.models.build import build_glean

    torch = mo.load().torch
    arch = GleanArch(32, 256)
    t = time.perf_counter()
    ref_model = mo.build_glean(arch.in_size, arch.out_size, 0, **arch.mmagic_kwargs())
    _, variables, _ = convert_mmagic.convert_state(mo.state_dict_numpy(ref_model), "cat_x8_random")
    v = jax.device_put(variables["generator"])
    module = build_glean(arch)
    fwd = runtime.jit(module.apply)
    print(f"built and converted cat x8 in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    rows = []
    out: dict[str, np.ndarray] = {}   # each side's last output
    for batch in batches:
        x = np.random.default_rng(batch).uniform(-1, 1, (batch, 32, 32, 3)).astype(np.float32)
        t = time.perf_counter()
        session = export.onnx_session(export.export_onnx(module, v, batch))
        export_s = time.perf_counter() - t
        xt = mo.to_nchw(x)

        def jax_call(x=x) -> None:
            out["jax"] = np.asarray(fwd(v, x))

        def onnx_call(x=x, s=session) -> None:
            out["onnx"] = s.run(None, {"lq": x})[0]

        def torch_call(xt=xt) -> None:
            with torch.no_grad():
                out["mmagic"] = mo.to_nhwc(ref_model(xt))

        sides = {"jax": jax_call, "onnx": onnx_call, "mmagic": torch_call}
        for _ in range(warmup):
            for f in sides.values():
                f()
        times: dict[str, list[float]] = {k: [] for k in sides}
        for _ in range(repeats):
            for k, f in sides.items():
                times[k].append(_timed(f))
        row = {"batch": batch, "onnx_export_s": export_s, "times_s": times,
               **{f"{k}_median_s": statistics.median(ts) for k, ts in times.items()},
               "onnx_max_abs_vs_jax": float(np.abs(out["onnx"] - out["jax"]).max()),
               "mmagic_max_abs_vs_jax": float(np.abs(out["mmagic"] - out["jax"]).max())}
        rows.append(row)
        print(format_row(row), flush=True)
        del session
    return {"model": "cat x8 GleanArch(32, 256), 23 RRDBs, random weights (mmagic init, converted)",
            "date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "jax": jax.__version__, "onnxruntime": _version("onnxruntime"),
            "torch": torch.__version__, "warmup": warmup, "repeats": repeats, "rows": rows}


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


HEADER = (f"{'batch':>5} {'JAX s':>8} {'ONNX s':>8} {'mmagic s':>9} {'ONNX/JAX':>9} {'mmagic/JAX':>11} "
          f"{'|ONNX-JAX|':>11} {'|mmagic-JAX|':>13} {'export s':>9}")


def format_row(r: dict[str, Any]) -> str:
    j, o, m = r["jax_median_s"], r["onnx_median_s"], r["mmagic_median_s"]
    return (f"{r['batch']:>5} {j:>8.2f} {o:>8.2f} {m:>9.2f} {o / j:>9.2f} {m / j:>11.2f} "
            f"{r['onnx_max_abs_vs_jax']:>11.1e} {r['mmagic_max_abs_vs_jax']:>13.1e} {r['onnx_export_s']:>9.0f}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None, help="default benchmarks/results/cpu-export-<date>.json")
    args = p.parse_args(argv)
    print(HEADER, flush=True)
    report = run(args.batches, args.warmup, args.repeats)
    path = Path(args.json or ROOT / "benchmarks" / "results" / f"cpu-export-{report['date']}.json")
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The machine a benchmark runs on: its description, load, a measured matmul peak, datasheet peaks, and memory
(process RSS sampled in a thread, XLA's account of a compiled function, the GPU allocator's peak)."""

from __future__ import annotations

import math
import os
import platform
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp

from glean_jax import runtime

# Dense datasheet peaks in TFLOP/s (no sparsity) by device-kind substring. 'float32' is the TF32 tensor-core peak:
# XLA and PyTorch (with TF32 allowed) run float32 convolutions on tensor cores in TF32 by default on these GPUs.
DATASHEET_TFLOPS = {
    "H200": {"bfloat16": 989.4, "float32": 494.7},
    "H100": {"bfloat16": 989.4, "float32": 494.7},   # SXM; the PCIe card is lower (756 / 378)
    "A100": {"bfloat16": 312.0, "float32": 156.0},
    "L4": {"bfloat16": 121.0, "float32": 60.0},
    "V100": {"bfloat16": 125.0, "float32": 15.7},     # V100: fp16 tensor cores, fp32 without TF32
}


def load_avg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RssSampler:
    """Samples the process RSS every ``interval`` s in a thread while active; ``peak`` = max seen (MB)."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval, self.peak, self._stop = interval, 0.0, threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self.peak = _rss_mb()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def on_gpu() -> bool:
    return jax.default_backend() == "gpu"


def matmul_peak_tflops(dtype: str, size: int | None = None, repeats: int = 5) -> float:
    """Best TFLOP/s of a jitted ``size x size @ size x size`` matmul (CPU 2048, accelerators 8192)."""
    n = size or (8192 if jax.default_backend() != "cpu" else 2048)
    dt = jnp.dtype(dtype)
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dt)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dt)
    f = runtime.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=dt)).lower(a, b).compile()
    f(a, b).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2.0 * n ** 3 / best / 1e12


def datasheet_tflops(dtype: str) -> float | None:
    if not on_gpu():
        return None
    kind = jax.devices()[0].device_kind
    for key, peaks in DATASHEET_TFLOPS.items():
        if key.lower() in kind.lower():
            return peaks.get(dtype)
    return None


def machine_info() -> dict[str, Any]:
    dev = jax.devices()[0]
    info = {"platform": jax.default_backend(), "device": dev.device_kind, "device_count": jax.device_count(),
            "cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "jax": jax.__version__, "load_avg_start": load_avg()}
    try:
        import flax

        info["flax"] = flax.__version__
    except ImportError:
        pass
    return info


def xla_memory_mb(compiled: Any) -> dict[str, float | None]:
    """XLA's memory account of a compiled function (``memory_analysis()``): ``ours_xla_peak_mb`` = arguments +
    outputs - aliased (donated) outputs + temporaries, and ``ours_xla_temp_mb``; None where the backend has none."""
    try:
        m = compiled.memory_analysis()
        temp, args = m.temp_size_in_bytes, m.argument_size_in_bytes
        peak = args + m.output_size_in_bytes - m.alias_size_in_bytes + temp
    except Exception:  # noqa: BLE001 - the analysis is optional
        return {"ours_xla_peak_mb": None, "ours_xla_temp_mb": None}
    return {"ours_xla_peak_mb": round(peak / 2 ** 20, 1), "ours_xla_temp_mb": round(temp / 2 ** 20, 1)}


def gpu_peak_mb() -> float | None:
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001 - memory stats are optional
        return None
    peak = stats.get("peak_bytes_in_use")
    return peak / 2 ** 20 if peak is not None else None

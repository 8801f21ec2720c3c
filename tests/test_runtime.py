"""``glean_jax.runtime``: the XLA options our jits compile with (CPU: no YNNPACK library fusions) and when they
are not used (another backend, the user's own ``XLA_FLAGS`` choice)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from glean_jax import runtime

OPTION = "xla_cpu_experimental_ynn_fusion_type"


def test_compiler_options_cpu_only_and_user_flags_win(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    assert runtime.compiler_options("cpu") == {OPTION: ""}
    assert runtime.compiler_options("gpu") is None
    assert runtime.compiler_options("tpu") is None
    monkeypatch.setenv("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 --{OPTION}=individual_dot")
    assert runtime.compiler_options("cpu") is None


_PRODUCT_PATH = """
import numpy as np, jax
from jax import lax
from glean_jax import runtime

def conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))

rng = np.random.default_rng(0)
x = rng.standard_normal((2, 16, 16, 48)).astype(np.float32)
w = (rng.standard_normal((3, 3, 48, 32)) * 0.1).astype(np.float32)
ours, plain = runtime.jit(conv).lower(x, w).compile(), jax.jit(conv).lower(x, w).compile()
np.save("out.npy", np.stack([np.asarray(ours(x, w)), np.asarray(plain(x, w))]))
print("ours_ynn", "ynn_fusion" in ours.as_text(), "plain_ynn", "ynn_fusion" in plain.as_text())
"""


def test_jit_compiles_convs_without_library_fusions_and_same_values(tmp_path):
    """In a fresh process with XLA's defaults (the suite's own XLA_FLAGS turn the fusions off globally)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    r = subprocess.run([sys.executable, "-c", _PRODUCT_PATH], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    # XLA (pinned jaxlib) fuses the conv into a YNNPACK call by default; runtime.jit's option removes it.
    assert "ours_ynn False plain_ynn True" in r.stdout
    ours, plain = np.load(tmp_path / "out.npy")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 16, 16, 48))
    w = rng.standard_normal((3, 3, 48, 32)) * 0.1
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    ref = sum(np.einsum("nhwc,co->nhwo", xp[:, a:a + 16, b:b + 16], w[a, b]) for a in range(3) for b in range(3))
    # Same function, other kernels: float32 rounding only (|y| ~ 2, 432 products per output).
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-5)
    np.testing.assert_allclose(plain, ref, rtol=0, atol=2e-5)


def test_product_code_compiles_through_runtime_jit():
    """Every jit in the package goes through runtime.jit (the CPU options), none through jax.jit directly."""
    pkg = Path(runtime.__file__).parent
    offenders = [f"{p.relative_to(pkg)}:{i}" for p in sorted(pkg.rglob("*.py")) if p.name != "runtime.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1) if "jax.jit(" in line.split("#")[0]]
    assert not offenders, offenders


def test_unknown_option_is_dropped(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setattr(runtime, "CPU_OPTIONS", {"xla_cpu_no_such_option_for_the_test": "1"})
    assert runtime.compiler_options("cpu") is None


def test_default_backend_is_used(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "")
    expected = {OPTION: ""} if jax.default_backend() == "cpu" else None
    assert runtime.compiler_options() == expected


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim; a no-op elsewhere")
def test_release_host_memory_returns_freed_heap_to_the_os():
    """What XLA's compiler leaves behind, made by hand: 3000 freed 64 KB heap blocks (below glibc's mmap threshold)
    pinned in the heap by small live blocks between them. Freeing alone keeps them resident; the release hands them
    back (>= 150 of the 188 MB). In a fresh process: the heap a long test session leaves (its arenas, its threads)
    decides otherwise where glibc puts the blocks."""
    code = """
import ctypes, os
from glean_jax import runtime
def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2 ** 20
libc = ctypes.CDLL('libc.so.6')
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
big, keep = [], []
for _ in range(3000):
    p = libc.malloc(64 * 1024)
    libc.memset(p, 1, 64 * 1024)
    big.append(p)
    keep.append(libc.malloc(64))
for p in big:
    libc.free(p)
before = rss()
assert runtime.release_host_memory() is True
print(before, rss())
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 0, r.stderr
    before, after = map(float, r.stdout.split())
    assert before - after >= 150, (before, after)

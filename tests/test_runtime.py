"""``glean_jax.runtime``: the XLA options our jits compile with (CPU: no YNNPACK library fusions) and when they
are not used (another backend, the user's own ``XLA_FLAGS`` choice)."""

from __future__ import annotations

import jax
import numpy as np
from jax import lax

from glean_jax import runtime
from glean_jax.models import ops

OPTION = "xla_cpu_experimental_ynn_fusion_type"


def _conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=ops.DIMENSION_NUMBERS)


def test_compiler_options_cpu_only_and_user_flags_win(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    assert runtime.compiler_options("cpu") == {OPTION: ""}
    assert runtime.compiler_options("gpu") is None
    assert runtime.compiler_options("tpu") is None
    monkeypatch.setenv("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 --{OPTION}=individual_dot")
    assert runtime.compiler_options("cpu") is None


def test_jit_compiles_convs_without_library_fusions_and_same_values(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 16, 16, 48)).astype(np.float32)
    w = (rng.standard_normal((3, 3, 48, 32)) * 0.1).astype(np.float32)
    ours = runtime.jit(_conv).lower(x, w).compile()
    assert "ynn_fusion" not in ours.as_text()
    plain = jax.jit(_conv).lower(x, w).compile()
    # Same function, another kernel: float32 rounding only (|y| ~ 2, 432 products per output).
    np.testing.assert_allclose(np.asarray(ours(x, w)), np.asarray(plain(x, w)), rtol=0, atol=2e-5)
    xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    ref = sum(np.einsum("nhwc,co->nhwo", xp[:, a:a + 16, b:b + 16], w[a, b].astype(np.float64))
              for a in range(3) for b in range(3))
    np.testing.assert_allclose(np.asarray(ours(x, w)), ref, rtol=0, atol=2e-5)


def test_unknown_option_is_dropped(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setattr(runtime, "CPU_OPTIONS", {"xla_cpu_no_such_option_for_the_test": "1"})
    assert runtime.compiler_options("cpu") is None


def test_default_backend_is_used(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "")
    expected = {OPTION: ""} if jax.default_backend() == "cpu" else None
    assert runtime.compiler_options() == expected

"""Test setup: 8 simulated CPU devices (for sharding tests), deterministic CPU numerics.

XLA's YNNPACK library fusions are off for every jit of the tests, as ``glean_jax.runtime.jit`` turns them off for
the product's own (the suite runs ~15 % faster); ``tests/test_runtime.py`` checks the product path in a subprocess
without this flag."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_cpu_experimental_ynn_fusion_type=")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

# Make `tests.oracle` importable as a package from any test.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pytest  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With GLEAN_REQUIRE_ORACLE=1 (set by CI), an oracle- or browser-marked test that skips is a failure: parity
    must be checked against the real mmagic, and the web page in the real browser, never silently dropped because the
    oracle or Chromium is not installed."""
    outcome = yield
    rep = outcome.get_result()
    marker = next((m for m in ("oracle", "browser") if item.get_closest_marker(m) is not None), None)
    if rep.skipped and marker is not None and os.environ.get("GLEAN_REQUIRE_ORACLE") == "1":
        rep.outcome = "failed"
        rep.longrepr = f"{marker} test skipped but GLEAN_REQUIRE_ORACLE=1: {rep.longrepr}"


@pytest.fixture(scope="session", autouse=True)
def _model_cache(tmp_path_factory):
    """``$GLEAN_JAX_CACHE`` for the whole run (and the commands it starts): the tests never write to the user's
    ``~/.cache/glean_jax``. Tests of the cache itself set their own."""
    import shutil

    d = tmp_path_factory.mktemp("glean_jax_cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("GLEAN_JAX_CACHE", str(d))
    yield d
    mp.undo()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory):
    """``mktemp(name) -> Path`` for module-scoped fixtures; the directories are removed when the module ends.

    The suite writes many checkpoints (hundreds of MB each); pytest keeps ``tmp_path_factory`` directories until the
    next sessions rotate them out, so without this one run would hold ~13 GB of disk at its end. Per-test
    ``tmp_path`` directories go as each test passes (``tmp_path_retention_policy = "failed"`` in pyproject.toml)."""
    import shutil

    made: list[Path] = []

    def mktemp(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield mktemp
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def jit_cache():
    """One :class:`glean_jax.runtime.JitCache` for the in-process training runs of the suite: runs of the same
    config and mesh compile their step, init and eval functions once."""
    from glean_jax.runtime import JitCache

    return JitCache()

"""Test setup: 8 simulated CPU devices (for sharding tests), deterministic CPU numerics."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

# Make `tests.oracle` importable as a package from any test.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

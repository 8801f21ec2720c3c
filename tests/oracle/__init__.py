"""Test helpers around the mmagic reference (:mod:`glean_jax.mmagic_reference`), and ``srgan.py``: mmagic's own
``SRGAN`` model built as the GLEAN configs build it."""

from __future__ import annotations

import types

from glean_jax.mmagic_reference import import_lpips, import_module, load


def load_or_skip() -> types.SimpleNamespace:
    """:func:`load`, or skip the calling test where the oracle is not installed (``tests/conftest.py`` turns the skip
    of an ``oracle``-marked test into a failure under ``GLEAN_REQUIRE_ORACLE=1``, as CI runs)."""
    import pytest

    try:
        return load()
    except ImportError as e:
        pytest.skip(str(e))


def module_or_skip(name: str) -> types.ModuleType:
    """A real mmagic module (:func:`import_module`) after :func:`load_or_skip`."""
    load_or_skip()
    return import_module(name)


def lpips_or_skip() -> types.ModuleType:
    """The real ``lpips`` package (:func:`glean_jax.mmagic_reference.import_lpips`), or skip the calling test where it
    is not installed (a failure under ``GLEAN_REQUIRE_ORACLE=1``, as above)."""
    import pytest

    try:
        return import_lpips()
    except ImportError as e:
        pytest.skip(str(e))

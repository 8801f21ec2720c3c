"""How our jitted functions are compiled: :func:`jit` = ``jax.jit`` plus the XLA options of :func:`compiler_options`.

On CPU, XLA (jaxlib 0.10) hands convolutions and matmuls to its experimental YNNPACK library fusions by default.
On the 2-core AVX-512 machine this project is measured on, XLA's own kernels are faster for every conv GLEAN runs
(float32, batch 4: 3x3 conv 160->32 ch at 32x32 3.9 -> 2.1 ms, 1024->1024 at 64x64 1.87 -> 1.51 s; a 4096^3
matmul 182 -> 206 GFLOP/s; the cat x8 GLEAN forward at batch 4 8.9 -> 7.4 s), so on CPU we compile with those
fusions off (``xla_cpu_experimental_ynn_fusion_type=""``). Per compilation, not through ``XLA_FLAGS``: nothing global
changes, it applies only where the backend is the CPU, and it is dropped (with no error) on a jaxlib that does not
know the option. Set ``--xla_cpu_experimental_ynn_fusion_type`` in ``XLA_FLAGS`` yourself to choose otherwise: then
we pass nothing and XLA uses your value.

Call these after ``jax.distributed.initialize`` (asking for the backend initialises it).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp

CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def _user_sets(option: str) -> bool:
    return f"--{option}" in os.environ.get("XLA_FLAGS", "")


@functools.cache
def _cpu_options_supported(options: tuple[tuple[str, str], ...]) -> bool:
    try:
        jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(jnp.zeros((), jnp.float32)).compile()
    except Exception as e:  # noqa: BLE001 -- jaxlib raises XlaRuntimeError/JaxRuntimeError by version
        if "compile option" in str(e):
            return False
        raise
    return True


def compiler_options(backend: str | None = None) -> dict[str, str] | None:
    """The XLA compile options our jits use on ``backend`` (default: JAX's default backend); None = XLA defaults."""
    if (backend or jax.default_backend()) != "cpu":
        return None
    opts = {k: v for k, v in CPU_OPTIONS.items() if not _user_sets(k)}
    if not opts or not _cpu_options_supported(tuple(sorted(opts.items()))):
        return None
    return opts


def jit(fun: Callable, **kwargs: Any) -> Callable:
    """``jax.jit(fun, **kwargs)`` compiled with :func:`compiler_options` (looked up now: call it after
    ``jax.distributed.initialize``)."""
    return jax.jit(fun, compiler_options=compiler_options(), **kwargs)


_CACHE_SETTINGS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")


@contextlib.contextmanager
def compilation_cache(directory: str | os.PathLike | None, min_compile_s: float = 0.5) -> Iterator[None]:
    """Within the block, XLA executables that took at least ``min_compile_s`` to compile are kept in ``directory``
    (JAX's persistent compilation cache) and looked up there, so a later process running the same functions loads
    them instead of compiling again; ``None`` changes nothing. JAX's settings are process-wide: they are restored
    when the block ends. The CLIs that run a model use ``<cache>/xla`` by default (``--no-cache`` to not)."""
    if directory is None:
        yield
        return
    from jax.experimental.compilation_cache import compilation_cache as cc

    saved = {name: getattr(jax.config, name) for name in _CACHE_SETTINGS}
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_s))
    cc.reset_cache()   # JAX opens its cache once per process: make it open this directory
    try:
        yield
    finally:
        for name, value in saved.items():
            jax.config.update(name, value)
        cc.reset_cache()


def release_host_memory() -> bool:
    """Hands the heap memory that the process has freed back to the operating system (glibc's ``malloc_trim(0)``);
    False where there is no glibc (nothing is done).

    XLA's compiler frees gigabytes once a large program is compiled (the ffhq x16 train step: ~2 GB), and glibc keeps
    them in the process, fragmented; the buffers of the first execution (allocated with ``mmap`` when large) then
    come on top. Called after compiling the train step and the benchmark's functions: the ffhq x16 step's peak RSS
    falls by about that much; the values are unchanged."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True


class JitCache:
    """Compiled functions kept by key, for a caller that runs the same program more than once in one process (a
    resumed run in a test, a notebook): pass one instance to each run and the later runs compile nothing again.
    Explicit, never global: without one, every run compiles its own. Bounded to the ``max_entries`` most recent."""

    def __init__(self, max_entries: int = 8) -> None:
        self.max_entries = max_entries
        self.builds = 0   # entries built so far
        self._entries: dict[Any, Any] = {}

    def get(self, key: Any, build: Callable[[], Any]) -> Any:
        """The entry of ``key``, built by ``build()`` the first time."""
        if key not in self._entries:
            if len(self._entries) >= self.max_entries:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = build()
            self.builds += 1
        return self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)

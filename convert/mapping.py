"""Declarative key tables between mmagic state_dicts (PyTorch layout) and our variables (NHWC/HWIO).

A :class:`KeyTable` lists, for one architecture, every PyTorch key with the path of our variable
(``collection/module/.../leaf``) and the layout transform between them, plus the fixed buffers we regenerate instead
of storing (FIR kernels, checked to hold the expected value). Tables are written per model as rows of
``(torch module, our module, layer kind)``: a layer kind lists the tensors of one layer type (torch suffix, our
suffix, layout), so torch's ``Sequential`` / ``ModuleList`` indices appear only in the tables
(``convert/stylegan2_rules.py``, ``convert/glean_rules.py``), never in the models.

The engine is the same for every model: :func:`torch_to_flax` consumes every source key (or fails naming it) and
checks every shape against the shapes of the model built from the inferred architecture; :func:`flax_to_torch` is
its exact inverse (layout transforms are permutations, so a round trip is bit-identical).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from glean_jax.errors import UserError
from glean_jax.models.ops import make_kernel_2d


@dataclass(frozen=True)
class Layout:
    """A pair of inverse array transforms: PyTorch layout -> ours, and back."""

    name: str
    to_flax: Callable[[np.ndarray], np.ndarray]
    to_torch: Callable[[np.ndarray], np.ndarray]


SAME = Layout("same", lambda a: a, lambda a: a)
LINEAR = Layout("linear (out,in)->(in,out)", lambda a: a.T, lambda a: a.T)
CONV = Layout("conv OIHW->HWIO", lambda a: a.transpose(2, 3, 1, 0), lambda a: a.transpose(3, 2, 0, 1))
MODCONV = Layout("modulated conv (1,O,I,k,k)->HWIO", lambda a: a[0].transpose(2, 3, 1, 0),
                 lambda a: a.transpose(3, 2, 0, 1)[None])
NCHW = Layout("(1,C,H,W)->(1,H,W,C)", lambda a: a.transpose(0, 2, 3, 1), lambda a: a.transpose(0, 3, 1, 2))
RGB_BIAS = Layout("(1,C,1,1)->(C,)", lambda a: a.reshape(-1), lambda a: a.reshape(1, -1, 1, 1))

# Regenerated FIR kernels (values mmagic's make_kernel gives; exact in float32).
KERNEL_UP = make_kernel_2d(gain=4.0)
KERNEL_DOWN = make_kernel_2d(gain=1.0)



# A layer kind: (torch suffix, our suffix, layout) of each tensor of one layer type.
LayerKind = tuple[tuple[str, str, Layout], ...]
TORCH_CONV: LayerKind = (("weight", "weight", CONV), ("bias", "bias", SAME))         # nn.Conv2d
TORCH_LINEAR: LayerKind = (("weight", "weight", LINEAR), ("bias", "bias", SAME))     # nn.Linear


@dataclass(frozen=True)
class KeyTable:
    """``entries``: (torch key, our path, layout) of every stored tensor; ``kernels``: (torch key, value) of the
    buffers we regenerate."""

    entries: tuple[tuple[str, str, Layout], ...]
    kernels: tuple[tuple[str, np.ndarray], ...] = ()

    @classmethod
    def of(cls, layers: Iterable[tuple[str, str, LayerKind]] = (), tensors: Iterable[tuple[str, str, Layout]] = (),
           kernels: Iterable[tuple[str, np.ndarray]] = ()) -> KeyTable:
        """``layers``: (torch module, our module under ``params``, kind) rows; ``tensors``: single (torch key,
        our path with its collection, layout) rows."""
        entries = [(f"{tm}.{ts}", f"params/{om}/{os}", lay) for tm, om, kind in layers for ts, os, lay in kind]
        return cls(tuple(entries) + tuple(tensors), tuple(kernels))

    def prefixed(self, torch_prefix: str, our_prefix: str) -> KeyTable:
        """The same table for a submodule: ``torch_prefix.<key>`` <-> ``<collection>/our_prefix/<path>``."""
        def ours(path: str) -> str:
            coll, rest = path.split("/", 1)
            return f"{coll}/{our_prefix}/{rest}"

        return KeyTable(tuple((f"{torch_prefix}.{k}", ours(p), lay) for k, p, lay in self.entries),
                        tuple((f"{torch_prefix}.{k}", v) for k, v in self.kernels))

    def __add__(self, other: KeyTable) -> KeyTable:
        return KeyTable(self.entries + other.entries, self.kernels + other.kernels)

    @functools.cached_property
    def by_torch(self) -> dict[str, tuple[str, Layout]]:
        return {k: (p, lay) for k, p, lay in self.entries}

    @functools.cached_property
    def by_path(self) -> dict[str, tuple[str, Layout]]:
        return {p: (k, lay) for k, p, lay in self.entries}

    @functools.cached_property
    def kernel_values(self) -> dict[str, np.ndarray]:
        return dict(self.kernels)


# --- engine ----------------------------------------------------------------------------------------------------------
def _set_path(tree: dict, path: str, value) -> None:
    parts = path.split("/")
    for p in parts[:-1]:
        tree = tree.setdefault(p, {})
    tree[parts[-1]] = value


def flatten_paths(tree: dict, prefix: str = "") -> dict[str, object]:
    """Nested dict -> {'a/b/c': leaf}."""
    out = {}
    for k, v in tree.items():
        p = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten_paths(v, p))
        else:
            out[p] = v
    return out


def _torch_shape(layout: Layout, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(layout.to_torch(np.broadcast_to(np.float32(0), shape)).shape)


def torch_to_flax(state: dict[str, np.ndarray], table: KeyTable, expected: dict[str, tuple[int, ...]],
                  source: str, keys: Iterable[str] | None = None) -> dict:
    """Converts the ``keys`` (default: all) of ``state`` with ``table``; checks names and shapes against
    ``expected`` (flattened path -> shape of our variables). Returns the nested variables dict."""
    out: dict = {}
    produced: set[str] = set()
    for key in (state if keys is None else keys):
        arr = state[key]
        if key in table.kernel_values:
            want = table.kernel_values[key]
            if arr.shape != want.shape or not np.array_equal(arr.astype(np.float32), want):
                raise UserError(f"{source}: {key} holds an unexpected FIR kernel {arr.ravel()[:4]}...; expected "
                                "mmagic's make_kernel([1, 3, 3, 1])")
            continue
        if key not in table.by_torch:
            raise UserError(f"{source}: unexpected key {key!r} {tuple(arr.shape)} for this architecture")
        path, layout = table.by_torch[key]
        if path not in expected:
            raise UserError(f"{source}: key {key!r} has no counterpart in the architecture inferred from the file")
        want = _torch_shape(layout, expected[path])
        if tuple(arr.shape) != want:
            raise UserError(f"{source}: {key} has shape {tuple(arr.shape)}, expected {want}")
        if arr.dtype.kind != "f":
            raise UserError(f"{source}: {key} has dtype {arr.dtype}, expected a floating-point tensor")
        if not np.all(np.isfinite(arr)):
            raise UserError(f"{source}: {key} holds NaN or Inf values; expected finite weights")
        _set_path(out, path, np.ascontiguousarray(layout.to_flax(arr)).astype(np.float32))
        produced.add(path)
    missing = sorted(set(expected) - produced)
    if missing:
        names = [table.by_path[p][0] if p in table.by_path else p for p in missing[:5]]
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise UserError(f"{source}: missing key(s) {', '.join(names)}{more}")
    return out


def flax_to_torch(variables: dict, table: KeyTable) -> dict[str, np.ndarray]:
    """Inverse of :func:`torch_to_flax`: {torch key: array}, plus the regenerated kernel buffers."""
    out: dict[str, np.ndarray] = {}
    for path, arr in flatten_paths(variables).items():
        if path not in table.by_path:
            raise UserError(f"variable {path} has no mmagic counterpart")
        key, layout = table.by_path[path]
        out[key] = np.ascontiguousarray(layout.to_torch(np.asarray(arr, np.float32)))
    for key, value in table.kernels:
        out[key] = value.copy()
    return out

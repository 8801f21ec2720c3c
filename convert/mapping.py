"""Declarative key-mapping tables between mmagic state_dicts (PyTorch layout) and our variables (NHWC/HWIO).

A :class:`Rule` pairs a regular expression over a PyTorch key with the path of our variable
(``collection/module/.../leaf``) and a layout transform. Named group ``m`` is a module path: dots before an index
become underscores and other dots become ``/`` (``convs.3`` <-> ``convs_3``; ``encoder.0.0.body.1`` <->
``encoder_0_0/body_1``). Other named groups are copied as they are. A rule whose path is ``None`` drops a buffer that
we regenerate (FIR kernels) after checking that it holds the expected value.

The engine is the same for every model: :func:`torch_to_flax` consumes every source key (or fails naming it) and
checks every shape against the shapes of the model built from the inferred architecture; :func:`flax_to_torch` is
its exact inverse (layout transforms are permutations, so a round trip is bit-identical).
"""

from __future__ import annotations

import re
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


@dataclass(frozen=True)
class Rule:
    torch: str                    # regex over the PyTorch key, named groups
    flax: str | None              # our path template ("params/{m}/conv/weight"); None = regenerated buffer
    layout: Layout = SAME
    kernel: np.ndarray | None = None   # expected value of a dropped buffer


def _m_to_flax(m: str) -> str:
    return re.sub(r"\.(\d+)", r"_\1", m).replace(".", "/")


def _m_to_torch(m: str) -> str:
    return re.sub(r"_(\d+)", r".\1", m.replace("/", "."))


def _torch_group_regex_to_flax(rx: str) -> str:
    rx = re.sub(r"\\\.(?=\d|\\d|\[\d)", "_", rx)  # a dot before an index (literal, \\d or [02]) -> _
    return rx.replace(r"\.", "/")


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]

    def prefixed(self, torch_prefix: str, flax_prefix: str) -> RuleSet:
        """The same rules for a submodule: ``torch_prefix.<key>`` <-> ``<collection>/flax_prefix/<path>``."""
        out = []
        for r in self.rules:
            flax = None
            if r.flax is not None:
                coll, rest = r.flax.split("/", 1)
                flax = f"{coll}/{flax_prefix}/{rest}"
            out.append(Rule(re.escape(torch_prefix + ".") + r.torch, flax, r.layout, r.kernel))
        return RuleSet(tuple(out))

    def __add__(self, other: RuleSet) -> RuleSet:
        return RuleSet(self.rules + other.rules)

    def match_torch(self, key: str) -> tuple[Rule, str | None] | None:
        for r in self.rules:
            mt = re.fullmatch(r.torch, key)
            if mt:
                if r.flax is None:
                    return r, None
                groups = {k: (_m_to_flax(v) if k == "m" else v) for k, v in mt.groupdict().items()}
                return r, r.flax.format(**groups)
        return None

    def match_flax(self, path: str) -> tuple[Rule, str] | None:
        for r in self.rules:
            if r.flax is None:
                continue
            groups = dict(re.findall(r"\(\?P<(\w+)>((?:[^()]|\([^()]*\))*)\)", r.torch))
            rx = re.escape(r.flax)
            for name, grx in groups.items():
                grx = _torch_group_regex_to_flax(grx) if name == "m" else grx
                rx = rx.replace(re.escape("{" + name + "}"), f"(?P<{name}>{grx})")
            mt = re.fullmatch(rx, path)
            if mt:
                vals = {k: (_m_to_torch(v) if k == "m" else v) for k, v in mt.groupdict().items()}
                key = r.torch
                for name, grx in groups.items():
                    key = key.replace(f"(?P<{name}>{grx})", vals[name])
                return r, key.replace("\\", "")
        return None


# --- StyleGAN2 generator (mmagic StyleGAN2Generator state_dict keys) -------------------------------------------------
_STYLE_MOD = r"(?P<m>conv1|convs\.\d+|to_rgb1|to_rgbs\.\d+)"
GENERATOR_RULES = RuleSet((
    Rule(r"injected_noise_(?P<i>\d+)", "buffers/injected_noise_{i}", NCHW),
    Rule(r"style_mapping\.(?P<i>\d+)\.bias", "params/style_mapping_{i}/bias"),
    Rule(r"style_mapping\.(?P<i>\d+)\.linear\.weight_orig", "params/style_mapping_{i}/weight", LINEAR),
    Rule(r"constant_input\.input", "params/constant_input", NCHW),
    Rule(_STYLE_MOD + r"\.conv\.weight_orig", "params/{m}/conv/weight", MODCONV),
    Rule(_STYLE_MOD + r"\.conv\.style_modulation\.bias", "params/{m}/conv/style_modulation/bias"),
    Rule(_STYLE_MOD + r"\.conv\.style_modulation\.linear\.weight_orig", "params/{m}/conv/style_modulation/weight",
         LINEAR),
    Rule(r"(?P<m>conv1|convs\.\d+)\.noise_injector\.weight", "params/{m}/noise_weight"),
    Rule(r"(?P<m>conv1|convs\.\d+)\.activate\.bias", "params/{m}/activate_bias"),
    Rule(r"(?P<m>to_rgb1|to_rgbs\.\d+)\.bias", "params/{m}/bias", RGB_BIAS),
    Rule(r"convs\.\d+\.conv\.blur\.kernel", None, kernel=KERNEL_UP),
    Rule(r"to_rgbs\.\d+\.upsample\.kernel", None, kernel=KERNEL_UP),
))

# --- StyleGAN2 discriminator (mmagic StyleGAN2Discriminator) ---------------------------------------------------------
DISCRIMINATOR_RULES = RuleSet((
    Rule(r"convs\.0\.0\.conv\.weight_orig", "params/convs_0/weight", CONV),
    Rule(r"convs\.0\.1\.bias", "params/convs_0/bias"),
    Rule(r"(?P<m>convs\.\d+)\.conv1\.0\.conv\.weight_orig", "params/{m}/conv1/weight", CONV),
    Rule(r"(?P<m>convs\.\d+)\.conv1\.1\.bias", "params/{m}/conv1/bias"),
    Rule(r"(?P<m>convs\.\d+)\.conv2\.1\.conv\.weight_orig", "params/{m}/conv2/weight", CONV),
    Rule(r"(?P<m>convs\.\d+)\.conv2\.2\.bias", "params/{m}/conv2/bias"),
    Rule(r"(?P<m>convs\.\d+)\.skip\.1\.conv\.weight_orig", "params/{m}/skip/weight", CONV),
    Rule(r"final_conv\.0\.conv\.weight_orig", "params/final_conv/weight", CONV),
    Rule(r"final_conv\.1\.bias", "params/final_conv/bias"),
    Rule(r"(?P<m>final_linear\.\d)\.bias", "params/{m}/bias"),
    Rule(r"(?P<m>final_linear\.\d)\.linear\.weight_orig", "params/{m}/weight", LINEAR),
    Rule(r"convs\.\d+\.(?:conv2|skip)\.0\.kernel", None, kernel=KERNEL_DOWN),
))


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


def torch_to_flax(state: dict[str, np.ndarray], rules: RuleSet, expected: dict[str, tuple[int, ...]],
                  source: str, keys: Iterable[str] | None = None) -> dict:
    """Converts the ``keys`` (default: all) of ``state`` with ``rules``; checks names and shapes against ``expected``
    (flattened path -> shape of our variables). Returns the nested variables dict."""
    out: dict = {}
    produced: set[str] = set()
    for key in (state if keys is None else keys):
        arr = state[key]
        hit = rules.match_torch(key)
        if hit is None:
            raise UserError(f"{source}: unexpected key {key!r} {tuple(arr.shape)} for this architecture")
        rule, path = hit
        if path is None:
            if arr.shape != rule.kernel.shape or not np.array_equal(arr.astype(np.float32), rule.kernel):
                raise UserError(f"{source}: {key} holds an unexpected FIR kernel {arr.ravel()[:4]}...; expected "
                                "mmagic's make_kernel([1, 3, 3, 1])")
            continue
        if path not in expected:
            raise UserError(f"{source}: key {key!r} has no counterpart in the architecture inferred from the file")
        want = _torch_shape(rule.layout, expected[path])
        if tuple(arr.shape) != want:
            raise UserError(f"{source}: {key} has shape {tuple(arr.shape)}, expected {want}")
        if arr.dtype.kind != "f":
            raise UserError(f"{source}: {key} has dtype {arr.dtype}, expected a floating-point tensor")
        if not np.all(np.isfinite(arr)):
            raise UserError(f"{source}: {key} holds NaN or Inf values; expected finite weights")
        _set_path(out, path, np.ascontiguousarray(rule.layout.to_flax(arr)).astype(np.float32))
        produced.add(path)
    missing = sorted(set(expected) - produced)
    if missing:
        names = []
        for p in missing[:5]:
            hit = rules.match_flax(p)
            names.append(hit[1] if hit else p)
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise UserError(f"{source}: missing key(s) {', '.join(names)}{more}")
    return out


def flax_to_torch(variables: dict, rules: RuleSet, kernel_keys: Iterable[tuple[str, np.ndarray]] = ()) -> dict:
    """Inverse of :func:`torch_to_flax`: {torch key: array}, plus the regenerated kernel buffers."""
    out: dict[str, np.ndarray] = {}
    for path, arr in flatten_paths(variables).items():
        hit = rules.match_flax(path)
        if hit is None:
            raise UserError(f"variable {path} has no mmagic counterpart")
        rule, key = hit
        out[key] = np.ascontiguousarray(rule.layout.to_torch(np.asarray(arr, np.float32)))
    for key, value in kernel_keys:
        out[key] = value.copy()
    return out


def generator_kernel_keys(out_size: int, prefix: str = "") -> list[tuple[str, np.ndarray]]:
    """The FIR kernel buffers of a StyleGAN2Generator state_dict."""
    n_blocks = int(np.log2(out_size)) - 2
    keys = [(f"{prefix}convs.{2 * k}.conv.blur.kernel", KERNEL_UP) for k in range(n_blocks)]
    keys += [(f"{prefix}to_rgbs.{k}.upsample.kernel", KERNEL_UP) for k in range(n_blocks)]
    return keys


def discriminator_kernel_keys(in_size: int, prefix: str = "") -> list[tuple[str, np.ndarray]]:
    n_blocks = int(np.log2(in_size)) - 2
    keys = []
    for n in range(1, n_blocks + 1):
        keys += [(f"{prefix}convs.{n}.conv2.0.kernel", KERNEL_DOWN), (f"{prefix}convs.{n}.skip.0.kernel", KERNEL_DOWN)]
    return keys

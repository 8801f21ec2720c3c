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
size down (torch's ``MaxPool2d(2, 2)``, ``ceil_mode=False``). Parameters are named after the torchvision index
(``features_0``, ``features_2``, ...), kernels HWIO float32; :mod:`convert.torchvision_vgg16` writes them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from glean_jax.errors import UserError

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

PERCEPTUAL_LAYER = "21"
"""conv4_3 before ReLU: the layer GLEAN's perceptual loss uses."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
            raise UserError(f"VGG16 layer {name!r}: not a layer index; expected an integer 0..{len(VGG16_LAYERS) - 1}"
                            " (a torchvision vgg16.features index, e.g. '21' = conv4_3 before ReLU)")
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
    """

    output_layers: Sequence[str] = (PERCEPTUAL_LAYER,)
    dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        wanted = parse_layers(self.output_layers)
        if x.ndim != 4 or x.shape[-1] != 3:
            raise UserError(f"VGG16 input: shape {tuple(x.shape)}; expected NHWC images (N, H, W, 3)")
        x = x.astype(self.dtype)
        out: dict[str, jax.Array] = {}
        for idx, layer in enumerate(VGG16_LAYERS[: wanted[-1] + 1]):
            if layer[0] == "conv":
                x = nn.Conv(layer[2], (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), use_bias=True,
                            dtype=self.dtype, param_dtype=jnp.float32, precision=self.precision,
                            # torchvision's init: kaiming_normal_(mode='fan_out', nonlinearity='relu'), zero bias.
                            kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
                            bias_init=nn.initializers.zeros, name=f"features_{idx}")(x)
            elif layer[0] == "relu":
                x = nn.relu(x)
            else:
                h, w = x.shape[1], x.shape[2]
                if h < 2 or w < 2:
                    raise UserError(f"VGG16 input: {h}x{w} features before max pool {idx} are too small; expected "
                                    "images of at least 8x8 for layer 21 (torch raises here too)")
                x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
            if idx in wanted:
                out[str(idx)] = x
        return out


def check_vgg16_params(params: Mapping, layers: Iterable[str | int] = (PERCEPTUAL_LAYER,), what: str = "VGG16") -> None:
    """Raises a UserError unless ``params`` holds every conv needed for ``layers`` with the right shapes."""
    if not isinstance(params, Mapping):
        raise UserError(f"{what}: params are a {type(params).__name__}; expected a dict of features_<idx> layers")
    for idx in required_convs(layers):
        name = f"features_{idx}"
        if name not in params:
            raise UserError(f"{what}: {name} is missing; expected VGG16 weights up to layer "
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
        params[f"features_{i}"] = {"kernel": jnp.asarray((rng.standard_normal(shape) * std).astype(np.float32)),
                                   "bias": jnp.zeros((shape[-1],), jnp.float32)}
    return params


def load_vgg16(ckpt_dir: str | os.PathLike, layers: Sequence[str] = (PERCEPTUAL_LAYER,)) -> dict:
    """Loads the VGG16 params written by ``python -m convert.torchvision_vgg16``; checks kind and shapes."""
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

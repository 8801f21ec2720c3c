"""GLEAN's training losses as pure JAX functions (NHWC), equal to mmagic's (``mmagic/models/losses``).

* :func:`pixel_mse` = ``MSELoss(loss_weight=1.0, reduction='mean')`` on the [-1, 1] images.
* :func:`perceptual_loss` = ``PerceptualLoss(layer_weights={'21': 1.}, vgg_type='vgg16', criterion='mse',
  style_weight=0, perceptual_weight=1e-2, norm_img=...)`` (mmagic/models/losses/perceptual_loss.py).
* :func:`gan_loss_g` = ``GANLoss(gan_type='vanilla', real_label_val=1.0, fake_label_val=0.0, loss_weight=1e-2)``
  called as ``gan_loss(D(out), target_is_real=True, is_disc=False)``.
* :func:`d_loss` = the same GANLoss called with ``is_disc=True`` (weight always 1) on ``D(gt)`` (real) and
  ``D(out.detach())`` (fake); mmagic back-propagates both parts, i.e. their sum.

Every loss is computed and returned in float32 whatever the compute dtype of its inputs. The binary cross-entropy
with logits uses the softplus form (``BCE(x, 1) = softplus(-x)``, ``BCE(x, 0) = softplus(x)``), which is exact and
does not overflow for large logits.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp

from glean_jax.errors import UserError
from glean_jax.models.vgg import IMAGENET_MEAN, IMAGENET_STD, VGG16Features, check_vgg16_params, parse_layers

GLEAN_LAYER_WEIGHTS: Mapping[str, float] = MappingProxyType({"21": 1.0})
"""mmagic GLEAN configs: ``layer_weights={'21': 1.}`` (conv4_3 before ReLU)."""


def _f32(x: jax.Array) -> jax.Array:
    return jnp.asarray(x).astype(jnp.float32)


def _check_same_shape(a: jax.Array, b: jax.Array, what: str) -> None:
    if a.shape != b.shape:
        raise UserError(f"{what}: prediction shape {tuple(a.shape)} differs from target shape {tuple(b.shape)}; "
                        "expected equal shapes")


def mean_all(x: jax.Array) -> jax.Array:
    """The mean of every element of a float32 array, an NHWC one reduced over its spatial axes first.

    One XLA:CPU float32 reduction over ~1M elements (the VGG16 conv4_3 features of two 256x256 images,
    (2, 32, 32, 512)) drifts by ~8e-6 relative; reducing H, W first and then N, C stays within ~1e-8 of the exact
    mean, as torch's ``mean`` (cascade summation, used by ``F.mse_loss`` in mmagic's ``MSELoss`` /
    ``PerceptualLoss``) does. The value is the same mean: no weighting changes.
    """
    if x.ndim == 4:
        return jnp.mean(jnp.mean(x, axis=(1, 2)))
    return jnp.mean(x)


def pixel_mse(pred: jax.Array, gt: jax.Array) -> jax.Array:
    """``mean((pred - gt)^2)`` over all elements, float32; mmagic ``MSELoss`` (weight 1.0, mean)."""
    _check_same_shape(pred, gt, "pixel loss")
    return mean_all(jnp.square(_f32(pred) - _f32(gt)))


def vgg_features(vgg_params: Mapping, x: jax.Array, layers: tuple[str, ...], *, use_input_norm: bool = True,
                 dtype: Any = jnp.float32, precision: Any = None, remat: bool = False) -> dict[str, jax.Array]:
    """mmagic ``PerceptualVGG.forward``: ImageNet normalisation ``(x - mean) / std`` then VGG16 features."""
    x = _f32(x)
    if use_input_norm:
        x = (x - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(IMAGENET_STD, jnp.float32)
    model = VGG16Features(output_layers=layers, dtype=dtype, precision=precision, remat=remat)
    return model.apply({"params": vgg_params}, x)


def perceptual_loss(vgg_params: Mapping, pred: jax.Array, gt: jax.Array, *, norm_img: bool,
                    layer_weights: Mapping[str, float] = GLEAN_LAYER_WEIGHTS, perceptual_weight: float = 1e-2,
                    use_input_norm: bool = True, dtype: Any = jnp.float32, precision: Any = None,
                    remat: bool = False) -> jax.Array:
    """mmagic ``PerceptualLoss(vgg_type='vgg16', criterion='mse', style_weight=0)`` on NHWC images in [-1, 1].

    ``norm_img`` first maps ``(x + 1) * 0.5`` (mmagic: True only for in128out1024; the other GLEAN configs feed
    the [-1, 1] images straight into the ImageNet normalisation). The loss is
    ``perceptual_weight * sum_k layer_weights[k] * mean((f_k(pred) - f_k(gt))^2)``, summed in increasing layer
    order. The gt features and the VGG weights get no gradient (mmagic: ``gt.detach()`` and frozen VGG).

    Args:
        vgg_params: the VGG ``params`` collection (``variables['vgg']['params']`` of a converted checkpoint, or
            :func:`glean_jax.models.vgg.load_vgg16`); ``{'params': ...}`` is accepted too.
        dtype: VGG compute dtype (float32, bfloat16 or float16); the loss itself is float32.
        remat: the prediction's VGG16 keeps less for the backward pass and recomputes its first stages there
            (``VGG16Features.remat``; memory for compute, the same values).
    """
    if isinstance(vgg_params, Mapping) and set(vgg_params) == {"params"}:
        vgg_params = vgg_params["params"]
    _check_same_shape(pred, gt, "perceptual loss")
    idx = parse_layers(layer_weights.keys())
    layers = tuple(str(i) for i in idx)
    weights = {str(int(k)): float(w) for k, w in layer_weights.items()}
    check_vgg16_params(vgg_params, layers, what="perceptual loss VGG16 params")
    vgg_params = jax.lax.stop_gradient(vgg_params)
    pred = _f32(pred)
    gt = jax.lax.stop_gradient(_f32(gt))
    if norm_img:
        pred = (pred + 1.0) * 0.5
        gt = (gt + 1.0) * 0.5
    # Two separate forwards: the gt one carries no tangent, so differentiating costs one backward, not two.
    f_pred = vgg_features(vgg_params, pred, layers, use_input_norm=use_input_norm, dtype=dtype, precision=precision,
                          remat=remat)
    f_gt = vgg_features(vgg_params, gt, layers, use_input_norm=use_input_norm, dtype=dtype, precision=precision)
    loss = jnp.zeros((), jnp.float32)
    for k in layers:
        loss = loss + mean_all(jnp.square(_f32(f_pred[k]) - _f32(f_gt[k]))) * weights[k]
    return loss * perceptual_weight


def bce_with_logits(logits: jax.Array, target_is_real: bool) -> jax.Array:
    """torch ``BCEWithLogitsLoss()(logits, full_like(logits, 1.0 if target_is_real else 0.0))``, float32."""
    x = _f32(logits)
    return jnp.mean(jax.nn.softplus(-x if target_is_real else x))


def gan_loss_g(fake_logits: jax.Array, weight: float = 1e-2) -> jax.Array:
    """Generator adversarial loss: ``weight * BCEWithLogits(D(out), 1)`` (mmagic vanilla GANLoss, ×1e-2 in GLEAN)."""
    return bce_with_logits(fake_logits, True) * weight


def d_loss(real_logits: jax.Array, fake_logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Discriminator losses ``(loss_d_real, loss_d_fake)`` = ``(BCE(D(gt), 1), BCE(D(out), 0))``, weight 1.

    mmagic calls ``backward`` on each part, so the discriminator's gradient is that of their sum. The caller must
    pass ``D(stop_gradient(out))`` as the fake logits (mmagic's ``out.detach()``).
    """
    return bce_with_logits(real_logits, True), bce_with_logits(fake_logits, False)

"""FLOPs of GLEAN, its discriminator and VGG16: analytic from the architecture, and counted on a traced jaxpr.

The FLOP count (:func:`model_flops`) is analytic, from the layer shapes of the architecture (MACs = Cin Cout k^2 H W of
every conv and linear layer actually evaluated, FLOPs = 2 MACs; StyleGAN2's stride-2 up-conv counted as a transposed
conv at its input resolution; mmagic's dead RGB skip branch, activations, FIR blurs and normalisations not
counted). Train FLOPs per image = 3 x trainable-G forward + 2 x bank forward (activation gradients only)
+ 8 x D forward (G step: forward + activation backward; D step: real and fake forward + full backward)
+ 3 x VGG16-to-conv4_3 forward (prediction forward + activation backward, GT forward).
:func:`jaxpr_flops` counts the convolutions and dot products a traced function really runs (tests compare the two).
"""

from __future__ import annotations

import math
from typing import Any

from ml_collections import ConfigDict

from glean_jax.arch import GleanArch, stylegan2_channels
from glean_jax.models.vgg import VGG16_LAYERS


def _conv(cin: int, cout: int, k: int, h: int) -> int:
    """MACs of a k x k conv producing an h x h map."""
    return cin * cout * k * k * h * h


def glean_forward_macs(arch: GleanArch, growth_channels: int = 32) -> dict[str, int]:
    """MACs per image of mmagic ``GLEANStyleGANv2.forward`` by part (encoder RRDB trunk, rest of the encoder, the
    4x4 latent linear, StyleGAN2 bank, fusion convs, decoder); the dead RGB skip branch is not evaluated."""
    ch, in_size, out_size, style_channels = arch.channels, arch.in_size, arch.out_size, arch.style_channels
    c, g, num_rrdbs = arch.rrdb_channels, growth_channels, arch.num_rrdbs
    rdb = sum(_conv(c + i * g, g, 3, in_size) for i in range(4)) + _conv(c + 4 * g, c, 3, in_size)
    parts = {"rrdb": _conv(3, c, 3, in_size) + num_rrdbs * 3 * rdb + _conv(c, c, 3, in_size)}
    enc = _conv(c, ch[in_size], 3, in_size)
    res = in_size
    while res > 4:
        enc += _conv(ch[res], ch[res // 2], 3, res // 2) + _conv(ch[res // 2], ch[res // 2], 3, res // 2)
        res //= 2
    enc += _conv(ch[4], ch[4], 3, 4)
    parts["encoder"] = enc
    parts["latent_linear"] = 16 * ch[4] * arch.num_latents * style_channels
    bank = _conv(ch[4], ch[4], 3, 4) + style_channels * ch[4]       # conv1 + its style modulation
    fusion = 0
    r = 4
    while r < out_size:
        if r <= in_size:
            fusion += _conv(2 * ch[r], ch[r], 3, r)
        bank += ch[r] * ch[2 * r] * 9 * r * r + style_channels * ch[r]               # up-conv at input resolution
        bank += _conv(ch[2 * r], ch[2 * r], 3, 2 * r) + style_channels * ch[2 * r]
        r *= 2
    parts["bank"], parts["fusion"] = bank, fusion
    dec = _conv(ch[in_size], 4 * ch[2 * in_size], 3, in_size)
    r = 2 * in_size
    while r < out_size:
        dec += _conv(2 * ch[r], 4 * ch[2 * r], 3, r)
        r *= 2
    dec += _conv(2 * ch[out_size], 64, 3, out_size) + _conv(64, 3, 3, out_size)
    parts["decoder"] = dec
    return parts


def discriminator_macs(size: int, channel_multiplier: int = 2) -> int:
    """MACs per image of mmagic ``StyleGAN2Discriminator`` (ResBlocks with 1x1 stride-2 skips, mbstd, linears)."""
    ch = stylegan2_channels(channel_multiplier)
    macs = _conv(3, ch[size], 1, size)
    r = size
    while r > 4:
        cin, cout = ch[r], ch[r // 2]
        macs += _conv(cin, cin, 3, r) + _conv(cin, cout, 3, r // 2) + _conv(cin, cout, 1, r // 2)
        r //= 2
    macs += _conv(ch[4] + 1, ch[4], 3, 4) + 16 * ch[4] * ch[4] + ch[4]
    return macs


def vgg16_macs(size: int, last_layer: int = 21) -> int:
    """MACs per image of torchvision VGG16 ``features[:last_layer + 1]`` (layer 21 = conv4_3) at size x size."""
    macs, h = 0, size
    for layer in VGG16_LAYERS[:last_layer + 1]:
        if layer[0] == "pool":
            h //= 2
        elif layer[0] == "conv":
            macs += _conv(layer[1], layer[2], 3, h)
    return macs


def model_flops(model_cfg: ConfigDict | dict) -> dict[str, float]:
    """FLOPs per image (2 x MACs): ``g_forward``, ``bank_forward``, ``d_forward``, ``vgg_forward``, ``train_step``."""
    m = model_cfg
    parts = glean_forward_macs(GleanArch.from_dict(m, "config.model"))
    g = 2.0 * sum(parts.values())
    bank = 2.0 * parts["bank"]
    d = 2.0 * discriminator_macs(int(m["out_size"]), int(m["channel_multiplier"]))
    vgg = 2.0 * vgg16_macs(int(m["out_size"]))
    return {"g_forward": g, "bank_forward": bank, "d_forward": d, "vgg_forward": vgg,
            "train_step": 3.0 * (g - bank) + 2.0 * bank + 8.0 * d + 3.0 * vgg,
            "parts": {k: 2.0 * v for k, v in parts.items()}}


def _sub_jaxprs(value: Any) -> list[Any]:
    if hasattr(value, "eqns"):
        return [value]
    if hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
        return [value.jaxpr]
    if isinstance(value, list | tuple):
        return [j for v in value for j in _sub_jaxprs(v)]
    return []


def iter_eqns(jaxpr: Any) -> Any:
    """Every equation of a (closed) jaxpr, recursing into pjit / remat / custom_jvp / scan bodies."""
    jaxpr = jaxpr.jaxpr if hasattr(jaxpr, "jaxpr") and not hasattr(jaxpr, "eqns") else jaxpr
    for eqn in jaxpr.eqns:
        yield eqn
        for v in eqn.params.values():
            for sub in _sub_jaxprs(v):
                yield from iter_eqns(sub)


def jaxpr_flops(jaxpr: Any, multiplier: float = 1.0) -> float:
    """FLOPs (2 x MACs) of the convolutions and dot products in a jaxpr -- what the implementation actually does.
    A ``scan`` body counts ``length`` times (the RRDB trunk is one scan over its blocks), a ``cond`` its costliest
    branch."""
    jaxpr = jaxpr.jaxpr if hasattr(jaxpr, "jaxpr") and not hasattr(jaxpr, "eqns") else jaxpr
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            out = eqn.outvars[0].aval.shape
            rhs = eqn.invars[1].aval.shape
            out_feat = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
            total += multiplier * 2.0 * math.prod(out) * math.prod(rhs) / out_feat
        elif name == "dot_general":
            (lc, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += multiplier * 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in lc)
        if name == "cond":    # one branch runs (``lax.platform_dependent`` picks one per backend): the costliest
            total += max(jaxpr_flops(b, multiplier) for b in eqn.params["branches"])
            continue
        inner = multiplier * (eqn.params.get("length", 1) if name == "scan" else 1)
        for v in eqn.params.values():
            for sub in _sub_jaxprs(v):
                total += jaxpr_flops(sub, inner)
    return total

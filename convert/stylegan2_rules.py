"""mmagic StyleGAN2 generator and discriminator ``state_dict``s (``StyleGAN2Generator`` /
``StyleGAN2Discriminator`` of ``mmagic/models/editors/stylegan2``): their key tables, and their architecture read off
the keys and shapes. Used by the converters of StyleGAN2 and GLEAN checkpoints."""

from __future__ import annotations

import re

import numpy as np

from convert.mapping import CONV, KERNEL_DOWN, KERNEL_UP, LINEAR, MODCONV, NCHW, RGB_BIAS, SAME, KeyTable, LayerKind
from glean_jax.arch import bank_sizes
from glean_jax.errors import UserError
from glean_jax.models.stylegan2 import noise_layers

# --- layer kinds (torch suffix, our suffix, layout) -------------------------------------------------------------------
EQUAL_LINEAR: LayerKind = (("linear.weight_orig", "weight", LINEAR), ("bias", "bias", SAME))   # EqualLinearActModule
_MODULATION: LayerKind = (("conv.weight_orig", "conv/weight", MODCONV),
                          ("conv.style_modulation.bias", "conv/style_modulation/bias", SAME),
                          ("conv.style_modulation.linear.weight_orig", "conv/style_modulation/weight", LINEAR))
STYLE_CONV: LayerKind = _MODULATION + (("noise_injector.weight", "noise_weight", SAME),   # ModulatedStyleConv
                                       ("activate.bias", "activate_bias", SAME))
TO_RGB: LayerKind = _MODULATION + (("bias", "bias", RGB_BIAS),)                           # ModulatedToRGB
CONV_ACT: LayerKind = (("0.conv.weight_orig", "weight", CONV), ("1.bias", "bias", SAME))  # ConvDownLayer
RES_BLOCK: LayerKind = (("conv1.0.conv.weight_orig", "conv1/weight", CONV), ("conv1.1.bias", "conv1/bias", SAME),
                        ("conv2.1.conv.weight_orig", "conv2/weight", CONV), ("conv2.2.bias", "conv2/bias", SAME),
                        ("skip.1.conv.weight_orig", "skip/weight", CONV))                  # ResBlock (0 = Blur)


def generator_table(out_size: int, num_mlps: int = 8) -> KeyTable:
    """``StyleGAN2Generator(out_size, num_mlps=...)``: ``style_mapping.0`` is the PixelNorm, ``convs.2k`` /
    ``convs.2k+1`` / ``to_rgbs.k`` the level of output ``8 * 2**k``, ``injected_noise_i`` the fixed noise."""
    layers = [(f"style_mapping.{i}", f"mapping/dense_{i}", EQUAL_LINEAR) for i in range(1, num_mlps + 1)]
    layers += [("conv1", "conv_4", STYLE_CONV), ("to_rgb1", "to_rgb_4", TO_RGB)]
    kernels = []
    for k, r in enumerate(bank_sizes(out_size)):
        layers += [(f"convs.{2 * k}", f"level_{r}/conv_up", STYLE_CONV),
                   (f"convs.{2 * k + 1}", f"level_{r}/conv", STYLE_CONV),
                   (f"to_rgbs.{k}", f"level_{r}/to_rgb", TO_RGB)]
        kernels += [(f"convs.{2 * k}.conv.blur.kernel", KERNEL_UP), (f"to_rgbs.{k}.upsample.kernel", KERNEL_UP)]
    tensors = [("constant_input.input", "params/const", NCHW)]
    tensors += [(f"injected_noise_{i}", f"buffers/{name}", NCHW) for i, (name, _) in enumerate(noise_layers(out_size))]
    return KeyTable.of(layers, tensors, kernels)


def discriminator_table(in_size: int) -> KeyTable:
    """``StyleGAN2Discriminator(in_size)``: ``convs.0`` from RGB, ``convs.n`` the ResBlock of input
    ``in_size / 2**(n-1)``, then ``final_conv`` and the two ``final_linear`` layers."""
    layers = [("convs.0", "from_rgb", CONV_ACT)]
    kernels = []
    for n, r in enumerate(reversed(bank_sizes(in_size)), start=1):
        layers.append((f"convs.{n}", f"block_{r}", RES_BLOCK))
        kernels += [(f"convs.{n}.conv2.0.kernel", KERNEL_DOWN), (f"convs.{n}.skip.0.kernel", KERNEL_DOWN)]
    layers += [("final_conv", "final_conv", CONV_ACT), ("final_linear.0", "final_linear", EQUAL_LINEAR),
               ("final_linear.1", "logit", EQUAL_LINEAR)]
    return KeyTable.of(layers, (), kernels)


# --- architecture inference ------------------------------------------------------------------------------------------
def _max_index(state: dict, pattern: str) -> int:
    """1 + the largest captured index of keys matching ``pattern`` (0 if none)."""
    idx = [int(m.group(1)) for k in state for m in [re.fullmatch(pattern, k)] if m]
    return max(idx) + 1 if idx else 0


def _channel_multiplier(channels: int, res: int, source: str, key: str) -> int:
    """Inverts C[res] = cm * 16384 / res (valid for res >= 64)."""
    cm = channels * res / 16384
    if cm < 1 or cm != int(cm):
        raise UserError(f"{source}: {key} has {channels} channels at {res}x{res}, which matches no StyleGAN2 "
                        "channel_multiplier (expected cm * 16384 / res)")
    return int(cm)


def _require(state: dict, key: str, source: str, what: str) -> np.ndarray:
    if key not in state:
        raise UserError(f"{source}: missing key {key!r}; expected a {what}")
    return state[key]
def infer_generator_arch(state: dict, source: str, prefix: str = "") -> dict:
    """Architecture of a StyleGAN2Generator from its (``prefix``-stripped) keys."""
    p = re.escape(prefix)
    _require(state, prefix + "constant_input.input", source, "StyleGAN2 generator")
    n_blocks = _max_index(state, p + r"to_rgbs\.(\d+)\.bias")
    out_size = 2 ** (n_blocks + 2)
    if n_blocks < 1 or out_size > 1024:
        raise UserError(f"{source}: found {n_blocks} to_rgbs blocks; expected 1..8 (output 8..1024)")
    style = _require(state, prefix + "conv1.conv.style_modulation.linear.weight_orig", source, "StyleGAN2 generator")
    cm = 2
    if out_size >= 64:
        key = prefix + "convs.6.conv.weight_orig"
        cm = _channel_multiplier(int(_require(state, key, source, "StyleGAN2 generator").shape[1]), 64, source, key)
    return {"out_size": out_size, "style_channels": int(style.shape[1]),
            "num_mlps": _max_index(state, p + r"style_mapping\.(\d+)\.bias") - 1,
            "channel_multiplier": cm, "lr_mlp": 0.01}


def infer_discriminator_arch(state: dict, source: str, prefix: str = "") -> dict:
    p = re.escape(prefix)
    key = prefix + "convs.0.0.conv.weight_orig"
    first = _require(state, key, source, "StyleGAN2 discriminator")
    n_blocks = _max_index(state, p + r"convs\.(\d+)\.conv1\.0\.conv\.weight_orig") - 1
    in_size = 2 ** (n_blocks + 2)
    if n_blocks < 1 or in_size > 1024:
        raise UserError(f"{source}: found {n_blocks} discriminator ResBlocks; expected 1..8 (input 8..1024)")
    cm = _channel_multiplier(int(first.shape[0]), in_size, source, key) if in_size >= 64 else 2
    return {"in_size": in_size, "channel_multiplier": cm}

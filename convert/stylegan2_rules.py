"""The architecture of an mmagic StyleGAN2 generator or discriminator, read off its ``state_dict`` keys and shapes
(``StyleGAN2Generator`` / ``StyleGAN2Discriminator`` of ``mmagic/models/editors/stylegan2``); used by the converters
of StyleGAN2 and GLEAN checkpoints."""

from __future__ import annotations

import re

import numpy as np

from glean_jax.errors import UserError


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

"""Key mapping for mmagic ``GLEANStyleGANv2`` state_dicts and inference of its architecture from the shapes."""

from __future__ import annotations

import math
import re

import numpy as np

from convert.mapping import CONV, GENERATOR_RULES, LINEAR, Rule, RuleSet, generator_kernel_keys
from convert.stylegan2_rules import infer_generator_arch
from glean_jax.errors import UserError

_CONV_MODULE = (r"(?P<m>encoder\.0\.0\.(?:conv_first|conv_body|body\.\d+\.rdb\d\.conv\d)|encoder\.\d+\.[02]"
                r"|encoder\.0\.1|fusion_out\.\d+|fusion_skip\.\d+|decoder\.\d+\.upsample_conv|decoder\.\d+\.[02])")
GLEAN_OWN_RULES = RuleSet((
    Rule(r"(?P<m>encoder\.\d+\.3)\.weight", "params/{m}/weight", LINEAR),
    Rule(r"(?P<m>encoder\.\d+\.3)\.bias", "params/{m}/bias"),
    Rule(_CONV_MODULE + r"\.weight", "params/{m}/weight", CONV),
    Rule(_CONV_MODULE + r"\.bias", "params/{m}/bias"),
))


def glean_rules(arch: dict | None = None) -> RuleSet:
    """All rules of a GLEAN state_dict: the bank under ``generator.`` plus GLEAN's own layers."""
    return GENERATOR_RULES.prefixed("generator", "generator") + GLEAN_OWN_RULES


def glean_kernel_keys(arch: dict) -> list[tuple[str, np.ndarray]]:
    return generator_kernel_keys(int(arch["out_size"]), prefix="generator.")


def infer_glean_arch(state: dict, source: str) -> dict:
    """(in_size, out_size, rrdb_channels, num_rrdbs, style_channels, channel_multiplier) from the tensor shapes."""
    if "encoder.0.0.conv_first.weight" not in state:
        raise UserError(f"{source}: missing key 'encoder.0.0.conv_first.weight'; expected a GLEANStyleGANv2 state_dict")
    bank = infer_generator_arch({k[10:]: v for k, v in state.items() if k.startswith("generator.")},
                                f"{source} [generator.]")
    n_enc = 1 + max(int(m.group(1)) for k in state for m in [re.fullmatch(r"encoder\.(\d+)\..*", k)] if m)
    # encoder.1 .. encoder.(n_enc-1) cover resolutions in_size, in_size/2, ..., 4
    in_size = 2 ** (n_enc)
    if in_size >= bank["out_size"]:
        raise UserError(f"{source}: encoder has {n_enc - 1} blocks (input {in_size}x{in_size}) but the bank outputs "
                        f"{bank['out_size']}x{bank['out_size']}; expected in_size < out_size")
    blocks = {int(m.group(1)) for k in state for m in [re.fullmatch(r"encoder\.0\.0\.body\.(\d+)\..*", k)] if m}
    num_rrdbs = max(blocks) + 1 if blocks else 0
    rrdb_channels = int(state["encoder.0.0.conv_first.weight"].shape[0])
    out_linear = f"encoder.{n_enc - 1}.3.weight"
    if out_linear not in state:
        raise UserError(f"{source}: missing key {out_linear!r} (the 4x4 latent Linear); expected a GLEANStyleGANv2 "
                        "state_dict")
    num_styles = 2 * int(math.log2(bank["out_size"])) - 2
    lin = state[out_linear]
    if lin.shape[0] != num_styles * bank["style_channels"]:
        raise UserError(f"{source}: {out_linear} has shape {tuple(lin.shape)}, expected "
                        f"({num_styles * bank['style_channels']}, 8192) for a {bank['out_size']}x"
                        f"{bank['out_size']} bank")
    return {"in_size": in_size, "out_size": bank["out_size"], "rrdb_channels": rrdb_channels,
            "num_rrdbs": num_rrdbs, "style_channels": bank["style_channels"],
            "channel_multiplier": bank["channel_multiplier"]}

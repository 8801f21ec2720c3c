"""mmagic ``GLEANStyleGANv2`` ``state_dict``s (mmagic/models/editors/glean/glean_styleganv2.py): the key table
of an architecture, and the architecture read off the keys and shapes."""

from __future__ import annotations

import re

from convert.mapping import TORCH_CONV, TORCH_LINEAR, KeyTable
from convert.stylegan2_rules import discriminator_table, generator_table, infer_generator_arch
from glean_jax.arch import GleanArch
from glean_jax.errors import UserError


def glean_table(arch: GleanArch) -> KeyTable:
    """Every key of ``GLEANStyleGANv2``: the bank under ``generator.`` (ours: ``bank``), then

    * ``encoder.0`` = Sequential(RRDBFeatureExtractor, Conv2d, LeakyReLU) -> ``encoder/rrdb``, ``encoder/rrdb_conv``;
    * ``encoder.k`` (k = 1 ..) = Sequential(stride-2 Conv2d, LeakyReLU, Conv2d, LeakyReLU) -> ``encoder/down_<r>``;
    * the last encoder block = Sequential(Conv2d, LeakyReLU, Flatten, Linear) -> ``encoder/to_latent``;
    * ``fusion_out.k`` / ``fusion_skip.k`` (resolution ``4 * 2**k``) -> ``fusion/feat_<r>`` / ``fusion/rgb_<r>``;
    * ``decoder.k`` = PixelShufflePack -> ``decoder/up_<2r>``; the last = Sequential(Conv2d, LeakyReLU, Conv2d)
      -> ``decoder/out_conv1``, ``decoder/out_conv2``.
    """
    rrdb = [("encoder.0.0.conv_first", "encoder/rrdb/conv_first", TORCH_CONV),
            ("encoder.0.0.conv_body", "encoder/rrdb/conv_body", TORCH_CONV)]
    rrdb += [(f"encoder.0.0.body.{i}.rdb{j}.conv{c}", f"encoder/rrdb/body_{i}/rdb{j}/conv{c}", TORCH_CONV)
             for i in range(arch.num_rrdbs) for j in (1, 2, 3) for c in range(1, 6)]
    layers = rrdb + [("encoder.0.1", "encoder/rrdb_conv", TORCH_CONV)]
    for k, r in enumerate(arch.encoder_sizes[1:], start=1):
        layers += [(f"encoder.{k}.0", f"encoder/down_{r}/conv_down", TORCH_CONV),
                   (f"encoder.{k}.2", f"encoder/down_{r}/conv", TORCH_CONV)]
    last = len(arch.encoder_sizes)
    layers += [(f"encoder.{last}.0", "encoder/to_latent/conv", TORCH_CONV),
               (f"encoder.{last}.3", "encoder/to_latent/linear", TORCH_LINEAR)]
    for k, r in enumerate(reversed(arch.encoder_sizes)):
        layers += [(f"fusion_out.{k}", f"fusion/feat_{r}", TORCH_CONV),
                   (f"fusion_skip.{k}", f"fusion/rgb_{r}", TORCH_CONV)]
    for k, r in enumerate(arch.upsample_sizes):
        layers.append((f"decoder.{k}.upsample_conv", f"decoder/up_{r}/conv", TORCH_CONV))
    last = len(arch.upsample_sizes)
    layers += [(f"decoder.{last}.0", "decoder/out_conv1", TORCH_CONV),
               (f"decoder.{last}.2", "decoder/out_conv2", TORCH_CONV)]
    bank = generator_table(arch.out_size, arch.num_mlps).prefixed("generator", "bank")
    return bank + KeyTable.of(layers)


def key_table(kind: str, arch: dict) -> KeyTable:
    """The key table of a model as ``model.json`` describes it (``kind`` and its architecture fields)."""
    if kind == "glean":
        return glean_table(GleanArch.from_dict(arch, "model.json generator"))
    if kind == "stylegan2_generator":
        return generator_table(int(arch["out_size"]), int(arch.get("num_mlps", 8)))
    if kind == "stylegan2_discriminator":
        return discriminator_table(int(arch["in_size"]))
    raise UserError(f"cannot convert a model of kind {kind!r} to or from mmagic")


def infer_glean_arch(state: dict, source: str) -> GleanArch:
    """The architecture of a ``GLEANStyleGANv2`` state_dict, from its tensor shapes."""
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
    if not blocks:
        raise UserError(f"{source}: no encoder.0.0.body.<i> keys; expected the RRDB blocks of a GLEANStyleGANv2")
    out_linear = f"encoder.{n_enc - 1}.3.weight"
    if out_linear not in state:
        raise UserError(f"{source}: missing key {out_linear!r} (the 4x4 latent Linear); expected a GLEANStyleGANv2 "
                        "state_dict")
    arch = GleanArch(in_size=in_size, out_size=bank["out_size"],
                     rrdb_channels=int(state["encoder.0.0.conv_first.weight"].shape[0]), num_rrdbs=max(blocks) + 1,
                     style_channels=bank["style_channels"], num_mlps=bank["num_mlps"],
                     channel_multiplier=bank["channel_multiplier"])
    lin = state[out_linear]
    if lin.shape[0] != arch.num_latents * arch.style_channels:
        raise UserError(f"{source}: {out_linear} has shape {tuple(lin.shape)}, expected "
                        f"({arch.num_latents * arch.style_channels}, 8192) for a {arch.out_size}x{arch.out_size} bank")
    return arch

"""Convert a glean-jax checkpoint back to an mmagic state_dict.

    python -m convert.to_mmagic CKPT_DIR OUT.pth [--format bare|mmagic]

``bare`` (default) writes the generator module's own state_dict -- a ``GLEANStyleGANv2`` or ``StyleGAN2Generator``
that loads with ``load_state_dict(strict=True)`` (with no generator, the discriminator's). ``mmagic`` writes a
``{'state_dict': ...}`` checkpoint as mmagic saves it: ``generator.*`` (+ ``generator_ema.*`` for a StyleGAN2 bank)
and ``discriminator.*``. Converting an mmagic file to glean-jax and back gives bit-identical tensors.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import numpy as np

from convert import mapping
from convert.glean_rules import key_table
from convert.torch_io import save_torch_state
from glean_jax.checkpoint import load_model
from glean_jax.errors import UserError, cli_entry


def module_state(kind: str, arch: dict, variables: dict) -> dict[str, np.ndarray]:
    """Our variables of one module -> its mmagic state_dict (FIR kernel buffers regenerated)."""
    return mapping.flax_to_torch(variables, key_table(kind, arch))


def checkpoint_state(meta: dict, variables: dict, fmt: str = "bare") -> dict[str, np.ndarray]:
    parts = {}
    for role in ("generator", "discriminator"):
        arch = meta.get(role)
        if arch:
            if role not in variables:
                raise UserError(f"checkpoint describes a {role} but holds no {role} variables")
            parts[role] = module_state(arch["kind"], arch, variables[role])
    if not parts:
        raise UserError("checkpoint holds neither a generator nor a discriminator")
    if fmt == "bare":
        return parts.get("generator", parts.get("discriminator"))
    out: dict[str, np.ndarray] = {}
    gen = parts.get("generator")
    if gen is not None:
        prefixes = ["generator_ema", "generator"] if meta["generator"]["kind"] == "stylegan2_generator" \
            else ["generator"]
        for p in prefixes:
            out.update({f"{p}.{k}": v for k, v in gen.items()})
    if "discriminator" in parts:
        out.update({f"discriminator.{k}": v for k, v in parts["discriminator"].items()})
    return out


def main(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m convert.to_mmagic", description=__doc__.split("\n\n")[0])
    ap.add_argument("ckpt_dir", help="glean-jax model directory")
    ap.add_argument("out", help="output .pth file (must not exist unless --overwrite)")
    ap.add_argument("--format", choices=("bare", "mmagic"), default="bare",
                    help="bare: the generator module's state_dict (default); mmagic: {'state_dict': ...} with "
                         "generator/discriminator prefixes")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    from pathlib import Path

    if Path(args.out).exists() and not args.overwrite:
        raise UserError(f"{args.out}: already exists; choose another name or pass --overwrite")
    t0 = time.perf_counter()
    meta, variables = load_model(args.ckpt_dir)
    state = checkpoint_state(meta, variables, args.format)
    save_torch_state(args.out, state, wrap=args.format == "mmagic")
    print(f"wrote {len(state)} tensors to {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    cli_entry(main)

"""Convert mmagic checkpoints to glean-jax checkpoints.

    python -m convert.mmagic SRC.pth OUT_DIR [--prefix P] [--allow-pickle] [--overwrite]

Detects what ``SRC.pth`` holds:

* an mmagic StyleGAN2 model checkpoint (``state_dict`` with ``generator.*``, ``generator_ema.*``,
  ``discriminator.*``, e.g. the official config-f weights converted by mmagic): the generator is taken from
  ``generator_ema`` (or ``--prefix``), the discriminator is kept;
* a released GLEAN restorer checkpoint (``generator.<GLEAN>``, ``discriminator.*``, ``perceptual_loss.*``) or a bare
  ``GLEANStyleGANv2`` state_dict: the GLEAN generator (with its latent bank and fixed noise) and the discriminator;
* a bare ``StyleGAN2Generator`` or ``StyleGAN2Discriminator`` state_dict.

Architectures are inferred from the tensor shapes; every key is converted or deliberately dropped (the non-EMA
generator of a StyleGAN2 checkpoint, the VGG of the perceptual loss, the regenerated FIR kernels), every shape is
checked. Output: ``OUT_DIR/model.json`` + ``OUT_DIR/variables`` (see :mod:`glean_jax.checkpoint`), written atomically.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from collections.abc import Sequence
from pathlib import Path

from convert import mapping
from convert.glean_rules import glean_table, infer_glean_arch
from convert.stylegan2_rules import (
    discriminator_table,
    generator_table,
    infer_discriminator_arch,
    infer_generator_arch,
)
from convert.torch_io import load_torch_state
from glean_jax.checkpoint import prepare_output_dir, save_model
from glean_jax.errors import UserError, cli_entry
from glean_jax.models import build as model_build


def _expected(kind: str, arch: dict) -> dict[str, tuple[int, ...]]:
    module = model_build.build(kind, arch)
    shapes = model_build.variable_shapes(kind, module)
    return {p: tuple(s.shape) for p, s in mapping.flatten_paths(shapes).items()}


def _strip(state: dict, prefix: str) -> dict:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in state.items() if k.startswith(prefix + ".")}


def convert_generator(state: dict, source: str) -> tuple[dict, dict]:
    arch = infer_generator_arch(state, source)
    return arch, mapping.torch_to_flax(state, generator_table(arch["out_size"], arch["num_mlps"]),
                                       _expected("stylegan2_generator", arch), source)


def convert_discriminator(state: dict, source: str) -> tuple[dict, dict]:
    arch = infer_discriminator_arch(state, source)
    return arch, mapping.torch_to_flax(state, discriminator_table(arch["in_size"]),
                                       _expected("stylegan2_discriminator", arch), source)


def convert_glean(state: dict, source: str) -> tuple[dict, dict]:
    """A bare GLEANStyleGANv2 state_dict -> (arch, variables)."""

    arch = infer_glean_arch(state, source)
    return arch.to_dict(), mapping.torch_to_flax(state, glean_table(arch), _expected("glean", arch.to_dict()),
                                                 source)


def detect(state: dict) -> str:
    """What a state_dict holds: 'stylegan2_model', 'glean_restorer', 'glean', 'stylegan2_generator',
    'stylegan2_discriminator' or 'unknown'."""
    tops = {k.split(".", 1)[0] for k in state}
    if "encoder" in tops and "generator" in tops:
        return "glean"
    if any(k.startswith("generator.encoder.") for k in state):
        return "glean_restorer"
    if tops & {"generator_ema", "generator", "discriminator"}:
        return "stylegan2_model"
    if "constant_input" in tops:
        return "stylegan2_generator"
    if "final_linear" in tops:
        return "stylegan2_discriminator"
    return "unknown"


def _unwrap_ema(gstate: dict, prefix: str, notes: list[str]) -> dict:
    """mmagic 1.x trains ``generator_ema`` as mmengine's ``ExponentialMovingAverage``: its state_dict is
    ``module.<generator keys>`` plus a ``steps`` counter. Returns the generator keys (others unchanged)."""
    inner = {k[7:]: v for k, v in gstate.items() if k.startswith("module.")}
    if inner and set(gstate) == {"steps"} | {"module." + k for k in inner}:
        notes.append(f"{prefix}: unwrapped mmengine's averaged model ({prefix}.module.*); dropped {prefix}.steps")
        return inner
    return gstate


def convert_state(state: dict, source: str, prefix: str | None = None) -> tuple[dict, dict, list[str]]:
    """Returns (meta, variables, notes) for a loaded state_dict."""
    what = detect(state)
    notes: list[str] = []
    meta: dict = {"source": {"file": Path(source).name, "detected": what}}
    variables: dict = {}
    if prefix is not None:
        if not any(k.startswith(prefix + ".") for k in state):
            tops = sorted({k.split(".", 1)[0] for k in state})
            raise UserError(f"{source}: no keys start with prefix {prefix + '.'!r}; top-level names are {tops}")
    if what == "unknown":
        tops = sorted({k.split(".", 1)[0] for k in state})[:8]
        raise UserError(f"{source}: not an mmagic StyleGAN2 or GLEAN checkpoint (top-level key names {tops}; expected "
                        "generator/generator_ema/discriminator, a GLEANStyleGANv2 or a StyleGAN2 module state_dict)")
    if what in ("stylegan2_model", "stylegan2_generator", "stylegan2_discriminator"):
        meta["kind"] = "stylegan2"
        if what == "stylegan2_model":
            gprefix = prefix or ("generator_ema" if any(k.startswith("generator_ema.") for k in state)
                                 else "generator")
            gstate = _unwrap_ema(_strip(state, gprefix), gprefix, notes)
            if not gstate:
                raise UserError(f"{source}: no generator keys (looked for prefix {gprefix!r})")
            dstate = _strip(state, "discriminator") if gprefix != "discriminator" else {}
            used = {gprefix, "discriminator"}
            dropped = sorted({k.split(".", 1)[0] for k in state} - used)
            for name in dropped:
                notes.append(f"dropped {sum(k.startswith(name + '.') for k in state)} keys under {name!r}")
            meta["source"]["prefix"] = gprefix
        else:
            gstate = state if what == "stylegan2_generator" else {}
            dstate = state if what == "stylegan2_discriminator" else {}
        meta["generator"] = meta["discriminator"] = None
        if gstate:
            arch, variables["generator"] = convert_generator(gstate, f"{source} [{meta['source'].get('prefix', '')}]"
                                                             if what == "stylegan2_model" else source)
            meta["generator"] = {"kind": "stylegan2_generator", **arch}
        if dstate:
            arch, variables["discriminator"] = convert_discriminator(dstate, source)
            meta["discriminator"] = {"kind": "stylegan2_discriminator", **arch}
        return meta, variables, notes
    # GLEAN
    meta["kind"] = "glean"
    if what == "glean_restorer":
        gprefix = prefix or "generator"
        gstate = _strip(state, gprefix)
        dstate = _strip(state, "discriminator")
        for name in sorted({k.split(".", 1)[0] for k in state} - {gprefix, "discriminator"}):
            notes.append(f"dropped {sum(k.startswith(name + '.') for k in state)} keys under {name!r}")
        meta["source"]["prefix"] = gprefix
    else:
        gstate, dstate = state, {}
    arch, variables["generator"] = convert_glean(gstate, source)
    meta["generator"] = {"kind": "glean", **arch}
    meta["discriminator"] = None
    if dstate:
        arch, variables["discriminator"] = convert_discriminator(dstate, source)
        meta["discriminator"] = {"kind": "stylegan2_discriminator", **arch}
    return meta, variables, notes


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert_file(src: str | Path, out_dir: str | Path, prefix: str | None = None, allow_pickle: bool = False,
                 overwrite: bool = False) -> tuple[dict, list[str]]:
    """Converts ``src`` into the model directory ``out_dir``; returns (meta, notes)."""
    parent = Path(out_dir).resolve().parent
    if parent.exists() and not parent.is_dir():   # (prepare_output_dir only checks that it exists)
        raise UserError(f"{out_dir}: {parent} is not a directory; expected OUT_DIR inside an existing folder")
    prepare_output_dir(out_dir, overwrite)   # fail before the (slow) load if the output is unusable
    state = load_torch_state(src, allow_pickle=allow_pickle)
    meta, variables, notes = convert_state(state, str(src), prefix)
    meta["source"]["sha256"] = _sha256(Path(src))
    save_model(out_dir, meta, variables, overwrite=overwrite)
    return meta, notes


def main(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m convert.mmagic", description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="mmagic checkpoint (.pth)")
    ap.add_argument("out_dir", help="output model directory (must be new or empty)")
    ap.add_argument("--prefix", default=None,
                    help="key prefix of the generator to take (default: generator_ema for StyleGAN2 checkpoints, "
                         "generator for GLEAN restorer checkpoints)")
    ap.add_argument("--allow-pickle", action="store_true",
                    help="load legacy pickled checkpoints that need arbitrary code (only for files you trust)")
    ap.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    meta, notes = convert_file(args.src, args.out_dir, args.prefix, args.allow_pickle, args.overwrite)
    for n in notes:
        print(f"note: {n}")
    parts = [f"{k}: " + ", ".join(f"{a}={b}" for a, b in v.items() if a != "kind")
             for k, v in (("generator", meta.get("generator")), ("discriminator", meta.get("discriminator"))) if v]
    print(f"converted {meta['source']['detected']} -> {args.out_dir} ({'; '.join(parts)}) "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    cli_entry(main)

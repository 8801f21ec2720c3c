"""Converts torchvision VGG16 weights to a glean-jax checkpoint for the perceptual loss.

    python -m convert.torchvision_vgg16 SRC.pth OUT_DIR [--allow-pickle] [--overwrite]

Accepted sources (detected from the keys):

* a torchvision ``vgg16`` state_dict (e.g. ``vgg16-397923af.pth``): ``features.{0,2,5,...,28}.{weight,bias}`` and
  ``classifier.{0,3,6}.{weight,bias}``;
* a GLEAN restorer checkpoint of mmagic/mmediting (``state_dict`` of ``SRGAN``): its
  ``perceptual_loss.vgg.vgg_layers.{idx}.{weight,bias}`` (the VGG mmagic trained with), the
  ``perceptual_loss.vgg.{mean,std}`` buffers (checked to be the ImageNet constants the loss hard-codes), and its
  ``generator.*`` / ``discriminator.*`` weights, which are dropped.

Only ``features[:22]`` (up to conv4_3, the layer GLEAN's perceptual loss uses) is kept; the deeper convs
(24, 26, 28) are shape-checked and dropped, the classifier is dropped by name. Every other key is an error, as is a
missing key or a wrong shape. The output is ``OUT_DIR/model.json`` (``kind: vgg16``) and the orbax variables
``{'vgg': {'params': {'conv1_1': {'kernel': HWIO, 'bias'}, 'conv1_2': ..., 'conv4_3': ...}}}`` in float32, each
torch ``<prefix><idx>.weight/bias`` under the standard VGG name of conv ``idx``
(:data:`glean_jax.models.vgg.VGG16_CONV_NAMES`: 0 -> ``conv1_1``, 2 -> ``conv1_2``, ..., 21 -> ``conv4_3``); it is
written atomically.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from glean_jax.errors import UserError, cli_entry
from glean_jax.models.vgg import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PERCEPTUAL_LAYER,
    VGG16_CONV_INDICES,
    conv_name,
    conv_shape_torch,
)

KEEP_UP_TO = int(PERCEPTUAL_LAYER)
TORCHVISION_PREFIX = "features."
MMAGIC_PREFIX = "perceptual_loss.vgg.vgg_layers."
MMAGIC_BUFFERS = {"perceptual_loss.vgg.mean": IMAGENET_MEAN, "perceptual_loss.vgg.std": IMAGENET_STD}
# Whole sub-models of a GLEAN restorer checkpoint that are not the VGG: dropped by prefix.
MMAGIC_DROPPED_PREFIXES = ("generator.", "generator_ema.", "discriminator.")
CLASSIFIER_KEYS = tuple(f"classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias"))


def key_table(prefix: str) -> list[tuple[str, str | None, str, tuple[int, ...]]]:
    """``(source key, destination layer or None if dropped, 'weight'|'bias', torch shape)`` for every conv; the
    destination is the conv's VGG name (:func:`~glean_jax.models.vgg.conv_name`: ``conv1_1``, ...)."""
    rows = []
    for idx in VGG16_CONV_INDICES:
        dst = conv_name(idx) if idx <= KEEP_UP_TO else None
        shape = conv_shape_torch(idx)
        rows.append((f"{prefix}{idx}.weight", dst, "weight", shape))
        rows.append((f"{prefix}{idx}.bias", dst, "bias", (shape[0],)))
    return rows


def _detect_format(state: dict[str, np.ndarray], src: Path) -> str:
    keys = list(state)
    if any(k.startswith(MMAGIC_PREFIX) for k in keys):
        return "mmagic"
    if any(k.startswith(TORCHVISION_PREFIX) for k in keys):
        return "torchvision"
    sample = ", ".join(keys[:4]) + (", ..." if len(keys) > 4 else "")
    raise UserError(f"{src}: no VGG16 weights found (keys: {sample}); expected a torchvision vgg16 state_dict "
                    f"({TORCHVISION_PREFIX}<idx>.weight) or a GLEAN restorer checkpoint ({MMAGIC_PREFIX}<idx>.weight)")


def _hint(key: str, prefix: str) -> str:
    m = re.fullmatch(re.escape(prefix) + r"(\d+)\.(\w+)", key)
    if m:
        idx, leaf = int(m.group(1)), m.group(2)
        if leaf in ("running_mean", "running_var", "num_batches_tracked") or (
                idx < 31 and idx not in VGG16_CONV_INDICES and leaf in ("weight", "bias")):
            return " (this looks like vgg16_bn or vgg19, not vgg16)"
        if idx > 30:
            return " (this looks like vgg19, not vgg16)"
    return ""


def convert_state(state: dict[str, np.ndarray], src: str | Path) -> tuple[dict, dict]:
    """Maps a loaded state_dict to ``(variables, source_info)``; raises UserError on any unexpected content."""
    src = Path(src)
    fmt = _detect_format(state, src)
    prefix = MMAGIC_PREFIX if fmt == "mmagic" else TORCHVISION_PREFIX
    consumed: set[str] = set()
    dropped: list[str] = []

    # Unknown keys first: a wrong architecture is clearer reported as such than as a missing key.
    known = {row[0] for row in key_table(prefix)}
    unexpected = []
    for k in state:
        if k in known:
            continue
        if fmt == "torchvision" and k in CLASSIFIER_KEYS:
            dropped.append(k)
        elif fmt == "mmagic" and k.startswith(MMAGIC_DROPPED_PREFIXES):
            dropped.append(k)
        elif fmt == "mmagic" and k in MMAGIC_BUFFERS:
            expected = np.asarray(MMAGIC_BUFFERS[k], np.float32).reshape(1, 3, 1, 1)
            v = state[k]
            if v.shape != expected.shape:
                raise UserError(f"{src}: {k} has shape {tuple(v.shape)}; expected {expected.shape}")
            if not np.allclose(v.astype(np.float64), expected, rtol=0, atol=1e-6):
                raise UserError(f"{src}: {k} is {v.reshape(-1).tolist()}; expected the ImageNet values "
                                f"{list(MMAGIC_BUFFERS[k])} that mmagic's PerceptualVGG uses and the loss hard-codes")
            consumed.add(k)
        else:
            unexpected.append(k)
    if unexpected:
        shown = ", ".join(unexpected[:5]) + (f", ... ({len(unexpected)} in all)" if len(unexpected) > 5 else "")
        raise UserError(f"{src}: unexpected key(s) {shown}{_hint(unexpected[0], prefix)}; expected only the "
                        f"{fmt} VGG16 keys {prefix}<idx>.weight/bias for idx in {list(VGG16_CONV_INDICES)}"
                        + (" and classifier.*" if fmt == "torchvision" else
                           ", perceptual_loss.vgg.mean/std, generator.*, discriminator.*"))

    params: dict[str, dict[str, np.ndarray]] = {}
    missing = []
    for key, dst, leaf, shape in key_table(prefix):
        if key not in state:
            # A GLEAN checkpoint only holds vgg_layers up to the deepest layer its loss uses (21).
            if dst is not None or fmt == "torchvision":
                missing.append(key)
            continue
        v = state[key]
        if tuple(v.shape) != shape:
            raise UserError(f"{src}: {key} has shape {tuple(v.shape)}; expected {shape} "
                            f"(VGG16 {conv_name(int(key.split('.')[-2]))})")
        if v.dtype.kind != "f":
            raise UserError(f"{src}: {key} has dtype {v.dtype}; expected floating-point weights")
        if dst is None:
            dropped.append(key)
        else:
            arr = v.astype(np.float32)
            params.setdefault(dst, {})["kernel" if leaf == "weight" else "bias"] = (
                np.ascontiguousarray(arr.transpose(2, 3, 1, 0)) if leaf == "weight" else arr)
            consumed.add(key)
    if missing:
        shown = ", ".join(missing[:5]) + (f", ... ({len(missing)} in all)" if len(missing) > 5 else "")
        raise UserError(f"{src}: missing key(s) {shown}; expected a complete {fmt} VGG16 state_dict")
    assert consumed.isdisjoint(dropped) and consumed.union(dropped) == set(state), "each key consumed xor dropped"
    info = {"file": str(src), "format": fmt, "consumed_keys": len(consumed), "dropped_keys": len(dropped),
            "dropped": sorted({k.split(".")[0] for k in dropped})}
    return {"vgg": {"params": params}}, info


def convert(src: str | Path, out_dir: str | Path, allow_pickle: bool = False, overwrite: bool = False) -> dict:
    """Converts ``src`` and writes the checkpoint to ``out_dir``; returns the meta written to model.json."""
    from convert.torch_io import load_torch_state
    from glean_jax.checkpoint import check_finite, prepare_output_dir, save_model

    prepare_output_dir(out_dir, overwrite)  # fail before reading a large file
    try:
        state = load_torch_state(src, allow_pickle=allow_pickle)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - torch's unpickler raises e.g. IndexError on some non-checkpoint files
        raise UserError(f"{src}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from e
    variables, info = convert_state(state, src)
    check_finite(variables, str(src))
    n_params = int(sum(a.size for layer in variables["vgg"]["params"].values() for a in layer.values()))
    meta = {"kind": "vgg16",
            "vgg": {"layers": f"features[:{KEEP_UP_TO + 1}]", "perceptual_layer": PERCEPTUAL_LAYER,
                    "conv_indices": [i for i in VGG16_CONV_INDICES if i <= KEEP_UP_TO], "num_params": n_params},
            "source": info}
    save_model(out_dir, meta, variables, overwrite=overwrite)
    return meta


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m convert.torchvision_vgg16", description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="torchvision vgg16 .pth, or a GLEAN restorer .pth holding perceptual_loss.vgg.*")
    p.add_argument("out_dir", help="output checkpoint directory (must be new or empty unless --overwrite)")
    p.add_argument("--allow-pickle", action="store_true", help="allow legacy pickled checkpoints (trusted files only)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    args = p.parse_args(argv)
    meta = convert(args.src, args.out_dir, allow_pickle=args.allow_pickle, overwrite=args.overwrite)
    src = meta["source"]
    print(f"wrote {args.out_dir}: VGG16 {meta['vgg']['layers']} ({meta['vgg']['num_params']:,} params) from a "
          f"{src['format']} checkpoint; {src['consumed_keys']} keys used, {src['dropped_keys']} dropped "
          f"({', '.join(src['dropped']) or 'none'})")
    return 0


if __name__ == "__main__":
    cli_entry(main)

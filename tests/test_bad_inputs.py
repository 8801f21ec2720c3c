"""The bad-input corpus: one table of user mistakes across every command, run through the real CLI entry points
(``run_cli(main, argv)``, what ``python -m ...`` runs through ``cli_entry``; one subprocess per command checks the
``python -m`` wiring itself).

For every ``error`` case: exit code 2, exactly one line on stderr (``error: ...``) naming the file/key/value and what
was expected, no traceback (with ``--debug`` the traceback is shown and the same line ends it), and no partial output:
the case's folder is byte-for-byte unchanged. ``report`` cases are the commands that list every problem of a
dataset at once (``data.check``; ``data.prepare`` with bad images): exit 2, one line per bad file naming it, no
traceback, nothing partial written. ``ok`` cases are inputs that must be accepted (gray, RGBA, 16-bit, palette).

All files are generated here (``tests/corpus.py``); models are tiny random GLEAN 4 -> 8 / StyleGAN2 8x8 filled
with numpy random values (no compilation), saved as mmagic state_dicts and converted once per module.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from glean_jax.errors import run_cli
from tests import corpus as C

ROOT = Path(__file__).resolve().parent.parent
GLEAN_ARCH = {"in_size": 4, "out_size": 8, "rrdb_channels": 8, "num_rrdbs": 1, "style_channels": 32,
              "channel_multiplier": 2}
SG_ARCH = {"out_size": 8, "style_channels": 32, "num_mlps": 2, "channel_multiplier": 2}


# --------------------------------------------------------------------------------------------------- fixtures
def _random_variables(kind: str, arch: dict, seed: int) -> dict:
    """Random float32 variables of a model (shapes from ``jax.eval_shape``: nothing is compiled)."""
    import jax

    from glean_jax.models.build import build, variable_shapes

    rng = np.random.default_rng(seed)
    shapes = variable_shapes(kind, build(kind, arch))
    return jax.tree_util.tree_map(lambda s: (0.05 * rng.standard_normal(s.shape)).astype(np.float32), shapes)


@pytest.fixture(scope="module")
def models(module_tmp) -> dict[str, Path]:
    """mmagic state_dict files and converted model directories: GLEAN 4->8 and a StyleGAN2 8x8 generator."""
    from convert.mmagic import convert_file
    from convert.to_mmagic import module_state
    from convert.torch_io import save_torch_state

    root = module_tmp("corpus_models")
    glean_sd = module_state("glean", GLEAN_ARCH, _random_variables("glean", GLEAN_ARCH, 0))
    sg_sd = module_state("stylegan2_generator", SG_ARCH, _random_variables("stylegan2_generator", SG_ARCH, 1))
    save_torch_state(root / "glean.pth", glean_sd)
    save_torch_state(root / "sg.pth", sg_sd)
    convert_file(root / "glean.pth", root / "glean")
    convert_file(root / "sg.pth", root / "sg")
    return {"root": root, "glean_pth": root / "glean.pth", "sg_pth": root / "sg.pth", "glean": root / "glean",
            "sg": root / "sg", "glean_sd": glean_sd, "sg_sd": sg_sd}


# ------------------------------------------------------------------------------------------------ the table
@dataclass
class Case:
    argv: list
    needles: list[str]
    mode: str = "error"            # error | report | ok
    check: Callable[[], None] | None = None   # extra assertions after the run (ok cases)
    report_lines: int = 1           # report mode: lines naming a problem
    allowed_outputs: Callable[[str], bool] | None = None   # report mode: new paths that may appear


@dataclass
class Ctx:
    d: Path                          # the case's own folder (snapshotted)
    m: dict                          # shared models (read-only)
    notes: dict = field(default_factory=dict)


CASES: dict[str, tuple[str, Callable[[Ctx], Case]]] = {}


def case(module: str):
    def register(fn):
        CASES[f"{module.split('.')[-1]}-{fn.__name__}"] = (module, fn)
        return fn
    return register


def _torch_save(path: Path, state: dict) -> Path:
    from convert.torch_io import save_torch_state

    save_torch_state(path, {k: np.ascontiguousarray(v) for k, v in state.items()})
    return path


def _copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_meta(ckpt: Path, fn) -> Path:
    meta = json.loads((ckpt / "model.json").read_text())
    fn(meta)
    (ckpt / "model.json").write_text(json.dumps(meta))
    return ckpt


def _save_variables(ckpt: Path, m: dict, mutate) -> Path:
    """A copy of the GLEAN model directory whose variables went through ``mutate(variables)``."""
    from glean_jax.checkpoint import load_model, save_model

    meta, variables = load_model(m["glean"])
    mutate(variables)
    save_model(ckpt, meta, variables)
    return ckpt


def _png(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(C.encode(img, path.suffix if path.suffix in (".png", ".jpg", ".bmp") else ".png"))
    return path


def _lq(t: Ctx, name: str = "a.png", size: int = 4, seed: int = 0) -> Path:
    return _png(t.d / "in" / name, C.random_rgb(size, size, seed))


# --- convert.mmagic -----------------------------------------------------------------------------------------
@case("convert.mmagic")
def png_named_pth(t):
    src = t.d / "model.pth"
    src.write_bytes(C.encode(C.random_rgb(8, 8)))
    return Case([src, t.d / "out"], [str(src), "not a readable PyTorch checkpoint", "expected a .pth file"])


@case("convert.mmagic")
def truncated_glean_pth(t):
    src = t.d / "glean.pth"
    src.write_bytes(t.m["glean_pth"].read_bytes()[: 1 << 20])
    return Case([src, t.d / "out"], [str(src), "truncated"])


@case("convert.mmagic")
def npy_named_pth(t):
    src = t.d / "weights.pth"
    with open(src, "wb") as f:
        np.save(f, np.zeros((3, 3), np.float32))
    return Case([src, t.d / "out"], [str(src), "not a readable PyTorch checkpoint", "expected"])


@case("convert.mmagic")
def glean_renamed_key(t):
    sd = dict(t.m["glean_sd"])
    key = next(k for k in sd if k.startswith("encoder."))
    sd[key.replace("encoder.", "encoderX.", 1)] = sd.pop(key)
    return Case([_torch_save(t.d / "renamed.pth", sd), t.d / "out"], ["renamed.pth", "encoder"])


@case("convert.mmagic")
def glean_wrong_geometry_tensor(t):
    sd = dict(t.m["glean_sd"])
    key = next(k for k in sd if k.startswith("decoder.") and k.endswith("weight"))
    sd[key] = np.zeros(tuple(s + 1 for s in sd[key].shape), np.float32)
    return Case([_torch_save(t.d / "geom.pth", sd), t.d / "out"], ["geom.pth", key, "expected"])


@case("convert.mmagic")
def glean_nan_weight(t):
    sd = dict(t.m["glean_sd"])
    key = next(k for k in sd if k.startswith("fusion_out.") and k.endswith("weight"))
    sd[key] = sd[key].copy()
    sd[key].flat[0] = np.nan
    return Case([_torch_save(t.d / "nan.pth", sd), t.d / "out"], ["nan.pth", "fusion_out", "NaN", "expected finite"])


@case("convert.mmagic")
def output_below_a_regular_file(t):
    (t.d / "afile").write_text("x")
    return Case([t.m["sg_pth"], t.d / "afile" / "out"], ["afile", "not a directory"])


# --- convert.to_mmagic ---------------------------------------------------------------------------------------
@case("convert.to_mmagic")
def model_json_not_json(t):
    ckpt = _copy_model(t.m["sg"], t.d / "ckpt")
    (ckpt / "model.json").write_text("{ not json")
    return Case([ckpt, t.d / "out.pth"], ["model.json", "corrupt"])


@case("convert.to_mmagic")
def model_json_wrong_version(t):
    ckpt = _edit_meta(_copy_model(t.m["sg"], t.d / "ckpt"), lambda m: m.update(version=99))
    return Case([ckpt, t.d / "out.pth"], ["model.json", "99", "expected"])


@case("convert.to_mmagic")
def variables_missing(t):
    ckpt = _copy_model(t.m["sg"], t.d / "ckpt")
    shutil.rmtree(ckpt / "variables")
    return Case([ckpt, t.d / "out.pth"], [str(ckpt), "incomplete"])


@case("convert.to_mmagic")
def variables_corrupt(t):
    ckpt = _copy_model(t.m["sg"], t.d / "ckpt")
    for f in (ckpt / "variables").rglob("*"):
        if f.is_file() and f.stat().st_size > 1000:
            f.write_bytes(b"\0" * 64)
    return Case([ckpt, t.d / "out.pth"], ["variables", "could not read"])


@case("convert.to_mmagic")
def out_pth_below_a_regular_file(t):
    (t.d / "afile").write_text("x")
    return Case([t.m["sg"], t.d / "afile" / "out.pth"], ["afile", "is not a folder", "expected"])


# --- convert.torchvision_vgg16 --------------------------------------------------------------------------------
@case("convert.torchvision_vgg16")
def glean_without_perceptual_loss(t):
    return Case([t.m["glean_pth"], t.d / "vgg"], ["glean.pth", "expected"])


@case("convert.torchvision_vgg16")
def zero_byte(t):
    (t.d / "vgg16.pth").write_bytes(b"")
    return Case([t.d / "vgg16.pth", t.d / "vgg"], ["vgg16.pth", "0 bytes"])


@case("convert.torchvision_vgg16")
def wrong_shapes(t):
    sd = {f"features.{i}.weight": np.zeros((4, 3, 3, 3), np.float32) for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21,
                                                                              24, 26, 28)}
    sd.update({k.replace("weight", "bias"): np.zeros(4, np.float32) for k in list(sd)})
    return Case([_torch_save(t.d / "vgg16.pth", sd), t.d / "vgg"], ["vgg16.pth", "features.0.weight", "expected"])


# --- glean_jax.generate -----------------------------------------------------------------------------------------
@case("glean_jax.generate")
def z_wrong_width(t):
    np.save(t.d / "z.npy", np.zeros((2, 7), np.float32))
    return Case(["--checkpoint", t.m["sg"], "--z", t.d / "z.npy", "--out", t.d / "g.png"], ["z.npy", "(2, 7)",
                                                                                              "expected"])


@case("glean_jax.generate")
def z_text_file(t):
    (t.d / "z.npy").write_text("0.1 0.2 0.3\n")
    return Case(["--checkpoint", t.m["sg"], "--z", t.d / "z.npy", "--out", t.d / "g.png"],
                ["z.npy", "not a .npy file", "expected"])


@case("glean_jax.generate")
def w_plus_nan(t):
    w = np.zeros((1, 4, 32), np.float32)   # (N, num_latents, style_channels) of an 8x8 bank
    w[0, 2, 3] = np.nan
    np.save(t.d / "w.npy", w)
    return Case(["--checkpoint", t.m["sg"], "--w-plus", t.d / "w.npy", "--out", t.d / "g.png"],
                ["w.npy", "non-finite", "expected"])


@case("glean_jax.generate")
def nan_weights_in_checkpoint(t):
    ckpt = _save_variables(t.d / "ckpt", t.m, lambda v: _poison_first(v["generator"]["params"]))
    return Case(["--checkpoint", ckpt, "--seeds", "0", "--out", t.d / "g.png"], [str(ckpt), "NaN", "expected"])


@case("glean_jax.generate")
def renamed_bank_variable(t):
    from glean_jax.checkpoint import load_model, save_model

    meta, v = load_model(t.m["sg"])
    p = v["generator"]["params"]
    k = sorted(p)[-1]
    p[k + "_v2"] = p.pop(k)
    save_model(t.d / "ckpt", meta, v)
    return Case(["--checkpoint", t.d / "ckpt", "--seeds", "0", "--out", t.d / "g.png"], [str(t.d / "ckpt"), k,
                                                                                          "expected"])


@case("glean_jax.generate")
def out_below_a_regular_file(t):
    (t.d / "afile").write_text("x")
    return Case(["--checkpoint", t.m["sg"], "--seeds", "0", "--out", t.d / "afile" / "g.png"],
                ["afile", "is not a folder"])


@case("glean_jax.generate")
def truncation_out_of_range(t):
    return Case(["--checkpoint", t.m["sg"], "--truncation", "1.5", "--out", t.d / "g.png"], ["--truncation 1.5",
                                                                                               "expected"])


# --- glean_jax.upscale ------------------------------------------------------------------------------------------
@case("glean_jax.upscale")
def huge_png_header(t):
    p = t.d / "in" / "huge.png"
    p.parent.mkdir()
    p.write_bytes(C.huge_png())
    return Case(["--checkpoint", t.m["glean"], p, "--output", t.d / "out"], [str(p), "10000000000 pixels", "expected"])


@case("glean_jax.upscale")
def huge_png_header_with_resize(t):
    p = t.d / "in" / "huge.png"
    p.parent.mkdir()
    p.write_bytes(C.huge_png())
    return Case(["--checkpoint", t.m["glean"], p, "--resize", "--output", t.d / "out"],
                [str(p), "10000000000 pixels", "expected"])


@case("glean_jax.upscale")
def truncated_jpeg(t):
    p = t.d / "in" / "a.jpg"
    p.parent.mkdir()
    p.write_bytes(C.encode(C.random_rgb(4, 4), ".jpg")[:40])
    return Case(["--checkpoint", t.m["glean"], p, "--output", t.d / "out"], [str(p), "expected"])


@case("glean_jax.upscale")
def zero_byte_png(t):
    p = t.d / "in" / "a.png"
    p.parent.mkdir()
    p.write_bytes(b"")
    return Case(["--checkpoint", t.m["glean"], p, "--output", t.d / "out"], [str(p), "expected"])


@case("glean_jax.upscale")
def text_with_png_extension(t):
    p = t.d / "in" / "notes.png"
    p.parent.mkdir()
    p.write_text("hello, I am not an image\n")
    return Case(["--checkpoint", t.m["glean"], p, "--output", t.d / "out"], [str(p), "expected"])


@case("glean_jax.upscale")
def stylegan2_checkpoint(t):
    return Case(["--checkpoint", t.m["sg"], _lq(t), "--output", t.d / "out"], [str(t.m["sg"]), "expected a GLEAN"])


@case("glean_jax.upscale")
def nan_weights(t):
    ckpt = _save_variables(t.d / "ckpt", t.m, lambda v: _poison_first(v["generator"]["params"]))
    return Case(["--checkpoint", ckpt, _lq(t), "--output", t.d / "out"], [str(ckpt), "NaN"])


def _poison_first(tree: dict) -> None:
    leaf = tree
    while isinstance(leaf, dict):
        leaf = leaf[sorted(leaf)[0]]
    leaf.flat[0] = np.nan


@case("glean_jax.upscale")
def renamed_variable(t):
    def rename(v):
        p = v["generator"]["params"]
        k = sorted(p)[0]
        p[k + "_renamed"] = p.pop(k)
    ckpt = _save_variables(t.d / "ckpt", t.m, rename)
    return Case(["--checkpoint", ckpt, _lq(t), "--output", t.d / "out"], [str(ckpt), "expected"])


@case("glean_jax.upscale")
def geometry_in_model_json_differs_from_weights(t):
    ckpt = _edit_meta(_copy_model(t.m["glean"], t.d / "ckpt"),
                      lambda m: m["generator"].update(in_size=8, out_size=16))
    return Case(["--checkpoint", ckpt, _lq(t, size=8), "--output", t.d / "out"], [str(ckpt), "expected"])


@case("glean_jax.upscale")
def output_folder_below_a_regular_file(t):
    (t.d / "afile").write_text("x")
    return Case(["--checkpoint", t.m["glean"], _lq(t), "--output", t.d / "afile" / "out"],
                ["--output", "afile", "cannot create"])


@case("glean_jax.upscale")
def gray_rgba_16bit_palette_are_accepted(t):
    rgb = C.random_rgb(4, 4, 3)
    inp = t.d / "in"
    _png(inp / "gray.png", rgb[..., 0])
    _png(inp / "rgba.png", np.dstack([rgb, rgb[..., :1]]))
    _png(inp / "16bit.png", rgb.astype(np.uint16) * 257)
    inp.joinpath("palette.png").write_bytes(C.palette_png(rgb))
    _png(inp / "rgb.png", rgb)

    def check():
        from glean_jax.images import read_rgb

        outs = {p.name: read_rgb(p) for p in sorted((t.d / "out").iterdir())}
        assert sorted(outs) == ["16bit.png", "gray.png", "palette.png", "rgb.png", "rgba.png"], sorted(outs)
        assert all(o.shape == (8, 8, 3) for o in outs.values())
        # RGBA drops alpha and 16-bit keeps the high byte (x * 257 >> 8 == x): both equal the RGB input's output
        assert np.array_equal(outs["rgba.png"], outs["rgb.png"]) and np.array_equal(outs["16bit.png"], outs["rgb.png"])
    return Case(["--checkpoint", t.m["glean"], inp, "--output", t.d / "out", "--batch-size", "5"],
                ["upscaled 5 images 4->8"], mode="ok", check=check)


# --- glean_jax.evaluate -----------------------------------------------------------------------------------------
def _pair(t: Ctx, pred: np.ndarray | bytes, gt: np.ndarray | bytes, name: str = "a.png") -> tuple[Path, Path]:
    for sub, x in (("pred", pred), ("gt", gt)):
        p = t.d / sub / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(x if isinstance(x, bytes) else C.encode(x))
    return t.d / "pred", t.d / "gt"


@case("glean_jax.evaluate")
def empty_pred_folder(t):
    (t.d / "pred").mkdir()
    _png(t.d / "gt" / "a.png", C.random_rgb(8, 8))
    return Case(["--pred-dir", t.d / "pred", "--gt-dir", t.d / "gt"], [str(t.d / "pred"), "expected"])


@case("glean_jax.evaluate")
def pred_size_differs_from_gt(t):
    p, g = _pair(t, C.random_rgb(8, 8), C.random_rgb(16, 16))
    return Case(["--pred-dir", p, "--gt-dir", g], ["a.png", "8x8", "16x16"])


@case("glean_jax.evaluate")
def corrupt_gt_png(t):
    good = C.encode(C.random_rgb(16, 16))
    bad = bytearray(good)
    bad[40:60] = b"\xff" * 20   # inside IDAT: CRC and zlib stream broken
    p, g = _pair(t, C.random_rgb(16, 16), bytes(bad))
    return Case(["--pred-dir", p, "--gt-dir", g], [str(g / "a.png"), "cannot decode", "expected"])


@case("glean_jax.evaluate")
def huge_pred_header(t):
    p, g = _pair(t, C.huge_png(), C.random_rgb(16, 16))
    return Case(["--pred-dir", p, "--gt-dir", g], [str(p / "a.png"), "10000000000 pixels", "expected"])


@case("glean_jax.evaluate")
def json_below_a_regular_file(t):
    p, g = _pair(t, C.random_rgb(16, 16), C.random_rgb(16, 16, 1))
    (t.d / "afile").write_text("x")
    return Case(["--pred-dir", p, "--gt-dir", g, "--json", t.d / "afile" / "r.json"],
                ["--json", "afile", "is not a folder", "expected"])


@case("glean_jax.evaluate")
def checkpoint_geometry_differs_from_config(t):
    return Case(["--checkpoint", t.m["glean"], "--config", ROOT / "configs" / "cat_x8.py"],
                [str(t.m["glean"]), "4->8", "expected"])


@case("glean_jax.evaluate")
def config_unknown_field(t):
    return Case(["--checkpoint", t.m["glean"], "--config", ROOT / "configs" / "demo.py", "--config.data.nope=1"],
                ["--config.data.nope", "no field"])


@case("glean_jax.evaluate")
def config_wrong_type(t):
    return Case(["--checkpoint", t.m["glean"], "--config", ROOT / "configs" / "demo.py",
                 "--config.data.in_size=four"], ["config.data.in_size", "'four'", "expected an integer"])


# --- glean_jax.train --------------------------------------------------------------------------------------------
def _train(t: Ctx, *extra: str) -> list:
    return ["--config", ROOT / "configs" / "demo.py", "--workdir", t.d / "run", "--progress=false", *extra]


@case("glean_jax.train")
def unknown_config_field(t):
    return Case(_train(t, "--config.optim.learning_rate=0.1"), ["learning_rate", "unknown config field"])


@case("glean_jax.train")
def wrong_type(t):
    return Case(_train(t, "--config.total_steps=ten"), ["command line", "expected"])


@case("glean_jax.train")
def impossible_geometry(t):
    return Case(_train(t, "--config.model.in_size=6", "--config.data.in_size=6"),
                ["config.model.in_size=6", "power of two"])


@case("glean_jax.train")
def batch_not_divisible_by_discriminator_shards(t):
    return Case(_train(t, "--config.batch_size=3", "--config.model.mbstd_shards=2"),
                ["config.batch_size=3", "mbstd_shards=2", "expected"])


@case("glean_jax.train")
def missing_data_folder(t):
    return Case(_train(t, "--config.data.source=folder", f"--config.data.root={t.d / 'nodata'}"),
                ["config.data.root", "nodata", "expected"])


@case("glean_jax.train")
def pretrained_is_a_file_but_not_a_checkpoint(t):
    notes = t.d / "bank.txt"
    notes.write_text("not a checkpoint")
    return Case(_train(t, f"--config.pretrained.stylegan2={notes}"),
                ["config.pretrained.stylegan2", "bank.txt", "not a .pth file", "expected"])


@case("glean_jax.train")
def pretrained_glean_of_another_geometry(t):
    return Case(_train(t, f"--config.pretrained.glean={t.m['glean']}"),
                ["config.pretrained.glean", str(t.m["glean"]), "out_size=8 but the config needs 16", "expected"])


@case("glean_jax.train")
def pretrained_glean_of_another_kind(t):
    return Case(_train(t, f"--config.pretrained.glean={t.m['sg']}"),
                ["config.pretrained.glean", str(t.m["sg"]), "kind is 'stylegan2'", "expected 'glean'"])


@case("glean_jax.train")
def pretrained_glean_with_a_discriminator_of_another_size(t):
    """A GLEAN restorer checkpoint whose generator fits the config (4 -> 8) but whose discriminator is for 16x16."""
    from convert.mmagic import convert_file
    from convert.to_mmagic import module_state

    d_arch = {"in_size": 16, "channel_multiplier": 2}
    d_sd = module_state("stylegan2_discriminator", d_arch, _random_variables("stylegan2_discriminator", d_arch, 2))
    state = {**{f"generator.{k}": v for k, v in t.m["glean_sd"].items()},
             **{f"discriminator.{k}": v for k, v in d_sd.items()}}
    convert_file(_torch_save(t.d / "restorer.pth", state), t.d / "glean_d16")
    geometry = [f"--config.{g}.{k}={v}" for g in ("model", "data") for k, v in (("in_size", 4), ("out_size", 8))]
    return Case(_train(t, *geometry, "--config.model.rrdb_channels=8", "--config.model.style_channels=32",
                       f"--config.pretrained.glean={t.d / 'glean_d16'}"),
                ["config.pretrained.glean", "glean_d16", "discriminator has in_size=16 but the config needs 8",
                 "expected"])


@case("glean_jax.train")
def config_file_with_syntax_error(t):
    (t.d / "bad_config.py").write_text("def get_config(:\n")
    return Case(["--config", t.d / "bad_config.py", "--workdir", t.d / "run"], ["--config", "expected"])


@case("glean_jax.train")
def workdir_below_a_regular_file(t):
    (t.d / "afile").write_text("x")
    return Case(["--config", ROOT / "configs" / "demo.py", "--workdir", t.d / "afile" / "run"], ["afile",
                                                                                                   "expected"])


# --- glean_jax.data.prepare -------------------------------------------------------------------------------------
@case("glean_jax.data.prepare")
def empty_gt_folder(t):
    (t.d / "gt").mkdir()
    return Case(["--gt-dir", t.d / "gt", "--out-dir", t.d / "out", "--scale", "2", "--workers", "1"],
                [str(t.d / "gt"), "no images"])


@case("glean_jax.data.prepare")
def size_not_multiple_of_scale(t):
    _png(t.d / "gt" / "a.png", C.random_rgb(16, 16))
    return Case(["--gt-dir", t.d / "gt", "--out-dir", t.d / "out", "--scale", "3", "--size", "16", "--workers", "1"],
                ["--size 16", "expected"])


@case("glean_jax.data.prepare")
def meta_info_lists_a_missing_image(t):
    _png(t.d / "gt" / "a.png", C.random_rgb(16, 16))
    (t.d / "meta.txt").write_text("a.png (16,16,3)\nb.png (16,16,3)\n")
    return Case(["--gt-dir", t.d / "gt", "--out-dir", t.d / "out", "--scale", "2", "--meta-info", t.d / "meta.txt",
                 "--workers", "1", "--no-progress"], ["meta.txt line 2", "no image named b.", "missing"])


@case("glean_jax.data.prepare")
def out_dir_below_a_regular_file(t):
    _png(t.d / "gt" / "a.png", C.random_rgb(16, 16))
    (t.d / "afile").write_text("x")
    return Case(["--gt-dir", t.d / "gt", "--out-dir", t.d / "afile" / "out", "--scale", "2", "--workers", "1",
                 "--no-progress"], ["afile", "cannot create"])


@case("glean_jax.data.prepare")
def truncated_gt_image(t):
    _png(t.d / "gt" / "a.png", C.random_rgb(16, 16))
    b = t.d / "gt" / "b.png"
    b.write_bytes(C.encode(C.random_rgb(16, 16, 1))[:60])
    return Case(["--gt-dir", t.d / "gt", "--out-dir", t.d / "out", "--scale", "2", "--workers", "1",
                 "--no-progress"], [str(b)], mode="report",
                allowed_outputs=lambda k: k in ("out", "out/GT", "out/BIx2_down", "out/GT/a.png",
                                                "out/BIx2_down/a.png"))


# --- glean_jax.data.check ---------------------------------------------------------------------------------------
def _dataset(t: Ctx, n: int = 2) -> Path:
    for i in range(n):
        _png(t.d / "ds" / "GT" / f"{i}.png", C.random_rgb(8, 8, i))
        _png(t.d / "ds" / "LQ" / f"{i}.png", C.random_rgb(4, 4, i))
    return t.d / "ds"


def _check_args(ds: Path, *extra) -> list:
    return [ds, "--lq-dir", "LQ", "--gt-dir", "GT", "--in-size", "4", "--out-size", "8", "--threads", "1", *extra]


@case("glean_jax.data.check")
def truncated_gt(t):
    ds = _dataset(t)
    p = ds / "GT" / "1.png"
    p.write_bytes(p.read_bytes()[:50])
    return Case(_check_args(ds), [str(p)], mode="report")


@case("glean_jax.data.check")
def wrong_lq_size(t):
    ds = _dataset(t)
    p = _png(ds / "LQ" / "0.png", C.random_rgb(5, 4))
    return Case(_check_args(ds), [str(p), "4x5", "expected 4x4"], mode="report")


@case("glean_jax.data.check")
def huge_header(t):
    ds = _dataset(t)
    p = ds / "GT" / "0.png"
    p.write_bytes(C.huge_png())
    return Case(_check_args(ds), [str(p), "10000000000 pixels", "expected"], mode="report")


@case("glean_jax.data.check")
def meta_info_missing_entry(t):
    ds = _dataset(t)
    (ds / "meta.txt").write_text("0.png (8,8,3)\n1.png (8,8,3)\n2.png (8,8,3)\n")
    return Case(_check_args(ds, "--meta-info", "meta.txt"), ["meta.txt line 3", "2.png", "not found"],
                mode="report", report_lines=2)


@case("glean_jax.data.check")
def zero_byte_lq(t):
    ds = _dataset(t)
    p = ds / "LQ" / "1.png"
    p.write_bytes(b"")
    return Case(_check_args(ds), [str(p)], mode="report")


@case("glean_jax.data.check")
def gray_rgba_16bit_palette_are_noted_and_accepted(t):
    ds = t.d / "ds"
    rgb8, rgb4 = C.random_rgb(8, 8), C.random_rgb(4, 4)
    imgs = {"gray": (rgb8[..., 0], rgb4[..., 0]), "rgba": (np.dstack([rgb8, rgb8[..., :1]]),
                                                         np.dstack([rgb4, rgb4[..., :1]])),
            "16bit": (rgb8.astype(np.uint16) * 257, rgb4.astype(np.uint16) * 257)}
    for name, (gt, lq) in imgs.items():
        _png(ds / "GT" / f"{name}.png", gt)
        _png(ds / "LQ" / f"{name}.png", lq)
    (ds / "GT" / "palette.png").write_bytes(C.palette_png(rgb8))
    (ds / "LQ" / "palette.png").write_bytes(C.palette_png(rgb4))
    return Case(_check_args(ds), ["4 LQ/GT pairs listed, 0 problem(s)", "OK"], mode="ok")


MODULE_MAINS = {}


def _main(module: str):
    if module not in MODULE_MAINS:
        import importlib

        MODULE_MAINS[module] = importlib.import_module(module).main
    return MODULE_MAINS[module]


# commands run in a subprocess (absl flags are process-global: glean_jax.train parses them once per process)
SUBPROCESS = {"glean_jax.train"}


def _subprocess(module: str, argv: list) -> tuple[int, str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", module, *map(str, argv)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    return r.returncode, r.stdout, r.stderr


def _run(module: str, argv: list, capsys) -> tuple[int, str, str]:
    if module in SUBPROCESS:
        return _subprocess(module, argv)
    rc = run_cli(_main(module), [str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _shared_state(m: dict) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in m["root"].rglob("*")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name, models, tmp_path, capsys):
    module, build = CASES[name]
    t = Ctx(tmp_path / "case", models)
    t.d.mkdir()
    c = build(t)
    before, shared = C.tree_snapshot(t.d), _shared_state(models)
    rc, out, err = _run(module, c.argv, capsys)
    after = C.tree_snapshot(t.d)
    assert "Traceback" not in out + err, err
    if c.mode == "ok":
        assert rc == 0, err
        text = out + err
        for n in c.needles:
            assert n in text, (n, text)
        if c.check is not None:
            c.check()
        return
    assert rc == 2, (rc, out, err)
    changed = sorted(k for k in set(after) | set(before) if after.get(k, b"?") != before.get(k, b"?"))
    if c.allowed_outputs is None:
        assert not changed, f"{name}: outputs changed: {changed[:5]}"
    else:   # a report-all command writes the good items (atomically) but nothing of the bad one
        assert all(k in before or c.allowed_outputs(k) for k in changed), changed
        assert all(k in after for k in before), "input files were removed"
    assert _shared_state(models) == shared
    if c.mode == "report":
        lines = [ln for ln in (out + err).splitlines() if ln.startswith(("problem:", "error:", "failed:"))]
        naming = [ln for ln in lines if c.needles[0] in ln]
        assert len(naming) == c.report_lines, (naming, out, err)
        for n in c.needles:
            assert any(n in ln for ln in naming), (n, naming)
        return
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in c.needles:
        assert n in lines[0], (n, lines[0])
    # --debug: the traceback, then the same line; still nothing written
    rc, out, err_debug = _run(module, [*c.argv, "--debug"], capsys)
    assert rc == 2 and "Traceback (most recent call last)" in err_debug, err_debug
    assert err_debug.strip().splitlines()[-1] == lines[0]
    assert C.tree_snapshot(t.d) == before


def test_corpus_covers_every_command():
    modules = {m for m, _ in CASES.values()}
    assert modules == {"convert.mmagic", "convert.to_mmagic", "convert.torchvision_vgg16", "glean_jax.generate",
                       "glean_jax.upscale", "glean_jax.evaluate", "glean_jax.train", "glean_jax.data.prepare",
                       "glean_jax.data.check"}
    assert len(CASES) >= 40


ENTRY_CASES = {
    "convert.mmagic": lambda d: [d / "missing.pth", d / "out"],
    "convert.to_mmagic": lambda d: [d / "missing", d / "out.pth"],
    "convert.torchvision_vgg16": lambda d: [d / "missing.pth", d / "out"],
    "glean_jax.generate": lambda d: ["--checkpoint", d / "missing", "--out", d / "g.png"],
    "glean_jax.upscale": lambda d: ["--checkpoint", d / "missing", d / "missing.png", "--output", d / "out"],
    "glean_jax.evaluate": lambda d: ["--pred-dir", d / "missing", "--gt-dir", d / "missing_gt"],
    "glean_jax.data.prepare": lambda d: ["--gt-dir", d / "missing", "--out-dir", d / "out", "--scale", "2"],
    "glean_jax.data.check": lambda d: [d / "missing", "--gt-dir", "GT"],
}


@pytest.mark.parametrize("module", sorted(ENTRY_CASES))
def test_python_m_entry_point(module, tmp_path):
    """``python -m <command>`` itself: exit code 2, one line on stderr naming the path, nothing created. (The train
    cases of the corpus all run this way.)"""
    argv = ENTRY_CASES[module](tmp_path)
    rc, out, err = _subprocess(module, argv)
    assert rc == 2, (rc, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in out + err, err
    assert "missing" in lines[0] or "--lq-dir" in lines[0], lines[0]
    assert sorted(os.listdir(tmp_path)) == []

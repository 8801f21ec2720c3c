"""``python -m glean_jax.generate`` against the real mmagic 1.2.0 StyleGAN2Generator (oracle).

A small random mmagic G (64x64) is saved as a .pth, converted with the ``convert.mmagic`` CLI, and sampled with the
generate CLI; ``--save-raw`` must equal mmagic's output for the same z / W+ with ``randomize_noise=False``:
max|Δ| <= ``PARITY_RTOL`` x max|mmagic| (float32, ``tests/tolerances.py``). Bad inputs: exit code 2, one line on
stderr, no output file.
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from glean_jax import generate
from glean_jax import mmagic_reference as mo
from glean_jax.checkpoint import load_model, save_model
from glean_jax.errors import run_cli
from tests.tolerances import PARITY_RTOL, scaled_error

pytestmark = pytest.mark.oracle
SIZE = 64
NUM_LATENTS = 2 * int(math.log2(SIZE)) - 2
ROOT = Path(__file__).resolve().parent.parent


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture(scope="module")
def bank(module_tmp):
    """(torch G, checkpoint dir): a seeded, randomised mmagic G64 converted with the CLI (subprocess)."""
    torch = mo.load().torch
    d = module_tmp("bank")
    g = mo.build_generator(SIZE, seed=7, channel_multiplier=1)   # 256 channels at 64x64: faster
    torch.save(g.state_dict(), d / "g.pth")
    r = subprocess.run([sys.executable, "-m", "convert.mmagic", str(d / "g.pth"), str(d / "ckpt")], cwd=ROOT,
                       env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return g, d / "ckpt"


def _oracle(g, styles, **kw) -> np.ndarray:
    torch = mo.load().torch
    with torch.no_grad():
        return mo.to_nhwc(g(torch.from_numpy(styles), randomize_noise=False, **kw))


def _run(argv, capsys):
    rc = run_cli(generate.main, [str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _report(capsys, msg: str) -> None:
    with capsys.disabled():
        print(msg)


def _ok(argv, capsys) -> str:
    rc, out, err = _run(argv, capsys)
    assert rc == 0, err
    return out


def _tiles(grid: np.ndarray, n: int, ncol: int, size: int, pad: int = 2) -> list[np.ndarray]:
    out = []
    for i in range(n):
        r, c = divmod(i, ncol)
        y, x = pad + r * (size + pad), pad + c * (size + pad)
        out.append(grid[y:y + size, x:x + size])
    return out


def _expected_uint8(raw: np.ndarray) -> np.ndarray:
    """x * 127.5 + 127.5 in float32, rounded, clipped (written out here, not images.to_uint8)."""
    exact = np.rint(np.clip((raw.astype(np.float64) + 1) / 2 * 255, 0, 255))
    f32 = np.clip(np.round(raw * np.float32(127.5) + np.float32(127.5)), 0, 255)
    assert np.abs(f32 - exact).max() <= 1   # float32 and exact rounding differ at most at exact .5 ties
    return f32.astype(np.uint8)


def test_seeds_equal_mmagic_and_grid_geometry(bank, tmp_path, capsys):
    g, ckpt = bank
    out, raw = tmp_path / "grid.png", tmp_path / "raw.npy"
    text = _ok(["--checkpoint", ckpt, "--seeds", "9,0-1", "--batch-size", 2, "--out", out, "--save-raw", raw],
               capsys)
    assert "load" in text and "compile" in text and "generate" in text
    y = np.load(raw)
    assert y.dtype == np.float32 and y.shape == (3, SIZE, SIZE, 3)
    seeds = [9, 0, 1]
    z = np.concatenate([np.random.RandomState(s).randn(1, 512) for s in seeds]).astype(np.float32)
    ref = _oracle(g, z)
    err = scaled_error(y, ref)
    _report(capsys, f"generate --seeds vs mmagic: max|d| / max|ref| = {err:.3g} (output std {ref.std():.3f}, range "
          f"[{ref.min():.2f}, {ref.max():.2f}])")
    assert err <= PARITY_RTOL
    assert np.abs(y).max() > 1.0 or ref.std() > 0.05  # a real picture, not a constant
    grid = np.asarray(Image.open(out))
    # 3 images, default nrow = ceil(sqrt(3)) = 2 columns, 2 rows, 2-pixel black padding
    assert grid.shape == (2 * (SIZE + 2) + 2, 2 * (SIZE + 2) + 2, 3)
    for tile, r in zip(_tiles(grid, 3, 2, SIZE), y, strict=True):
        np.testing.assert_array_equal(tile, _expected_uint8(r))
    assert grid[:2].max() == 0 and grid[:, :2].max() == 0
    assert grid[SIZE + 4:, SIZE + 4:].max() == 0   # the empty fourth cell


def test_z_file_nrow_and_truncation_one(bank, tmp_path, capsys):
    g, ckpt = bank
    z = np.random.RandomState(11).randn(2, 512).astype(np.float32)
    np.save(tmp_path / "z.npy", z)
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    _ok(["--checkpoint", ckpt, "--z", tmp_path / "z.npy", "--nrow", 1, "--out",
         tmp_path / "a.png", "--save-raw", a], capsys)
    _ok(["--checkpoint", ckpt, "--z", tmp_path / "z.npy", "--nrow", 1, "--truncation", 1,
         "--out", tmp_path / "b.png", "--save-raw", b], capsys)
    ya, yb = np.load(a), np.load(b)
    err = scaled_error(ya, _oracle(g, z))
    _report(capsys, f"generate --z vs mmagic: max|d| / max|ref| = {err:.3g}")
    assert err <= PARITY_RTOL
    np.testing.assert_array_equal(ya, yb)     # truncation 1 is no truncation
    grid = np.asarray(Image.open(tmp_path / "a.png"))
    assert grid.shape == (2 * (SIZE + 2) + 2, SIZE + 4, 3)   # one column


def test_w_plus_and_w(bank, tmp_path, capsys):
    g, ckpt = bank
    torch = mo.load().torch
    w_plus = np.random.RandomState(12).randn(2, NUM_LATENTS, 512).astype(np.float32)
    np.save(tmp_path / "wp.npy", w_plus)
    _ok(["--checkpoint", ckpt, "--w-plus", tmp_path / "wp.npy", "--out", tmp_path / "wp.png", "--save-raw",
         tmp_path / "wp_raw.npy"], capsys)
    with torch.no_grad():
        ref = mo.to_nhwc(g([torch.from_numpy(w_plus)], input_is_latent=True, randomize_noise=False))
    err = scaled_error(np.load(tmp_path / "wp_raw.npy"), ref)
    _report(capsys, f"generate --w-plus (N, L, C) vs mmagic: max|d| / max|ref| = {err:.3g}")
    assert err <= PARITY_RTOL
    w = np.random.RandomState(13).randn(2, 512).astype(np.float32)
    np.save(tmp_path / "w.npy", w)
    _ok(["--checkpoint", ckpt, "--w-plus", tmp_path / "w.npy", "--out", tmp_path / "w.png", "--save-raw",
         tmp_path / "w_raw.npy"], capsys)
    with torch.no_grad():
        ref = mo.to_nhwc(g([torch.from_numpy(w)], input_is_latent=True, randomize_noise=False))
    err = scaled_error(np.load(tmp_path / "w_raw.npy"), ref)
    _report(capsys, f"generate --w-plus (N, C) vs mmagic: max|d| / max|ref| = {err:.3g}")
    assert err <= PARITY_RTOL


def test_truncation_toward_mean_w(bank, tmp_path, capsys):
    g, ckpt = bank
    torch = mo.load().torch
    _ok(["--checkpoint", ckpt, "--seeds", "3,5", "--truncation", 0.5, "--truncation-samples", 256, "--out",
         tmp_path / "t.png", "--save-raw", tmp_path / "t.npy"], capsys)
    z = np.concatenate([np.random.RandomState(s).randn(1, 512) for s in (3, 5)]).astype(np.float32)
    # the mean W's samples, as generate documents them
    zs = np.asarray(jax.random.normal(jax.random.key(0), (256, 512), jnp.float32))
    with torch.no_grad():
        mean = g.style_mapping(torch.from_numpy(zs)).mean(0, keepdim=True)
    ref = _oracle(g, z, truncation=0.5, truncation_latent=mean)
    err = scaled_error(np.load(tmp_path / "t.npy"), ref)
    _report(capsys, f"generate --truncation 0.5 vs mmagic: max|d| / max|ref| = {err:.3g}")
    assert err <= PARITY_RTOL
    w = g.style_mapping(torch.from_numpy(z)).detach()
    assert float((w - mean).abs().max()) > 0.1   # the truncation moves the latents (so the check above means something)


def test_random_noise_is_seeded(bank, tmp_path, capsys):
    _, ckpt = bank
    outs = {}
    for name, extra in (("r0", ["--noise", "random", "--noise-seed", 5]), ("r1", ["--noise", "random",
                                                                                   "--noise-seed", 5]),
                        ("r2", ["--noise", "random", "--noise-seed", 6]), ("f", [])):
        _ok(["--checkpoint", ckpt, "--seeds", "1,2", *extra, "--out", tmp_path / f"{name}.png", "--save-raw",
             tmp_path / f"{name}.npy"], capsys)
        outs[name] = np.load(tmp_path / f"{name}.npy")
    np.testing.assert_array_equal(outs["r0"], outs["r1"])
    assert np.abs(outs["r0"] - outs["r2"]).max() > 1e-3
    assert np.abs(outs["r0"] - outs["f"]).max() > 1e-3


def test_glean_checkpoint_bank_and_bfloat16(bank, tmp_path, capsys):
    """A 'glean' model directory is sampled through its bank (generator/{params,buffers}/bank)."""
    _, ckpt = bank
    meta, v = load_model(ckpt)
    gl = tmp_path / "glean"
    gen = {"kind": "glean", "in_size": 16, "out_size": SIZE, "rrdb_channels": 64, "num_rrdbs": 1,
           "style_channels": 512, "channel_multiplier": 1}
    save_model(gl, {"kind": "glean", "generator": gen, "discriminator": None},
               {"generator": {"params": {"bank": v["generator"]["params"]},
                              "buffers": {"bank": v["generator"]["buffers"]}}})
    _ok(["--checkpoint", ckpt, "--seeds", "2,3", "--out", tmp_path / "a.png", "--save-raw", tmp_path / "a.npy"],
        capsys)
    _ok(["--checkpoint", gl, "--seeds", "2,3", "--out", tmp_path / "b.png", "--save-raw", tmp_path / "b.npy"], capsys)
    a = np.load(tmp_path / "a.npy")
    np.testing.assert_array_equal(a, np.load(tmp_path / "b.npy"))
    _ok(["--checkpoint", ckpt, "--seeds", "2,3", "--dtype", "bfloat16", "--out", tmp_path / "c.png", "--save-raw",
         tmp_path / "c.npy"], capsys)
    c = np.load(tmp_path / "c.npy")
    psnr = 10 * math.log10(4.0 / float(np.mean((c.astype(np.float64) - a) ** 2)))
    _report(capsys, f"generate bfloat16 vs float32: PSNR {psnr:.1f} dB")
    assert c.dtype == np.float32 and psnr > 25.0


def test_parse_seeds():
    assert generate.parse_seeds("0-3") == [0, 1, 2, 3]
    assert generate.parse_seeds("1,4,9") == [1, 4, 9]
    assert generate.parse_seeds(" 3 ") == [3]
    assert generate.parse_seeds("5,0-1") == [5, 0, 1]


# ------------------------------------------------------------------------------------------------ bad input
@pytest.fixture(scope="module")
def bad_files(bank, module_tmp):
    d = module_tmp("bad")
    _, ckpt = bank
    (d / "text.npy").write_text("this is not an array\n")
    good = d / "good.npy"
    np.save(good, np.zeros((2, 512), np.float32))
    (d / "trunc.npy").write_bytes(good.read_bytes()[:200])
    np.save(d / "c100.npy", np.zeros((2, 100), np.float32))
    np.save(d / "ndim3.npy", np.zeros((2, 3, 512), np.float32))
    np.save(d / "wp_bad.npy", np.zeros((2, NUM_LATENTS + 1, 512), np.float32))
    nan = np.zeros((2, 512), np.float32)
    nan[1, 7] = np.nan
    np.save(d / "nan.npy", nan)
    np.save(d / "str.npy", np.array([["a"] * 512]))
    np.savez(d / "arch.npz", z=np.zeros((1, 512), np.float32))
    np.save(d / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    save_model(d / "vgg", {"kind": "vgg16", "generator": None, "discriminator": None},
               {"features": {"w": np.zeros((1,), np.float32)}})
    meta, v = load_model(ckpt)
    save_model(d / "d_only", {"kind": "stylegan2", "generator": None,
                              "discriminator": {"kind": "stylegan2_discriminator", "in_size": 8}},
               {"discriminator": {"params": {"x": np.zeros((1,), np.float32)}}})
    (d / "afile").write_text("x")
    return d


BAD = [
    (["--z", "{d}/text.npy"], ["text.npy", "npy"]),
    (["--z", "{d}/trunc.npy"], ["trunc.npy"]),
    (["--z", "{d}/missing.npy"], ["missing.npy", "no such file"]),
    (["--z", "{d}/c100.npy"], ["c100.npy", "(2, 100)", "(N, 512)"]),
    (["--z", "{d}/ndim3.npy"], ["ndim3.npy", "(2, 3, 512)", "(N, 512)"]),
    (["--w-plus", "{d}/wp_bad.npy"], ["wp_bad.npy", f"(2, {NUM_LATENTS + 1}, 512)", f"(N, {NUM_LATENTS}, 512)"]),
    (["--z", "{d}/nan.npy"], ["nan.npy", "NaN"]),
    (["--z", "{d}/str.npy"], ["str.npy", "dtype"]),
    (["--z", "{d}/arch.npz"], ["arch.npz", ".npz"]),
    (["--z", "{d}/obj.npy"], ["obj.npy", "npy"]),
    (["--seeds", "a-b"], ["--seeds", "'a-b'"]),
    (["--seeds", "5-2"], ["--seeds", "5-2", "START <= END"]),
    (["--seeds", "-3"], ["--seeds", "-3"]),
    (["--seeds", ""], ["--seeds"]),
    (["--seeds", "1,,2"], ["--seeds"]),
    (["--seeds", "99999999999"], ["--seeds", "4294967295"]),
    (["--truncation", "1.5"], ["--truncation", "[0, 1]"]),
    (["--truncation", "nan"], ["--truncation"]),
    (["--batch-size", "0"], ["--batch-size", "positive"]),
    (["--nrow", "0"], ["--nrow"]),
    (["--checkpoint", "{d}/no_such_ckpt"], ["no_such_ckpt", "no such file or directory; expected a model directory"]),
    (["--checkpoint", "{d}/vgg"], ["vgg", "'vgg16'", "expected"]),
    (["--checkpoint", "{d}/d_only"], ["d_only", "no generator"]),
    (["--checkpoint", "{d}"], ["model.json"]),
    (["--out", "{d}/afile/grid.png"], ["afile", "not a folder"]),
    (["--out", "{d}/nodir/grid.png"], ["nodir", "does not exist"]),
    (["--out", "{d}/grid.jpg"], ["grid.jpg", ".png"]),
    (["--save-raw", "{d}/afile/raw.npy"], ["--save-raw", "afile"]),
]


@pytest.mark.parametrize("extra,needles", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input(bank, bad_files, tmp_path, capsys, extra, needles):
    _, ckpt = bank
    d = str(bad_files)
    extra = [a.format(d=d) for a in extra]
    argv = ["--checkpoint", ckpt, "--out", tmp_path / "grid.png", "--save-raw", tmp_path / "raw.npy", "--seeds",
            "0,1"]
    # later flags replace earlier ones; --z / --w-plus replace the default --seeds
    if extra[0] in ("--z", "--w-plus"):
        argv = argv[:-2]
    argv = [str(a) for a in argv]
    for i in range(0, len(extra), 2):
        if extra[i] in argv:
            argv[argv.index(extra[i]) + 1] = extra[i + 1]
        else:
            argv += extra[i:i + 2]
    before = sorted(os.listdir(bad_files))
    rc, out, err = _run(argv, capsys)
    assert rc == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert os.listdir(tmp_path) == []          # no partial output
    assert sorted(os.listdir(bad_files)) == before


def test_bad_input_subprocess_and_debug(bank, bad_files, tmp_path):
    _, ckpt = bank
    cmd = [sys.executable, "-m", "glean_jax.generate", "--checkpoint", str(ckpt), "--z",
           str(bad_files / "c100.npy"), "--out", str(tmp_path / "g.png")]
    r = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "c100.npy" in lines[0] and "(N, 512)" in lines[0], r.stderr
    r = subprocess.run(cmd + ["--debug"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" in r.stderr
    assert not (tmp_path / "g.png").exists()

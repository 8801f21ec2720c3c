"""Blind degradations (in128out1024): each op vs the mmagic transform, the whole chain, sampling statistics."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import skimage.data
from scipy import stats

from glean_jax.data import degradations as D
from glean_jax.errors import UserError
from tests.oracle import module_or_skip

CONFIG = "glean_in128out1024_4xb2-300k_ffhq-celeba-hq.py"


def _gt(size: int = 64) -> np.ndarray:
    img = skimage.data.astronaut()
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def rd():
    return module_or_skip("mmagic.datasets.transforms.random_degradations")


def _mmagic_train_pipeline():
    module_or_skip("mmagic.datasets.transforms.random_degradations")
    import mmagic
    from mmengine.config import Config

    path = os.path.join(os.path.dirname(mmagic.__file__), ".mim", "configs", "glean", CONFIG)
    return Config.fromfile(path).train_pipeline


# ------------------------------------------------------------------------------------------ config constants

@pytest.mark.oracle
def test_constants_are_the_mmagic_config_values():
    steps = {(s["type"], i): s for i, s in enumerate(_mmagic_train_pipeline())}
    types_in_order = [t for t, _ in sorted(steps, key=lambda k: k[1])]
    assert types_in_order[3:10] == ["RandomBlur", "RandomResize", "RandomNoise", "RandomJPEGCompression",
                                    "RandomResize", "Clip", "RandomResize"]
    pipe = [steps[k] for k in sorted(steps, key=lambda k: k[1])]
    blur, down, noise, jpg, back, _, final, flip = pipe[3:11]
    assert blur["params"]["kernel_size"] == [D.KERNEL_SIZE]
    assert tuple(blur["params"]["kernel_list"]) == D.KERNEL_TYPES and blur["params"]["kernel_prob"] == [0.5, 0.5]
    assert tuple(blur["params"]["sigma_x"]) == D.SIGMA_RANGE == tuple(blur["params"]["sigma_y"])
    assert tuple(blur["params"]["rotate_angle"]) == D.ROTATION_RANGE
    assert down["params"]["resize_mode_prob"] == [0, 1, 0]
    assert tuple(down["params"]["resize_scale"]) == D.DOWN_SCALE_RANGE
    for step in (down, back):
        assert tuple(step["params"]["resize_opt"]) == D.INTERPOLATIONS
        np.testing.assert_allclose(step["params"]["resize_prob"], [1 / 3] * 3)
    assert noise["params"]["noise_type"] == ["gaussian"] and noise["params"]["gaussian_gray_noise_prob"] == 0
    assert tuple(noise["params"]["gaussian_sigma"]) == D.NOISE_SIGMA_RANGE
    assert tuple(jpg["params"]["quality"]) == D.JPEG_QUALITY_RANGE
    assert back["params"]["target_size"] == (1024, 1024) and final["params"]["target_size"] == (128, 128)
    assert final["params"]["resize_opt"] == ["area"]
    assert flip["type"] == "Flip" and flip["flip_ratio"] == 0.5 and flip["direction"] == "horizontal"


# ------------------------------------------------------------------------------------------- per-op parity

@pytest.mark.oracle
@pytest.mark.parametrize("kernel_type", ["iso", "aniso"])
@pytest.mark.parametrize("sx,sy,theta", [(0.2, 10.0, 1.0), (3.3, 0.7, -2.5), (10.0, 10.0, 3.1416), (1.1, 4.2, 0.3)])
def test_random_blur_parity(rd, kernel_type, sx, sy, theta):
    gt = _gt(96)
    params = dict(kernel_size=[41], kernel_list=[kernel_type], kernel_prob=[1], sigma_x=[sx, sx],
                  sigma_y=[sy, sy], rotate_angle=[theta, theta])
    ref = rd.RandomBlur(params=params, keys=["img"])({"img": gt.copy()})["img"]
    out = D.blur(gt, D.gaussian_kernel(kernel_type, 41, sx, sy, theta))
    assert out.dtype == ref.dtype == np.uint8
    np.testing.assert_array_equal(out, ref)


@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(6))
def test_random_resize_down_parity(rd, seed):
    gt = _gt(100)
    opts = list(D.INTERPOLATIONS)
    params = dict(resize_mode_prob=[0, 1, 0], resize_scale=list(D.DOWN_SCALE_RANGE), resize_opt=opts,
                  resize_prob=[1 / 3.0] * 3)
    np.random.seed(seed)
    ref = rd.RandomResize(params=params, keys=["img"])({"img": gt.copy()})["img"]
    np.random.seed(seed)  # replay mmagic's draws: prob check, interpolation, mode, factor
    np.random.uniform()
    interp = str(np.random.choice(opts, p=[1 / 3.0] * 3))
    np.random.choice(["up", "down", "keep"], p=[0, 1, 0])
    factor = np.random.uniform(D.DOWN_SCALE_RANGE[0], 1)
    out = D.resize(gt, D.down_size(gt.shape[:2], factor), interp)
    np.testing.assert_array_equal(out, ref)


@pytest.mark.oracle
@pytest.mark.parametrize("interp", D.INTERPOLATIONS)
def test_random_resize_target_size_parity(rd, interp):
    gt = _gt(40)
    for size in ((128, 128), (16, 16)):
        t = rd.RandomResize(params=dict(target_size=size, resize_opt=[interp], resize_prob=[1]), keys=["img"])
        np.testing.assert_array_equal(D.resize(gt, size, interp), t({"img": gt.copy()})["img"])


@pytest.mark.oracle
@pytest.mark.parametrize("sigma", [0.0, 7.5, 50.0])
def test_random_noise_parity(rd, sigma):
    gt = _gt(48)
    params = dict(noise_type=["gaussian"], noise_prob=[1], gaussian_sigma=[sigma, sigma], gaussian_gray_noise_prob=0)
    np.random.seed(11)
    ref = rd.RandomNoise(params=params, keys=["img"])({"img": gt.copy()})["img"]
    np.random.seed(11)  # replay: prob check, noise type, sigma, gray check, then the normal draws
    np.random.uniform()
    np.random.choice(["gaussian"], p=[1])
    np.random.uniform(sigma, sigma)
    np.random.uniform()
    z = np.random.randn(*gt.shape)
    out = D.add_gaussian_noise(gt, sigma, z)
    assert out.dtype == ref.dtype == np.float32
    np.testing.assert_array_equal(out, ref)


@pytest.mark.oracle
@pytest.mark.parametrize("quality", [5, 18, 50])
def test_random_jpeg_parity(rd, quality):
    gt = _gt(64)
    noisy = D.add_gaussian_noise(gt, 20.0, np.random.default_rng(0).standard_normal(gt.shape))
    assert noisy.min() < 0 and noisy.max() > 255  # out-of-range floats: cv2's saturate conversion is exercised
    for img in (gt, noisy):
        ref = rd.RandomJPEGCompression(params=dict(quality=[quality, quality]), keys=["img"])({"img": img.copy()})
        out = D.jpeg(img, quality)
        assert out.dtype == np.uint8
        np.testing.assert_array_equal(out, ref["img"])


@pytest.mark.oracle
def test_flip_parity():
    aug = module_or_skip("mmagic.datasets.transforms.aug_shape")
    from glean_jax.data.loader import hflip

    lq, gt = _gt(16), _gt(64)
    ref = aug.Flip(keys=["img", "gt"], flip_ratio=1.0, direction="horizontal")({"img": lq.copy(), "gt": gt.copy()})
    np.testing.assert_array_equal(hflip(lq), ref["img"])
    np.testing.assert_array_equal(hflip(gt), ref["gt"])


# --------------------------------------------------------------------------------------------- whole chain

class _Recorder:
    """Delegates to cv2 and records resize / imencode arguments (only inside mmagic's module)."""

    def __init__(self):
        self.resizes, self.qualities = [], []
        for name in ("INTER_LINEAR", "INTER_CUBIC", "INTER_AREA", "INTER_LANCZOS4", "IMWRITE_JPEG_QUALITY",
                     "filter2D", "imdecode", "cvtColor", "COLOR_BGR2RGB", "COLOR_BGR2GRAY"):
            setattr(self, name, getattr(cv2, name))

    def resize(self, img, dsize, interpolation):
        self.resizes.append((tuple(dsize), interpolation))
        return cv2.resize(img, dsize, interpolation=interpolation)

    def imencode(self, ext, img, params):
        self.qualities.append(params[1])
        return cv2.imencode(ext, img, params)


@pytest.mark.oracle
def test_whole_chain_matches_mmagic_config_pipeline(rd, monkeypatch):
    """mmagic's in128out1024 train pipeline (steps RandomBlur .. final RandomResize, built from the real config
    with the GT size 1024 -> 64 and LQ 128 -> 8) vs apply_blind with the parameters mmagic drew."""
    aug_pixel = None
    try:
        aug_pixel = module_or_skip("mmagic.datasets.transforms.aug_pixel")
    except ImportError:
        pass  # Clip needs torchvision.transforms; on uint8 it is np.clip(x, 0, 255), a no-op
    pipe = _mmagic_train_pipeline()[3:10]
    size, in_size = 64, 8
    transforms = []
    for step in pipe:
        step = dict(step)
        kind = step.pop("type")
        if kind == "Clip":
            transforms.append(aug_pixel.Clip(**step) if aug_pixel else _clip)
            continue
        if "target_size" in step["params"]:
            big = step["params"]["target_size"] == (1024, 1024)
            step["params"] = {**step["params"], "target_size": (size, size) if big else (in_size, in_size)}
        transforms.append(getattr(rd, kind)(**step))
    inv_interp = {cv2.INTER_LINEAR: "bilinear", cv2.INTER_AREA: "area", cv2.INTER_CUBIC: "bicubic"}
    gt = _gt(size)
    kinds_seen = set()
    for seed in range(8):
        rec = _Recorder()
        blur_args, noise = [], []
        real_kernels = rd.blur_kernels.random_mixed_kernels
        real_randn = np.random.randn

        def kernels(kernel_list, kernel_prob, kernel_size, sx, sy, rot, *a, _real=real_kernels, _rec=blur_args):
            _rec.append((kernel_list[0], sx[0], sy[0], rot[0]))
            return _real(kernel_list, kernel_prob, kernel_size, sx, sy, rot, *a)

        def randn(*shape, _real=real_randn, _rec=noise):
            _rec.append(_real(*shape))
            return _rec[-1]

        with monkeypatch.context() as m:
            m.setattr(rd, "cv2", rec)
            m.setattr(rd.blur_kernels, "random_mixed_kernels", kernels)
            m.setattr(np.random, "randn", randn)
            np.random.seed(seed)
            import random

            random.seed(seed)
            results = {"img": gt.copy()}
            for t in transforms:
                results = t(results)
        ref = results["img"]
        (kt, sx, sy, rot), = blur_args
        (down, down_i), (back, back_i), (final, final_i) = rec.resizes
        assert back == (size, size) and final == (in_size, in_size) and final_i == cv2.INTER_AREA
        params = D.BlindParams(kernel_type=kt, sigma_x=sx, sigma_y=sy, theta=rot, down_factor=down[0] / size,
                               down_interp=inv_interp[down_i], noise_sigma=_noise_sigma(seed, kt),
                               jpeg_quality=rec.qualities[0], up_interp=inv_interp[back_i])
        kinds_seen.add(kt)

        def normal(shape, _z=noise[0]):
            assert shape == _z.shape
            return _z

        out = D.apply_blind(gt, params, in_size, normal)
        assert out.shape == ref.shape == (in_size, in_size, 3) and out.dtype == ref.dtype == np.uint8
        np.testing.assert_array_equal(out, ref, err_msg=f"seed {seed}: {params}")
    assert kinds_seen == {"iso", "aniso"}


def _clip(results: dict) -> dict:
    return {**results, "img": np.clip(results["img"], 0, 255)}


def _noise_sigma(seed: int, kernel_type: str) -> float:
    """The sigma mmagic's RandomNoise drew in the chain above: replay the legacy global RNG up to that draw."""
    np.random.seed(seed)
    n_blur = 1 + 1 + 6 + 1 + (3 if kernel_type == "aniso" else 1) + 6  # prob, type, 6 params, mixed, kernel, steps
    np.random.uniform(size=n_blur)
    np.random.uniform(size=4)  # RandomResize: prob, interpolation, mode, factor
    np.random.uniform(size=2)  # RandomNoise: prob, noise type
    return float(np.random.uniform(*D.NOISE_SIGMA_RANGE))


# ------------------------------------------------------------------------------------------- sampling

def _samples(n: int = 4000, seed: int = 1234) -> list[D.BlindParams]:
    rng = np.random.default_rng(seed)
    return [D.sample_blind_params(rng) for _ in range(n)]


def test_sampling_distributions():
    ps = _samples()
    for field, (lo, hi) in (("sigma_x", D.SIGMA_RANGE), ("sigma_y", D.SIGMA_RANGE), ("theta", D.ROTATION_RANGE),
                            ("down_factor", D.DOWN_SCALE_RANGE), ("noise_sigma", D.NOISE_SIGMA_RANGE)):
        x = np.array([getattr(p, field) for p in ps])
        assert lo <= x.min() and x.max() <= hi
        assert stats.kstest(x, stats.uniform(loc=lo, scale=hi - lo).cdf).pvalue > 1e-3, field
    for field, cats in (("kernel_type", D.KERNEL_TYPES), ("down_interp", D.INTERPOLATIONS),
                        ("up_interp", D.INTERPOLATIONS)):
        counts = [sum(getattr(p, field) == c for p in ps) for c in cats]
        assert stats.chisquare(counts).pvalue > 1e-3, (field, counts)
    q = np.array([p.jpeg_quality for p in ps])
    lo, hi = D.JPEG_QUALITY_RANGE
    expected = np.array([0.5 if v in (lo, hi) else 1.0 for v in range(lo, hi + 1)]) / (hi - lo)
    observed = np.array([(q == v).sum() for v in range(lo, hi + 1)])
    assert observed.sum() == len(q)  # every quality is an integer in [5, 50]
    assert stats.chisquare(observed, expected * len(q)).pvalue > 1e-3


def test_sampling_tests_have_power():
    """The statistical checks above reject slightly wrong distributions (so they can fail)."""
    x = np.array([p.sigma_x for p in _samples()])
    assert stats.kstest(x, stats.uniform(loc=0.2, scale=9.0).cdf).pvalue < 1e-3  # U(0.2, 9.2) instead
    q = np.array([p.jpeg_quality for p in _samples()])
    ends = int(((q == 5) | (q == 50)).sum())  # half-width end bins: expected mass 1/45, not 2/46
    assert stats.binomtest(ends, len(q), 2 / 46).pvalue < 1e-3  # rejects "uniform over the 46 integers"
    assert stats.binomtest(ends, len(q), 1 / 45).pvalue > 1e-3


def test_blind_degrade_is_deterministic_given_the_generator():
    gt = _gt(64)
    a = D.blind_degrade(gt, np.random.default_rng([7, 0, 3]), 8)
    b = D.blind_degrade(gt, np.random.default_rng([7, 0, 3]), 8)
    c = D.blind_degrade(gt, np.random.default_rng([7, 1, 3]), 8)
    assert a.shape == (8, 8, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_kernel_properties_and_bad_input():
    k = D.gaussian_kernel("aniso", 41, 2.0, 5.0, 0.7)
    assert k.shape == (41, 41) and abs(k.sum() - 1) < 1e-12
    np.testing.assert_allclose(k, k[::-1, ::-1])  # point symmetric
    iso = D.gaussian_kernel("iso", 41, 3.0, 9.0, 1.0)  # sigma_y and theta ignored
    np.testing.assert_allclose(iso, iso.T)
    with pytest.raises(UserError, match="expected one of iso, aniso"):
        D.gaussian_kernel("sinc", 41, 1, 1, 0)
    with pytest.raises(UserError, match="odd"):
        D.gaussian_kernel("iso", 40, 1, 1, 0)
    with pytest.raises(UserError, match="expected uint8"):
        D.apply_blind(np.zeros((8, 8, 3), np.float32), _samples(1)[0], 4, lambda s: np.zeros(s, np.float32))
    with pytest.raises(UserError, match="interpolation"):
        D.resize(_gt(8), (4, 4), "nearest-ish")

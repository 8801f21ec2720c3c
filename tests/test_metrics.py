"""glean_jax.metrics: parity with mmagic 1.2.0's own PSNR / SSIM / MAE code (oracle) and independent checks.

Oracle parity: the metric classes' ``process_image`` on CHW BGR tensors (uint8 GT, float32 or uint8 prediction: the
evaluator's path) and the functions ``mmagic.evaluation.metrics.{psnr,ssim}`` as those classes call them (CHW,
``channel_order='BGR'``), on photographs from ``skimage.data`` and on random model-like outputs, every
``crop_border`` / ``convert_to`` option and both output conventions. Tolerance |delta| <= 1e-6 (PSNR comes out
bitwise equal, SSIM ~1e-14, MAE ~1e-8 against torch's float32 mean). mmagic's psnr called on an HWC-ordered array
differs from its own CHW path by a few 1e-6 dB (float32 summation order); that call is checked to 2e-5.
"""

from __future__ import annotations

import numpy as np
import pytest

from glean_jax import metrics as M
from glean_jax.errors import UserError

TOL = 1e-6


# ----------------------------------------------------------------------------------------------- test data
def _photo(name: str, size: int | None = None) -> np.ndarray:
    from skimage import data

    img = getattr(data, name)()
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return img[:size, :size] if size else img


def _sr_like_output(gt: np.ndarray, seed: int, scale: int = 4) -> np.ndarray:
    """A raw [-1, 1] output that looks like super-resolution of ``gt``: block-average down, repeat up, noise."""
    rng = np.random.default_rng(seed)
    h, w = (gt.shape[0] // scale) * scale, (gt.shape[1] // scale) * scale
    g = gt[:h, :w].astype(np.float64)
    lr = g.reshape(h // scale, scale, w // scale, scale, 3).mean(axis=(1, 3))
    up = np.repeat(np.repeat(lr, scale, axis=0), scale, axis=1)
    out = np.empty(gt.shape, np.float64)
    out[...] = g.mean()
    out[:h, :w] = up
    x = out / 127.5 - 1.0 + rng.normal(0.0, 0.03, gt.shape)
    return x.astype(np.float32)


def _random_output(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Random model-like output: smooth-ish field in [-1, 1] with overshoot past both ends (exercises clipping)."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(0.0, 0.7, (shape[0] // 8 + 1, shape[1] // 8 + 1, shape[2]))
    field = np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)[: shape[0], : shape[1]]
    return (field + rng.normal(0.0, 0.15, shape)).astype(np.float32)


# ------------------------------------------------------------------------------------------------- oracle
@pytest.fixture(scope="module")
def mm():
    from glean_jax import mmagic_reference as mo
    from tests import oracle

    oracle.load_or_skip()
    import types

    return types.SimpleNamespace(
        torch=mo.load().torch,
        psnr=mo.import_module("mmagic.evaluation.metrics.psnr"),
        ssim=mo.import_module("mmagic.evaluation.metrics.ssim"),
        mae=mo.import_module("mmagic.evaluation.metrics.mae"),
        utils=mo.import_module("mmagic.evaluation.metrics.metrics_utils"),
        img_utils=mo.import_module("mmagic.utils.img_utils"),
        dp=mo.import_module("mmagic.models.data_preprocessors.data_preprocessor"),
    )


def _mmagic_values(mm, gt: np.ndarray, pred: np.ndarray, crop_border: int, convert_to: str | None):
    """mmagic's numbers three ways: the metric classes on CHW BGR tensors (uint8 GT, float32/uint8 prediction: the
    evaluator's path), the functions on CHW BGR arrays (what the classes call), and the functions on HWC arrays."""
    bgr_gt, bgr_pred = np.ascontiguousarray(gt[..., ::-1]), np.ascontiguousarray(pred[..., ::-1])
    chw_gt = np.ascontiguousarray(bgr_gt.transpose(2, 0, 1))
    chw_pred = np.ascontiguousarray(bgr_pred.transpose(2, 0, 1))
    t_gt, t_pred = mm.torch.from_numpy(chw_gt), mm.torch.from_numpy(chw_pred)
    cls = (
        mm.psnr.PSNR(crop_border=crop_border, convert_to=convert_to).process_image(t_gt, t_pred, None),
        mm.ssim.SSIM(crop_border=crop_border, convert_to=convert_to).process_image(t_gt, t_pred, None),
        mm.mae.MAE().process_image(t_gt, t_pred, None),
    )
    fn_chw = (
        mm.psnr.psnr(chw_gt, chw_pred, crop_border, "CHW", convert_to, "BGR"),
        mm.ssim.ssim(chw_gt, chw_pred, crop_border, "CHW", convert_to, "BGR"),
    )
    fn_hwc = (
        mm.psnr.psnr(bgr_gt, bgr_pred, crop_border, "HWC", convert_to, "BGR"),
        mm.ssim.ssim(bgr_gt, bgr_pred, crop_border, "HWC", convert_to, "BGR"),
    )
    return tuple(float(v) for v in cls), fn_chw, fn_hwc


def _check_parity(mm, gt, pred, crop_border, convert_to, deltas):
    ours = (M.psnr(gt, pred, crop_border, convert_to), M.ssim(gt, pred, crop_border, convert_to), M.mae(gt, pred))
    cls, fn_chw, fn_hwc = _mmagic_values(mm, gt, pred, crop_border, convert_to)
    for name, o, r in [("PSNR", ours[0], cls[0]), ("SSIM", ours[1], cls[1]), ("MAE", ours[2], cls[2]),
                       ("PSNR", ours[0], fn_chw[0]), ("SSIM", ours[1], fn_chw[1])]:
        d = abs(float(o) - float(r))
        deltas[name] = max(deltas.get(name, 0.0), d)
        assert d <= TOL, (name, crop_border, convert_to, float(o), float(r))
    # mmagic's own function on an HWC-ordered array sums the float32 MSE in another order: a few 1e-6 dB apart.
    d_hwc = abs(float(ours[0]) - float(fn_hwc[0]))
    deltas["PSNR_vs_hwc_call"] = max(deltas.get("PSNR_vs_hwc_call", 0.0), d_hwc)
    assert d_hwc <= 2e-5 and abs(float(ours[1]) - float(fn_hwc[1])) <= TOL
    return ours


@pytest.mark.oracle
@pytest.mark.parametrize("convention", ["1.x", "0.x"])
def test_parity_photographs(mm, convention):
    """Real photographs with super-resolution-like predictions, every option: |delta| <= 1e-6."""
    deltas: dict[str, float] = {}
    cases = [("astronaut", None, 0), ("chelsea", None, 1), ("coffee", 256, 2), ("camera", 200, 3)]
    for name, size, seed in cases:
        gt = _photo(name, size)
        pred = M.output_to_image(_sr_like_output(gt, seed), convention)
        assert pred.dtype == (np.float32 if convention == "1.x" else np.uint8)
        for crop_border in (0, 4):
            for convert_to in (None, "Y"):
                psnr, ssim, mae = _check_parity(mm, gt, pred, crop_border, convert_to, deltas)
                assert 15 < psnr < 45 and 0.2 < ssim < 1 and 0 < mae < 0.2  # realistic operating point
    print(f"max |delta| vs mmagic ({convention}, photographs):", deltas)


@pytest.mark.oracle
@pytest.mark.parametrize("convention", ["1.x", "0.x"])
def test_parity_random_outputs(mm, convention):
    """Random model-like outputs (overshooting [-1, 1]) against random and constant GT, odd sizes."""
    deltas: dict[str, float] = {}
    rng = np.random.default_rng(7)
    for i, shape in enumerate([(64, 64, 3), (37, 53, 3), (11, 11, 3), (128, 96, 3)]):
        x = _random_output(shape, seed=10 + i)
        pred = M.output_to_image(x, convention)
        gt_noisy = np.clip(np.round((x + 1) * 127.5 + rng.normal(0, 12, shape)), 0, 255).astype(np.uint8)
        gt_flat = np.full(shape, 200, np.uint8)  # sigma = 0 regions: SSIM's C2 term alone
        for gt in (gt_noisy, gt_flat):
            for crop_border in ((0,) if shape[0] == 11 else (0, 3)):
                for convert_to in (None, "Y"):
                    _check_parity(mm, gt, pred, crop_border, convert_to, deltas)
    print(f"max |delta| vs mmagic ({convention}, random outputs):", deltas)


@pytest.mark.oracle
def test_parity_identical_and_numpy_inputs(mm):
    gt = _photo("rocket", 128)
    assert M.psnr(gt, gt) == mm.psnr.psnr(gt, gt) == float("inf")
    assert abs(M.ssim(gt, gt) - mm.ssim.ssim(gt, gt)) <= TOL and abs(M.ssim(gt, gt) - 1.0) <= 1e-12
    # MAE with numpy inputs (mmagic's process_image accepts either): uint8 GT, float32 prediction.
    pred = M.output_to_image(_sr_like_output(gt, 5), "1.x")
    ref = mm.mae.MAE().process_image(gt, pred, None)
    assert abs(M.mae(gt, pred) - float(ref)) <= TOL


@pytest.mark.oracle
def test_output_to_image_matches_mmagic(mm):
    """1.x: DataPreprocessor(mean=std=127.5).destruct; 0.x: GLEAN 0.x forward_test's (x+1)/2 then tensor2img."""
    torch = mm.torch
    x = _random_output((33, 47, 3), seed=3)
    x[0, :4, 0] = [-1.0, 1.0, -1.2, 1.2]
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))
    dp = mm.dp.DataPreprocessor(mean=[127.5] * 3, std=[127.5] * 3)
    ref_1x = dp.destruct(t[None].clone(), None)[0].numpy().transpose(1, 2, 0)
    ours_1x = M.output_to_image(x, "1.x")
    assert ours_1x.dtype == np.float32
    np.testing.assert_array_equal(ours_1x, ref_1x)  # bitwise
    ref_0x = mm.img_utils.tensor2img((t[None] + 1) / 2.0)[..., ::-1]  # tensor2img returns BGR
    ours_0x = M.output_to_image(x, "0.x")
    assert ours_0x.dtype == np.uint8
    np.testing.assert_array_equal(ours_0x, ref_0x)


@pytest.mark.oracle
def test_average_matches_mmagic(mm):
    rng = np.random.default_rng(0)
    psnrs = [np.float32(v) for v in rng.uniform(18, 32, 100)]  # what psnr returns under NumPy >= 2
    ssims = list(rng.uniform(0.3, 0.9, 100))
    for vals, key in ((psnrs, "PSNR"), (ssims, "SSIM")):
        ref = mm.utils.average([{key: v} for v in vals], key)
        assert float(M.average(vals)) == float(ref)
    # mmagic's average accumulates in the values' dtype; for float32 PSNRs it is not the float64 mean.
    assert abs(float(M.average(psnrs)) - np.mean(np.float64(psnrs))) < 1e-3


# ------------------------------------------------------------------------- independent (no mmagic) checks
def test_gaussian_kernel_matches_opencv():
    cv2 = pytest.importorskip("cv2")
    k = cv2.getGaussianKernel(11, 1.5)[:, 0]
    assert np.abs(M._GAUSS_1D - k).max() <= 1e-16
    assert abs(M._GAUSS_1D.sum() - 1.0) <= 1e-15


def test_ssim_matches_skimage():
    """skimage's Gaussian SSIM (sigma 1.5, truncate 3.5 -> 11x11, population covariance, K1/K2 0.01/0.03) is the
    same formula with a different filter implementation and the same valid-region crop."""
    from skimage.metrics import structural_similarity

    gt = _photo("chelsea")
    pred = M.output_to_image(_sr_like_output(gt, 1), "0.x")
    ref = structural_similarity(gt.astype(np.float64), pred.astype(np.float64), data_range=255, channel_axis=2,
                                gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert abs(M.ssim(gt, pred) - ref) <= 1e-9


def test_psnr_matches_skimage_within_float32():
    from skimage.metrics import peak_signal_noise_ratio

    gt = _photo("coffee", 300)
    pred = M.output_to_image(_sr_like_output(gt, 2), "1.x")
    ref = peak_signal_noise_ratio(gt.astype(np.float64), pred.astype(np.float64), data_range=255)
    assert abs(float(M.psnr(gt, pred)) - ref) <= 2e-5  # mmagic computes the MSE in float32


def test_y_channel_is_bt601():
    from skimage.color import rgb2ycbcr

    gt = _photo("astronaut", 64)
    y = M.rgb_to_y(gt)
    assert y.shape == (64, 64, 1) and y.dtype == np.float32
    ref = rgb2ycbcr(gt.astype(np.float64) / 255.0)[..., 0]  # 16 + (65.481 R + 128.553 G + 24.966 B)
    assert np.abs(y[..., 0] - ref).max() <= 1e-3  # float32 rounding of values up to 235


def test_crop_border_crops_each_edge():
    gt = _photo("astronaut", 80)
    pred = M.output_to_image(_sr_like_output(gt, 4), "1.x")
    c = 6
    assert M.psnr(gt, pred, c) == M.psnr(gt[c:-c, c:-c], pred[c:-c, c:-c])
    assert M.ssim(gt, pred, c) == M.ssim(gt[c:-c, c:-c], pred[c:-c, c:-c])
    assert M.psnr(gt, pred, c, "Y") == M.psnr(gt[c:-c, c:-c], pred[c:-c, c:-c], 0, "y")


def test_psnr_formula_and_mae_scale():
    gt = np.zeros((16, 16, 3), np.uint8)
    pred = np.full((16, 16, 3), 10.0, np.float32)
    assert abs(float(M.psnr(gt, pred)) - 20 * np.log10(255 / 10)) <= 1e-5
    assert abs(M.mae(gt, pred) - 10 / 255) <= 1e-15
    gray = np.zeros((16, 16), np.uint8)
    assert abs(float(M.psnr(gray, np.full((16, 16), 10.0))) - 20 * np.log10(255 / 10)) <= 1e-5


def test_output_to_image_conventions():
    x = np.array([[[-1.5, -1.0, -0.5], [0.0, 0.5, 1.0], [1.5, 0.2, 0.00196078]]], np.float32)
    a = M.output_to_image(x, "1.x")
    np.testing.assert_array_equal(a, np.clip(x * np.float32(127.5) + np.float32(127.5), 0, 255))
    assert a.dtype == np.float32 and a[0, 0, 0] == 0 and a[0, 2, 0] == 255
    b = M.output_to_image(x, "0.x")
    assert b.dtype == np.uint8
    np.testing.assert_array_equal(b, [[[0, 0, 64], [128, 191, 255], [255, 153, 128]]])
    with pytest.raises(UserError, match="convention"):
        M.output_to_image(x, "2.x")
    with pytest.raises(UserError, match="dtype"):
        M.output_to_image(np.zeros((2, 2, 3), np.uint8))


def test_bad_inputs_raise_user_errors():
    a = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(UserError, match="shapes differ"):
        M.psnr(a, np.zeros((32, 30, 3), np.uint8))
    with pytest.raises(UserError, match="shapes differ"):
        M.mae(a, np.zeros((32, 32, 1), np.uint8))
    with pytest.raises(UserError, match="11x11"):
        M.ssim(a, a, crop_border=11)  # 10x10 left
    with pytest.raises(UserError, match="11x11"):
        M.ssim(np.zeros((10, 40, 3), np.uint8), np.zeros((10, 40, 3), np.uint8))
    with pytest.raises(UserError, match="after crop_border=16"):
        M.psnr(a, a, crop_border=16)
    with pytest.raises(UserError, match="crop_border"):
        M.psnr(a, a, crop_border=-1)
    with pytest.raises(UserError, match="convert_to"):
        M.psnr(a, a, convert_to="YCbCr")
    with pytest.raises(UserError, match="3 channels"):
        M.psnr(a[..., :1], a[..., :1], convert_to="Y")
    with pytest.raises(UserError, match="shape"):
        M.psnr(np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(UserError, match="no images"):
        M.average([])

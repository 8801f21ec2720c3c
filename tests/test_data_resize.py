"""MATLAB-like bicubic resize: parity with mmagic's MATLABLikeResize and an independent float64 reference."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data

from glean_jax.data.resize import cubic, imresize, imresize_uint8, output_size, resize_weights
from glean_jax.errors import UserError
from tests.oracle import module_or_skip

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry")
# (scale, output_shape) as used by mmagic's GLEAN preprocessing (GT -> 256x256, x1/8, x1/16), plus other cases.
CASES = [
    dict(scale=1 / 8),
    dict(scale=1 / 16),
    dict(output_shape=(256, 256)),
    dict(output_shape=(100, 333)),
    dict(scale=0.5),
    dict(scale=3),
]


def _photo(name: str) -> np.ndarray:
    return np.ascontiguousarray(getattr(skimage.data, name)())


def reference_imresize(img: np.ndarray, out_hw: tuple[int, int], scales: tuple[float, float]) -> np.ndarray:
    """Independent float64 implementation written from MATLAB's imresize definition (cubic a=-0.5, antialiased
    when shrinking, symmetric borders), one dense weight matrix per axis, rows first."""

    def k(x):
        ax = np.abs(x)
        return np.where(ax <= 1, 1.5 * ax**3 - 2.5 * ax**2 + 1,
                        np.where(ax <= 2, -0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2, 0.0))

    def matrix(n_in, n_out, s):
        m = np.zeros((n_out, n_in))
        for i in range(n_out):
            centre = (i + 1) / s + 0.5 * (1 - 1 / s)  # 1-based input coordinate
            support = 2.0 / min(s, 1.0)
            for j in range(int(np.floor(centre - support)) - 1, int(np.ceil(centre + support)) + 2):
                d = centre - j
                w = s * k(s * d) if s < 1 else k(d)
                jj = j - 1
                period = 2 * n_in
                jj %= period
                if jj >= n_in:
                    jj = period - 1 - jj
                m[i, jj] += w
            m[i] /= m[i].sum()
        return m

    a = img.astype(np.float64)
    mh, mw = matrix(a.shape[0], out_hw[0], scales[0]), matrix(a.shape[1], out_hw[1], scales[1])
    return np.einsum("ij,jkc->ikc", mh, np.einsum("kl,jlc->jkc", mw, a))


def test_cubic_kernel_values():
    x = np.array([0, 0.5, 1, 1.5, 2, 2.5, -0.5, -1.5])
    want = [1, 0.5625, 0, -0.0625, 0, 0, 0.5625, -0.0625]
    np.testing.assert_allclose(cubic(x), want, atol=1e-7)
    assert cubic(x).dtype == np.float32


@pytest.mark.parametrize("n_in,n_out", [(256, 32), (256, 16), (451, 256), (40, 120), (7, 3)])
def test_weights_sum_to_one_and_indices_in_range(n_in, n_out):
    w, idx = resize_weights(n_in, n_out, n_out / n_in)
    assert w.shape == idx.shape and w.shape[0] == n_out
    np.testing.assert_allclose(w.sum(1), 1.0, atol=2e-6)
    assert idx.min() >= 0 and idx.max() < n_in


def test_output_size_rules():
    assert output_size((256, 256), scale=1 / 8)[0] == (32, 32)
    assert output_size((300, 451), scale=1 / 8)[0] == (38, 57)  # ceil, as mmagic
    assert output_size((300, 451), output_shape=(256, 256)) == ((256, 256), (256 / 300, 256 / 451))


@pytest.mark.parametrize("kw", CASES, ids=str)
def test_matches_independent_float64_reference(kw):
    img = skimage.data.chelsea()[:120, :160].astype(np.float64) / 255
    out = imresize(img, **kw)
    s = kw.get("scale")
    scales = (s, s) if s else (out.shape[0] / img.shape[0], out.shape[1] / img.shape[1])
    ref = reference_imresize(img, out.shape[:2], scales)
    # mmagic works in float32 (weights, coordinates, sums): agreement with exact float64 math to ~1e-5.
    assert np.abs(out - ref).max() < 1e-5


def test_constant_image_stays_constant():
    img = np.full((64, 48, 3), 0.3, np.float64)
    for kw in CASES:
        np.testing.assert_allclose(imresize(img, **kw), 0.3, atol=1e-6)


def test_bad_input():
    with pytest.raises(UserError, match="expected a positive number"):
        imresize(np.zeros((8, 8, 3)), scale=0)
    with pytest.raises(UserError, match="neither"):
        imresize(np.zeros((8, 8, 3)))
    with pytest.raises(UserError, match="expected uint8"):
        imresize_uint8(np.zeros((8, 8, 3), np.float32), scale=0.5)
    with pytest.raises(UserError, match=r"expected \(H, W\)"):
        imresize(np.zeros((2, 8, 8, 3)), scale=0.5)


@pytest.mark.oracle
def test_parity_with_mmagic_matlab_like_resize():
    from skimage import img_as_float

    m = module_or_skip("mmagic.datasets.transforms.matlab_like_resize")
    worst = 0.0
    for name in PHOTOS:
        img = _photo(name)
        f = img_as_float(img)  # what mmagic's GLEAN preprocessing feeds MATLABLikeResize
        for kw in CASES:
            ref = m.MATLABLikeResize(keys=["x"], **kw)({"x": f})["x"]
            out = imresize(f, **kw)
            assert out.shape == ref.shape, (name, kw)
            d = float(np.abs(out.astype(np.float64) - ref).max())
            worst = max(worst, d)
            assert d <= 1e-6, (name, kw, d)
            # the uint8 PNG content mmagic's preprocessing writes: clip(0, 1) * 255, around
            ref_u8 = np.around(np.clip(ref, 0.0, 1.0) * 255).astype(np.uint8)
            np.testing.assert_array_equal(imresize_uint8(img, **kw), ref_u8, err_msg=f"{name} {kw}")
    print(f"MATLABLikeResize parity: max |delta| = {worst:g} over {len(PHOTOS)} photos x {len(CASES)} cases")


@pytest.mark.oracle
def test_parity_with_mmagic_on_grayscale_and_uint8_input():
    m = module_or_skip("mmagic.datasets.transforms.matlab_like_resize")
    gray = skimage.data.camera()[:200, :300]
    for kw in (dict(scale=1 / 8), dict(output_shape=(64, 80))):
        ref = m.MATLABLikeResize(keys=["x"], **kw)({"x": gray / 255.0})["x"]
        assert np.abs(imresize(gray / 255.0, **kw) - ref).max() <= 1e-6
        # mmagic casts uint8 to float32 and neither clips nor rounds (its uint8 branch is unreachable)
        ref = m.MATLABLikeResize(keys=["x"], **kw)({"x": _photo("astronaut")})["x"]
        assert np.abs(imresize(_photo("astronaut"), **kw) - ref).max() <= 1e-6 * 255

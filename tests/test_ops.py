"""Unit tests of the numerical ops against PyTorch's own functions (torch CPU) or direct NumPy transcriptions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from glean_jax.models import conv as conv_lib
from glean_jax.models import ops
from tests.oracle import module_or_skip

RS = np.random.RandomState(0)


def nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def nhwc(t):
    return t.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("h,w", [(4, 4), (5, 7)])
def test_conv_transpose_s2_equals_torch(h, w):
    x = RS.randn(2, h, w, 6).astype(np.float32)
    k = RS.randn(3, 3, 6, 5).astype(np.float32)             # HWIO: k[a, b, c, o]
    ref = F.conv_transpose2d(nchw(x), torch.from_numpy(k.transpose(2, 3, 0, 1).copy()), stride=2)  # (I, O, kh, kw)
    out = np.asarray(ops.conv_transpose_s2(jnp.asarray(x), jnp.asarray(k)))
    assert out.shape == (2, 2 * h + 1, 2 * w + 1, 5)
    np.testing.assert_allclose(out, nhwc(ref), atol=1e-5)


def test_conv_transpose_s2_gradients_equal_lax():
    x = jnp.asarray(RS.randn(1, 4, 4, 3).astype(np.float32))
    k = jnp.asarray(RS.randn(3, 3, 3, 2).astype(np.float32))

    def ref(x, k):  # XLA's transposed conv (slow to differentiate on CPU; fine at this size)
        return jax.lax.conv_transpose(x, k[::-1, ::-1], (2, 2), ((2, 2), (2, 2)),
                                      dimension_numbers=conv_lib.DIMENSION_NUMBERS)

    np.testing.assert_allclose(ops.conv_transpose_s2(x, k), ref(x, k), atol=1e-5)
    g1 = jax.grad(lambda x, k: jnp.sum(jnp.sin(ops.conv_transpose_s2(x, k))), argnums=(0, 1))(x, k)
    g2 = jax.grad(lambda x, k: jnp.sum(jnp.sin(ref(x, k))), argnums=(0, 1))(x, k)
    for a, b in zip(g1, g2, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)


def upfirdn2d_numpy(x, kernel2d, up, down, pad):
    """Direct transcription of mmcv's upfirdn2d (NHWC, one pad pair for both axes)."""
    n, h, w, c = x.shape
    y = np.zeros((n, h * up, w * up, c), np.float64)
    y[:, ::up, ::up] = x
    p0, p1 = pad
    y = np.pad(y, ((0, 0), (max(p0, 0), max(p1, 0)), (max(p0, 0), max(p1, 0)), (0, 0)))
    y = y[:, max(-p0, 0): y.shape[1] - max(-p1, 0), max(-p0, 0): y.shape[2] - max(-p1, 0)]
    kf = kernel2d[::-1, ::-1]
    kh, kw = kf.shape
    oh, ow = y.shape[1] - kh + 1, y.shape[2] - kw + 1
    out = np.zeros((n, oh, ow, c))
    for i in range(kh):
        for j in range(kw):
            out += kf[i, j] * y[:, i:i + oh, j:j + ow]
    return out[:, ::down, ::down]


@pytest.mark.parametrize("up,down,pad,gain", [(1, 1, (1, 1), 4.0), (2, 1, (2, 1), 4.0), (1, 2, (2, 2), 1.0),
                                              (1, 2, (1, 1), 1.0), (1, 1, (-1, 2), 1.0)])
def test_upfirdn2d_equals_direct(up, down, pad, gain):
    x = RS.randn(2, 6, 6, 3).astype(np.float32)
    ref = upfirdn2d_numpy(x, ops.make_kernel_2d(gain=gain).astype(np.float64), up, down, pad)
    out = np.asarray(ops.upfirdn2d(jnp.asarray(x), ops.fir_taps(gain=gain), up, down, pad))
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_make_kernel_values():
    k = np.array([1, 3, 3, 1], np.float32)
    np.testing.assert_array_equal(ops.make_kernel_2d(), np.outer(k, k) / 64)
    np.testing.assert_array_equal(ops.make_kernel_2d(gain=4.0), np.outer(k, k) / 16)


@pytest.mark.parametrize("upsample", [False, True])
@pytest.mark.parametrize("demodulate", [False, True])
def test_modulated_conv_equals_grouped_form(upsample, demodulate):
    """Input-scale formulation vs mmagic's grouped per-sample weights (torch F.conv2d / conv_transpose2d, groups=N)."""
    n, cin, cout, h = 3, 5, 4, 6
    k = 3 if (upsample or demodulate) else 1
    x = RS.randn(n, h, h, cin).astype(np.float32)
    w = RS.randn(k, k, cin, cout).astype(np.float32) * 0.3
    s = (RS.randn(n, cin) * 0.5 + 1).astype(np.float32)
    out = np.asarray(ops.modulated_conv(jnp.asarray(x), jnp.asarray(w), jnp.asarray(s), demodulate=demodulate,
                                        upsample=upsample))
    wt = torch.from_numpy(w.transpose(3, 2, 0, 1).copy())[None] * torch.from_numpy(s)[:, None, :, None, None]
    if demodulate:
        wt = wt * torch.rsqrt(wt.pow(2).sum([2, 3, 4]) + 1e-8)[:, :, None, None, None]
    xt = nchw(x).reshape(1, n * cin, h, h)
    if upsample:
        wt = wt.transpose(1, 2).reshape(n * cin, cout, k, k)
        y = F.conv_transpose2d(xt, wt, stride=2, groups=n).reshape(n, cout, 2 * h + 1, 2 * h + 1)
        kern = torch.from_numpy(ops.make_kernel_2d(gain=4.0))[None, None].repeat(cout, 1, 1, 1)
        y = F.conv2d(F.pad(y, (1, 1, 1, 1)), kern.flip(2, 3), groups=cout)
    else:
        y = F.conv2d(xt, wt.reshape(n * cout, cin, k, k), padding=k // 2, groups=n).reshape(n, cout, h, h)
    np.testing.assert_allclose(out, nhwc(y), atol=2e-5)


def test_pixel_shuffle_matches_torch():
    x = RS.randn(2, 3, 5, 12).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(ops.pixel_shuffle(jnp.asarray(x), 2)), nhwc(F.pixel_shuffle(nchw(x), 2)))


def test_nchw_flatten_matches_torch_view():
    x = RS.randn(2, 4, 4, 6).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(ops.nchw_flatten(jnp.asarray(x))), nchw(x).reshape(2, -1).numpy())


@pytest.mark.oracle
@pytest.mark.parametrize("n", [1, 2, 4, 8, 12])
def test_minibatch_stddev(n):
    """Against mmagic's ``ModMBStddevLayer()`` (group size 4, one channel group), the layer of its StyleGAN2
    discriminator: the input channels unchanged, the appended stddev map to 1e-6 relative."""
    layer = module_or_skip("mmagic.models.editors.stylegan2.stylegan2_modules").ModMBStddevLayer()
    x = RS.randn(n, 3, 3, 5).astype(np.float32)
    out = np.asarray(ops.minibatch_stddev(jnp.asarray(x)))
    with torch.no_grad():
        ref = layer(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy().transpose(0, 2, 3, 1)
    assert out.shape == ref.shape == (n, 3, 3, 6)
    np.testing.assert_array_equal(out[..., :5], x)
    np.testing.assert_allclose(out[..., 5], ref[..., 5], rtol=1e-6)


def test_minibatch_stddev_rejects_bad_batch():
    with pytest.raises(ValueError, match="multiple"):
        ops.minibatch_stddev(jnp.zeros((6, 2, 2, 1)))


def test_fused_leaky_relu():
    x = RS.randn(4, 7).astype(np.float32)
    b = RS.randn(7).astype(np.float32)
    ref = F.leaky_relu(torch.from_numpy(x + b), 0.2).numpy() * np.sqrt(2)
    np.testing.assert_allclose(np.asarray(ops.fused_leaky_relu(jnp.asarray(x), jnp.asarray(b))), ref, rtol=1e-6)



@pytest.mark.oracle
def test_pixel_norm_equals_mmagic():
    """Against mmagic's ``PixelNorm`` (``pggan``; the first layer of StyleGAN2's mapping network), rows of very
    different scales: 1e-6 relative."""
    pixel_norm = module_or_skip("mmagic.models.editors.pggan").PixelNorm()
    x = (RS.randn(5, 512) * np.array([1e-3, 1e-1, 1, 10, 1e3])[:, None]).astype(np.float32)
    with torch.no_grad():
        ref = pixel_norm(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(ops.pixel_norm(jnp.asarray(x))), ref, rtol=1e-6, atol=0)

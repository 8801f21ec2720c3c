"""StyleGAN2 generator and discriminator vs the real mmagic 1.2.0 classes (oracle), through our converter.

Pass: max|ours - mmagic| <= ``PARITY_RTOL`` x max|mmagic| in float32, per output or logit tensor
(``tests/tolerances.py``). bfloat16 compute is measured against float32 as PSNR (peak-to-peak 2).
"""

import math

import jax
import numpy as np
import pytest

from convert import mmagic as convert_mmagic
from glean_jax import mmagic_reference as mo
from glean_jax.models.build import build_discriminator, build_generator
from tests.tolerances import PARITY_RTOL, scaled_error

pytestmark = pytest.mark.oracle


def psnr_pm1(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * math.log10(4.0 / float(np.mean((np.asarray(a, np.float64) - b) ** 2)))


@pytest.fixture(scope="module", params=[64, 256])
def generator_pair(request):
    size = request.param
    torch_g = mo.build_generator(size, seed=size)
    meta, variables, _ = convert_mmagic.convert_state(mo.state_dict_numpy(torch_g), f"G{size}")
    assert meta["generator"]["out_size"] == size
    return size, torch_g, build_generator(meta["generator"]), variables["generator"]


def _torch_g(torch_g, styles, **kw):
    torch = mo.load().torch
    with torch.no_grad():
        if isinstance(styles, list):
            styles = [torch.from_numpy(s) for s in styles]
        else:
            styles = torch.from_numpy(styles)
        return mo.to_nhwc(torch_g(styles, randomize_noise=False, **kw))


def test_generator_from_z(generator_pair):
    size, torch_g, g, v = generator_pair
    z = np.random.RandomState(1).randn(2, 512).astype(np.float32)
    ref = _torch_g(torch_g, z)
    out = np.asarray(jax.jit(lambda v, z: g.apply(v, z, noise="fixed"))(v, z))
    assert out.shape == (2, size, size, 3)
    err = scaled_error(out, ref)
    print(f"G{size} from z: max|d| / max|ref| = {err:.3g} (output std {ref.std():.3f})")
    assert err <= PARITY_RTOL
    out_bf16 = np.asarray(jax.jit(lambda v, z: build_generator({"out_size": size}, "bfloat16").apply(
        v, z, noise="fixed"))(v, z))
    p = psnr_pm1(out_bf16, ref)
    print(f"G{size} bfloat16 vs float32: PSNR {p:.1f} dB")
    assert p > 25.0


def test_generator_from_w_plus(generator_pair):
    size, torch_g, g, v = generator_pair
    num_latents = 2 * int(math.log2(size)) - 2
    w = np.random.RandomState(2).randn(2, num_latents, 512).astype(np.float32)
    ref = _torch_g(torch_g, [w], input_is_latent=True)
    out = np.asarray(jax.jit(lambda v, w: g.apply(v, w, input_is_latent=True, noise="fixed"))(v, w))
    err = scaled_error(out, ref)
    print(f"G{size} from W+: max|d| / max|ref| = {err:.3g}")
    assert err <= PARITY_RTOL


def test_generator_style_mixing_and_truncation(generator_pair):
    size, torch_g, g, v = generator_pair
    rs = np.random.RandomState(3)
    z1, z2 = rs.randn(2, 2, 512).astype(np.float32)
    mean = rs.randn(1, 512).astype(np.float32) * 0.1
    ref = _torch_g(torch_g, [z1, z2], inject_index=3, truncation=0.7,
                   truncation_latent=mo.load().torch.from_numpy(mean))
    out = np.asarray(jax.jit(lambda v, a, b, m: g.apply(v, [a, b], inject_index=3, truncation=0.7,
                                                         truncation_latent=m, noise="fixed"))(v, z1, z2, mean))
    err = scaled_error(out, ref)
    print(f"G{size} mixing+truncation: max|d| / max|ref| = {err:.3g}")
    assert err <= PARITY_RTOL


def test_generator_random_noise_differs_from_fixed(generator_pair):
    size, _, g, v = generator_pair
    z = np.random.RandomState(4).randn(1, 512).astype(np.float32)
    a = g.apply(v, z, noise="random", rngs={"noise": jax.random.key(0)})
    b = g.apply(v, z, noise="random", rngs={"noise": jax.random.key(0)})
    c = g.apply(v, z, noise="fixed")
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3


@pytest.mark.parametrize("size", [64, 256])
def test_discriminator(size):
    torch = mo.load().torch
    torch_d = mo.build_discriminator(size, seed=10 + size)
    meta, variables, _ = convert_mmagic.convert_state(mo.state_dict_numpy(torch_d), f"D{size}")
    d = build_discriminator(meta["discriminator"])
    f = jax.jit(d.apply)
    for batch in (4, 8):
        x = np.random.RandomState(batch).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
        with torch.no_grad():
            ref = torch_d(mo.to_nchw(x)).numpy()
        out = np.asarray(f(variables["discriminator"], x))
        err = scaled_error(out, ref)
        print(f"D{size} batch {batch}: max|d| / max|ref| = {err:.3g} (|logit| mean {np.abs(ref).mean():.3f})")
        assert out.shape == (batch, 1)
        assert err <= PARITY_RTOL

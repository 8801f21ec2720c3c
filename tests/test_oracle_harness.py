"""The mmagic oracle harness (tests/oracle/mmagic_oracle.py): shims, lazy imports, seeded builds, helpers.

Every test here runs the real mmagic 1.2.0 code and must FAIL (not skip) when it is not installed.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from glean_jax import mmagic_reference as mo

pytestmark = pytest.mark.oracle
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ns():
    return mo.load()


def _finders() -> list:
    return [f for f in sys.meta_path if getattr(f, "_glean_oracle_finder", False)]


def test_load_is_idempotent_and_gives_the_real_classes(ns):
    import inspect

    assert mo.load() is ns
    assert len(_finders()) == 1
    ext_before = sys.modules["mmcv._ext"]
    tv_before = sys.modules.get("torchvision")
    # Installing the shims again changes nothing.
    mo._install_finder()
    assert mo._install_ext_stand_in() == ns.ext_stand_in
    assert mo._install_torchvision_stubs() == ns.torchvision_stand_in
    assert len(_finders()) == 1
    assert sys.modules["mmcv._ext"] is ext_before
    assert sys.modules.get("torchvision") is tv_before

    assert ns.versions["mmagic"] == "1.2.0"
    site = Path(inspect.getsourcefile(ns.torch)).parent.parent
    for cls, module in [(ns.GLEANStyleGANv2, "mmagic.models.editors.glean.glean_styleganv2"),
                        (ns.StyleGAN2Generator, "mmagic.models.editors.stylegan2.stylegan2_generator"),
                        (ns.StyleGAN2Discriminator, "mmagic.models.editors.stylegan2.stylegan2_discriminator")]:
        assert cls.__module__ == module
        assert Path(inspect.getsourcefile(cls)).is_relative_to(site / "mmagic")  # the installed, unmodified file
    assert ns.MODELS.get("StyleGANv2Generator") is ns.StyleGAN2Generator
    assert ns.MODELS.get("GLEANStyleGANv2") is ns.GLEANStyleGANv2

    # Lazy re-exports of the package __init__ files resolve to the same objects (explicit and `import *`).
    from mmagic.models import GLEANStyleGANv2  # via `from .editors import *`
    from mmagic.models.editors import GLEANStyleGANv2 as glean_from_editors
    from mmagic.models.editors.stylegan1 import EqualLinearActModule
    from mmagic.models.editors.stylegan2 import StyleGAN2Generator
    assert GLEANStyleGANv2 is ns.GLEANStyleGANv2 and glean_from_editors is ns.GLEANStyleGANv2
    assert StyleGAN2Generator is ns.StyleGAN2Generator
    assert EqualLinearActModule is ns.EqualLinearActModule
    with pytest.raises(AttributeError):
        mo.import_module("mmagic.models.editors").NoSuchThing  # noqa: B018


_PROBE = """
import json, sys, time
sys.path.insert(0, {repo!r})
from glean_jax import mmagic_reference as mo
t = time.perf_counter()
ns = mo.load()
load_s = time.perf_counter() - t
def executed():
    return sorted(m for m, mod in sys.modules.items()
                  if (m == 'mmagic' or m.startswith('mmagic.')) and not getattr(mod, '__glean_oracle_lazy__', False))
after_load = executed()
lazy = sorted(m for m, mod in sys.modules.items() if getattr(mod, '__glean_oracle_lazy__', False))
for name in ['mmagic.datasets.transforms.aug_shape', 'mmagic.evaluation.metrics.psnr',
             'mmagic.models.losses.perceptual_loss']:
    mo.import_module(name)
tops = sorted({{m.split('.')[0] for m in sys.modules}})
print(json.dumps(dict(load_s=load_s, import_s=ns.import_seconds, after_load=after_load, after_all=executed(),
                      lazy=lazy, tops=tops)))
"""


def test_only_a_small_set_of_mmagic_modules_is_imported():
    proc = subprocess.run([sys.executable, "-c", _PROBE.format(repo=str(REPO))], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"fresh-process load(): {info['load_s']:.2f} s (imports {info['import_s']:.2f} s), "
          f"{len(info['after_load'])} mmagic files executed, {len(info['after_all'])} after 3 more modules")
    for heavy in ["diffusers", "transformers", "mediapipe", "av", "lpips", "mmdet", "clip"]:
        assert heavy not in info["tops"], heavy
    assert len(info["after_load"]) <= 30, info["after_load"]
    assert len(info["after_all"]) <= 45, info["after_all"]
    # Package __init__ files are never executed: every package is lazy.
    for pkg in ["mmagic", "mmagic.models", "mmagic.models.editors", "mmagic.models.archs", "mmagic.utils"]:
        assert pkg in info["lazy"]
        assert pkg not in info["after_all"]
    # Editors off the GLEAN path stay unloaded.
    assert not any(m.startswith(("mmagic.models.editors.stable_diffusion", "mmagic.models.editors.animatediff",
                                 "mmagic.apis")) for m in info["after_all"])
    assert "mmagic.utils.trans_utils" not in info["after_all"]  # uses np.bool8 (gone in numpy 2)


def test_mmcv_ext_ops_raise_and_cpu_uses_the_reference_code(ns):
    torch = ns.torch
    if not ns.ext_stand_in:
        pytest.skip("a real compiled mmcv._ext is installed; the stand-in is not in use")
    from mmcv.ops.fused_bias_leakyrelu import FusedBiasLeakyReLUFunction, fused_bias_leakyrelu
    from mmcv.utils import ext_loader

    ext = ext_loader.load_ext("_ext", ["upfirdn2d", "fused_bias_leakyrelu", "nms"])
    assert ext is sys.modules["mmcv._ext"]
    assert not hasattr(ext, "__file__") and not hasattr(ext, "__wrapped__")
    for op in ["nms", "upfirdn2d", "anything_else"]:
        with pytest.raises(mo.OracleOpError, match=f"mmcv._ext.{op}"):
            getattr(ext, op)(torch.zeros(1))
    x = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    b = torch.randn(4, generator=torch.Generator().manual_seed(1))
    with pytest.raises(mo.OracleOpError):  # the compiled-op path of a real mmcv op
        FusedBiasLeakyReLUFunction.apply(x, b, 0.2, 2**0.5)
    # The CPU path does not touch _ext: leaky_relu(x + b, 0.2) * sqrt(2), computed independently here.
    got = fused_bias_leakyrelu(x, b).numpy()
    v = x.numpy() + b.numpy()[None, :, None, None]
    want = np.where(v >= 0, v, 0.2 * v) * math.sqrt(2)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def _glean_forward(model, torch, seed: int = 7):
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    with torch.no_grad():
        return model(x).numpy()


def test_glean_builds_are_seeded_and_bit_identical(ns):
    import time

    torch = ns.torch
    t0 = time.perf_counter()
    a = mo.build_glean(4, 8, seed=0, num_rrdbs=2)
    t1 = time.perf_counter()
    sd_a, out_a = mo.state_dict_numpy(a), _glean_forward(a, torch)
    t2 = time.perf_counter()
    print(f"GLEAN 4->8 (2 RRDB) build {t1 - t0:.2f} s, forward batch 2 {t2 - t1:.2f} s")
    assert not a.training
    del a
    b = mo.build_glean(4, 8, seed=0, num_rrdbs=2)
    sd_b, out_b = mo.state_dict_numpy(b), _glean_forward(b, torch)
    del b
    assert list(sd_a) == list(sd_b)
    assert all(np.array_equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert np.array_equal(out_a, out_b)
    assert out_a.shape == (2, 3, 8, 8) and np.isfinite(out_a).all() and out_a.std() > 1e-2
    del sd_b

    c = mo.build_glean(4, 8, seed=1, num_rrdbs=2)
    sd_c, out_c = mo.state_dict_numpy(c), _glean_forward(c, torch)
    del c
    assert np.abs(out_a - out_c).max() > 1e-3
    differing = [k for k in sd_a if not np.array_equal(sd_a[k], sd_c[k])]
    assert "generator.injected_noise_0" in differing and "encoder.0.0.conv_first.weight" in differing
    assert all(k.endswith(".kernel") for k in sd_a if k not in differing)  # only the fixed FIR kernels agree


def test_randomize_hits_every_constant_and_nothing_else(ns):
    torch = ns.torch
    torch.manual_seed(0)
    model = ns.GLEANStyleGANv2(4, 8, num_rrdbs=2)
    params = dict(model.named_parameters())
    before = {k: v.detach().clone() for k, v in params.items()}
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    constant = set(mo.constant_tensors(model))
    for name in ["generator.style_mapping.1.bias", "generator.conv1.conv.style_modulation.bias",
                 "generator.conv1.noise_injector.weight", "generator.to_rgb1.bias",
                 "encoder.0.0.body.0.rdb1.conv1.bias", "decoder.0.upsample_conv.bias"]:
        assert name in constant, name
    assert float(before["generator.conv1.conv.style_modulation.bias"][0]) == 1.0

    rng_state = torch.get_rng_state()
    assert mo.randomize_(model, seed=5) is model
    assert torch.equal(torch.get_rng_state(), rng_state)  # the global RNG is left alone

    for name, p in params.items():
        if name in constant:
            assert not torch.equal(p, before[name]), name
        else:
            assert torch.equal(p, before[name]), name
    for name, b in model.named_buffers():
        assert torch.equal(b, buffers[name]), name  # FIR kernels and injected noise untouched
    assert any(n.endswith(".kernel") for n in buffers)
    # What stays "all equal": only the one-element noise strengths (trivially constant, but moved off 0).
    left = mo.constant_tensors(model)
    assert left and all(params[n].numel() == 1 and n.endswith("noise_injector.weight") for n in left), left

    def step_std(name: str) -> float:
        return float((params[name].detach() - before[name]).std())

    # EqualLinearActModule biases (lr_mul 0.01 in the mapping MLP) move by 0.2*randn/lr_mul: effective 0.2*randn.
    assert model.generator.style_mapping[1].lr_mul == pytest.approx(0.01)
    assert 0.17 < step_std("generator.style_mapping.1.bias") * 0.01 < 0.23
    assert 0.17 < step_std("generator.conv1.conv.style_modulation.bias") < 0.23  # lr_mul 1
    assert 0.17 < step_std("decoder.0.upsample_conv.bias") < 0.23


def test_generator_and_discriminator_forward(ns):
    import time

    torch = ns.torch
    t0 = time.perf_counter()
    g = mo.build_generator(64, seed=0)
    t1 = time.perf_counter()
    z = torch.randn(2, 512, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y1 = g(z, randomize_noise=False).numpy()
        t2 = time.perf_counter()
        y2 = g(z, randomize_noise=False).numpy()
    print(f"StyleGAN2 G 64 build {t1 - t0:.2f} s, forward batch 2 {t2 - t1:.2f} s, output std {y1.std():.3f}")
    assert y1.shape == (2, 3, 64, 64) and np.isfinite(y1).all()
    assert np.array_equal(y1, y2)  # randomize_noise=False uses the stored noise buffers
    assert 0.5 < y1.std() < 10
    assert not mo.constant_tensors(g) or all(n.endswith("noise_injector.weight") for n in mo.constant_tensors(g))
    del g

    t0 = time.perf_counter()
    d = mo.build_discriminator(64, seed=0)
    t1 = time.perf_counter()
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.no_grad():
        s1 = d(x).numpy()
        t2 = time.perf_counter()
        s2 = d(x).numpy()
    print(f"StyleGAN2 D 64 build {t1 - t0:.2f} s, forward batch 4 {t2 - t1:.2f} s")
    assert s1.shape == (4, 1) and np.isfinite(s1).all()
    assert np.array_equal(s1, s2)
    assert np.ptp(s1) > 0
    assert mo.constant_tensors(d) == ["final_linear.1.bias"]  # a one-element bias, moved by randomize_


def test_import_module_examples(ns):
    aug_shape = mo.import_module("mmagic.datasets.transforms.aug_shape")
    psnr_mod = mo.import_module("mmagic.evaluation.metrics.psnr")
    perceptual = mo.import_module("mmagic.models.losses.perceptual_loss")
    assert hasattr(aug_shape, "Flip") and hasattr(psnr_mod, "PSNR")

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (8, 9, 3)).astype(np.float64)
    b = np.clip(a + rng.normal(0, 5, a.shape), 0, 255)
    want = 10 * np.log10(255.0**2 / np.mean((a - b) ** 2))
    # mmagic computes PSNR in float32 (its img_transform casts): float32 tolerance.
    assert psnr_mod.psnr(a, b, crop_border=0, input_order="HWC") == pytest.approx(want, rel=1e-6)

    # GLEAN's perceptual loss: VGG16 features[:22]; the layer names are torchvision's (torchvision ``vgg16``: convs at
    # 0,2,5,7,10,12,14,17,19,21), whether torchvision is real or the oracle's stand-in.
    ns.torch.manual_seed(0)
    loss = perceptual.PerceptualLoss(layer_weights={"21": 1.0}, vgg_type="vgg16",
                                     pretrained="torchvision://vgg16")
    convs = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21]
    want_keys = {f"vgg.vgg_layers.{i}.{w}" for i in convs for w in ("weight", "bias")} | {"vgg.mean", "vgg.std"}
    assert set(loss.state_dict()) == want_keys


def test_check_requirements_names_the_install_command(monkeypatch):
    mo.check_requirements()  # everything is installed here
    monkeypatch.setitem(mo._REQUIRED, "glean_oracle_missing_pkg", "glean-oracle-missing-pkg==1")
    with pytest.raises(ImportError, match=r"glean-oracle-missing-pkg==1.*requirements/oracle\.txt"):
        mo.check_requirements()


def test_array_helpers(ns):
    torch = ns.torch
    x = np.random.default_rng(0).standard_normal((2, 5, 6, 3))
    t = mo.to_nchw(x)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and tuple(t.shape) == (2, 3, 5, 6)
    assert t.is_contiguous()
    assert float(t[1, 2, 4, 5]) == np.float32(x[1, 4, 5, 2])
    back = mo.to_nhwc(t)
    assert back.shape == x.shape and np.array_equal(back, x.astype(np.float32))
    assert mo.to_nchw(x[0]).shape == (3, 5, 6) and mo.to_nhwc(mo.to_nchw(x[0])).shape == (5, 6, 3)
    with pytest.raises(ValueError):
        mo.to_nchw(np.zeros((4, 4)))

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    sd = mo.state_dict_numpy(m)
    assert list(sd) == list(m.state_dict())
    assert sd["0.weight"].dtype == np.float32 and sd["1.num_batches_tracked"].dtype == np.int64
    np.testing.assert_array_equal(sd["0.weight"], m[0].weight.detach().numpy())
    sd["0.weight"][...] = 0  # a copy: the module is unchanged
    assert float(m[0].weight.detach().abs().sum()) > 0

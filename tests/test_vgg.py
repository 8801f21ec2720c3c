"""VGG16 features and the torchvision VGG16 converter vs a PyTorch VGG16 built with torchvision's exact layout.

torchvision itself cannot be imported here, so ``torch_vgg16`` rebuilds ``torchvision.models.vgg16`` (configuration
"D": Conv2d(3, 64, 3, padding=1), ReLU(inplace=True), ..., MaxPool2d(2, 2); classifier Linear/ReLU/Dropout) from
torch.nn, independently of our layer table, and gives it seeded random weights.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

from convert.torch_io import save_torch_state
from convert.torchvision_vgg16 import main as convert_main
from glean_jax.errors import UserError, run_cli
from glean_jax.models.vgg import (
    VGG16_CONV_INDICES,
    VGG16_CONV_NAMES,
    VGG16_LAYERS,
    VGG16Features,
    check_vgg16_params,
    conv_name,
    init_vgg16_params,
    load_vgg16,
)
from tests.tolerances import PARITY_RTOL, scaled_error

TV_CFG_D = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
# The standard VGG names of the convs, by torchvision features index: what the Flax params are called.
TV_CONV_NAMES = {0: "conv1_1", 2: "conv1_2", 5: "conv2_1", 7: "conv2_2", 10: "conv3_1", 12: "conv3_2",
                 14: "conv3_3", 17: "conv4_1", 19: "conv4_2", 21: "conv4_3", 24: "conv5_1", 26: "conv5_2",
                 28: "conv5_3"}


class TorchVGG16(nn.Module):
    """torchvision.models.vgg16 layout; ``classifier_width`` shrinks the (unused, dropped) classifier for speed."""

    def __init__(self, classifier_width: int = 4096, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in TV_CFG_D:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(cin, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        w = classifier_width
        self.classifier = nn.Sequential(nn.Linear(512 * 7 * 7 if w == 4096 else 512, w), nn.ReLU(True), nn.Dropout(),
                                        nn.Linear(w, w), nn.ReLU(True), nn.Dropout(), nn.Linear(w, num_classes))


def torch_vgg16(seed: int, classifier_width: int = 8, num_classes: int = 10) -> TorchVGG16:
    """A torchvision-layout VGG16 with seeded weights: kaiming-normal fan_out convs (torchvision's init, which keeps
    activations O(1) through the 10 convs) and non-zero random biases (a zero bias could hide a bias bug)."""
    torch.manual_seed(seed)
    model = TorchVGG16(classifier_width, num_classes)
    with torch.no_grad():
        for m in model.features:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                m.bias.normal_(0.0, 0.1)
    return model.eval()


def torch_state(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def tv_model() -> TorchVGG16:
    return torch_vgg16(seed=0)


@pytest.fixture(scope="module")
def tv_ckpt(tv_model, module_tmp) -> tuple[Path, Path]:
    """(source .pth, converted checkpoint dir) through the real CLI."""
    d = module_tmp("vgg")
    src = d / "vgg16.pth"
    save_torch_state(src, torch_state(tv_model))
    out = d / "vgg16_jax"
    assert run_cli(convert_main, [str(src), str(out)]) == 0
    return src, out


def _torch_features(model: TorchVGG16, x_nhwc: np.ndarray, layers: list[int]) -> dict[str, np.ndarray]:
    """Runs features[:max+1] like mmagic's PerceptualVGG (clone after each requested layer)."""
    x = torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).copy())
    out = {}
    with torch.no_grad():
        for name, module in model.features[: max(layers) + 1].named_children():
            x = module(x)
            if int(name) in layers:
                out[name] = x.clone().numpy().transpose(0, 2, 3, 1)
    return out


@pytest.mark.parametrize("shape", [(2, 32, 32), (1, 37, 29)])
def test_vgg16_matches_torch(tv_model, tv_ckpt, shape):
    """conv4_3 pre-ReLU ('21') and intermediate layers (a ReLU, each pool) vs torch: max |Δ| <= ``PARITY_RTOL`` x
    max |ref| per layer (float32, ``tests/tolerances.py``).

    37x29 checks that the max pools round the size down like torch's MaxPool2d(2, 2)."""
    n, h, w = shape
    rng = np.random.default_rng(1)
    x = rng.uniform(-2.0, 2.5, size=(n, h, w, 3)).astype(np.float32)  # roughly ImageNet-normalised range
    layers = [3, 4, 9, 16, 21]
    ref = _torch_features(tv_model, x, layers)
    params = load_vgg16(tv_ckpt[1])
    model = VGG16Features(output_layers=tuple(str(i) for i in layers))
    ours = jax.jit(model.apply)({"params": params}, jnp.asarray(x))
    assert set(ours) == {str(i) for i in layers}
    for k in ref:
        assert ours[k].shape == ref[k].shape, (k, ours[k].shape, ref[k].shape)
        assert ours[k].dtype == jnp.float32
    f = ref["21"]
    assert 0.1 < f.std() < 30, f"conv4_3 activations should be O(1) for a meaningful check, std={f.std()}"
    for k in ref:
        err = scaled_error(np.asarray(ours[k]), ref[k])
        print(f"{shape} layer {k}: max |Δ| / max |ref| {err:.3g} (max |ref| {np.abs(ref[k]).max():.3g})")
        assert err <= PARITY_RTOL, f"layer {k}: max |Δ| / max |ref| = {err:.3g}"
    assert ours["21"].shape == (n, h // 8, w // 8, 512)


def test_vgg16_only_builds_needed_layers(tv_ckpt):
    params = load_vgg16(tv_ckpt[1])
    assert sorted(params) == ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
                              "conv4_1", "conv4_2", "conv4_3"]
    assert params["conv4_3"]["kernel"].shape == (3, 3, 512, 512)
    # A shallower request needs fewer params; a deeper one (24..) is not in the converted checkpoint.
    x = jnp.zeros((1, 16, 16, 3))
    VGG16Features(output_layers=("4",)).apply({"params": {k: params[k] for k in ("conv1_1", "conv1_2")}}, x)
    with pytest.raises(UserError, match=r"conv5_1 \(torchvision layer 24\) is missing"):
        load_vgg16(tv_ckpt[1], layers=("25",))


def test_vgg16_conv_names():
    """One name per conv, ``conv<stage>_<n>`` counted from the layer table; the layer selection stays by index."""
    assert VGG16_CONV_NAMES == TV_CONV_NAMES
    assert tuple(VGG16_CONV_NAMES) == VGG16_CONV_INDICES
    stage, n = 1, 0
    for idx, layer in enumerate(VGG16_LAYERS):
        if layer[0] == "conv":
            n += 1
            assert conv_name(idx) == f"conv{stage}_{n}"
        else:
            with pytest.raises(ValueError, match=f"VGG16 layer {idx} is not a conv"):
                conv_name(idx)
            if layer[0] == "pool":
                stage, n = stage + 1, 0
    with pytest.raises(UserError, match="not a layer index.*conv4_3 is layer '21'"):
        VGG16Features(output_layers=("conv4_3",)).init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    params = init_vgg16_params(0)
    del params["conv1_1"]
    with pytest.raises(UserError, match=r"conv1_1 \(torchvision layer 0\) is missing"):
        check_vgg16_params(params)


def test_vgg16_bf16_compute_close_to_f32(tv_ckpt):
    """bfloat16 compute with float32 params: same shapes, bf16 output, relative error at the bf16 level."""
    params = load_vgg16(tv_ckpt[1])
    x = jnp.asarray(np.random.default_rng(2).uniform(-2, 2, (1, 16, 16, 3)).astype(np.float32))
    f32 = VGG16Features().apply({"params": params}, x)["21"]
    bf16 = VGG16Features(dtype=jnp.bfloat16).apply({"params": params}, x)["21"]
    assert bf16.dtype == jnp.bfloat16
    rel = float(jnp.linalg.norm(bf16.astype(jnp.float32) - f32) / jnp.linalg.norm(f32))
    assert rel < 0.05, rel


def test_vgg16_input_checks():
    params = init_vgg16_params(0)
    # Same tree, shapes and dtypes as flax's own init of the module.
    ref = jax.eval_shape(VGG16Features().init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["params"]
    spec = lambda t: jax.tree.map(lambda a: (a.shape, a.dtype), t)
    assert spec(params) == spec(ref)
    std = float(np.std(params["conv4_3"]["kernel"]))
    assert abs(std - np.sqrt(2 / (9 * 512))) < 0.01 * std  # torchvision: kaiming normal, fan_out
    with pytest.raises(UserError, match="too small"):
        VGG16Features().apply({"params": params}, jnp.zeros((1, 4, 4, 3)))
    with pytest.raises(UserError, match="expected NHWC"):
        VGG16Features().apply({"params": params}, jnp.zeros((1, 3, 16, 16)))
    with pytest.raises(UserError, match="not a layer index"):
        VGG16Features(output_layers=("31",)).apply({"params": params}, jnp.zeros((1, 16, 16, 3)))


def test_converter_writes_meta_and_float32(tv_ckpt, tv_model):
    from glean_jax.checkpoint import load_model

    meta, variables = load_model(tv_ckpt[1])
    assert meta["kind"] == "vgg16"
    assert meta["source"]["format"] == "torchvision"
    assert meta["source"]["dropped"] == ["classifier", "features"]  # classifier + features 24/26/28
    assert meta["source"]["consumed_keys"] + meta["source"]["dropped_keys"] == len(tv_model.state_dict())
    params = variables["vgg"]["params"]
    kept = {i: name for i, name in TV_CONV_NAMES.items() if i <= 21}
    assert sorted(params) == sorted(kept.values())
    for i, name in kept.items():          # features.<i> -> its VGG name, OIHW -> HWIO, float32
        w = tv_model.features[i].weight.detach().numpy()
        np.testing.assert_array_equal(params[name]["kernel"], w.transpose(2, 3, 1, 0))
        np.testing.assert_array_equal(params[name]["bias"], tv_model.features[i].bias.detach().numpy())
        assert params[name]["kernel"].dtype == np.float32


def test_converter_mmagic_prefix(tv_model, tv_ckpt, tmp_path):
    """A GLEAN restorer state_dict (perceptual_loss.vgg.vgg_layers.*, mean/std buffers, generator.*, discriminator.*,
    wrapped in {'state_dict': ...}) converts to the same params as the torchvision file."""
    sd = {f"perceptual_loss.vgg.vgg_layers.{k[len('features.'):]}": v
          for k, v in torch_state(tv_model).items() if k.startswith("features.") and int(k.split(".")[1]) <= 21}
    sd["perceptual_loss.vgg.mean"] = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
    sd["perceptual_loss.vgg.std"] = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)
    sd["generator.encoder.0.0.conv_first.weight"] = np.zeros((4, 3, 3, 3), np.float32)
    sd["discriminator.convs.0.0.conv.weight_orig"] = np.zeros((4, 3, 1, 1), np.float32)
    src = tmp_path / "glean.pth"
    save_torch_state(src, sd, wrap=True)
    out = tmp_path / "out"
    assert run_cli(convert_main, [str(src), str(out)]) == 0
    a, b = load_vgg16(out), load_vgg16(tv_ckpt[1])
    assert a.keys() == b.keys()
    for k in a:
        for leaf in ("kernel", "bias"):
            np.testing.assert_array_equal(a[k][leaf], b[k][leaf])

    sd["perceptual_loss.vgg.std"] = np.ones((1, 3, 1, 1), np.float32)
    save_torch_state(src, sd, wrap=True)
    _assert_cli_error([str(src), str(tmp_path / "out2")], r"perceptual_loss\.vgg\.std is \[1\.0, 1\.0, 1\.0\]",
                      tmp_path / "out2")


# --- bad input ------------------------------------------------------------------------------------------------------

def _assert_cli_error(argv: list[str], pattern: str, out_dir: Path, capsys=None) -> None:
    import re

    rc = run_cli(convert_main, argv)
    assert rc == 2
    if capsys is not None:
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: "), err
        assert re.search(pattern, err), err
    assert not out_dir.exists(), "nothing may be written on failure"
    leftovers = [p for p in out_dir.parent.iterdir() if p.name.startswith(f".{out_dir.name}.tmp-")]
    assert not leftovers, leftovers


@pytest.fixture(scope="module")
def tv_state(tv_model) -> dict[str, np.ndarray]:
    return torch_state(tv_model)


def test_cli_not_a_torch_file(tmp_path, capsys):
    src = tmp_path / "weights.pth"
    src.write_text("this is not a checkpoint\n")
    _assert_cli_error([str(src), str(tmp_path / "out")], r"weights\.pth: not a readable PyTorch checkpoint",
                      tmp_path / "out", capsys)
    _assert_cli_error([str(tmp_path / "absent.pth"), str(tmp_path / "out")], r"absent\.pth: no such file",
                      tmp_path / "out", capsys)


def test_cli_truncated(tv_ckpt, tmp_path, capsys):
    data = tv_ckpt[0].read_bytes()
    src = tmp_path / "truncated.pth"
    src.write_bytes(data[: len(data) // 2])
    _assert_cli_error([str(src), str(tmp_path / "out")], r"truncated\.pth: not a readable PyTorch checkpoint",
                      tmp_path / "out", capsys)


@pytest.mark.parametrize("case,pattern", [
    ("missing", r"missing key\(s\) features\.19\.bias; expected a complete torchvision VGG16"),
    ("extra", r"unexpected key\(s\) features\.1\.running_mean .*vgg16_bn or vgg19"),
    ("vgg19", r"unexpected key\(s\) features\.16\.weight .*vgg16_bn or vgg19"),
    ("foreign", r"no VGG16 weights found \(keys: encoder\.weight\)"),
    ("shape", r"bad\.pth: features\.7\.weight has shape \(128, 64, 3, 1\); expected \(128, 128, 3, 3\) "
              r"\(VGG16 conv2_2\)"),
    ("dropped_shape", r"features\.26\.weight has shape \(512, 256, 3, 3\); expected \(512, 512, 3, 3\) "
                      r"\(VGG16 conv5_2\)"),
    ("int", r"features\.0\.weight has dtype int32; expected floating-point"),
    ("nan", r"conv1_2/kernel holds 1 non-finite"),
])
def test_cli_bad_state(tv_state, tmp_path, capsys, case, pattern):
    sd = dict(tv_state)
    if case == "missing":
        del sd["features.19.bias"]
    elif case == "extra":
        sd["features.1.running_mean"] = np.zeros(64, np.float32)
    elif case == "vgg19":
        sd["features.16.weight"] = np.zeros((256, 256, 3, 3), np.float32)
    elif case == "foreign":
        sd = {"encoder.weight": np.zeros((3, 3), np.float32)}
    elif case == "shape":
        sd["features.7.weight"] = np.zeros((128, 64, 3, 1), np.float32)
    elif case == "dropped_shape":
        sd["features.26.weight"] = np.zeros((512, 256, 3, 3), np.float32)
    elif case == "int":
        sd["features.0.weight"] = np.zeros((64, 3, 3, 3), np.int32)
    elif case == "nan":
        sd["features.2.weight"] = sd["features.2.weight"].copy()
        sd["features.2.weight"][0, 0, 0, 0] = np.nan
    src = tmp_path / "bad.pth"
    save_torch_state(src, sd)
    _assert_cli_error([str(src), str(tmp_path / "out")], pattern, tmp_path / "out", capsys)


def test_cli_refuses_non_empty_out_dir(tv_ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    rc = run_cli(convert_main, [str(tv_ckpt[0]), str(out)])
    assert rc == 2
    assert "not empty" in capsys.readouterr().err
    assert os.listdir(out) == ["keep.txt"]
    assert run_cli(convert_main, [str(tv_ckpt[0]), str(out), "--overwrite"]) == 0
    assert load_vgg16(out)["conv1_1"]["kernel"].shape == (3, 3, 3, 64)

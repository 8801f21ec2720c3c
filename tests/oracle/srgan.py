"""mmagic 1.2.0's real ``SRGAN`` with the GLEAN recipe, as the reference for the train-step parity tests.

:func:`build_srgan` builds ``mmagic.models.editors.srgan.SRGAN`` from the model dict of mmagic's
``configs/glean/glean_x8_2xb8_cat.py`` (:func:`srgan_config`: ``GLEANStyleGANv2`` generator,
``StyleGANv2Discriminator``, ``MSELoss`` weight 1, ``PerceptualLoss(layer_weights={'21': 1.0}, vgg_type='vgg16',
perceptual_weight=1e-2, style_weight=0, norm_img=False, criterion='mse')``, vanilla ``GANLoss`` weight 1e-2,
``DataPreprocessor(mean=std=[127.5] * 3)``) at any geometry, through mmagic's ``MODELS`` registry. Only the
``init_cfg`` (``Pretrained`` StyleGAN2 downloads) and ``pretrained='torchvision://vgg16'`` are left out: every
weight -- generator, discriminator and the perceptual loss's VGG16 -- is seeded random instead.
:func:`build_optim_wrappers` builds the ``OptimWrapperDict(generator=..., discriminator=...)`` as mmengine's
``Runner`` does (``mmengine.optim.build_optim_wrapper`` with mmagic's ``MultiOptimWrapperConstructor`` and the
``optim_wrapper`` dict of mmagic's ``configs/_base_/models/base_glean.py``: Adam lr 1e-4, betas (0.9, 0.99)).
:func:`train_steps` calls ``SRGAN.train_step(data, optim_wrapper)`` as ``IterBasedTrainLoop.run_iter`` does (the
LR scheduler is not stepped: a constant lr). :func:`pack` builds ``data`` exactly as mmagic's ``PackInputs`` +
``pseudo_collate`` deliver it; :func:`folder_batches` reads a dataset folder with mmagic's own
``BasicImageDataset`` / ``LoadImageFromFile`` / ``PackInputs`` and mmengine's ``InfiniteSampler(shuffle=False)``.
:func:`snapshot` copies what a step starts from (both networks' state_dicts and torch ``Adam`` states by parameter
name); :func:`to_ours` converts an SRGAN state_dict with the product's converters.

The perceptual loss's VGG16 comes from ``torchvision.models.vgg`` as mmagic's ``PerceptualVGG`` asks for it (the
oracle's stand-in when torchvision is absent, see :mod:`glean_jax.mmagic_reference`); its weights are overwritten.
One more import shim, scoped to :func:`folder_batches`: NumPy 2's missing ``np.bool8`` alias (see
:func:`_import_loading`).

Usage::

    from tests.oracle import srgan as so
    model = so.build_srgan(16, 64, seed=0, num_rrdbs=2)
    optim = so.build_optim_wrappers(model)
    losses = so.train_steps(model, optim, [so.pack(lq_uint8, gt_uint8)] * 3)
    state = so.state_numpy(model)      # generator.*, discriminator.*, perceptual_loss.vgg.*
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from glean_jax import mmagic_reference as mo

# Modules whose import registers what the SRGAN model dict and the optimizer dict name.
_REGISTERING = (
    "mmagic.models.editors.srgan.srgan",
    "mmagic.models.losses.pixelwise_loss",
    "mmagic.models.losses.perceptual_loss",
    "mmagic.models.losses.gan_loss",
    "mmagic.models.data_preprocessors.data_preprocessor",
    "mmagic.engine.optimizers.multi_optimizer_constructor",
)
LOSS_KEYS = ("loss_pix", "loss_perceptual", "loss_gan", "loss_d_real", "loss_d_fake")

# configs/_base_/models/base_glean.py: optim_wrapper
OPTIM_WRAPPER = dict(
    constructor="MultiOptimWrapperConstructor",
    generator=dict(type="OptimWrapper", optimizer=dict(type="Adam", lr=1e-4, betas=(0.9, 0.99))),
    discriminator=dict(type="OptimWrapper", optimizer=dict(type="Adam", lr=1e-4, betas=(0.9, 0.99))),
)


def load() -> Any:
    """The oracle namespace (:func:`mmagic_oracle.load`) with the SRGAN-path modules imported and registered."""
    ns = mo.load()
    for name in _REGISTERING:
        mo.import_module(name)
    return ns


@contextlib.contextmanager
def mmagic_scope() -> Iterator[None]:
    """mmagic's default registry scope (what ``mmagic.utils.register_all_modules`` / the Runner set): mmengine's
    ``BaseModel`` builds ``data_preprocessor`` and ``build_optim_wrapper`` its constructor from mmengine's root
    registries, which find mmagic's classes only in this scope."""
    from mmengine.registry import DefaultScope

    with DefaultScope.overwrite_default_scope("mmagic"):
        yield


def srgan_config(in_size: int, out_size: int, num_rrdbs: int = 23, norm_img: bool = False) -> dict:
    """mmagic ``configs/glean/glean_x8_2xb8_cat.py``'s ``model`` dict at another geometry, without ``init_cfg``
    (pretrained downloads) and ``pretrained`` VGG; ``norm_img`` True is the in128out1024 config's value."""
    return dict(
        type="SRGAN",
        generator=dict(type="GLEANStyleGANv2", in_size=in_size, out_size=out_size, style_channels=512,
                       num_rrdbs=num_rrdbs),
        discriminator=dict(type="StyleGANv2Discriminator", in_size=out_size),
        pixel_loss=dict(type="MSELoss", loss_weight=1.0, reduction="mean"),
        perceptual_loss=dict(type="PerceptualLoss", layer_weights={"21": 1.0}, vgg_type="vgg16",
                             perceptual_weight=1e-2, style_weight=0, norm_img=norm_img, criterion="mse",
                             pretrained="torchvision://vgg16"),
        gan_loss=dict(type="GANLoss", gan_type="vanilla", loss_weight=1e-2, real_label_val=1.0, fake_label_val=0),
        train_cfg=dict(),
        test_cfg=dict(),
        data_preprocessor=dict(type="DataPreprocessor", mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5]),
    )


def _randomize_vgg_(vgg_layers: Any, seed: int) -> None:
    """Seeded He-normal conv weights (fan-in, so the features keep their scale) and ``0.05 * randn`` biases."""
    torch = mo.load().torch
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for module in vgg_layers:
            if isinstance(module, torch.nn.Conv2d):
                fan_in = module.weight.shape[1] * module.weight.shape[2] * module.weight.shape[3]
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                module.bias.copy_(0.05 * torch.randn(module.bias.shape, generator=gen))


def build_srgan(in_size: int, out_size: int, seed: int, num_rrdbs: int = 23, norm_img: bool = False) -> Any:
    """The real ``SRGAN`` of :func:`srgan_config`, in train mode, every weight seeded random.

    ``torch.manual_seed(seed)`` before ``MODELS.build`` (mmagic's default inits, GLEAN's ``injected_noise_*``
    buffers), then :func:`mmagic_oracle.randomize_` on the generator (seed) and discriminator (seed + 1) so no bias
    or noise weight is constant, and the perceptual loss's VGG16 ``vgg_layers`` replaced by seeded random weights
    (seed + 2). The global torch RNG is reseeded; nothing else is touched.
    """
    ns = load()
    ns.torch.manual_seed(int(seed))
    with mmagic_scope():
        model = ns.MODELS.build(srgan_config(in_size, out_size, num_rrdbs, norm_img))
    mo.randomize_(model.generator, seed)
    mo.randomize_(model.discriminator, seed + 1)
    _randomize_vgg_(model.perceptual_loss.vgg.vgg_layers, seed + 2)
    return model.train()


def build_optim_wrappers(model: Any) -> Any:
    """``OptimWrapperDict(generator=OptimWrapper(Adam), discriminator=OptimWrapper(Adam))`` as the Runner builds it
    (``mmengine.optim.build_optim_wrapper(model, OPTIM_WRAPPER)`` -> mmagic ``MultiOptimWrapperConstructor``)."""
    load()
    from mmengine.optim import build_optim_wrapper

    with mmagic_scope():
        wrappers = build_optim_wrapper(model, dict(OPTIM_WRAPPER))
    assert sorted(wrappers.keys()) == ["discriminator", "generator"], list(wrappers.keys())
    return wrappers


def pack(lq: np.ndarray, gt: np.ndarray) -> dict:
    """uint8 NHWC RGB batches -> ``SRGAN.train_step``'s ``data``, as ``PackInputs`` + ``pseudo_collate`` give it:
    ``inputs`` a list of uint8 CHW tensors, ``data_samples`` a list of ``DataSample(gt_img=uint8 CHW)`` with the
    ``img_channel_order`` / ``gt_channel_order`` = 'rgb' metainfo that ``LoadImageFromFile(channel_order='rgb')``
    records (the preprocessor then normalises without reordering channels)."""
    load()
    from mmagic.structures import DataSample

    lq, gt = np.asarray(lq), np.asarray(gt)
    assert lq.dtype == np.uint8 and gt.dtype == np.uint8 and lq.ndim == gt.ndim == 4, (lq.dtype, gt.dtype)
    inputs, samples = [], []
    for a, b in zip(lq, gt, strict=True):
        inputs.append(mo.to_nchw(a, dtype=None))
        s = DataSample(gt_img=mo.to_nchw(b, dtype=None))
        s.set_metainfo({"img_channel_order": "rgb", "gt_channel_order": "rgb"})
        samples.append(s)
    return {"inputs": inputs, "data_samples": samples}


def train_steps(model: Any, optim_wrapper: Any, batches: Sequence[dict]) -> list[dict[str, float]]:
    """``model.train_step(data, optim_wrapper)`` per batch; the logged losses of each step (float), with the
    totals ``loss_g`` (pix + perceptual + gan, the generator's parsed loss) and ``loss_d`` (real + fake)."""
    out = []
    for data in batches:
        log_vars = model.train_step(data, optim_wrapper)
        row = {k: float(log_vars[k].detach()) for k in LOSS_KEYS}
        row["loss_g"] = row["loss_pix"] + row["loss_perceptual"] + row["loss_gan"]
        row["loss_d"] = row["loss_d_real"] + row["loss_d_fake"]
        out.append(row)
    return out


def adam_state(model: Any, optim_wrapper: Any, net: str) -> dict:
    """numpy copy of ``optim_wrapper[net]``'s torch ``Adam`` state, by parameter name of ``model.<net>``:
    ``{'step': int, 'exp_avg': {name: array}, 'exp_avg_sq': {name: array}, 'trainable': [names]}``. Parameters
    that never had a gradient (the frozen StyleGAN2 bank, unused branches) have no state and are absent; ``step``
    is 0 before the first step; ``trainable`` lists the parameters with ``requires_grad`` (all but the bank)."""
    module = getattr(model, net)
    names = {id(p): n for n, p in module.named_parameters()}
    out: dict = {"step": 0, "exp_avg": {}, "exp_avg_sq": {},
                 "trainable": [n for n, p in module.named_parameters() if p.requires_grad]}
    steps = set()
    for p, st in optim_wrapper[net].optimizer.state.items():
        steps.add(int(st["step"]))
        for key in ("exp_avg", "exp_avg_sq"):
            out[key][names[id(p)]] = st[key].detach().cpu().numpy().copy()
    assert len(steps) <= 1, steps
    out["step"] = steps.pop() if steps else 0
    return out


def snapshot(model: Any, optim_wrapper: Any) -> dict:
    """Everything a train step starts from: ``{'generator', 'discriminator'}`` state_dicts (numpy) and
    ``{'adam': {'generator', 'discriminator'}}`` (:func:`adam_state`)."""
    return {"generator": mo.state_dict_numpy(model.generator),
            "discriminator": mo.state_dict_numpy(model.discriminator),
            "adam": {net: adam_state(model, optim_wrapper, net) for net in ("generator", "discriminator")}}


def state_numpy(model: Any) -> dict[str, np.ndarray]:
    """``model.state_dict()`` as numpy (``generator.*``, ``discriminator.*``, ``perceptual_loss.vgg.*``)."""
    return mo.state_dict_numpy(model)


def to_ours(state: dict[str, np.ndarray], source: str = "mmagic SRGAN") -> tuple[dict, dict, dict]:
    """An SRGAN state_dict -> ``(meta, variables, vgg_params)`` through the product's converters:
    ``convert.mmagic.convert_state`` (GLEAN generator + discriminator; the perceptual VGG is dropped there) and
    ``convert.torchvision_vgg16.convert_state`` (``perceptual_loss.vgg.vgg_layers.*``)."""
    from convert import mmagic as convert_mmagic
    from convert import torchvision_vgg16

    meta, variables, _ = convert_mmagic.convert_state(state, source)
    vgg, info = torchvision_vgg16.convert_state(state, source)
    assert info["format"] == "mmagic", info
    return meta, variables, vgg["vgg"]["params"]


def _import_loading() -> Any:
    """``mmagic.datasets.transforms.loading`` (``LoadImageFromFile``). It imports ``mmagic.utils.trans_utils``,
    whose module-level dtype-range table names ``np.bool8``, an alias NumPy 2 removed: the alias (``np.bool_``) is
    defined for that one import and removed again (nothing on the loading path uses it)."""
    added = "bool8" not in np.__dict__
    if added:
        np.bool8 = np.bool_
    try:
        return mo.import_module("mmagic.datasets.transforms.loading")
    finally:
        if added:
            del np.bool8


def folder_batches(root: str, lq_dir: str, gt_dir: str, ann_file: str, batch_size: int, n: int) -> list[dict]:
    """The first ``n`` training batches of a folder dataset as mmagic 1.2.0 loads them (no flip):
    ``BasicImageDataset(ann_file, data_prefix=dict(img=lq_dir, gt=gt_dir))`` with the GLEAN configs'
    ``LoadImageFromFile(key='img'/'gt', color_type='color', channel_order='rgb')`` + ``PackInputs()``, mmengine's
    ``InfiniteSampler(shuffle=False)`` and ``pseudo_collate`` (what the Runner's DataLoader does, single process)."""
    load()
    basic = mo.import_module("mmagic.datasets.basic_image_dataset")
    loading = _import_loading()
    formatting = mo.import_module("mmagic.datasets.transforms.formatting")
    from mmengine.dataset import InfiniteSampler, pseudo_collate

    pipeline = [loading.LoadImageFromFile(key="img", color_type="color", channel_order="rgb"),
                loading.LoadImageFromFile(key="gt", color_type="color", channel_order="rgb"),
                formatting.PackInputs()]
    dataset = basic.BasicImageDataset(ann_file=ann_file, metainfo=dict(dataset_type="folder", task_name="sisr"),
                                      data_root=root, data_prefix=dict(img=lq_dir, gt=gt_dir), pipeline=pipeline)
    indices = iter(InfiniteSampler(dataset, shuffle=False, seed=0))
    return [pseudo_collate([dataset[next(indices)] for _ in range(batch_size)]) for _ in range(n)]


def batch_arrays(data: dict) -> tuple[np.ndarray, np.ndarray]:
    """``data`` of :func:`pack` / :func:`folder_batches` -> (lq, gt) uint8 NHWC arrays (what our loader feeds)."""
    lq = np.stack([mo.to_nhwc(t) for t in data["inputs"]])
    gt = np.stack([mo.to_nhwc(s.gt_img) for s in data["data_samples"]])
    return lq, gt


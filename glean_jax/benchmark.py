"""``python -m glean_jax.benchmark --config configs/cat_x8.py``: GLEAN speed, ours against mmagic in the same run.

``python -m glean_jax.benchmark summarize A.json B.json ...`` prints one table of several runs' JSON.

Times our jitted GLEAN forward (``--mode infer``) and our full jitted G+D train step (``--mode train``: the step of
:mod:`glean_jax.training.step`, i.e. pixel MSE + perceptual (VGG16 conv4_3) + GAN for G, BCE for D, Adam on both,
StyleGAN2 bank frozen), and with ``--compare-mmagic`` the real mmagic 1.2.0 ``GLEANStyleGANv2`` forward and an
equivalent PyTorch train step built from mmagic's own loss classes (``MSELoss``, ``PerceptualLoss`` with VGG16 layer
'21', ``GANLoss('vanilla')``; ``torch.optim.Adam`` on G without the bank and on D, D frozen during the G step as
mmagic's ``SRGAN.train_step``). Weights are random on both sides (speed does not depend on their values).

Timing: each side is compiled / warmed up first, then the calls alternate A/B (ours, mmagic, ours, ...) in this one
process, ``--repeats`` times; the figure is the median. Every call is synchronous (``block_until_ready`` /
``torch.cuda.synchronize``). Reported per (mode, batch size): images/s of both sides and their ratio ours/mmagic,
our compile time, peak memory ``ours_peak_mem_mb`` / ``mmagic_peak_mem_mb`` (CPU: the process RSS sampled during
each side's calls -- it includes the process baseline, and with ``--compare-mmagic`` the other side's model, so a
side's own peak is measured in a run of that side alone: without ``--compare-mmagic``, or with ``--mmagic-only``;
``peak_mem_process`` says which; GPU: ``device.memory_stats()['peak_bytes_in_use']`` and
``torch.cuda.max_memory_allocated``), XLA's own account of our compiled function (``ours_xla_peak_mb`` =
arguments + outputs - donated aliases + temporaries, and ``ours_xla_temp_mb``), ``remat`` (``model.remat``),
achieved TFLOP/s from the analytic FLOP count below, the fraction of a matmul peak measured in the same run (a
large float32 matmul; bfloat16 runs use a bfloat16 matmul) and, on a GPU with a known datasheet, MFU.

The FLOP count (:func:`model_flops`) is analytic, from the layer shapes of the architecture (MACs = Cin Cout k^2 H W of
every conv and linear layer actually evaluated, FLOPs = 2 MACs; StyleGAN2's stride-2 up-conv counted as a transposed
conv at its input resolution; mmagic's dead RGB skip branch, activations, FIR blurs and normalisations not
counted). Train FLOPs per image = 3 x trainable-G forward + 2 x bank forward (activation gradients only)
+ 8 x D forward (G step: forward + activation backward; D step: real and fake forward + full backward)
+ 3 x VGG16-to-conv4_3 forward (prediction forward + activation backward, GT forward).

The mmagic side needs the oracle install (``pip install -e '.[test]'`` and
``pip install --no-deps -r requirements/oracle.txt``, read by :mod:`glean_jax.mmagic_reference`); it is
imported only with ``--compare-mmagic``. On CUDA, mmcv-lite has no compiled ops: mmagic's ``upfirdn2d`` and
``fused_bias_leakyrelu`` then run mmcv's own pure-PyTorch reference code (what mmcv runs on CPU), which is slower
than a full mmcv build's CUDA kernels -- the mmagic GPU figures are a lower bound and the JSON says so.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")   # leave GPU memory to PyTorch in the same process

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from ml_collections import ConfigDict  # noqa: E402

from glean_jax import metrics, runtime  # noqa: E402
from glean_jax.arch import GleanArch, stylegan2_channels  # noqa: E402
from glean_jax.errors import UserError, cli_entry  # noqa: E402
from glean_jax.images import atomic_write_bytes  # noqa: E402
from glean_jax.models.vgg import VGG16_LAYERS  # noqa: E402

MODES = ("infer", "train")
DTYPES = ("float32", "bfloat16")
# Dense datasheet peaks in TFLOP/s (no sparsity) by device-kind substring. 'float32' is the TF32 tensor-core peak:
# XLA and PyTorch (with TF32 allowed) run float32 convolutions on tensor cores in TF32 by default on these GPUs.
DATASHEET_TFLOPS = {
    "H200": {"bfloat16": 989.4, "float32": 494.7},
    "H100": {"bfloat16": 989.4, "float32": 494.7},   # SXM; the PCIe card is lower (756 / 378)
    "A100": {"bfloat16": 312.0, "float32": 156.0},
    "L4": {"bfloat16": 121.0, "float32": 60.0},
    "V100": {"bfloat16": 125.0, "float32": 15.7},     # V100: fp16 tensor cores, fp32 without TF32
}


# ============================================================================================ analytic FLOP count
def _conv(cin: int, cout: int, k: int, h: int) -> int:
    """MACs of a k x k conv producing an h x h map."""
    return cin * cout * k * k * h * h


def glean_forward_macs(arch: GleanArch, growth_channels: int = 32) -> dict[str, int]:
    """MACs per image of mmagic ``GLEANStyleGANv2.forward`` by part (encoder RRDB trunk, rest of the encoder, the
    4x4 latent linear, StyleGAN2 bank, fusion convs, decoder); the dead RGB skip branch is not evaluated."""
    ch, in_size, out_size, style_channels = arch.channels, arch.in_size, arch.out_size, arch.style_channels
    c, g, num_rrdbs = arch.rrdb_channels, growth_channels, arch.num_rrdbs
    rdb = sum(_conv(c + i * g, g, 3, in_size) for i in range(4)) + _conv(c + 4 * g, c, 3, in_size)
    parts = {"rrdb": _conv(3, c, 3, in_size) + num_rrdbs * 3 * rdb + _conv(c, c, 3, in_size)}
    enc = _conv(c, ch[in_size], 3, in_size)
    res = in_size
    while res > 4:
        enc += _conv(ch[res], ch[res // 2], 3, res // 2) + _conv(ch[res // 2], ch[res // 2], 3, res // 2)
        res //= 2
    enc += _conv(ch[4], ch[4], 3, 4)
    parts["encoder"] = enc
    parts["latent_linear"] = 16 * ch[4] * arch.num_latents * style_channels
    bank = _conv(ch[4], ch[4], 3, 4) + style_channels * ch[4]       # conv1 + its style modulation
    fusion = 0
    r = 4
    while r < out_size:
        if r <= in_size:
            fusion += _conv(2 * ch[r], ch[r], 3, r)
        bank += ch[r] * ch[2 * r] * 9 * r * r + style_channels * ch[r]               # up-conv at input resolution
        bank += _conv(ch[2 * r], ch[2 * r], 3, 2 * r) + style_channels * ch[2 * r]
        r *= 2
    parts["bank"], parts["fusion"] = bank, fusion
    dec = _conv(ch[in_size], 4 * ch[2 * in_size], 3, in_size)
    r = 2 * in_size
    while r < out_size:
        dec += _conv(2 * ch[r], 4 * ch[2 * r], 3, r)
        r *= 2
    dec += _conv(2 * ch[out_size], 64, 3, out_size) + _conv(64, 3, 3, out_size)
    parts["decoder"] = dec
    return parts


def discriminator_macs(size: int, channel_multiplier: int = 2) -> int:
    """MACs per image of mmagic ``StyleGAN2Discriminator`` (ResBlocks with 1x1 stride-2 skips, mbstd, linears)."""
    ch = stylegan2_channels(channel_multiplier)
    macs = _conv(3, ch[size], 1, size)
    r = size
    while r > 4:
        cin, cout = ch[r], ch[r // 2]
        macs += _conv(cin, cin, 3, r) + _conv(cin, cout, 3, r // 2) + _conv(cin, cout, 1, r // 2)
        r //= 2
    macs += _conv(ch[4] + 1, ch[4], 3, 4) + 16 * ch[4] * ch[4] + ch[4]
    return macs


def vgg16_macs(size: int, last_layer: int = 21) -> int:
    """MACs per image of torchvision VGG16 ``features[:last_layer + 1]`` (layer 21 = conv4_3) at size x size."""
    macs, h = 0, size
    for layer in VGG16_LAYERS[:last_layer + 1]:
        if layer[0] == "pool":
            h //= 2
        elif layer[0] == "conv":
            macs += _conv(layer[1], layer[2], 3, h)
    return macs


def model_flops(model_cfg: ConfigDict | dict) -> dict[str, float]:
    """FLOPs per image (2 x MACs): ``g_forward``, ``bank_forward``, ``d_forward``, ``vgg_forward``, ``train_step``."""
    m = model_cfg
    parts = glean_forward_macs(GleanArch.from_dict(m, "config.model"))
    g = 2.0 * sum(parts.values())
    bank = 2.0 * parts["bank"]
    d = 2.0 * discriminator_macs(int(m["out_size"]), int(m["channel_multiplier"]))
    vgg = 2.0 * vgg16_macs(int(m["out_size"]))
    return {"g_forward": g, "bank_forward": bank, "d_forward": d, "vgg_forward": vgg,
            "train_step": 3.0 * (g - bank) + 2.0 * bank + 8.0 * d + 3.0 * vgg,
            "parts": {k: 2.0 * v for k, v in parts.items()}}


def _sub_jaxprs(value: Any) -> list[Any]:
    if hasattr(value, "eqns"):
        return [value]
    if hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
        return [value.jaxpr]
    if isinstance(value, list | tuple):
        return [j for v in value for j in _sub_jaxprs(v)]
    return []


def iter_eqns(jaxpr: Any) -> Any:
    """Every equation of a (closed) jaxpr, recursing into pjit / remat / custom_jvp / scan bodies."""
    jaxpr = jaxpr.jaxpr if hasattr(jaxpr, "jaxpr") and not hasattr(jaxpr, "eqns") else jaxpr
    for eqn in jaxpr.eqns:
        yield eqn
        for v in eqn.params.values():
            for sub in _sub_jaxprs(v):
                yield from iter_eqns(sub)


def jaxpr_flops(jaxpr: Any, multiplier: float = 1.0) -> float:
    """FLOPs (2 x MACs) of the convolutions and dot products in a jaxpr -- what the implementation actually does.
    A ``scan`` body counts ``length`` times (the RRDB trunk is one scan over its blocks), a ``cond`` its costliest
    branch."""
    jaxpr = jaxpr.jaxpr if hasattr(jaxpr, "jaxpr") and not hasattr(jaxpr, "eqns") else jaxpr
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            out = eqn.outvars[0].aval.shape
            rhs = eqn.invars[1].aval.shape
            out_feat = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
            total += multiplier * 2.0 * math.prod(out) * math.prod(rhs) / out_feat
        elif name == "dot_general":
            (lc, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += multiplier * 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in lc)
        if name == "cond":    # one branch runs (``lax.platform_dependent`` picks one per backend): the costliest
            total += max(jaxpr_flops(b, multiplier) for b in eqn.params["branches"])
            continue
        inner = multiplier * (eqn.params.get("length", 1) if name == "scan" else 1)
        for v in eqn.params.values():
            for sub in _sub_jaxprs(v):
                total += jaxpr_flops(sub, inner)
    return total


# ================================================================================================ measurement
def load_avg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RssSampler:
    """Samples the process RSS every ``interval`` s in a thread while active; ``peak`` = max seen (MB)."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval, self.peak, self._stop = interval, 0.0, threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self.peak = _rss_mb()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def on_gpu() -> bool:
    return jax.default_backend() == "gpu"


def matmul_peak_tflops(dtype: str, size: int | None = None, repeats: int = 5) -> float:
    """Best TFLOP/s of a jitted ``size x size @ size x size`` matmul (CPU 2048, accelerators 8192)."""
    n = size or (8192 if jax.default_backend() != "cpu" else 2048)
    dt = jnp.dtype(dtype)
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dt)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dt)
    f = runtime.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=dt)).lower(a, b).compile()
    f(a, b).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2.0 * n ** 3 / best / 1e12


def datasheet_tflops(dtype: str) -> float | None:
    if not on_gpu():
        return None
    kind = jax.devices()[0].device_kind
    for key, peaks in DATASHEET_TFLOPS.items():
        if key.lower() in kind.lower():
            return peaks.get(dtype)
    return None


def machine_info() -> dict[str, Any]:
    dev = jax.devices()[0]
    info = {"platform": jax.default_backend(), "device": dev.device_kind, "device_count": jax.device_count(),
            "cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "jax": jax.__version__, "load_avg_start": load_avg()}
    try:
        import flax

        info["flax"] = flax.__version__
    except ImportError:
        pass
    return info


# ================================================================================================ our side
def _prepare_config(cfg: ConfigDict, batch: int, dtype: str) -> ConfigDict:
    cfg = ConfigDict(cfg.to_dict())
    cfg.batch_size = batch
    cfg.precision = dtype
    # The PyTorch step runs D on the whole batch (one process), so ours does too: no per-GPU mbstd shards.
    cfg.model.mbstd_per_shard = False
    cfg.optim.schedule = "constant"
    return cfg


def make_inputs(cfg: ConfigDict, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The random (lq, gt) batch both sides are timed on."""
    m = cfg.model
    rng = np.random.default_rng(seed)
    gt = rng.uniform(-1, 1, (batch, m.out_size, m.out_size, 3)).astype(np.float32)
    lq = rng.uniform(-1, 1, (batch, m.in_size, m.in_size, 3)).astype(np.float32)
    return {"lq": lq, "gt": gt}


def xla_memory_mb(compiled: Any) -> dict[str, float | None]:
    """XLA's memory account of a compiled function (``memory_analysis()``): ``ours_xla_peak_mb`` = arguments +
    outputs - aliased (donated) outputs + temporaries, and ``ours_xla_temp_mb``; None where the backend has none."""
    try:
        m = compiled.memory_analysis()
        temp, args = m.temp_size_in_bytes, m.argument_size_in_bytes
        peak = args + m.output_size_in_bytes - m.alias_size_in_bytes + temp
    except Exception:  # noqa: BLE001 - the analysis is optional
        return {"ours_xla_peak_mb": None, "ours_xla_temp_mb": None}
    return {"ours_xla_peak_mb": round(peak / 2 ** 20, 1), "ours_xla_temp_mb": round(temp / 2 ** 20, 1)}


class Ours:
    """Our jitted forward and train step on one device, with random weights; ``memory`` holds
    :func:`xla_memory_mb` of the function compiled last."""

    def __init__(self, cfg: ConfigDict, dtype: str, seed: int = 0) -> None:
        from glean_jax.models.build import init_variables
        from glean_jax.training import step as S

        self.S = S
        self.cfg = _prepare_config(cfg, 1, dtype)
        self.g, self.d = S.build_modules(self.cfg)
        self.g_vars = init_variables("glean", self.g, jax.random.key(seed))
        self.d_params = init_variables("stylegan2_discriminator", self.d, jax.random.key(seed + 1))["params"]
        self.memory: dict[str, float | None] = {}

    def inputs(self, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
        return make_inputs(self.cfg, batch, seed)

    def infer_fn(self, batch: int) -> tuple[Callable[[], Any], float, Callable[[], np.ndarray]]:
        """(call, compile seconds, output getter)."""
        dev = jax.devices()[0]
        lq = jax.device_put(self.inputs(batch)["lq"], dev)
        variables = jax.device_put(self.g_vars, dev)
        t = time.perf_counter()
        compiled = runtime.jit(self.g.apply).lower(variables, lq).compile()
        compile_s = time.perf_counter() - t
        self.memory = xla_memory_mb(compiled)
        runtime.release_host_memory()   # the compiler's freed heap: not part of the peak of the calls
        box: dict[str, Any] = {}

        def call() -> None:
            box["out"] = compiled(variables, lq)
            box["out"].block_until_ready()

        return call, compile_s, lambda: np.asarray(box["out"])

    def float32_output(self, batch: int) -> np.ndarray:
        """The float32 forward of the same weights and input (reference for the bfloat16 PSNR)."""
        from glean_jax.models.glean import GLEAN

        g32 = GLEAN(self.g.arch, dtype=jnp.float32)
        return np.asarray(runtime.jit(g32.apply)(self.g_vars, self.inputs(batch)["lq"]))

    def train_fn(self, batch: int) -> tuple[Callable[[], Any], float]:
        from glean_jax.models.vgg import init_vgg16_params

        S = self.S
        cfg = _prepare_config(self.cfg, batch, self.cfg.precision)
        dev = jax.devices()[:1]
        mesh = S.make_mesh(cfg, dev)
        trainable, bank = S.split_glean_params(jax.device_get(self.g_vars["params"]))
        frozen = {"bank": {"params": bank, "buffers": jax.device_get(self.g_vars["buffers"]["generator"])},
                  "vgg": init_vgg16_params(0)}
        state = S.make_state(cfg, trainable, jax.device_get(self.d_params), np.asarray(jax.random.PRNGKey(0)))
        ss, fs = S.tree_shardings(state, mesh, cfg), S.tree_shardings(frozen, mesh, cfg)
        state = jax.tree_util.tree_map(lambda x, s: jax.device_put(np.array(x), s), state, ss)
        frozen = jax.tree_util.tree_map(lambda x, s: jax.device_put(np.array(x), s), frozen, fs)
        b = self.inputs(batch)
        bs = S.NamedSharding(mesh, S.P("data"))
        batch_d = {k: jax.device_put(v, bs) for k, v in b.items()}
        t = time.perf_counter()
        compiled = S.jit_train_step(cfg, self.g, self.d, mesh, ss, fs).lower(state, frozen, batch_d).compile()
        compile_s = time.perf_counter() - t
        self.memory = xla_memory_mb(compiled)
        runtime.release_host_memory()   # the compiler's freed heap: not part of the peak of the calls
        box = {"state": state}

        def call() -> None:
            box["state"], metrics = compiled(box["state"], frozen, batch_d)
            jax.block_until_ready((box["state"], metrics))

        return call, compile_s


# ============================================================================================== mmagic side
def _load_oracle() -> Any:
    """The real mmagic 1.2.0 through :mod:`glean_jax.mmagic_reference`; one line saying how to install it if not."""
    from glean_jax import mmagic_reference as mo

    try:
        mo.load()
    except ImportError as e:
        raise UserError(f"--compare-mmagic: {e}") from e
    return mo


def _use_mmcv_reference_ops(mo: Any) -> None:
    """mmcv-lite has no CUDA kernels: route mmagic's upfirdn2d / fused_bias_leakyrelu to mmcv's own PyTorch
    reference code for every device (what mmcv does on CPU anyway)."""
    import functools

    fbl = mo.import_module("mmcv.ops.fused_bias_leakyrelu")
    up = mo.import_module("mmcv.ops.upfirdn2d")
    ref_up = functools.partial(up.upfirdn2d, use_custom_op=False)
    for name in ("mmagic.models.editors.stylegan2.stylegan2_modules",
                 "mmagic.models.editors.stylegan1.stylegan1_modules"):
        mod = mo.import_module(name)
        if hasattr(mod, "fused_bias_leakyrelu"):
            mod.fused_bias_leakyrelu = fbl.bias_leakyrelu_ref
        if hasattr(mod, "upfirdn2d"):
            mod.upfirdn2d = ref_up


class Mmagic:
    """The real mmagic GLEAN (+ D, losses, Adam) in PyTorch; ``autocast`` = torch.autocast(bfloat16)."""

    def __init__(self, cfg: ConfigDict, mmagic_dtype: str, seed: int = 0) -> None:
        self.mo = mo = _load_oracle()
        self.torch = torch = mo.load().torch
        self.cuda = torch.cuda.is_available() and on_gpu()
        self.device = torch.device("cuda" if self.cuda else "cpu")
        if self.cuda:
            _use_mmcv_reference_ops(mo)
        self.autocast = mmagic_dtype == "bfloat16"
        m = cfg.model
        self.cfg = cfg
        arch = GleanArch.from_dict(m, "config.model")
        self.g = mo.build_glean(arch.in_size, arch.out_size, seed, **arch.mmagic_kwargs()).to(self.device)
        self.d = mo.build_discriminator(m.out_size, seed + 1, channel_multiplier=m.channel_multiplier
                                        ).to(self.device)

    def _ctx(self) -> Any:
        import contextlib

        if not self.autocast:
            return contextlib.nullcontext()
        return self.torch.autocast(self.device.type, dtype=self.torch.bfloat16)

    def _sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def _tensor(self, x: np.ndarray) -> Any:
        return self.mo.to_nchw(x).to(self.device)

    def infer_fn(self, batch: int, inputs: dict[str, np.ndarray]) -> tuple[Callable[[], Any], Callable[[], Any]]:
        torch = self.torch
        lq = self._tensor(inputs["lq"][:batch])
        self.g.eval()
        box: dict[str, Any] = {}

        def call() -> None:
            with torch.no_grad(), self._ctx():
                box["out"] = self.g(lq)
            self._sync()

        return call, lambda: self.mo.to_nhwc(box["out"].float())

    def train_fn(self, batch: int, inputs: dict[str, np.ndarray]) -> Callable[[], Any]:
        torch, mo = self.torch, self.mo
        w = self.cfg.loss
        pl = mo.import_module("mmagic.models.losses.perceptual_loss")
        percep = pl.PerceptualLoss(layer_weights={"21": 1.0}, vgg_type="vgg16", use_input_norm=True,
                                   perceptual_weight=w.perceptual_weight, style_weight=0, criterion="mse",
                                   norm_img=w.norm_img, pretrained="torchvision://vgg16").to(self.device).eval()
        gan = mo.import_module("mmagic.models.losses.gan_loss").GANLoss(
            "vanilla", real_label_val=1.0, fake_label_val=0.0, loss_weight=w.gan_weight).to(self.device)
        pix = mo.import_module("mmagic.models.losses.pixelwise_loss").MSELoss(loss_weight=w.pixel_weight)
        g, d = self.g.train(), self.d.train()
        o = self.cfg.optim
        opt_g = torch.optim.Adam([p for p in g.parameters() if p.requires_grad], lr=o.lr, betas=(o.b1, o.b2),
                                 eps=o.eps)
        opt_d = torch.optim.Adam(d.parameters(), lr=o.lr, betas=(o.b1, o.b2), eps=o.eps)
        lq, gt = self._tensor(inputs["lq"][:batch]), self._tensor(inputs["gt"][:batch])

        def call() -> None:
            d.requires_grad_(False)                     # mmagic SRGAN.g_step: set_requires_grad(D, False)
            with self._ctx():
                out = g(lq)
                loss_g = pix(out, gt) + percep(out, gt)[0] + gan(d(out), True, is_disc=False)
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            d.requires_grad_(True)
            with self._ctx():
                loss_d = gan(d(gt), True, is_disc=True) + gan(d(out.detach()), False, is_disc=True)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            self._sync()

        return call

    def reset_peak(self) -> None:
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()

    def peak_mb(self) -> float | None:
        return self.torch.cuda.max_memory_allocated() / 2 ** 20 if self.cuda else None


# ================================================================================================== the run
def _timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def alternate(ours: Callable[[], Any], theirs: Callable[[], Any] | None, warmup: int, repeats: int
              ) -> tuple[list[float], list[float], float, float]:
    """Warm-up both, then ours/theirs alternately ``repeats`` times: (our times, their times, our peak RSS MB,
    their peak RSS MB)."""
    for _ in range(warmup):
        ours()
        if theirs is not None:
            theirs()
    a, b, peak_a, peak_b = [], [], 0.0, 0.0
    for _ in range(repeats):
        with RssSampler() as s:
            a.append(_timed(ours))
        peak_a = max(peak_a, s.peak)
        if theirs is not None:
            with RssSampler() as s:
                b.append(_timed(theirs))
            peak_b = max(peak_b, s.peak)
    return a, b, peak_a, peak_b


def _gpu_peak_mb() -> float | None:
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001 - memory stats are optional
        return None
    peak = stats.get("peak_bytes_in_use")
    return peak / 2 ** 20 if peak is not None else None


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of two batches of [-1, 1] images (N, H, W, C) mapped to [0, 255] without clipping:
    :func:`glean_jax.metrics.psnr` of the batches stacked into one image each."""
    def image(x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, np.float64) * 127.5 + 127.5).reshape(-1, x.shape[-2], x.shape[-1])

    return float(metrics.psnr(image(a), image(b)))


def run_benchmark(cfg: ConfigDict, config_name: str, modes: Sequence[str], batch_sizes: Sequence[int], dtype: str,
                  compare: bool, mmagic_dtype: str = "float32", warmup: int = 1, repeats: int = 5,
                  log: Callable[[str], None] = print,
                  on_result: Callable[[dict[str, Any]], None] | None = None, peak_size: int | None = None,
                  mmagic_only: bool = False) -> dict[str, Any]:
    """Runs every (mode, batch size); returns ``{"machine": {...}, "results": [...]}``; ``on_result(report so far)``
    after each result (the CLI rewrites its JSON then, so a run cut short keeps what it finished).

    ``mmagic_only`` times mmagic alone (our fields stay None): for models whose two sides do not fit in memory
    together, measured in two runs (ours alone, then mmagic alone) instead of alternating in one."""
    machine = machine_info()
    log(f"benchmark {config_name}: {machine['platform']} {machine['device']}, load {machine['load_avg_start']}")
    peak_dtype = dtype if on_gpu() or dtype == "float32" else "float32"
    peak = matmul_peak_tflops(peak_dtype, peak_size)
    machine["matmul_peak_tflops"] = {peak_dtype: round(peak, 4)}
    machine["datasheet_tflops"] = datasheet_tflops(dtype)
    flops = model_flops(cfg.model)
    machine["gflops_per_image"] = {k: round(v / 1e9, 3) for k, v in flops.items() if k != "parts"}
    log(f"matmul peak ({peak_dtype}): {peak:.3f} TFLOP/s; analytic G forward "
        f"{flops['g_forward'] / 1e9:.1f} GFLOPs/img (bank {flops['bank_forward'] / 1e9:.1f}), train step "
        f"{flops['train_step'] / 1e9:.1f} GFLOPs/img")
    ours = None if mmagic_only else Ours(cfg, dtype)
    theirs = Mmagic(_prepare_config(cfg, 1, dtype), mmagic_dtype) if compare or mmagic_only else None
    if theirs is not None:
        machine["mmagic"] = dict(theirs.mo.load().versions)
        machine["mmagic"]["torch_threads"] = theirs.torch.get_num_threads()
        machine["mmagic"]["device"] = str(theirs.device)
        if theirs.cuda:
            machine["mmagic"]["note"] = ("mmcv-lite: upfirdn2d / fused_bias_leakyrelu run mmcv's PyTorch reference "
                                         "code, not its CUDA kernels (mmagic figures are a lower bound)")
    results = []
    for mode in modes:
        for batch in batch_sizes:
            inputs = make_inputs(cfg, batch)
            extra: dict[str, Any] = {}
            call = compile_s = get_out = their_call = None
            if mode == "infer":
                if ours is not None:
                    call, compile_s, get_out = ours.infer_fn(batch)
                if theirs is not None:
                    their_call, _ = theirs.infer_fn(batch, inputs)
                    theirs.reset_peak()
                per_img = flops["g_forward"]
            else:
                if ours is not None:
                    call, compile_s = ours.train_fn(batch)
                if theirs is not None:
                    their_call = theirs.train_fn(batch, inputs)
                    theirs.reset_peak()
                per_img = flops["train_step"]
                extra["losses"] = ("pixel MSE + perceptual (VGG16 conv4_3, random weights) + GAN for G; BCE real + "
                                   "fake for D; Adam on both; bank frozen (both sides)")
            if ours is None:
                b, _, rss_b, _ = alternate(their_call, None, warmup, repeats)
                a, rss_a = [], 0.0
            else:
                a, b, rss_a, rss_b = alternate(call, their_call, warmup, repeats)
            if ours is not None and mode == "infer" and dtype != "float32":
                extra["psnr_vs_float32_db"] = round(psnr(get_out(), ours.float32_output(batch)), 2)
            res: dict[str, Any] = {
                "config": config_name, "mode": mode, "batch_size": batch, "dtype": dtype,
                "ours_img_s": None, "mmagic_img_s": None, "ratio": None, "tflops_per_s": None,
                "fraction_of_peak": None, "compile_s": None, "ours_peak_mem_mb": None,
                "peak_mem_process": ("both sides" if ours is not None and theirs is not None
                                     else "ours alone" if ours is not None else "mmagic alone"),
                "remat": bool(cfg.model.remat), "gflops_per_image": round(per_img / 1e9, 3), "load_avg": load_avg(),
                "repeats": repeats, "warmup": warmup}
            if ours is not None:
                ours_s = statistics.median(a)
                tflops = per_img * batch / ours_s / 1e12
                res.update({"ours_img_s": round(batch / ours_s, 4), "tflops_per_s": round(tflops, 4),
                            "fraction_of_peak": round(tflops / peak, 4), "compile_s": round(compile_s, 2),
                            "ours_peak_mem_mb": round(_gpu_peak_mb() or rss_a, 1) if on_gpu() else round(rss_a, 1),
                            **ours.memory, "ours_s": [round(x, 4) for x in a]})
                if machine["datasheet_tflops"]:
                    res["mfu"] = round(tflops / machine["datasheet_tflops"], 4)
            if theirs is not None:
                their_s = statistics.median(b)
                res["mmagic_img_s"] = round(batch / their_s, 4)
                if ours is not None:
                    res["ratio"] = round(their_s / ours_s, 4)
                    res["ratio_best"] = round(min(b) / min(a), 4)   # of the fastest calls: least disturbed by load
                res["mmagic_dtype"] = mmagic_dtype + (" (torch.autocast)" if mmagic_dtype != "float32" else "")
                res["mmagic_s"] = [round(x, 4) for x in b]
                res["mmagic_peak_mem_mb"] = round(theirs.peak_mb() or rss_b, 1) if theirs.cuda else round(rss_b, 1)
                res["mmagic_tflops_per_s"] = round(per_img * batch / their_s / 1e12, 4)
                res["mmagic_fraction_of_peak"] = round(res["mmagic_tflops_per_s"] / peak, 4)
            res.update(extra)
            results.append(res)
            log(format_row(res))
            if on_result is not None:
                on_result({"machine": {**machine, "load_avg_end": load_avg()}, "results": results})
    # The peak again at the end (the load may have changed): fractions are of the higher of the two.
    peak_end = matmul_peak_tflops(peak_dtype, peak_size)
    machine["matmul_peak_tflops_start_end"] = [round(peak, 4), round(peak_end, 4)]
    if peak_end > peak:
        machine["matmul_peak_tflops"] = {peak_dtype: round(peak_end, 4)}
        for res in results:
            if res["tflops_per_s"] is not None:
                res["fraction_of_peak"] = round(res["tflops_per_s"] / peak_end, 4)
            if theirs is not None:
                res["mmagic_fraction_of_peak"] = round(res["mmagic_tflops_per_s"] / peak_end, 4)
    machine["load_avg_end"] = load_avg()
    return {"machine": machine, "results": results}


COLUMNS = ("config", "mode", "batch_size", "dtype", "ours_img_s", "mmagic_img_s", "ratio", "ratio_best", "tflops_per_s",
           "fraction_of_peak", "compile_s", "ours_peak_mem_mb", "load_avg")


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def format_row(res: dict[str, Any]) -> str:
    return " | ".join(_fmt(res.get(c)) for c in COLUMNS)


def format_table(report: dict[str, Any]) -> str:
    """A Markdown table of the results."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + format_row(r) + " |" for r in report["results"]]
    return "\n".join(lines)


def _parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[tuple[str, str]]]:
    from glean_jax.config_cli import split_overrides

    rest, overrides = split_overrides(argv)
    p = argparse.ArgumentParser(prog="python -m glean_jax.benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="training config file (configs/*.py); --config.a.b=v overrides")
    p.add_argument("--mode", default="both",
                   help="infer, train, both (= infer,train) or a comma-separated order such as train,infer")
    p.add_argument("--batch-size", type=int, nargs="+", default=[1, 4], help="one or more batch sizes (default 1 4)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="our compute dtype")
    p.add_argument("--compare-mmagic", action="store_true", help="also time the real mmagic (oracle install)")
    p.add_argument("--mmagic-only", action="store_true",
                   help="time mmagic alone (oracle install), for models whose two sides do not fit in memory at once")
    p.add_argument("--mmagic-dtype", choices=DTYPES, default="float32",
                   help="mmagic side: float32, or bfloat16 = torch.autocast (default float32)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per side (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per side after compilation")
    p.add_argument("--json", help="write the report as JSON here")
    p.add_argument("--peak-size", type=int, default=None,
                   help="matrix size of the peak matmul (default 2048 on CPU, 8192 on accelerators)")
    args = p.parse_args(rest)
    return args, overrides


def main(argv: Sequence[str]) -> int:
    from glean_jax.config_cli import load_config
    from glean_jax.training.config import validate_config

    if argv and argv[0] == "summarize":
        if len(argv) < 2:
            raise UserError("summarize: no files; expected python -m glean_jax.benchmark summarize A.json B.json ...")
        print(summarize(argv[1:]))
        return 0
    args, overrides = _parse(argv)
    if any(b < 1 for b in args.batch_size):
        raise UserError(f"--batch-size {args.batch_size}: expected positive integers")
    if args.peak_size is not None and args.peak_size < 64:
        raise UserError(f"--peak-size {args.peak_size}: expected a matrix size >= 64")
    if args.repeats < 1 or args.warmup < 0:
        raise UserError(f"--repeats {args.repeats} / --warmup {args.warmup}: expected repeats >= 1, warmup >= 0")
    cfg = load_config(args.config, overrides)
    cfg.pretrained.allow_random = True
    cfg.data.source = "synthetic"
    cfg.precision = args.dtype
    validate_config(cfg, check_files=False)
    for b in args.batch_size:
        g = cfg.model.mbstd_group_size
        if b > g and b % g:
            raise UserError(f"--batch-size {b}: the discriminator's minibatch-stddev needs <= {g} or a multiple of "
                            f"{g}; expected such a batch size")
    if args.json:
        out = Path(args.json)
        if out.is_dir() or not out.parent.is_dir():
            raise UserError(f"--json {out}: expected a file path in an existing folder")
    modes = tuple(m for part in args.mode.split(",") for m in (MODES if part == "both" else (part,)))
    if not modes or any(m not in MODES for m in modes) or len(set(modes)) != len(modes):
        raise UserError(f"--mode {args.mode}: expected infer, train, both, or a comma-separated order of infer/train")
    name = Path(args.config.partition(":")[0]).stem
    command = "python -m glean_jax.benchmark " + " ".join(argv)

    def write(report: dict[str, Any]) -> None:
        if args.json:
            report["command"] = command
            atomic_write_bytes(Path(args.json), (json.dumps(report, indent=2) + "\n").encode())

    report = run_benchmark(cfg, name, modes, args.batch_size, args.dtype, args.compare_mmagic,
                           mmagic_dtype=args.mmagic_dtype, warmup=args.warmup, repeats=args.repeats, on_result=write,
                           peak_size=args.peak_size, mmagic_only=args.mmagic_only)
    write(report)
    print(format_table(report))
    return 0


def summarize(paths: Sequence[str]) -> str:
    """One Markdown table of several ``--json`` reports (``benchmarks/gpu.sh``), with MFU where known."""
    reports = []
    for p in paths:
        try:
            reports.append(json.loads(Path(p).read_text()))
        except (OSError, ValueError) as e:
            raise UserError(f"{p}: cannot read a benchmark JSON ({e}); expected a file written by --json") from e
    cols = COLUMNS + ("mfu", "mmagic_dtype", "mmagic_peak_mem_mb", "ours_xla_peak_mb", "remat", "psnr_vs_float32_db")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    machines = set()
    for rep in reports:
        m = rep.get("machine", {})
        machines.add(f"{m.get('platform')} {m.get('device')} (matmul peak {m.get('matmul_peak_tflops')} TFLOP/s, "
                     f"datasheet {m.get('datasheet_tflops')})")
        for r in rep.get("results", []):
            if "ours_peak_mem_mb" not in r:      # reports written before the key was renamed
                r = {**r, "ours_peak_mem_mb": r.get("peak_mem_mb")}
            lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(sorted(machines) + [""] + lines)


if __name__ == "__main__":
    cli_entry(main)

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

The FLOP count is analytic (:mod:`glean_jax.flops`).

The mmagic side needs the oracle install (``pip install -e '.[test]'`` and
``pip install --no-deps -r requirements/oracle.txt``, read by :mod:`glean_jax.mmagic_reference`); it is
imported only with ``--compare-mmagic``. On CUDA, mmcv-lite has no compiled ops: mmagic's ``upfirdn2d`` and
``fused_bias_leakyrelu`` then run mmcv's own pure-PyTorch reference code (what mmcv runs on CPU), which is slower
than a full mmcv build's CUDA kernels -- the mmagic GPU figures are a lower bound and the JSON says so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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
from glean_jax.arch import GleanArch  # noqa: E402
from glean_jax.errors import UserError, cli_entry  # noqa: E402
from glean_jax.flops import model_flops  # noqa: E402
from glean_jax.images import atomic_write_bytes  # noqa: E402
from glean_jax.machine import (  # noqa: E402
    RssSampler,
    datasheet_tflops,
    gpu_peak_mb,
    load_avg,
    machine_info,
    matmul_peak_tflops,
    on_gpu,
    xla_memory_mb,
)

MODES = ("infer", "train")
DTYPES = ("float32", "bfloat16")


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
                            "ours_peak_mem_mb": round(gpu_peak_mb() or rss_a, 1) if on_gpu() else round(rss_a, 1),
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

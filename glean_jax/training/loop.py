"""``train_and_evaluate(config, workdir)``: GLEAN training as mmagic's ``IterBasedTrainLoop`` + ``SRGAN``.

Initialisation: the bank (GLEAN ``params['generator']`` and its fixed noise buffers) comes from
the ``generator_ema`` of a converted official StyleGAN2 checkpoint (``pretrained.stylegan2``) and is verified to
have been loaded (mmagic 1.x silently leaves it random); the discriminator from the same checkpoint; VGG16 from a
converted torchvision checkpoint; ``pretrained.glean`` optionally starts G (and D if present) from a converted GLEAN
checkpoint. Missing pretrained weights are an error unless ``pretrained.allow_random``.

The loop: one jitted step per iteration (:mod:`glean_jax.training.step`), orbax checkpoints every
``checkpoint_every`` steps and on SIGTERM/SIGINT, automatic resume from ``WORKDIR/checkpoints``, TensorBoard scalars
in ``WORKDIR/tb``, sample grids (LR | bicubic | output | GT) in ``WORKDIR/samples``, evaluation (PSNR/SSIM/MAE as
mmagic 1.x computes them: output clamped to [0, 255] as float, all three channels, crop 0) on the test set, the
best model by PSNR exported to ``WORKDIR/best_psnr`` and the final one to ``WORKDIR/model`` (model directories that
``glean_jax.checkpoint.load_model`` and the other CLIs read).
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from glean_jax import metrics as metrics_lib
from glean_jax import runtime
from glean_jax.checkpoint import check_variables, load_model, save_model
from glean_jax.errors import UserError
from glean_jax.images import make_grid, normalize, to_uint8, write_png
from glean_jax.training import step as step_lib
from glean_jax.training.checkpointing import RunCheckpoints, abstract_like
from glean_jax.training.config import check_pretrained, validate_config

log = logging.getLogger("glean_jax.train")


# ----------------------------------------------------------------------------------------------------- host helpers
def to_host(tree: Any) -> Any:
    """Global (possibly multi-process, sharded) arrays -> numpy, on every process."""
    from jax.experimental import multihost_utils

    def one(x: Any) -> np.ndarray:
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return np.asarray(x)
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree_util.tree_map(one, tree)


def to_global(tree: Any, shardings: Any) -> Any:
    """Host arrays, identical on every process, -> global arrays with ``shardings`` (works multi-process)."""
    def one(x: Any, s: NamedSharding) -> jax.Array:
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])

    return jax.tree_util.tree_map(one, tree, shardings)


def _flat(tree: Any) -> dict[str, Any]:
    return {"/".join(str(getattr(k, "key", k)) for k in path): v
            for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


# ------------------------------------------------------------------------------------------------ initial weights
def initial_weights(cfg: ConfigDict, g: Any, d: Any) -> tuple[dict, dict, dict, dict]:
    """``(glean_variables, d_params, vgg_params, info)`` as numpy trees; see the module docstring."""
    from glean_jax.models.vgg import init_vgg16_params, load_vgg16

    m, pre = cfg.model, cfg.pretrained
    check_pretrained(cfg)   # kinds and geometries from model.json; the arrays are checked below as they load
    key = jax.random.key(cfg.seed)
    init_g, key_g = cached_init("glean", g), jax.random.fold_in(key, 0)
    init_d, key_d = cached_init("stylegan2_discriminator", d), jax.random.fold_in(key, 1)
    # Random values only where no checkpoint brings them (pretrained.glean brings all of G); the shapes always, to
    # check what loads against them.
    gv = jax.eval_shape(init_g, key_g) if pre.glean else to_host(init_g(key_g))
    gv, d_params = {"params": dict(gv["params"]), "buffers": dict(gv["buffers"])}, \
        jax.eval_shape(init_d, key_d)["params"]
    info = {"bank": "random", "discriminator": "random", "vgg16": "random", "glean": "random"}
    hint_d = f"a StyleGAN2 discriminator for {m.out_size}x{m.out_size}, channel_multiplier={m.channel_multiplier}"
    if pre.stylegan2:
        _, variables = load_model(pre.stylegan2)
        bank = variables["generator"]
        what = f"config.pretrained.stylegan2={pre.stylegan2!r} (bank)"
        hint = f"a StyleGAN2 generator for {m.out_size}x{m.out_size}, channel_multiplier={m.channel_multiplier}"
        check_variables(bank.get("params"), gv["params"][step_lib.BANK], what, hint)
        check_variables(bank.get("buffers"), gv["buffers"][step_lib.BANK], what, hint)
        gv["params"][step_lib.BANK] = bank["params"]
        gv["buffers"][step_lib.BANK] = bank["buffers"]
        info["bank"] = f"{pre.stylegan2} (generator_ema)"
        if variables.get("discriminator") is None:
            if not pre.allow_random:
                raise UserError(f"config.pretrained.stylegan2={pre.stylegan2!r}: holds no discriminator; expected the "
                                "full official checkpoint (generator_ema + discriminator)")
        else:
            check_variables(variables["discriminator"]["params"], d_params,
                            f"config.pretrained.stylegan2={pre.stylegan2!r} (discriminator)", hint_d)
            d_params = variables["discriminator"]["params"]
            info["discriminator"] = f"{pre.stylegan2} (discriminator)"
    if pre.glean:
        _, variables = load_model(pre.glean)
        hint = f"GLEAN {m.in_size}->{m.out_size} with {m.num_rrdbs} RRDBs of {m.rrdb_channels} channels"
        check_variables(variables["generator"], gv, f"config.pretrained.glean={pre.glean!r}", hint)
        if pre.stylegan2:   # the bank must stay the official one: keep it, fine-tune the rest
            variables["generator"]["params"][step_lib.BANK] = gv["params"][step_lib.BANK]
            variables["generator"]["buffers"][step_lib.BANK] = gv["buffers"][step_lib.BANK]
        else:
            info["bank"] = f"{pre.glean} (GLEAN bank)"
        gv = variables["generator"]
        info["glean"] = str(pre.glean)
        if variables.get("discriminator") is not None:
            check_variables(variables["discriminator"]["params"], d_params,
                            f"config.pretrained.glean={pre.glean!r} (discriminator)", hint_d)
            d_params = variables["discriminator"]["params"]
            info["discriminator"] = f"{pre.glean} (discriminator)"
    if info["discriminator"] == "random":
        if not pre.allow_random:
            raise UserError("config.pretrained: no discriminator weights found; expected pretrained.stylegan2 with a "
                            "discriminator, or pretrained.allow_random=True")
        d_params = to_host(init_d(key_d))["params"]
    if pre.vgg16:
        vgg = load_vgg16(pre.vgg16)
        info["vgg16"] = str(pre.vgg16)
    else:
        vgg = init_vgg16_params(cfg.seed)
    return gv, d_params, to_host(vgg), info


# ------------------------------------------------------------------------------------------------------ the run
class _StopSignal:
    """SIGTERM/SIGINT -> finish the current step, save a checkpoint, exit cleanly.

    One process: a Python handler sets a flag that the loop reads after each step. Several processes: a signal
    reaching any one of them must stop all of them at the same step, or the others would wait forever in the next
    collective (a step or the checkpoint save). JAX's preemption service (started by ``jax.distributed.initialize``)
    catches SIGTERM itself and agrees on a step with every process through the coordinator;
    ``multihost_utils.reached_preemption_sync_point(step)``, called by every process after every step, is True on
    all of them at that same step. So with several processes SIGTERM is left to that service, and SIGINT (Ctrl-C on
    one host) is turned into a SIGTERM for it.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, Any] = {}
        self.multiprocess = jax.process_count() > 1

    def __enter__(self) -> _StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT,) if self.multiprocess else (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt   # a second Ctrl-C stops at once
        self.received = signum
        if self.multiprocess:
            signal.raise_signal(signal.SIGTERM)   # to JAX's preemption service, which tells every process

    def should_stop(self, step: int) -> bool:
        """Whether to checkpoint and stop after ``step`` (the same answer on every process)."""
        if self.multiprocess:
            from jax.experimental import multihost_utils

            if multihost_utils.reached_preemption_sync_point(step):
                self.received = self.received or signal.SIGTERM
                return True
            return False
        return self.received is not None

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def no_host_pulls() -> Any:
    """The context of the steady-state part of the loop (dispatching a step, putting the next batch on the
    devices): device-to-host transfers are disallowed, so no value can be pulled to the host between two sync
    points (log, eval, checkpoint, stop). XLA:CPU does not enforce transfer guards (its arrays live on the host);
    ``tests/test_train_async.py`` checks the same region there by intercepting every host conversion."""
    return jax.transfer_guard_device_to_host("disallow")


THROUGHPUT = ("train/step_time_s", "train/images_per_s", "train/tflops_per_device", "train/mfu")


class MetricWindow:
    """Per-step metrics left on the devices until a sync point, then fetched together; with the wall time of the
    steps they cover (the clock restarts after eval/checkpoint work, so only training steps are timed)."""

    def __init__(self) -> None:
        self.pending: list[dict[str, jax.Array]] = []
        self.rows: list[dict[str, float]] = []       # fetched, not yet logged
        self.seconds, self.steps, self._t0, self._n = 0.0, 0, time.time(), 0

    def add(self, metrics: dict[str, jax.Array], timed: bool = True) -> None:
        self.pending.append(metrics)
        self._n += int(timed)

    def restart_clock(self) -> None:
        self._t0, self._n = time.time(), 0

    def fetch(self) -> list[dict[str, float]]:
        """Waits for the pending steps and returns their metrics (one dict per step, in order)."""
        rows = [{k: float(v) for k, v in m.items()} for m in to_host(self.pending)]
        if self._n:
            self.seconds += time.time() - self._t0
            self.steps += self._n
        self.pending = []
        self.rows += rows
        return rows

    def scalars(self, batch_size: int) -> dict[str, float]:
        """Means of the fetched rows and the throughput since the last call, which starts a new window."""
        out = {f"train/{k}": float(np.mean([r[k] for r in self.rows])) for k in self.rows[0]} if self.rows else {}
        if self.steps:
            out["train/step_time_s"] = self.seconds / self.steps
            out["train/images_per_s"] = batch_size * self.steps / self.seconds
        self.rows, self.seconds, self.steps = [], 0.0, 0
        return out


def _grid_rows(lq: np.ndarray, out: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Tiles LR (nearest) | bicubic | output | GT for each image (inputs in [-1, 1], NHWC)."""
    n, s = out.shape[0], out.shape[1]
    nearest = np.repeat(np.repeat(lq, s // lq.shape[1], axis=1), s // lq.shape[2], axis=2)
    bicubic = np.asarray(jax.image.resize(jnp.asarray(lq), (n, s, s, 3), "bicubic"))
    tiles = np.stack([to_uint8(nearest), to_uint8(bicubic), to_uint8(out), to_uint8(gt)], axis=1)
    return make_grid(tiles.reshape((-1,) + tiles.shape[2:]), nrow=4)


class Evaluator:
    """PSNR/SSIM/MAE of the generator on the config's test set (batch 1, replicated, as mmagic's val loop)."""

    def __init__(self, cfg: ConfigDict, g: Any, mesh: Mesh, frozen_sharding: Any, g_sharding: Any,
                 cache_key: Any = None) -> None:
        from glean_jax.data.loader import make_eval_dataset

        self.dataset = None
        try:
            self.dataset = make_eval_dataset(cfg.data)
        except UserError as e:
            log.warning("no evaluation: the test set is not usable (%s)", e)
        self.max_images = cfg.eval_max_images
        self.mesh = mesh
        self.replicated = NamedSharding(mesh, P())
        self.apply = _cached(("eval", cache_key), lambda: runtime.jit(
            lambda tp, frozen, lq: g.apply(step_lib.glean_variables(tp, frozen), lq),
            in_shardings=(g_sharding, frozen_sharding, self.replicated), out_shardings=self.replicated))

    def _items(self, limit: int) -> list[dict]:
        n = min(len(self.dataset), limit) if self.dataset is not None else 0
        return [self.dataset[i] for i in range(n)]

    def _run(self, g_params: Any, frozen: Any, lq_uint8: np.ndarray) -> np.ndarray:
        lq = normalize(lq_uint8)[None]
        lq = jax.make_array_from_callback(lq.shape, self.replicated, lambda idx: lq[idx])
        return to_host(self.apply(g_params, frozen, lq))[0]

    def evaluate(self, g_params: Any, frozen: Any) -> dict[str, float]:
        """Mean ``psnr``, ``ssim`` and ``mae`` as ``python -m glean_jax.evaluate --checkpoint`` computes them (its
        :class:`~glean_jax.metrics.MetricAccumulator`, mmagic 1.x's output convention); no ``ssim`` for images
        smaller than its window."""
        items = self._items(self.max_images)
        if not items:
            return {}
        small = any(min(it["gt"].shape[:2]) < metrics_lib.SSIM_WINDOW for it in items)
        acc = metrics_lib.MetricAccumulator("1.x", metric_names=("PSNR", "MAE") if small else metrics_lib.METRIC_NAMES)
        for i, item in enumerate(items):
            acc.add(str(i), self._run(g_params, frozen, item["lq"]), item["gt"])
        return {k.lower(): v for k, v in acc.summary()["mean"].items()}

    def grid(self, g_params: Any, frozen: Any, n: int = 4) -> np.ndarray | None:
        items = self._items(n)
        if not items:
            return None
        outs = np.stack([self._run(g_params, frozen, it["lq"]) for it in items])
        lq = np.stack([normalize(it["lq"]) for it in items])
        gt = np.stack([normalize(it["gt"]) for it in items])
        return _grid_rows(lq, outs, gt)


def export_model(path: Path, cfg: ConfigDict, g: Any, state: Any, frozen: dict, source: dict) -> None:
    """Writes a GLEAN model directory (``kind: glean``, generator + discriminator) from the train state."""
    g_params = to_host(state.g_params)
    bank = to_host(frozen["bank"])
    d_params = to_host(state.d_params)
    if jax.process_index() != 0:
        return
    variables = {"generator": {"params": {**g_params, step_lib.BANK: bank["params"]},
                               "buffers": {step_lib.BANK: bank["buffers"]}},
                 "discriminator": {"params": d_params}}
    meta = {"kind": "glean", "generator": {"kind": "glean", **g.arch()},
            "discriminator": {"kind": "stylegan2_discriminator", "in_size": cfg.model.out_size,
                              "channel_multiplier": cfg.model.channel_multiplier,
                              "fp16_enabled": cfg.model.fp16_enabled},
            "source": source}
    save_model(path, meta, variables, overwrite=True, only_this_process=jax.process_count() > 1)


_JIT_CACHE: dict[Any, Any] = {}


def _cached(key: Any, build: Any) -> Any:
    """Jitted functions reused by later runs in the same process with the same config and mesh (so a resumed or
    repeated run compiles nothing again); bounded to the few most recent entries."""
    if key not in _JIT_CACHE:
        if len(_JIT_CACHE) >= 8:
            _JIT_CACHE.pop(next(iter(_JIT_CACHE)))
        _JIT_CACHE[key] = build()
    return _JIT_CACHE[key]


def cached_init(kind: str, module: Any) -> Any:
    """:func:`glean_jax.models.build.init_fn`, compiled once per process for a module."""
    from glean_jax.models.build import init_fn

    return _cached(("init", kind, repr(module)), lambda: init_fn(kind, module))


def _compiled_flops(compiled: Any) -> float | None:
    try:
        cost = compiled.cost_analysis()
        if isinstance(cost, (list, tuple)):
            cost = cost[0]
        flops = float(cost.get("flops", 0.0))
        return flops if flops > 0 else None
    except Exception:  # noqa: BLE001 - cost analysis is optional
        return None


def train_and_evaluate(config: ConfigDict, workdir: str | os.PathLike, *, stop_after: int | None = None,
                       progress: bool = True) -> dict[str, Any]:
    """Trains (or resumes) in ``workdir``; returns a summary (step, last metrics, eval results, stop reason, and the
    final train state as numpy arrays).

    ``stop_after`` ends this run after that many steps with a checkpoint, as if the job had been stopped (tests,
    preemptible jobs); ``config.total_steps`` still defines the schedule.
    """
    validate_config(config)
    workdir = Path(workdir)
    is_main = jax.process_index() == 0
    mesh = step_lib.make_mesh(config)
    g, d = step_lib.build_modules(config)
    from glean_jax.data.loader import make_train_iterator, to_global_batch

    data_iter = make_train_iterator(config.data, global_batch_size=config.batch_size, seed=config.seed,
                                    process_index=jax.process_index(), process_count=jax.process_count())

    t0 = time.time()
    gv, d_params, vgg, info = initial_weights(config, g, d)
    if is_main:   # only now: a config whose data or weights do not load leaves no run folder behind
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True))
    trainable, bank_params = step_lib.split_glean_params(gv["params"])
    frozen_host = {"bank": {"params": bank_params, "buffers": gv["buffers"][step_lib.BANK]}, "vgg": vgg}
    frozen_sharding = step_lib.tree_shardings(frozen_host, mesh, config)
    frozen = to_global(frozen_host, frozen_sharding)
    if info["bank"] != "random":   # verify that what the step sees is the checkpoint's bank, bit for bit
        for name, arr in _flat(to_host(frozen["bank"])).items():
            if not np.array_equal(arr, np.asarray(_flat(frozen_host["bank"])[name])):
                raise UserError(f"bank array {name} differs from {info['bank']} after loading; expected equal")
    rng = np.asarray(jax.random.PRNGKey(config.seed))
    abstract = jax.eval_shape(lambda tr, dp, r: step_lib.make_state(config, tr, dp, r), trainable, d_params, rng)
    state_sharding = step_lib.tree_shardings(abstract, mesh, config)
    ckpts = RunCheckpoints(workdir, config.keep_checkpoints, config.async_checkpointing)
    latest = ckpts.latest_step()
    best_psnr = -math.inf
    if latest is not None:
        state, meta = ckpts.restore(latest, abstract_like(abstract, state_sharding), data_iter)
        best_psnr = float(meta.get("best_psnr", -math.inf) or -math.inf)
        log.info("resumed from %s at step %d", ckpts.directory / str(latest), int(meta["step"]))
    else:
        g_sh = step_lib.tree_shardings(trainable, mesh, config)
        d_sh = step_lib.tree_shardings(d_params, mesh, config)
        state = runtime.jit(lambda tr, dp, r: step_lib.make_state(config, tr, dp, r), out_shardings=state_sharding)(
            to_global(trainable, g_sh), to_global(d_params, d_sh), rng)
    del gv, trainable, d_params
    log.info("initialised in %.1f s: %s", time.time() - t0, info)

    key = (config.to_json_best_effort(sort_keys=True), mesh)
    train_step = _cached(("step",) + key, lambda: step_lib.jit_train_step(config, g, d, mesh, state_sharding,
                                                                          frozen_sharding))
    evaluator = Evaluator(config, g, mesh, frozen_sharding, state_sharding.g_params, key)
    writer = None
    if is_main:
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(str(workdir / "tb"))
        (workdir / "samples").mkdir(exist_ok=True)

    step = int(to_host(state.step))
    start_step = step
    summary: dict[str, Any] = {"start_step": start_step, "info": info, "eval": {}, "stopped": None}
    window = MetricWindow()
    flops = None

    def save(force: bool = False) -> None:
        meta = {"step": step, "best_psnr": best_psnr if math.isfinite(best_psnr) else None,
                "in_size": config.model.in_size, "out_size": config.model.out_size, "precision": config.precision}
        ckpts.save(step, state, data_iter, meta, force=force)

    def source(kind: str) -> dict:
        return {"trained_by": "glean_jax.train", "step": step, "export": kind, "pretrained": info}

    def check_bad_steps(rows: list[dict[str, float]]) -> None:
        for i, m in enumerate(rows):
            if m["bad_steps"] >= config.max_bad_steps:
                ckpts.wait()
                raise UserError(f"training stopped at step {step - len(rows) + 1 + i}: {int(m['bad_steps'])} "
                                f"non-finite steps in a row (loss_g={m['loss_g']:.4g}, loss_d={m['loss_d']:.4g}); "
                                f"the last good checkpoint is kept in {ckpts.directory}; expected finite losses "
                                "(lower optim.lr, check the data, or use precision='float32')")

    def log_scalars() -> None:
        scalars = window.scalars(config.batch_size)
        if flops and "train/step_time_s" in scalars:
            tflops = flops / scalars["train/step_time_s"] / 1e12 / jax.device_count()
            scalars["train/tflops_per_device"] = tflops
            if config.peak_tflops_per_device:
                scalars["train/mfu"] = tflops / config.peak_tflops_per_device
        summary["throughput"] = {k: scalars[k] for k in THROUGHPUT if k in scalars}
        if pbar is not None:
            pbar.set_postfix(loss_g=f"{scalars['train/loss_g']:.4f}", loss_d=f"{scalars['train/loss_d']:.4f}",
                             img_s=f"{scalars.get('train/images_per_s', 0.0):.2f}")
        if writer is not None:
            for k, v in scalars.items():
                writer.add_scalar(k, v, step)
            writer.flush()

    pbar = None
    if progress and is_main:
        from tqdm import tqdm

        pbar = tqdm(total=config.total_steps, initial=step, dynamic_ncols=True, desc="train")
    try:
        with _StopSignal() as stop:
            if step == 0:   # the starting point of the validation curve
                res = evaluator.evaluate(state.g_params, frozen)
                if res:
                    summary["eval"][0] = res
                    log.info("step 0 eval: %s", res)
                    if writer is not None:
                        for k, v in res.items():
                            writer.add_scalar(f"eval/{k}", v, 0)
            batch = to_global_batch(next(data_iter), mesh) if step < config.total_steps else None
            first = True
            while step < config.total_steps:
                if first:
                    ts = time.time()
                    flops = _compiled_flops(train_step.lower(state, frozen, batch).compile())  # reused by the call
                    runtime.release_host_memory()   # the compiler's freed heap, before the step's buffers come
                # Steady state: dispatch the step; the devices run it while the host goes on (no value is read).
                with no_host_pulls():
                    state, m = train_step(state, frozen, batch)
                step += 1
                window.add(m, timed=not first)
                if pbar is not None:
                    pbar.update(1)
                if first:   # its time includes the compilation: not counted in the throughput
                    jax.block_until_ready(m)
                    log.info("first step (with compilation) took %.1f s; %.3g FLOP per step", time.time() - ts,
                             flops or 0)
                    first = False
                    window.restart_clock()
                stopping = stop.should_stop(step) or (stop_after is not None and step - start_step >= stop_after)
                do_log = step % config.log_every == 0 or step == config.total_steps
                do_eval = step % config.eval_every == 0 or step == config.total_steps
                do_sample = do_eval or step % config.sample_every == 0
                do_save = step % config.checkpoint_every == 0 or step == config.total_steps or stopping
                if do_log or do_eval or do_sample or do_save:   # a sync point: read the metrics
                    rows = window.fetch()
                    check_bad_steps(rows)
                    summary["last"] = rows[-1]
                    if do_log:
                        log_scalars()
                    if do_eval:
                        res = evaluator.evaluate(state.g_params, frozen)
                        if res:
                            summary["eval"][step] = res
                            log.info("step %d eval: %s", step, res)
                            if writer is not None:
                                for k, v in res.items():
                                    writer.add_scalar(f"eval/{k}", v, step)
                                writer.flush()
                            if res["psnr"] > best_psnr:
                                best_psnr = res["psnr"]
                                export_model(workdir / "best_psnr", config, g, state, frozen, source("best_psnr"))
                    if do_sample:
                        grid = evaluator.grid(state.g_params, frozen)
                        if grid is not None and is_main:
                            write_png(workdir / "samples" / f"step_{step:07d}.png", grid)
                    if stopping:
                        summary["stopped"] = "signal" if stop.received is not None else "stop_after"
                        save(force=True)
                        break
                    if do_save:
                        save()
                    window.restart_clock()
                if step < config.total_steps:   # the next batch goes to the devices while this step runs
                    with no_host_pulls():
                        batch = to_global_batch(next(data_iter), mesh)
        if step >= config.total_steps:
            export_model(workdir / "model", config, g, state, frozen, source("final"))
    finally:
        if pbar is not None:
            pbar.close()
        ckpts.close()
        if writer is not None:
            writer.close()
    summary["step"] = step
    summary["state"] = to_host(state)   # one host copy; the device buffers are released with the run
    if is_main:
        keep = {k: v for k, v in summary.items() if k != "state"}
        (workdir / "summary.json").write_text(json.dumps(keep, indent=2, default=str))
    return summary

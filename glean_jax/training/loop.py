"""``train_and_evaluate(config, workdir)``: GLEAN training as mmagic's ``IterBasedTrainLoop`` + ``SRGAN``.

Initialisation: :func:`glean_jax.training.weights.initial_weights` (the pretrained bank, D and VGG16, verified).

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
import numpy as np
from ml_collections import ConfigDict

from glean_jax import runtime
from glean_jax.errors import UserError
from glean_jax.images import write_png
from glean_jax.training import step as step_lib
from glean_jax.training.checkpointing import RunCheckpoints, abstract_like
from glean_jax.training.config import pretrained_as_given, resolve_pretrained, validate_config
from glean_jax.training.evaluation import Evaluator
from glean_jax.training.weights import export_model, flat_paths, initial_weights, to_global, to_host

log = logging.getLogger("glean_jax.train")


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
                       progress: bool = True, jit_cache: runtime.JitCache | None = None) -> dict[str, Any]:
    """Trains (or resumes) in ``workdir``; returns a summary (step, last metrics, eval results, stop reason, and the
    final train state as numpy arrays).

    ``stop_after`` ends this run after that many steps with a checkpoint, as if the job had been stopped (tests,
    preemptible jobs); ``config.total_steps`` still defines the schedule. ``jit_cache``: runs in one process that
    share one compile nothing again (:class:`glean_jax.runtime.JitCache`).
    """
    given = resolve_pretrained(config)   # model names, .pth files, workdirs -> model directories
    for key, value in given.items():
        log.info("config.pretrained.%s=%r: using %s", key, value, config.pretrained[key])
    with pretrained_as_given(config, given):
        validate_config(config)
    workdir = Path(workdir)
    is_main = jax.process_index() == 0
    mesh = step_lib.make_mesh(config)
    g, d = step_lib.build_modules(config)
    from glean_jax.data.loader import make_train_iterator, to_global_batch

    data_iter = make_train_iterator(config.data, global_batch_size=config.batch_size, seed=config.seed,
                                    process_index=jax.process_index(), process_count=jax.process_count())

    t0 = time.time()
    jit_cache = jit_cache if jit_cache is not None else runtime.JitCache()
    with pretrained_as_given(config, given):
        gv, d_params, vgg, info = initial_weights(config, g, d, jit_cache)
    if is_main:   # only now: a config whose data or weights do not load leaves no run folder behind
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True))
    trainable, bank_params = step_lib.split_glean_params(gv["params"])
    frozen_host = {"bank": {"params": bank_params, "buffers": gv["buffers"][step_lib.BANK]}, "vgg": vgg}
    frozen_sharding = step_lib.tree_shardings(frozen_host, mesh, config)
    frozen = to_global(frozen_host, frozen_sharding)
    if info["bank"] != "random":   # verify that what the step sees is the checkpoint's bank, bit for bit
        for name, arr in flat_paths(to_host(frozen["bank"])).items():
            if not np.array_equal(arr, np.asarray(flat_paths(frozen_host["bank"])[name])):
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
    train_step = jit_cache.get(("step",) + key, lambda: step_lib.jit_train_step(config, g, d, mesh, state_sharding,
                                                                          frozen_sharding))
    evaluator = Evaluator(config, g, mesh, frozen_sharding, state_sharding.g_params, jit_cache, key)
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

"""Orbax checkpoints of a training run: train state + data iterator state + metadata, exact resume.

``WORKDIR/checkpoints/<step>/{state, data, meta}`` through one ``ocp.CheckpointManager`` (asynchronous saves, the
last ``keep`` kept). ``state`` is the whole :class:`~glean_jax.training.step.TrainState` (trainable G params, Adam
states, D, dynamic loss scales, step, RNG, bad-step counter); ``data`` is the grain iterator state (one file per
process); ``meta`` is JSON (step, config geometry). Restoring always goes through an abstract target carrying the
new shardings, so a run saved on N devices resumes on M devices.

A failed write (full disk, quota, I/O error; orbax raises it from its background thread at the next save or wait)
becomes one :class:`UserError` naming the checkpoint folder, the step that could not be written and the last
complete checkpoint, which stays as it was; the half-written temporary folder is removed (and orbax removes any
left by a killed run when the manager starts: ``cleanup_tmp_directories``), so it is never picked up.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from glean_jax.errors import UserError


class RunCheckpoints:
    """Thin wrapper of ``ocp.CheckpointManager`` with item names ``state``, ``data``, ``meta``."""

    def __init__(self, workdir: str | os.PathLike, keep: int, async_save: bool = True) -> None:
        self.directory = (Path(workdir) / "checkpoints").resolve()
        # The temporary folders are made before the save returns: made asynchronously (orbax's default), a
        # non-primary process could write its data-iterator file before the primary had made the folder (seen with
        # two processes at the second save: "No such file or directory ... process_1-of-2.json").
        opts = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True, cleanup_tmp_directories=True,
            async_options=ocp.AsyncOptions(create_directories_asynchronously=False))
        self.manager = ocp.CheckpointManager(self.directory, options=opts, item_names=("state", "data", "meta"))
        self._submitted: list[int] = []
        self._failed = False
        if "--debug" not in sys.argv:
            _quiet_orbax_tracebacks()

    def _committed(self) -> list[int]:
        try:
            return sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit())
        except OSError:
            return []

    def _write_error(self, e: BaseException, step: int) -> UserError:
        """The one-line error of a failed checkpoint write; removes the half-written temporary folders."""
        self._failed = True
        if "--debug" not in sys.argv:   # the aborted save's other writes, garbage-collected later, say it again
            logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        committed = self._committed()
        failed = next((s for s in self._submitted if s not in committed), step)
        if jax.process_index() == 0:
            for p in self.directory.glob("*.orbax-checkpoint-tmp*"):
                shutil.rmtree(p, ignore_errors=True)
        text = str(e)
        oserr = next((x for x in _chain(e) if isinstance(x, OSError) and x.errno), None)
        if (oserr is not None and oserr.errno == errno.ENOSPC) or "No space left" in text or \
                "RESOURCE_EXHAUSTED" in text:
            reason = "no space left on the device"
        elif oserr is not None:
            reason = oserr.strerror or str(oserr)
        else:
            reason = f"{type(e).__name__}: {(text.splitlines() or [''])[0][:200]}"
        if committed:
            last = self.directory / str(committed[-1])
            size = sum(f.stat().st_size for f in last.rglob("*") if f.is_file())
            kept = (f"the last complete checkpoint, step {committed[-1]}, is kept; expected a writable folder with "
                    f"room for another checkpoint (about {size / 1e6:.0f} MB)")
        else:
            kept = "no complete checkpoint exists yet; expected a writable folder with room for a checkpoint"
        return UserError(f"{self.directory}: writing the checkpoint of step {failed} failed ({reason}); {kept}")

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_iter: Any, meta: dict, force: bool = False) -> bool:
        if step in self.manager.all_steps():
            return False
        try:
            saved = self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iter),
                meta=ocp.args.JsonSave(meta)), force=force)
        except Exception as e:  # noqa: BLE001 - orbax raises OSError, ValueError (tensorstore), ... for failed writes
            raise self._write_error(e, step) from e
        if saved:
            self._submitted.append(step)
        return saved

    def restore(self, step: int, abstract_state: Any, data_iter: Any) -> tuple[Any, dict]:
        """Restores ``step`` into the shardings of ``abstract_state``; ``data_iter`` is set in place."""
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=grain.checkpoint.CheckpointRestore(data_iter),
                meta=ocp.args.JsonRestore()))
        except Exception as e:  # orbax raises many types for mismatched or damaged checkpoints
            raise UserError(f"{self.directory / str(step)}: cannot resume from this checkpoint ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:300]}); expected a checkpoint of the same model geometry and "
                            "precision (use a new --workdir for a different config)") from e
        return out["state"], out["meta"]

    def wait(self) -> None:
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - see save()
            raise self._write_error(e, self._submitted[-1] if self._submitted else -1) from e

    def close(self) -> None:
        """Waits for the last save and closes; after a reported write failure, closes without raising again."""
        if self._failed:
            try:
                self.manager.close()
            except Exception:  # noqa: BLE001 - the failure was already reported
                pass
            return
        self.wait()
        self.manager.close()


def _chain(e: BaseException | None) -> list[BaseException]:
    out: list[BaseException] = []
    while e is not None and e not in out:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


class _OneLineRecords(logging.Filter):
    """Orbax logs a failed background write with its traceback before re-raising it in the main thread, where it
    becomes our one-line error: keep orbax's log record, as one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "orbax" not in (record.pathname or ""):
            return True
        message = record.getMessage()
        if record.exc_info or "\n" in message:
            first = (message.splitlines() or [""])[0]
            record.msg, record.args, record.exc_info, record.exc_text = first[:300], (), None, None
        return True


def _quiet_orbax_tracebacks() -> None:
    absl_logger = logging.getLogger("absl")
    if not any(isinstance(f, _OneLineRecords) for f in absl_logger.filters):
        absl_logger.addFilter(_OneLineRecords())
    # After a failed write, tensorstore's callbacks of the aborted save's other pending writes find orbax's event
    # loop closed and report it, once per write, as a traceback without a context (sys.unraisablehook or
    # sys.excepthook): drop exactly those.
    if not getattr(sys.unraisablehook, "_glean_quiet", False):
        previous_unraisable = sys.unraisablehook

        def unraisable(u: Any) -> None:
            if not _loop_closed(u.exc_type, u.exc_value):
                previous_unraisable(u)

        unraisable._glean_quiet = True  # type: ignore[attr-defined]
        sys.unraisablehook = unraisable
    if not getattr(sys.excepthook, "_glean_quiet", False):
        previous_except = sys.excepthook

        def excepthook(kind: Any, value: Any, tb: Any) -> None:
            if not _loop_closed(kind, value):
                previous_except(kind, value, tb)

        excepthook._glean_quiet = True  # type: ignore[attr-defined]
        sys.excepthook = excepthook


def _loop_closed(kind: Any, value: Any) -> bool:
    return kind is RuntimeError and str(value) == "Event loop is closed"


def abstract_like(tree: Any, shardings: Any) -> Any:
    """``jax.ShapeDtypeStruct`` tree of ``tree`` (arrays or ShapeDtypeStructs) carrying ``shardings``."""
    return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)

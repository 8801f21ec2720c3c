"""Orbax checkpoints of a training run: train state + data iterator state + metadata, exact resume.

``WORKDIR/checkpoints/<step>/{state, data, meta}`` through one ``ocp.CheckpointManager`` (asynchronous saves, the
last ``keep`` kept). ``state`` is the whole :class:`~glean_jax.training.step.TrainState` (trainable G params, Adam
states, D, dynamic loss scales, step, RNG, bad-step counter); ``data`` is the grain iterator state (one file per
process); ``meta`` is JSON (step, config geometry). Restoring always goes through an abstract target carrying the
new shardings, so a run saved on N devices resumes on M devices.
"""

from __future__ import annotations

import os
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
        opts = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=opts, item_names=("state", "data", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_iter: Any, meta: dict, force: bool = False) -> bool:
        if step in self.manager.all_steps():
            return False
        return self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iter),
            meta=ocp.args.JsonSave(meta)), force=force)

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
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree: Any, shardings: Any) -> Any:
    """``jax.ShapeDtypeStruct`` tree of ``tree`` (arrays or ShapeDtypeStructs) carrying ``shardings``."""
    return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)

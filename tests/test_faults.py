"""Fault injection into real training runs (``python -m glean_jax.train`` through ``tests/corpus.py``'s wrapper, one
CPU device, a tiny GLEAN 4 -> 8 of configs/demo.py): preemption, crashes, a full disk and non-finite steps.

* SIGTERM -> the current step finishes, a final checkpoint is written (off the checkpoint schedule), exit code 0;
* kill -9 between two steps, and kill -9 while a checkpoint is being written (the writer is made to hang inside
  orbax's temporary directory) -> the next run resumes from the last *complete* checkpoint (never the half-written
  one) and ends with a train state (G, D, Adam moments, RNG, counters) bit-identical to an uninterrupted run;
* a full disk while a checkpoint is written (a real 1.4-checkpoint-sized tmpfs when this machine lets us mount one
  and GLEAN_TEST_NO_TMPFS is unset, else a writer raising ENOSPC) -> one clear error line, exit 2, no traceback,
  the last good checkpoint intact, the partial one removed;
* NaN / inf batches -> each such step is skipped (parameters and optimizer untouched) and counted; the counter
  resets after a good step; ``max_bad_steps`` bad steps in a row stop the run with one clear line (exit 2), the
  checkpoints written before intact.

The runs share a persistent JAX compilation cache (``GLEAN_TEST_JAX_CACHE``, default ``$TMPDIR/glean_jax_test_jit``):
the first run compiles (about a minute here), the others start in seconds.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
TOTAL = 6
TINY = ["--config", "configs/demo.py", "--config.model.out_size=8", "--config.data.out_size=8",
        "--config.model.rrdb_channels=8", "--config.model.style_channels=32", f"--config.total_steps={TOTAL}",
        "--config.checkpoint_every=2", "--config.keep_checkpoints=3", "--config.eval_every=1000",
        "--config.sample_every=1000", "--config.eval_max_images=0", "--config.data.synthetic_size=16",
        "--config.data.synthetic_test_size=1", "--progress=false"]
RUN_TIMEOUT = 300


def _env(faults: dict[str, str] | None = None, fault_dir: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLEAN_FAULT_")}
    env.pop("XLA_FLAGS", None)   # one CPU device (the test process simulates 8)
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["JAX_COMPILATION_CACHE_DIR"] = os.environ.get(
        "GLEAN_TEST_JAX_CACHE", str(Path(tempfile.gettempdir()) / "glean_jax_test_jit"))
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    if faults:
        env.update(faults)
        env["GLEAN_FAULT_DIR"] = str(fault_dir)
    return env


class Run:
    """A training subprocess (the fault wrapper when ``faults`` is given) with stdout/stderr in files."""

    def __init__(self, workdir: Path, logs: Path, name: str, faults: dict[str, str] | None = None,
                 extra: tuple[str, ...] = ()) -> None:
        self.workdir, self.fault_dir = workdir, logs / f"{name}.faults"
        self.out_path, self.err_path = logs / f"{name}.out", logs / f"{name}.err"
        module = "tests.corpus" if faults else "glean_jax.train"
        argv = [sys.executable, "-m", module, *(["train"] if faults else []), *TINY, *extra, "--workdir", str(workdir)]
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(argv, cwd=ROOT, env=_env(faults, self.fault_dir), stdout=out, stderr=err)

    def marker(self, name: str) -> Path:
        return self.fault_dir / name

    def wait_for(self, cond, what: str, timeout: float = RUN_TIMEOUT) -> None:
        t0 = time.time()
        while not cond():
            if self.proc.poll() is not None:
                raise AssertionError(f"run ended (rc {self.proc.returncode}) before {what}:\n{self.stderr[-3000:]}")
            if time.time() - t0 > timeout:
                self.proc.kill()
                raise AssertionError(f"timed out waiting for {what}:\n{self.stderr[-3000:]}")
            time.sleep(0.05)

    def finish(self, timeout: float = RUN_TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(30) == -signal.SIGKILL

    @property
    def stdout(self) -> str:
        return self.out_path.read_text()

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()


def committed(workdir: Path) -> list[int]:
    """Complete checkpoints (orbax renames ``<step>.orbax-checkpoint-tmp`` to ``<step>`` when it is done)."""
    d = workdir / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def temporaries(workdir: Path) -> list[str]:
    d = workdir / "checkpoints"
    return sorted(p.name for p in d.iterdir() if not p.name.isdigit()) if d.is_dir() else []


def read_state(workdir: Path, step: int) -> dict[str, np.ndarray]:
    """The ``state`` item of checkpoint ``step`` as numpy arrays, keyed by tree path (read without a mesh)."""
    import jax
    import orbax.checkpoint as ocp

    path = workdir / "checkpoints" / str(step) / "state"
    ck = ocp.PyTreeCheckpointer()
    tree = ck.metadata(path).item_metadata.tree
    restored = ck.restore(path, restore_args=jax.tree_util.tree_map(
        lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree))
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(restored)[0]}


def assert_states_equal(a: dict, b: dict, what: str, skip: tuple[str, ...] = ()) -> None:
    assert a.keys() == b.keys(), what
    diff = [k for k in a if not any(s in k for s in skip) and not np.array_equal(a[k], b[k])]
    assert not diff, f"{what}: {len(diff)} arrays differ, e.g. {diff[:4]}"


def last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _counts(state: dict) -> set[int]:
    return {int(v) for k, v in state.items() if k.endswith("['count']")}


@pytest.fixture(scope="module")
def logs(module_tmp) -> Path:
    return module_tmp("fault_logs")


@pytest.fixture(scope="module")
def reference(module_tmp, logs) -> Path:
    """An uninterrupted run: checkpoints 2, 4, 6."""
    wd = module_tmp("reference") / "run"
    run = Run(wd, logs, "reference")
    rc = run.finish()
    assert rc == 0, run.stderr[-3000:]
    assert f"step {TOTAL};" in run.stdout
    assert committed(wd) == [2, 4, 6] and temporaries(wd) == []
    return wd


def test_sigterm_kill9_between_steps_and_during_a_write_then_resume_is_exact(reference, logs, tmp_path):
    wd = tmp_path / "run"
    # 1. SIGTERM while step 3 is about to run: step 3 finishes, a final checkpoint 3 (off the schedule), exit 0.
    run = Run(wd, logs, "sigterm", {"GLEAN_FAULT_PAUSE_AT": "3"})
    run.wait_for(run.marker("paused_at_3").exists, "the pause before step 3")
    run.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    run.marker("resume_3").write_text("")
    assert run.finish() == 0, run.stderr[-3000:]
    assert "step 3 (stopped by signal)" in run.stdout, run.stdout
    assert committed(wd) == [2, 3] and temporaries(wd) == [] and not (wd / "model").exists()

    # 2. kill -9 between steps 4 and 5 (checkpoint 4 complete): the next run must start from 4.
    run = Run(wd, logs, "kill_between", {"GLEAN_FAULT_PAUSE_AT": "5"})
    run.wait_for(run.marker("paused_at_5").exists, "the pause before step 5")
    assert run.marker("resumed_from_3").exists(), "the run after SIGTERM did not resume from its final checkpoint"
    run.wait_for(lambda: 4 in committed(wd), "checkpoint 4 to be committed")
    run.kill9()
    assert committed(wd) == [2, 3, 4]

    # 3. kill -9 while checkpoint 6 is being written: its temporary folder is left half-written.
    run = Run(wd, logs, "kill_writing", {"GLEAN_FAULT_HANG_WRITE": "6"})
    run.wait_for(run.marker("writing_6").exists, "the write of checkpoint 6")
    assert run.marker("resumed_from_4").exists()
    run.kill9()
    assert 6 not in committed(wd)
    assert any(t.startswith("6.orbax-checkpoint-tmp") for t in temporaries(wd)), temporaries(wd)

    # 4. resume: from 4 (the half-written 6 is ignored), to the end, equal to the uninterrupted run bit for bit.
    run = Run(wd, logs, "resume", {"GLEAN_FAULT_PAUSE_AT": "0"})
    assert run.finish() == 0, run.stderr[-3000:]
    assert run.marker("resumed_from_4").exists() and not run.marker("resumed_from_6").exists()
    assert f"step {TOTAL};" in run.stdout
    assert 6 in committed(wd) and temporaries(wd) == [], temporaries(wd)
    assert run.stdout.split("G params sha256 ")[1][:16] == \
        (logs / "reference.out").read_text().split("G params sha256 ")[1][:16]
    final, ref = read_state(wd, TOTAL), read_state(reference, TOTAL)
    assert int(final["['step']"]) == TOTAL
    assert_states_equal(final, ref, "final train state after SIGTERM + 2 x kill -9 vs uninterrupted run")
    assert_states_equal(read_state(wd, 4), read_state(reference, 4), "checkpoint 4")


def _mount_tmpfs(path: Path, size_bytes: int) -> bool:
    if not sys.platform.startswith("linux") or shutil.which("mount") is None or os.environ.get("GLEAN_TEST_NO_TMPFS"):
        return False
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
                       capture_output=True, text=True)
    return r.returncode == 0


def test_full_disk_while_checkpointing(reference, logs, tmp_path):
    """Checkpoint 4 cannot be written: one clear error line naming the checkpoint folder, exit 2, checkpoint 2 kept
    (equal to the uninterrupted run's), no half-written checkpoint left behind."""
    ckpt_bytes = sum(f.stat().st_size for f in (reference / "checkpoints" / "2").rglob("*") if f.is_file())
    mnt = tmp_path / "small_disk"
    real = _mount_tmpfs(mnt, int(ckpt_bytes * 1.4))
    try:
        wd = mnt / "run"
        if real:   # a real full disk: orbax/tensorstore fail as they would on a cluster's full volume
            run = Run(wd, logs, "disk_full_tmpfs")
        else:      # no mount privilege: the checkpoint writer raises ENOSPC itself
            run = Run(wd, logs, "disk_full_fake", {"GLEAN_FAULT_ENOSPC_WRITE": "4"})
        rc = run.finish()
        err = run.stderr
        line = last_line(err)
        assert rc == 2, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        assert line.startswith("error: ") and str(wd / "checkpoints") in line, line
        assert "checkpoint" in line and "step 2" in line and "expected" in line, line
        assert committed(wd) == [2] and temporaries(wd) == [], (committed(wd), temporaries(wd))
        assert_states_equal(read_state(wd, 2), read_state(reference, 2), "checkpoint 2 after the full disk")
    finally:
        if real:
            subprocess.run(["umount", str(mnt)], check=False)


def test_non_finite_batches_are_skipped_counted_then_stop(reference, logs, tmp_path):
    """NaN at step 2, good step 3, inf at 4, NaN at 5 and 6 with max_bad_steps=3: steps 2, 4, 5, 6 are skipped, the
    counter restarts after step 3, and the run stops at step 6 with one line; checkpoints 2 and 4 are intact."""
    wd = tmp_path / "run"
    run = Run(wd, logs, "nan", {"GLEAN_FAULT_NAN_STEPS": "2,5,6", "GLEAN_FAULT_INF_STEPS": "4"},
              extra=("--config.max_bad_steps=3",))
    rc = run.finish()
    err = run.stderr
    assert rc == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    line = last_line(err)
    assert line.startswith("error: training stopped at step 6: 3 non-finite steps in a row"), line
    assert str(wd / "checkpoints") in line and "expected" in line, line
    assert committed(wd) == [2, 4] and temporaries(wd) == []
    s2, s4 = read_state(wd, 2), read_state(wd, 4)
    # step 2 skipped: one Adam update so far (step 1); step 4 skipped: two (steps 1 and 3)
    assert int(s2["['step']"]) == 2 and int(s2["['bad_steps']"]) == 1 and _counts(s2) == {1}, _counts(s2)
    assert int(s4["['step']"]) == 4 and int(s4["['bad_steps']"]) == 1 and _counts(s4) == {2}, _counts(s4)
    for k, v in s4.items():
        assert np.all(np.isfinite(v)) if v.dtype.kind == "f" else True, k
    # after one good step (step 1) the reference's checkpoint 2 had two: the parameters must differ from it
    ref2 = read_state(reference, 2)
    assert any(not np.array_equal(s2[k], ref2[k]) for k in s2 if "g_params" in k)

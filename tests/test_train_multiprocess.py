"""Two local processes (``jax.distributed.initialize`` with a localhost coordinator, 2 simulated CPU devices each,
a 4-device data-parallel mesh, each process reading its own half of the data) run 4 training steps through the CLI
and agree: both finish, and both hold bit-identical trained parameters (printed sha256); process 0 writes the run.
A SIGTERM to one of them stops both at the same step with one checkpoint, and rerunning resumes exactly."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Two processes each compile the whole train step (about 4 min on 2 busy cores): run with `make test-slow`.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


OVERRIDES = ["--config.model.in_size=4", "--config.data.in_size=4", "--config.model.out_size=8",
             "--config.data.out_size=8", "--config.model.rrdb_channels=8", "--config.batch_size=4",
             "--config.total_steps=4", "--config.checkpoint_every=2", "--config.data.synthetic_size=16",
             "--config.data.synthetic_test_size=2", "--config.log_every=1"]


def _launch(wd: Path, faults: list[Path] | None = None) -> list[subprocess.Popen]:
    """Both processes of one run (``tests.corpus`` with a pause before step 3 when ``faults`` names their
    marker folders). No persistent compilation cache: a process that finds its executables there while the other
    compiles reaches the first collective more than Gloo's 30 s set-up timeout ahead of it on a busy 2-core CPU."""
    port = _free_port()
    procs = []
    for i in range(2):
        env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
        module = ["glean_jax.train"]
        if faults:
            env.update(GLEAN_FAULT_DIR=str(faults[i]), GLEAN_FAULT_PAUSE_AT="3")
            module = ["tests.corpus", "train"]
        procs.append(subprocess.Popen(
            [sys.executable, "-m", *module, "--config", str(ROOT / "configs/demo.py"), "--workdir", str(wd),
             f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}",
             "--progress=false", *OVERRIDES], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True))
    return procs


def _finish(procs: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=400)
            outs.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return outs


def _summary(outs: list[tuple[int, str, str]]) -> list[tuple[int, str | None, str]]:
    """(step, stopped by, G params digest) printed by each process, which must have exited 0."""
    rows = []
    for i, (rc, out, err) in enumerate(outs):
        assert rc == 0, f"process {i} failed (rc {rc}):\n{err[-3000:]}"
        m = re.search(rf"\[process {i}/2\] step (\d+)(?: \(stopped by (\w+)\))?.*; G params sha256 ([0-9a-f]{{16}})",
                      out)
        assert m, out
        rows.append((int(m.group(1)), m.group(2), m.group(3)))
    return rows


@pytest.fixture(scope="module")
def uninterrupted(module_tmp):
    root = module_tmp("mp")
    wd = root / "straight"
    return root, wd, _summary(_finish(_launch(wd)))


def test_two_processes_agree(uninterrupted):
    _, wd, rows = uninterrupted
    assert [r[:2] for r in rows] == [(4, None), (4, None)]
    assert rows[0][2] == rows[1][2]
    assert (wd / "model" / "model.json").is_file() and (wd / "checkpoints" / "4").is_dir()
    assert list((wd / "tb").glob("events.out.tfevents.*"))


def test_sigterm_to_one_process_stops_both_at_one_step_and_resumes_exactly(uninterrupted):
    """Process 1 alone gets SIGTERM while both wait before step 3: both stop at the same step with one complete
    checkpoint and exit 0; the same command then resumes and ends bit-identical to the uninterrupted run."""
    root, _, straight = uninterrupted
    wd, faults = root / "preempted", [root / "faults0", root / "faults1"]
    procs = _launch(wd, faults)
    deadline = time.time() + 400
    while not all((f / "paused_at_3").exists() for f in faults):
        assert time.time() < deadline and all(p.poll() is None for p in procs), _finish(procs)
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)
    time.sleep(1.0)   # the preemption notice reaches the coordinator before the steps go on
    for f in faults:
        (f / "resume_3").write_text("")
    rows = _summary(_finish(procs))
    stop_step = rows[0][0]
    assert rows[0][:2] == rows[1][:2] == (stop_step, "signal") and 3 <= stop_step < 4, rows
    done = sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
    assert done == [stop_step], done   # the demo keeps one checkpoint: the stop step's replaced step 2's
    assert not [p for p in (wd / "checkpoints").iterdir() if "tmp" in p.name]
    resumed = _summary(_finish(_launch(wd)))
    assert [r[:2] for r in resumed] == [(4, None), (4, None)]
    assert resumed[0][2] == resumed[1][2] == straight[0][2]

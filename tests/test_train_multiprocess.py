"""Two local processes (``jax.distributed.initialize`` with a localhost coordinator, 2 simulated CPU devices each,
a 4-device data-parallel mesh, each process reading its own half of the data) run 2 training steps through the CLI
and agree: both finish, and both hold bit-identical trained parameters (printed sha256); process 0 writes the run."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

# Two processes each compile the whole train step (about 4 min on 2 busy cores): run with `make test-slow`.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_agree(tmp_path):
    port = _free_port()
    wd = tmp_path / "run"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    overrides = ["--config.model.in_size=4", "--config.data.in_size=4", "--config.model.out_size=8",
                 "--config.data.out_size=8", "--config.model.rrdb_channels=8", "--config.batch_size=4",
                 "--config.total_steps=2", "--config.data.synthetic_size=16", "--config.data.synthetic_test_size=2",
                 "--config.log_every=1"]
    procs = [subprocess.Popen([sys.executable, "-m", "glean_jax.train", "--config", str(ROOT / "configs/demo.py"),
                               "--workdir", str(wd), f"--coordinator_address=127.0.0.1:{port}",
                               "--num_processes=2", f"--process_id={i}", "--progress=false", *overrides],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=400)
            outs.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    digests = []
    for i, (rc, out, err) in enumerate(outs):
        assert rc == 0, f"process {i} failed:\n{err[-3000:]}"
        m = re.search(rf"\[process {i}/2\] step 2, psnr [0-9.]+, mae [0-9.]+; G params sha256 ([0-9a-f]{{16}})", out)
        assert m, out
        digests.append(m.group(1))
    assert digests[0] == digests[1]
    assert (wd / "model" / "model.json").is_file() and (wd / "checkpoints" / "2").is_dir()
    assert list((wd / "tb").glob("events.out.tfevents.*"))

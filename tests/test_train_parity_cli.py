"""The G+D parity check of ``tests/test_train_parity.py`` through the command line (issue #14).

mmagic 1.2.0's real ``SRGAN`` (``tests/oracle/srgan.py``, every weight seeded random) is saved as an mmagic-format
checkpoint (``{'state_dict': generator.*, discriminator.*, perceptual_loss.vgg.*}``, ``convert.torch_io``), converted
with ``python -m convert.mmagic`` (G + D) and ``python -m convert.torchvision_vgg16`` (the perceptual VGG16);
``python -m glean_jax.train`` then runs 3 steps from it (``pretrained.glean`` + ``pretrained.vgg16``, no flip,
``data.shuffle=False``, constant lr) on a 3-image folder dataset in mmagic's layout (``GT/``, ``BIx4_down/``), so the
batches are [a, b], [c, a], [b, c] (file-name order, repeating); ``python -m convert.to_mmagic WORKDIR/model OUT.pth
--format mmagic`` exports G and D, which must load with ``strict=True`` into mmagic's generator and discriminator.
mmagic takes 3 ``train_step``s on the same batches, read by its own ``BasicImageDataset`` + ``LoadImageFromFile`` +
``PackInputs`` with ``InfiniteSampler(shuffle=False)``.

Pass criteria (free-running, see ``tests/test_train_parity.py`` for why): the per-step losses logged by the CLI
(TensorBoard, ``log_every=1``) within 1e-5 relative at step 1 and 1e-3 at steps 2-3; at most 1e-2 of G's and of
D's exported elements beyond 1e-5 x max(1, max|p_mmagic|) of mmagic's after 3 steps (measured: none); the weights
moved; the run reports that its discriminator came from ``pretrained.glean``.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from convert import mmagic as convert_mmagic
from convert import to_mmagic, torchvision_vgg16
from convert.torch_io import save_torch_state
from glean_jax.errors import run_cli
from glean_jax.images import write_png
from tests.oracle import srgan as so
from tests.test_train_parity import (
    FREE_FLIP_FRACTION,
    FREE_LOSS_RTOL,
    LOSS_RTOL,
    LOSSES,
    MOVED_FACTOR,
    NETS,
    PARAM_TOL,
    max_update,
    param_report,
)

# Two CLI runs (convert, train with its own compile, convert back) and mmagic's loop: ~2 min, so `make test-slow`.
pytestmark = [pytest.mark.oracle, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
IN, OUT, RRDBS, BATCH, STEPS = 4, 16, 2, 2, 3
NAMES = ("a.png", "b.png", "c.png")


def read_scalars(tb_dir: Path) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` of the scalars in the TensorBoard event files of ``tb_dir`` (TFRecord framing:
    length u64, its crc u32, the ``Event`` proto, its crc u32)."""
    from tensorboardX.proto.event_pb2 import Event

    out: dict[str, dict[int, float]] = {}
    for path in sorted(tb_dir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            event = Event.FromString(data[pos + 12:pos + 12 + n])
            pos += 12 + n + 4
            for v in event.summary.value:
                out.setdefault(v.tag, {})[int(event.step)] = float(v.simple_value)
    return out


def write_dataset(root: Path, seed: int = 0) -> None:
    """mmagic's layout: ``GT/<name>`` (OUT x OUT) and ``BIx4_down/<name>`` (IN x IN) PNGs, and an annotation file
    listing the names in file-name order (what mmagic's configs pass as ``ann_file``)."""
    rng = np.random.default_rng(seed)
    for name in NAMES:
        gt = rng.integers(0, 256, (OUT, OUT, 3), dtype=np.uint8)
        lq = np.rint(gt.reshape(IN, OUT // IN, IN, OUT // IN, 3).mean(axis=(1, 3))).astype(np.uint8)
        for sub, img in (("GT", gt), ("BIx4_down", lq)):
            (root / sub).mkdir(parents=True, exist_ok=True)
            write_png(root / sub / name, img)
    (root / "meta_info.txt").write_text("".join(f"{n} ({OUT},{OUT},3)\n" for n in sorted(NAMES)))


def train_cli(workdir: Path, data: Path, glean: Path, vgg: Path) -> subprocess.CompletedProcess:
    overrides = {
        "model.in_size": IN, "data.in_size": IN, "model.out_size": OUT, "data.out_size": OUT,
        "model.num_rrdbs": RRDBS, "model.rrdb_channels": 64, "model.mbstd_per_shard": False,
        "model.mbstd_shards": 1, "batch_size": BATCH, "total_steps": STEPS, "log_every": 1,
        "data.source": "folder", "data.root": data, "data.lq_dir": "BIx4_down", "data.gt_dir": "GT",
        "data.test_root": data / "no_test_set", "data.flip": False, "data.shuffle": False,
        "data.num_threads": 1, "data.prefetch": 2, "optim.schedule": "constant",
        "pretrained.glean": glean, "pretrained.vgg16": vgg, "pretrained.allow_random": True,
    }
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
    argv = [sys.executable, "-m", "glean_jax.train", "--config", str(ROOT / "configs" / "demo.py"),
            "--workdir", str(workdir), "--progress=false", *(f"--config.{k}={v}" for k, v in overrides.items())]
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def test_cli_run_matches_mmagic(tmp_path):
    torch = so.load().torch
    model = so.build_srgan(IN, OUT, seed=11, num_rrdbs=RRDBS)
    optim = so.build_optim_wrappers(model)
    initial = {net: so.mo.state_dict_numpy(getattr(model, net)) for net in NETS}
    pth = tmp_path / "srgan_random.pth"
    save_torch_state(pth, so.state_numpy(model), wrap=True)
    assert run_cli(convert_mmagic.main, [str(pth), str(tmp_path / "glean")]) == 0
    assert run_cli(torchvision_vgg16.main, [str(pth), str(tmp_path / "vgg16")]) == 0
    data = tmp_path / "data"
    write_dataset(data)

    r = train_cli(tmp_path / "run", data, tmp_path / "glean", tmp_path / "vgg16")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["step"] == STEPS
    assert summary["info"]["discriminator"] == f"{tmp_path / 'glean'} (discriminator)", summary["info"]
    assert summary["info"]["vgg16"].startswith(str(tmp_path / "vgg16")), summary["info"]
    exported = tmp_path / "exported.pth"
    assert run_cli(to_mmagic.main, [str(tmp_path / "run" / "model"), str(exported), "--format", "mmagic"]) == 0

    batches = so.folder_batches(str(data), "BIx4_down", "GT", str(data / "meta_info.txt"), BATCH, STEPS)
    assert [[Path(s.gt_path).name for s in b["data_samples"]] for b in batches] == [
        ["a.png", "b.png"], ["c.png", "a.png"], ["b.png", "c.png"]]
    ref = so.train_steps(model, optim, batches)

    state = torch.load(exported, map_location="cpu", weights_only=True)["state_dict"]
    assert {k.split(".", 1)[0] for k in state} == set(NETS)
    fresh = so.build_srgan(IN, OUT, seed=12, num_rrdbs=RRDBS)
    for net in NETS:   # strict: every key of mmagic's module, nothing else, every shape
        getattr(fresh, net).load_state_dict({k[len(net) + 1:]: v for k, v in state.items()
                                             if k.startswith(net + ".")}, strict=True)

    scalars = read_scalars(tmp_path / "run" / "tb")
    print(f"\nCLI run vs mmagic SRGAN.train_step, GLEAN {IN}->{OUT} ({RRDBS} RRDBs), batch {BATCH}, folder data")
    for i, row in enumerate(ref):
        for k in LOSSES:
            ours = scalars[f"train/{k}"][i + 1]
            rel = abs(ours - row[k]) / abs(row[k])
            print(f"{i + 1:>4} {k:<16} {row[k]:>14.8g} {ours:>14.8g} {rel:>9.2e}")
            assert rel <= (LOSS_RTOL if i == 0 else FREE_LOSS_RTOL), f"step {i + 1} {k}: {ours!r} vs {row[k]!r}"
    for net in NETS:
        ref = so.mo.state_dict_numpy(getattr(model, net))
        rep = param_report(so.mo.state_dict_numpy(getattr(fresh, net)), ref)
        moved = max_update(ref, initial[net])
        print(f"{net}: max|d|/scale {rep['max_rel']:.2e} ({rep['worst']}), {rep['over']} of {rep['total']} elements "
              f"beyond {PARAM_TOL} x scale, max |update| {moved:.2e}")
        assert rep["fraction"] <= FREE_FLIP_FRACTION, rep
        assert moved >= MOVED_FACTOR * PARAM_TOL, moved

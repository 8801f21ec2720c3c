"""train_and_evaluate end to end on 8 simulated CPU devices (a 2 x 4 data x model mesh): 4 uninterrupted steps vs
2 steps + stop + restart + 2 steps give bit-identical parameters, optimizer states and data order; the run writes
checkpoints, TensorBoard events, sample grids and a loadable model export; SIGTERM is turned into a clean stop."""

from __future__ import annotations

import os
import signal

import jax
import numpy as np
import pytest

from glean_jax.checkpoint import load_model
from glean_jax.training.config import validate_config
from glean_jax.training.loop import _StopSignal, train_and_evaluate


def tiny_config():
    from configs.demo import get_config

    c = get_config()
    c.model.in_size = c.data.in_size = 4
    c.model.out_size = c.data.out_size = 8
    c.model.num_rrdbs, c.model.rrdb_channels = 1, 8
    c.model.mbstd_shards = 2
    c.batch_size = 8
    c.total_steps = 4
    c.checkpoint_every, c.keep_checkpoints = 2, 2
    c.log_every = 2
    c.eval_every = 100
    c.sample_every = 100
    c.data.synthetic_size = 16
    c.data.synthetic_test_size = 2
    # 2-way data x 4-way model parallel: the large params are sharded (exercises the 'model' axis and keeps the
    # 8 simulated devices' memory low)
    c.mesh.data, c.mesh.model, c.mesh.shard_min_size = 2, 4, 1 << 14
    validate_config(c)
    return c


def _flat(tree):
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.fixture(scope="module")
def straight(module_tmp, jit_cache):
    wd = module_tmp("straight")
    return wd, train_and_evaluate(tiny_config(), wd, progress=False, jit_cache=jit_cache)


def test_run_outputs(straight):
    wd, summary = straight
    assert summary["step"] == 4 and summary["start_step"] == 0 and summary["stopped"] is None
    assert sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit()) == [2, 4]
    assert list((wd / "tb").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (wd / "samples").iterdir()) == ["step_0000004.png"]
    assert set(summary["eval"]) == {0, 4} and np.isfinite(summary["eval"][4]["psnr"])
    meta, variables = load_model(wd / "model")
    assert meta["kind"] == "glean" and meta["generator"]["in_size"] == 4 and meta["generator"]["out_size"] == 8
    state = summary["state"]
    for k, v in _flat(state.g_params).items():
        np.testing.assert_array_equal(v, _flat(variables["generator"]["params"])[k], err_msg=k)


def test_resume_is_exact(straight, tmp_path, jit_cache):
    _, ref = straight
    first = train_and_evaluate(tiny_config(), tmp_path, stop_after=2, progress=False, jit_cache=jit_cache)
    builds = jit_cache.builds
    assert first["step"] == 2 and first["stopped"] == "stop_after"
    assert not (tmp_path / "model").exists()
    second = train_and_evaluate(tiny_config(), tmp_path, progress=False, jit_cache=jit_cache)
    assert jit_cache.builds == builds   # the resumed run reused the first run's step, init and eval functions
    assert second["start_step"] == 2 and second["step"] == 4
    a, b = jax.device_get(ref["state"]), jax.device_get(second["state"])
    fa, fb = _flat(a), _flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)
    assert ref["last"] == second["last"]   # same losses at step 4: same data order after the restart


def test_stop_signal_is_caught():
    old = signal.getsignal(signal.SIGTERM)
    with _StopSignal() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.received == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is old


def test_stops_after_max_bad_steps_keeping_last_good_checkpoint(tmp_path):
    from glean_jax.errors import UserError

    cfg = tiny_config()
    cfg.optim.lr = 1e30          # the first step blows the weights up; the second step's losses are not finite
    cfg.max_bad_steps = 1
    cfg.checkpoint_every = 1
    with pytest.raises(UserError) as e:
        train_and_evaluate(cfg, tmp_path, progress=False)
    msg = str(e.value)
    assert msg.startswith("training stopped at step 2: 1 non-finite steps in a row") and "\n" not in msg, msg
    assert "last good checkpoint is kept" in msg
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [1]
    assert not (tmp_path / "model").exists()

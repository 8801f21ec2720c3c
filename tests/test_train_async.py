"""The training loop reads nothing from the devices between sync points (issue #14).

``loop.no_host_pulls()`` wraps the steady-state part of every step (dispatching it, putting the next batch on the
devices) in ``jax.transfer_guard_device_to_host("disallow")``. XLA:CPU does not enforce transfer guards (its arrays
live in host memory), so on the 8 simulated CPU devices the same region is checked by intercepting every conversion
of a ``jax.Array`` to a host value (``_value``, which ``float()``, ``int()``, ``jax.device_get`` and ``np.asarray``
of a multi-device array go through, and ``__array__``): inside the region each one fails the run. A control run
whose step reads one loss on the host must fail, so the check can fail.
"""

from __future__ import annotations

import contextlib

import pytest
from jax._src import array as jax_array

from glean_jax.runtime import JitCache
from glean_jax.training import loop
from tests.test_train_resume import tiny_config


class HostPull(AssertionError):
    pass


@pytest.fixture
def trap(monkeypatch):
    """Arms the host-conversion trap inside every ``loop.no_host_pulls()`` region; counts the regions."""
    state = {"armed": False, "regions": 0}
    value, to_array = jax_array.ArrayImpl._value, jax_array.ArrayImpl.__array__

    def check(what: str) -> None:
        if state["armed"]:
            raise HostPull(f"{what} of a jax.Array inside the steady-state region")

    def guarded_value(self):
        check("_value")
        return value.fget(self)

    def guarded_array(self, *args, **kwargs):
        check("__array__")
        return to_array(self, *args, **kwargs)

    real_guard = loop.no_host_pulls

    @contextlib.contextmanager
    def armed():
        with real_guard():
            state["armed"], state["regions"] = True, state["regions"] + 1
            try:
                yield
            finally:
                state["armed"] = False

    monkeypatch.setattr(jax_array.ArrayImpl, "_value", property(guarded_value))
    monkeypatch.setattr(jax_array.ArrayImpl, "__array__", guarded_array)
    monkeypatch.setattr(loop, "no_host_pulls", armed)
    return state


def _config():
    c = tiny_config()
    c.total_steps, c.log_every, c.checkpoint_every = 8, 4, 8
    return c


def test_steady_state_steps_read_nothing_from_the_devices(trap, tmp_path, jit_cache):
    summary = loop.train_and_evaluate(_config(), tmp_path, progress=False, jit_cache=jit_cache)
    assert summary["step"] == 8 and summary["stopped"] is None
    # every step's dispatch and every next batch but the last went through the guarded region
    assert trap["regions"] == 8 + 7
    # the metrics still arrive: fetched at the log points, every step's values averaged
    assert set(summary["last"]) >= {"loss_g", "loss_d", "loss_pix", "bad_steps"}
    assert summary["throughput"]["train/images_per_s"] > 0
    assert sorted(summary["eval"]) == [0, 8]


def test_a_host_read_in_the_step_is_caught(trap, tmp_path, jit_cache):
    """The same run with a step that reads one loss on the host (as the loop once did every step) fails."""
    class PullingCache(JitCache):
        def get(self, key, build):
            f = jit_cache.get(key, build)   # the step compiled by the test above, when it ran in this process
            if key[0] != "step":
                return f

            def step(state, frozen, batch):
                state, m = f(state, frozen, batch)
                float(m["loss_g"])
                return state, m

            step.lower = f.lower
            return step

    with pytest.raises(HostPull, match="_value of a jax.Array inside the steady-state region"):
        loop.train_and_evaluate(_config(), tmp_path, progress=False, jit_cache=PullingCache())

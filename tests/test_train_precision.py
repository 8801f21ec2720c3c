"""Mixed precision steps: float16 with flax DynamicScale (an injected overflow skips the step and halves the scale;
good steps update and grow the scale after growth_interval), bfloat16 compute with float32 params."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glean_jax.training import step as S
from tests.test_train_step import host_setup, make_batch, place, small_config


def _flat(tree):
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.fixture(scope="module")
def weights():
    return host_setup(small_config())[2:]   # float32 params, shared by every precision


def test_fp16_overflow_skips_step_and_halves_scale(weights):
    cfg = small_config(**{"precision": "float16", "model.fp16_enabled": True, "loss_scale.growth_interval": 1})
    g, d = S.build_modules(cfg)
    assert g.dtype == jnp.float16 and d.fp16_enabled
    trainable, d_params, frozen = weights
    _, fn, state, frozen_d = place(cfg, g, d, trainable, d_params, frozen, jax.devices()[:1])
    assert state.g_scale is not None and float(state.g_scale.scale) == cfg.loss_scale.init
    batch = make_batch(8, cfg)
    huge = 2.0 ** 120   # finite in float32, but the scaled float16 cotangents overflow
    state = state.replace(g_scale=state.g_scale.replace(scale=jnp.asarray(huge, jnp.float32)))
    before = jax.device_get(state)
    s1, m1 = fn(state, frozen_d, batch)
    s1h, m1 = jax.device_get((s1, m1))
    assert int(m1["skipped"]) == 1 and int(m1["bad_steps"]) == 0, "an overflow is loss-scale search, not a bad step"
    assert np.isfinite(m1["loss_g"]) and float(m1["loss_scale_g"]) == huge / 2
    assert float(s1h.g_scale.scale) == huge / 2 and int(s1h.g_scale.fin_steps) == 0
    for a, b in ((before.g_params, s1h.g_params), (before.g_opt, s1h.g_opt), (before.d_params, s1h.d_params)):
        fa, fb = _flat(a), _flat(b)
        for k in fa:
            np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)
    # a sane scale: the step is applied and, after growth_interval=1 good step, the scale doubles
    s1 = s1.replace(g_scale=s1.g_scale.replace(scale=jnp.asarray(256.0, jnp.float32)))
    s2, m2 = fn(s1, frozen_d, batch)
    s2h, m2 = jax.device_get((s2, m2))
    assert int(m2["skipped"]) == 0 and float(s2h.g_scale.scale) == 256.0 and int(s2h.g_scale.fin_steps) == 1
    changed = [k for k, v in _flat(s1h.g_params).items() if not np.array_equal(v, _flat(s2h.g_params)[k])]
    assert changed
    for v in jax.tree_util.tree_leaves(s2h.g_params):
        assert v.dtype == np.float32 and np.all(np.isfinite(v))
    s3, m3 = jax.device_get(fn(s2, frozen_d, batch))
    assert int(m3["skipped"]) == 0 and float(s3.g_scale.scale) == 512.0


def test_bf16_step(weights):
    cfg = small_config(precision="bfloat16")
    g, d = S.build_modules(cfg)
    assert g.dtype == jnp.bfloat16 and d.dtype == jnp.bfloat16
    trainable, d_params, frozen = weights
    _, fn, state, frozen_d = place(cfg, g, d, trainable, d_params, frozen, jax.devices()[:1])
    assert state.g_scale is None
    new, m = jax.device_get(fn(state, frozen_d, make_batch(8, cfg)))
    assert int(m["skipped"]) == 0
    for k in ("loss_pix", "loss_perceptual", "loss_gan", "loss_d"):
        assert np.isfinite(m[k]) and m[k] > 0, k
    for v in jax.tree_util.tree_leaves(new.g_params):
        assert v.dtype == np.float32
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(trainable),
                                                         jax.tree_util.tree_leaves(new.g_params), strict=True))

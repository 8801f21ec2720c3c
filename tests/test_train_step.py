"""The jitted G/D train step: one step on 1 device (finite losses, trainable params move, frozen bank and the dead
RGB skip fusion unchanged), equality of 1 vs 8 simulated devices (4 x 2 data x model; gradients via Adam's first
moment mu = (1 - b1) * grad after one step, losses), non-finite steps skipped, and the loss falling on a fixed batch.

Model: GLEAN 4 -> 8 with one RRDB of 8 channels (the smallest geometry; every layer type of the full model)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glean_jax.models.vgg import init_vgg16_params
from glean_jax.training import step as S
from glean_jax.training.config import base_config, validate_config
from glean_jax.training.weights import cached_init
from tests import oracle


def small_config(**over):
    c = base_config()
    c.model.in_size, c.model.out_size = 4, 8
    c.data.in_size, c.data.out_size = 4, 8
    c.model.num_rrdbs, c.model.rrdb_channels = 1, 8
    c.model.mbstd_shards = 2
    c.pretrained.allow_random = True
    c.data.source = "synthetic"
    c.batch_size = 8
    c.optim.schedule = "constant"
    for k, v in over.items():
        node = c
        *parents, last = k.split(".")
        for p in parents:
            node = node[p]
        node[last] = v
    validate_config(c)
    return c


def host_setup(cfg):
    g, d = S.build_modules(cfg)
    gv = jax.device_get(cached_init("glean", g)(jax.random.key(0)))   # = models.build.init_variables, compiled once
    dv = jax.device_get(cached_init("stylegan2_discriminator", d)(jax.random.key(1)))
    trainable, bank = S.split_glean_params(gv["params"])
    frozen = {"bank": {"params": bank, "buffers": gv["buffers"][S.BANK]}, "vgg": init_vgg16_params(0)}
    return g, d, trainable, dv["params"], frozen


def place(cfg, g, d, trainable, d_params, frozen, devices):
    mesh = S.make_mesh(cfg, devices)
    state = S.make_state(cfg, trainable, d_params, np.asarray(jax.random.PRNGKey(0)))
    ss, fs = S.tree_shardings(state, mesh, cfg), S.tree_shardings(frozen, mesh, cfg)
    state = jax.tree_util.tree_map(lambda x, s: jax.device_put(np.array(x), s), state, ss)
    frozen_d = jax.tree_util.tree_map(lambda x, s: jax.device_put(np.array(x), s), frozen, fs)
    return mesh, S.jit_train_step(cfg, g, d, mesh, ss, fs), state, frozen_d


def make_batch(n, cfg, seed=0):
    rng = np.random.default_rng(seed)
    gt = rng.uniform(-1, 1, (n, cfg.model.out_size, cfg.model.out_size, 3)).astype(np.float32)
    lq = gt.reshape(n, cfg.model.in_size, 2, cfg.model.in_size, 2, 3).mean(axis=(2, 4))
    return {"lq": lq, "gt": gt}


@pytest.fixture(scope="module")
def setup():
    cfg = small_config()
    return cfg, host_setup(cfg)


@pytest.fixture(scope="module")
def one_device_step(setup):
    cfg, (g, d, trainable, d_params, frozen) = setup
    mesh, fn, state, frozen_d = place(cfg, g, d, trainable, d_params, frozen, jax.devices()[:1])
    batch = make_batch(8, cfg)
    new_state, metrics = fn(state, frozen_d, batch)
    return fn, frozen_d, jax.device_get(new_state), jax.device_get(metrics), batch


def _flat(tree):
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_one_step(setup, one_device_step):
    cfg, (g, d, trainable, d_params, frozen) = setup
    _, frozen_d, state, m, _ = one_device_step
    for k in ("loss_pix", "loss_perceptual", "loss_gan", "loss_g", "loss_d_real", "loss_d_fake", "loss_d"):
        assert np.isfinite(m[k]) and m[k] > 0, k
    np.testing.assert_allclose(m["loss_g"], m["loss_pix"] + m["loss_perceptual"] + m["loss_gan"], rtol=1e-6)
    assert int(m["skipped"]) == 0 and int(state.step) == 1 and int(state.bad_steps) == 0
    # the bank is not in the state and the frozen copy the step saw is unchanged bit for bit
    assert S.BANK not in state.g_params and set(state.g_params) == {"encoder", "fusion", "decoder"}
    for name, arr in _flat(frozen_d["bank"]).items():
        np.testing.assert_array_equal(arr, _flat(frozen["bank"])[name], err_msg=name)
    before, after = _flat(trainable), _flat(state.g_params)
    assert before.keys() == after.keys()
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    skip = {k for k in before if k.startswith("['fusion']['rgb_")}
    assert skip and not (changed & skip), "fusion/rgb_* (dead branch) must get zero gradients and stay unchanged"
    assert changed == set(before) - skip, sorted(set(before) - skip - changed)[:5]
    d_before, d_after = _flat(d_params), _flat(state.d_params)
    d_changed = [k for k, v in d_before.items() if not np.array_equal(v, d_after[k])]
    assert len(d_changed) == len(d_before)
    # Adam's first step (torch semantics, bias-corrected) moves each element by exactly lr * g / (|g| + eps), with g
    # read back from the first moment (mu = (1 - b1) g): checked on every G and D tensor to the float32 rounding of
    # the parameter (the moves span 0.99 lr down to ~0 for gradients near eps).
    lr, b1, eps = float(S.lr_schedule(cfg)(0)), cfg.optim.b1, cfg.optim.eps
    mus = {**_flat(state.g_opt.mu), **{"D" + k: v for k, v in _flat(state.d_opt.mu).items()}}
    moved = {**{k: (before[k], after[k]) for k in changed}, **{"D" + k: (d_before[k], d_after[k]) for k in d_changed}}
    for name, (b, a) in moved.items():
        g = mus[name].astype(np.float64) / (1 - b1)
        want = b.astype(np.float64) - lr * g / (np.abs(g) + eps)
        err = np.abs(a.astype(np.float64) - want) - np.spacing(np.abs(b))
        assert np.max(err) <= 1e-6 * lr, name


def test_one_vs_eight_devices(setup, one_device_step):
    """8 devices as a 4 (data) x 2 (model) mesh: 4-way data parallel (2 images per device, each discriminator
    shard of 4 spanning 2 devices) with the large params split 2-way; a pure 8-way replica of this model's state
    needs ~7 GB of host memory for the simulated devices, too much for the shared test machine."""
    assert jax.device_count() == 8
    cfg, (g, d, trainable, d_params, frozen) = setup
    _, _, ref, m_ref, batch = one_device_step
    cfg = small_config(**{"mesh.data": 4, "mesh.model": 2, "mesh.shard_min_size": 1 << 16})
    mesh, fn, state, frozen_d = place(cfg, g, d, trainable, d_params, frozen, jax.devices())
    assert dict(mesh.shape) == {"data": 4, "model": 2}
    sharded = [x for x in jax.tree_util.tree_leaves(state.g_params) if not x.sharding.is_fully_replicated]
    assert sharded, "expected some params sharded over the model axis"
    new, m = jax.device_get(fn(state, frozen_d, batch))
    for k in ("loss_pix", "loss_perceptual", "loss_gan", "loss_d_real", "loss_d_fake"):
        np.testing.assert_allclose(m[k], m_ref[k], rtol=1e-5, err_msg=k)
    # mu = (1 - b1) * grad after one step: compare the gradients themselves (Adam's update would hide scale errors)
    for name, opt_a, opt_b in (("G", ref.g_opt, new.g_opt), ("D", ref.d_opt, new.d_opt)):
        a, b = _flat(opt_a.mu), _flat(opt_b.mu)
        scale = max(np.max(np.abs(v)) for v in a.values())
        diff = np.concatenate([np.abs(a[k] - b[k]).ravel() for k in a]).astype(np.float64)
        norm = np.sqrt(sum(np.sum(v.astype(np.float64) ** 2) for v in a.values()))
        # Relative L2 error (measured 1.7e-5 for G, 1.4e-4 for D; a wrong reduction or scale gives >= 1e-1), and
        # every element within 1e-4 of the largest gradient except a few: a pre-activation within float rounding of
        # a leaky ReLU's kink can take the other slope when sums run in another order, which moves the gradients of
        # that channel (seen: 7 D bias elements of 11.5M, the worst 6.9e-6 = 8e-4 x max; the rest within 2e-9).
        rel_l2 = np.sqrt(np.sum(diff ** 2)) / norm
        outliers = int(np.sum(diff > 1e-4 * scale))
        assert rel_l2 <= 1e-3 and outliers <= 1e-5 * diff.size, (
            f"{name} grads: relative L2 error {rel_l2:.2e}, {outliers} of {diff.size} elements off by more than "
            f"1e-4 x max |grad| {scale} (worst {diff.max():.2e})")
    # Adam's first update is ~lr * g / (|g| + eps): where |g| is near eps (1e-8) rounding noise in g moves it by up to
    # lr, so the parameters are compared where |g| > 1e-6 (mu = 0.1 g), and bounded by 2 lr everywhere.
    pa, pb, mu = _flat(ref.g_params), _flat(new.g_params), _flat(ref.g_opt.mu)
    lr = cfg.optim.lr
    assert max(np.max(np.abs(pa[k] - pb[k])[np.abs(mu[k]) > 1e-7], initial=0) for k in pa) <= 2e-5 * lr / 1e-4
    assert max(np.max(np.abs(pa[k] - pb[k])) for k in pa) <= 2 * lr


def test_nonfinite_step_is_skipped(setup, one_device_step):
    cfg, (g, d, trainable, d_params, frozen) = setup
    fn, frozen_d, state, _, batch = one_device_step
    bad = {"lq": batch["lq"].copy(), "gt": batch["gt"]}
    bad["lq"][0, 0, 0, 0] = np.nan
    state_d = jax.device_put(state)
    s1, m1 = jax.device_get(fn(state_d, frozen_d, bad))
    assert int(m1["skipped"]) == 1 and int(m1["bad_steps"]) == 1 and int(s1.step) == 2
    for a, b in ((state.g_params, s1.g_params), (state.d_params, s1.d_params), (state.g_opt, s1.g_opt)):
        for k, v in _flat(a).items():
            np.testing.assert_array_equal(v, _flat(b)[k], err_msg=k)
    s2, m2 = jax.device_get(fn(jax.device_put(s1), frozen_d, bad))
    assert int(m2["bad_steps"]) == 2
    s3, m3 = jax.device_get(fn(jax.device_put(s2), frozen_d, batch))
    assert int(m3["skipped"]) == 0 and int(m3["bad_steps"]) == 0 and int(s3.step) == 4


def test_loss_decreases_on_fixed_batch(setup, one_device_step):
    cfg, _ = setup
    fn, frozen_d, state, m0, batch = one_device_step
    state = jax.device_put(state)
    pix = [float(m0["loss_pix"])]
    for _ in range(5):
        state, m = fn(state, frozen_d, batch)
        pix.append(float(m["loss_pix"]))
    assert pix[-1] < 0.9 * pix[0], pix


def test_lr_schedules():
    c = small_config(**{"optim.schedule": "cosine_restart_0x", "total_steps": 300_000})
    f = S.lr_schedule(c)
    np.testing.assert_allclose([float(f(0)), float(f(150_000)), float(f(300_000))],
                               [1e-4, 1e-7 + (1e-4 - 1e-7) / 2, 1e-7], rtol=1e-5)
    c = small_config(**{"optim.schedule": "cosine_1x", "total_steps": 300_000})
    # mmagic 1.x's CosineAnnealingLR(T_max=600k) ends the 300k run at about 5.0e-5
    assert abs(float(S.lr_schedule(c)(300_000)) - 5.0e-5) < 1e-6


@pytest.mark.oracle
def test_cosine_1x_equals_mmengine_scheduler():
    """``cosine_1x`` against mmengine's own ``CosineAnnealingLR(T_max, eta_min, by_epoch=False)`` stepped once per
    iteration on a torch optimizer, as mmagic 1.x's GLEAN configs run it (T_max 600 here for speed): the learning rate
    of every iteration up to T_max to 1e-5 relative, or 1e-5 of the base rate near eta_min (ours is float32).
    (mmagic's runs stop at half of T_max. Past T_max torch's formula turns back up; ours stays at eta_min.)"""
    oracle.load_or_skip()
    import torch
    from mmengine.optim import CosineAnnealingLR

    c = small_config(**{"optim.schedule": "cosine_1x", "optim.t_max": 600, "optim.eta_min": 1e-7,
                        "total_steps": 601})
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=float(c.optim.lr))
    sched = CosineAnnealingLR(opt, T_max=600, eta_min=1e-7, by_epoch=False)
    theirs = []
    for _ in range(601):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    ours = np.asarray(jax.vmap(S.lr_schedule(c))(jnp.arange(601)))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * float(c.optim.lr))   # ours: float32


def test_mbstd_per_shard_matches_separate_discriminators(setup):
    cfg, (g, d, trainable, d_params, frozen) = setup
    x = jnp.asarray(make_batch(8, cfg)["gt"])
    per_shard = S.make_d_apply(d, cfg)(d_params, x)
    separate = jnp.concatenate([d.apply({"params": d_params}, x[:4]), d.apply({"params": d_params}, x[4:])])
    np.testing.assert_allclose(np.asarray(per_shard), np.asarray(separate), rtol=1e-5, atol=1e-6)
    whole = d.apply({"params": d_params}, x)   # one group layout over 8 differs: the split matters
    assert not np.allclose(np.asarray(whole), np.asarray(separate), rtol=1e-5, atol=1e-6)

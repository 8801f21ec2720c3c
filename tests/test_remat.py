"""``model.remat``: the same train step with less memory.

* The training step (``glean_jax.training.step``, random weights, batch 2) with ``model.remat`` False and True:
  - run op by op (``jax.disable_jit``, GLEAN 8 -> 32 with 2 RRDBs): every op is the same with and without remat, so
    the losses, the G and D gradients (read off Adam's first moment after one step, ``mu = (1 - b1) * grad``) and
    the parameters after the step agree to ``RTOL`` of each tensor's largest magnitude (measured: G 1.6e-7, D 0);
    (slow: 2.5 min of op-by-op dispatch);
  - jitted (GLEAN 16 -> 64, slow too: 80 s): the same losses and D gradients to ``RTOL``; the G gradients to
    ``JIT_G_RTOL``. XLA fuses the recomputed StyleGAN2 levels differently, and the gradient that reaches the encoder
    through the bank's weight demodulation is ill-conditioned (a difference of nearly equal terms), so float32
    evaluation order alone moves it by ~1e-4 of its largest element: remat vs not 1.1e-4, the plain step jitted vs
    op by op 3.2e-4 (2026-12-02, this machine). A wrong gradient is off by O(1).
* The options behind it, each against its plain form (values and gradients): the perceptual loss's VGG16
  (``remat=True``) and the discriminator (``StyleGAN2Discriminator(remat=True)``), and the helper
  :func:`glean_jax.models.remat.remat` (residuals: its arguments only).
* It saves memory: XLA's temporaries of GLEAN's gradient at 16 -> 128 fall by more than a fifth.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src import ad_checkpoint

from glean_jax import losses, runtime
from glean_jax.arch import GleanArch
from glean_jax.models.build import init_variables
from glean_jax.models.glean import GLEAN
from glean_jax.models.remat import after, remat
from glean_jax.models.stylegan2 import StyleGAN2Discriminator
from glean_jax.models.vgg import init_vgg16_params
from glean_jax.training import step as S
from glean_jax.training.config import base_config, validate_config

RTOL = 1e-6         # of each tensor's largest magnitude
JIT_G_RTOL = 1e-3   # the jitted G gradients: float32 evaluation-order noise is up to 3.2e-4 here (module docstring)


def remat_config(remat: bool, in_size: int = 16):
    c = base_config()
    c.model.in_size, c.model.out_size = in_size, 4 * in_size
    c.data.in_size, c.data.out_size = in_size, 4 * in_size
    c.model.num_rrdbs, c.model.rrdb_channels = 2, 16
    c.model.mbstd_shards = 1
    c.model.remat = remat
    c.pretrained.allow_random = True
    c.data.source = "synthetic"
    c.batch_size = 2
    c.optim.schedule = "constant"
    validate_config(c)
    return c


def _flat(tree) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _worst(a: dict, b: dict) -> tuple[float, str]:
    """Largest ``max |a - b| / max |a|`` over the tensors (tensors that are all zero: ``max |b|``)."""
    assert a.keys() == b.keys()
    errs = []
    for k in a:
        scale = float(np.max(np.abs(a[k]))) if a[k].size else 0.0
        diff = float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) if a[k].size else 0.0
        errs.append((diff / scale if scale > 0 else diff, k))
    return max(errs)


def one_step(in_size: int, op_by_op: bool) -> dict:
    """One train step from the same state and batch, remat off and on: {remat: (state, metrics)}."""
    out = {}
    cfg = remat_config(False, in_size)
    g, d = S.build_modules(cfg)
    gv = jax.device_get(init_variables("glean", g, jax.random.key(0)))
    dv = jax.device_get(init_variables("stylegan2_discriminator", d, jax.random.key(1)))
    trainable, bank = S.split_glean_params(gv["params"])
    frozen = {"bank": {"params": bank, "buffers": gv["buffers"]["bank"]}, "vgg": init_vgg16_params(0)}
    rng = np.random.default_rng(0)
    n = 4 * in_size
    gt = rng.uniform(-1, 1, (2, n, n, 3)).astype(np.float32)
    batch = {"lq": gt.reshape(2, in_size, 4, in_size, 4, 3).mean(axis=(2, 4)), "gt": gt}
    for remat_on in (False, True):
        cfg = remat_config(remat_on, in_size)
        g, d = S.build_modules(cfg)
        assert g.remat is remat_on and d.remat is remat_on
        state = S.make_state(cfg, trainable, dv["params"], np.asarray(jax.random.PRNGKey(0)))
        fn = S.make_train_step_fn(cfg, g, d)
        if op_by_op:
            with jax.disable_jit():
                out[remat_on] = jax.device_get(fn(state, frozen, batch))
        else:
            out[remat_on] = jax.device_get(runtime.jit(fn)(state, frozen, batch))
    return out


@pytest.fixture(scope="module")
def jitted():
    return one_step(16, op_by_op=False)


@pytest.fixture(scope="module")
def op_by_op():
    return one_step(8, op_by_op=True)


def _same_losses(steps) -> None:
    (_, m0), (_, m1) = steps[False], steps[True]
    for k in ("loss_pix", "loss_perceptual", "loss_gan", "loss_g", "loss_d_real", "loss_d_fake", "loss_d",
              "grad_norm_g", "grad_norm_d"):
        assert np.isfinite(m0[k]) and m0[k] > 0, k
        np.testing.assert_allclose(m1[k], m0[k], rtol=RTOL, atol=0, err_msg=k)
    assert int(m0["skipped"]) == int(m1["skipped"]) == 0


@pytest.mark.slow
def test_remat_step_op_by_op_same_losses_gradients_and_params(op_by_op):
    _same_losses(op_by_op)
    (s0, _), (s1, _) = op_by_op[False], op_by_op[True]
    for name, a, b in (("G", s0.g_opt.mu, s1.g_opt.mu), ("D", s0.d_opt.mu, s1.d_opt.mu)):
        err, where = _worst(_flat(a), _flat(b))
        assert err <= RTOL, f"{name} gradient {where}: max |d| = {err:.2e} x max |grad|"
    for name, a, b in (("G", s0.g_params, s1.g_params), ("D", s0.d_params, s1.d_params)):
        err, where = _worst(_flat(a), _flat(b))
        assert err <= RTOL, f"{name} params {where}: max |d| = {err:.2e} x max |p|"


@pytest.mark.slow
def test_remat_step_jitted_same_losses_and_gradients(jitted):
    _same_losses(jitted)
    (s0, _), (s1, _) = jitted[False], jitted[True]
    for name, a, b, tol in (("D", s0.d_opt.mu, s1.d_opt.mu, RTOL), ("G", s0.g_opt.mu, s1.g_opt.mu, JIT_G_RTOL)):
        err, where = _worst(_flat(a), _flat(b))
        assert err <= tol, f"{name} gradient {where}: max |d| = {err:.2e} x max |grad|"


def test_vgg_and_discriminator_remat_same_values_and_gradients():
    rng = np.random.default_rng(1)
    vgg = init_vgg16_params(0)
    pred, gt = (jnp.asarray(rng.uniform(-1, 1, (2, 32, 32, 3)), jnp.float32) for _ in range(2))
    out = [jax.jit(jax.value_and_grad(lambda p, r=r: losses.perceptual_loss(vgg, p, gt, norm_img=False, remat=r)))(
        pred) for r in (False, True)]
    np.testing.assert_allclose(out[1][0], out[0][0], rtol=RTOL)
    assert _worst({"x": np.asarray(out[0][1])}, {"x": np.asarray(out[1][1])})[0] <= RTOL

    d0, d1 = StyleGAN2Discriminator(32), StyleGAN2Discriminator(32, remat=True)
    params = init_variables("stylegan2_discriminator", d0, jax.random.key(2))["params"]
    x = jnp.asarray(rng.uniform(-1, 1, (2, 32, 32, 3)), jnp.float32)
    res = []
    for d in (d0, d1):
        f = jax.jit(jax.value_and_grad(lambda p, x, d=d: jnp.sum(jnp.sin(d.apply({"params": p}, x))), (0, 1)))
        res.append(jax.device_get(f(params, x)))
    np.testing.assert_allclose(res[1][0], res[0][0], rtol=RTOL)
    err, where = _worst(_flat(res[0][1]), _flat(res[1][1]))
    assert err <= RTOL, (where, err)


def test_remat_helper_keeps_only_its_arguments_and_is_exact():
    rng = np.random.default_rng(3)
    w = jnp.asarray(rng.standard_normal((4, 4)), jnp.float32)
    x = jnp.asarray(rng.standard_normal((3, 5, 4)), jnp.float32)

    def f(w, x, b):
        return jnp.tanh(jnp.sin(x @ w) @ w) * b

    b = jnp.asarray(rng.standard_normal((3, 1, 1)), jnp.float32)
    g = remat(f)
    np.testing.assert_array_equal(g(w, x, b), f(w, x, b))
    want = jax.grad(lambda w, x, b: jnp.sum(f(w, x, b) ** 2), (0, 1, 2))(w, x, b)
    got = jax.grad(lambda w, x, b: jnp.sum(g(w, x, b) ** 2), (0, 1, 2))(w, x, b)
    for a, c in zip(want, got, strict=True):
        np.testing.assert_allclose(c, a, rtol=1e-6, atol=1e-6)
    saved = ad_checkpoint.saved_residuals(lambda w, x, b: g(w, x, b), w, x, b)
    assert all("argument" in why for _, why in saved), saved
    assert sum(a.size for a, _ in saved) == w.size + x.size + b.size
    tied = after(x, jnp.ones((3, 7)))
    np.testing.assert_array_equal(tied, x)
    with pytest.raises(ValueError, match="leading"):
        after(x, jnp.ones((2, 7)))


def test_glean_remat_cuts_xla_temporaries():
    """XLA's temporaries of the GLEAN gradient (trainable params, bank frozen) at 16 -> 128, batch 2: with remat at
    most 0.8x those without (measured 0.71x, 643 -> 457 MB)."""
    temps = []
    lq = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)
    for r in (False, True):
        g = GLEAN(GleanArch(16, 128, rrdb_channels=16, num_rrdbs=2), remat=r)
        v = jax.eval_shape(lambda g=g: init_variables("glean", g, jax.random.key(0)))
        tp, bank = S.split_glean_params(v["params"])

        def loss(tp, bank, buffers, lq, g=g):
            out = g.apply({"params": {**tp, S.BANK: jax.lax.stop_gradient(bank)}, "buffers": buffers}, lq)
            return jnp.mean(jnp.square(out))

        compiled = runtime.jit(jax.grad(loss)).lower(tp, bank, v["buffers"], lq).compile()
        temps.append(compiled.memory_analysis().temp_size_in_bytes)
    assert temps[1] <= temps[0] * 0.8, temps

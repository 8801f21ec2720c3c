"""The GLEAN training state and ONE jitted, sharded G/D train step, equal to mmagic's ``SRGAN.train_step``
(``mmagic/models/editors/srgan/srgan.py``).

Per step (both networks updated every step, ``disc_steps=1``):

* one forward ``out = G(lq)``;
* G loss = ``pixel_weight * MSE(out, gt) + perceptual(out, gt) + gan_weight * BCE(D(out), 1)``, gradients for the
  trainable GLEAN params only: the StyleGAN2 bank (``params['bank']`` and its noise buffers) is frozen, passed
  to the step as an argument and has no gradient and no optimizer state;
* D loss = ``BCE(D(gt), 1) + BCE(D(stop_gradient(out)), 0)`` with the D params of the start of the step;
* Adam (torch semantics: ``optax.scale_by_adam``, eps outside the square root, bias-corrected) for G and D with the
  learning rate of the iteration (mmcv ``CosineRestart`` of the released 0.x models or mmengine 1.x
  ``CosineAnnealingLR``).

Data parallelism is XLA SPMD over a ``jax.sharding.Mesh`` with Auto axes ('data', 'model'): the batch is sharded on
'data', parameters are replicated except those with at least ``mesh.shard_min_size`` elements whose last dimension
divides by the 'model' axis size, which are sharded on it. The global-batch means equal mmagic's DDP gradient
average. mmagic's discriminator runs per GPU, so its minibatch-stddev groups never cross GPUs: with
``model.mbstd_per_shard`` D's minibatch-stddev groups are formed within each of ``mbstd_shards`` consecutive equal
parts of the batch (every other layer of D is per sample), which makes the result independent of our device count.

A step whose loss or gradients are not finite is skipped (params and optimizer state unchanged) and counted in
``bad_steps`` (consecutive). With ``precision='float16'`` each network has a flax ``DynamicScale``: an overflowing
step is skipped and its scale halved, the scale doubles after ``growth_interval`` good steps (mmagic's fp16 configs
have no loss scaler at all; without one float16 gradients underflow or overflow).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training.dynamic_scale import DynamicScale
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from glean_jax import losses, runtime
from glean_jax.models.build import compute_dtype
from glean_jax.models.glean import GLEAN
from glean_jax.models.stylegan2 import StyleGAN2Discriminator
from glean_jax.training.config import glean_arch, mesh_shape

BANK = "bank"   # the frozen StyleGAN2 bank inside GLEAN's params


class TrainState(struct.PyTreeNode):
    """Everything that changes during training (saved in checkpoints). The frozen bank and VGG are not in it."""

    step: jax.Array                    # iterations done (int32)
    g_params: Any                      # trainable GLEAN params (everything but params['bank'])
    g_opt: Any                         # Adam state of g_params
    d_params: Any
    d_opt: Any
    g_scale: DynamicScale | None       # float16 only
    d_scale: DynamicScale | None
    rng: jax.Array                     # raw uint32 key, split each step (the step itself draws nothing today)
    bad_steps: jax.Array               # consecutive non-finite steps (int32)


def build_modules(cfg: ConfigDict) -> tuple[GLEAN, StyleGAN2Discriminator]:
    dtype = compute_dtype(cfg.precision)
    m = cfg.model
    g = GLEAN(glean_arch(cfg), remat=m.remat, dtype=dtype)
    d = StyleGAN2Discriminator(in_size=m.out_size, channel_multiplier=m.channel_multiplier,
                               mbstd_group_size=m.mbstd_group_size, fp16_enabled=m.fp16_enabled, remat=m.remat,
                               dtype=dtype)
    return g, d


def make_mesh(cfg: ConfigDict, devices: list | None = None) -> Mesh:
    """('data', 'model') mesh with Auto axis types (jax.make_mesh defaults to Explicit, which linen can't use)."""
    devices = jax.devices() if devices is None else devices
    data, model = mesh_shape(cfg, len(devices))
    arr = np.asarray(devices).reshape(data, model)
    return Mesh(arr, ("data", "model"), axis_types=(AxisType.Auto, AxisType.Auto))


def lr_schedule(cfg: ConfigDict) -> Callable[[jax.Array], jax.Array]:
    """Learning rate of iteration ``t`` (0-based, the value mmagic uses for the t-th optimizer step).

    * ``cosine_restart_0x`` (mmcv ``CosineRestart(periods=[total_steps], restart_weights=[1], min_lr=eta_min)``,
      the schedule of the released models): ``eta_min + (lr - eta_min) * (1 + cos(pi * t / total_steps)) / 2``;
    * ``cosine_1x`` (mmengine ``CosineAnnealingLR(T_max=t_max, eta_min)``, mmagic 1.x): the same with ``t_max``;
    * ``constant``: ``lr``.
    """
    base, eta_min = float(cfg.optim.lr), float(cfg.optim.eta_min)
    if cfg.optim.schedule == "constant":
        return lambda t: jnp.asarray(base, jnp.float32)
    period = float(cfg.total_steps if cfg.optim.schedule == "cosine_restart_0x" else cfg.optim.t_max)

    def f(t: jax.Array) -> jax.Array:
        alpha = jnp.minimum(jnp.asarray(t, jnp.float32) / period, 1.0)
        return (eta_min + 0.5 * (base - eta_min) * (1.0 + jnp.cos(jnp.pi * alpha))).astype(jnp.float32)

    return f


def make_adam(cfg: ConfigDict) -> optax.GradientTransformation:
    """torch.optim.Adam(betas=(b1, b2), eps, weight_decay=0) without the learning rate (applied in the step)."""
    return optax.scale_by_adam(b1=cfg.optim.b1, b2=cfg.optim.b2, eps=cfg.optim.eps)


def split_glean_params(params: dict) -> tuple[dict, dict]:
    """GLEAN params -> (trainable, bank)."""
    trainable = {k: v for k, v in params.items() if k != BANK}
    return trainable, params[BANK]


def glean_variables(trainable: dict, frozen: dict) -> dict:
    """GLEAN variables from the trainable params and ``frozen['bank'] = {'params', 'buffers'}`` (the bank's own)."""
    return {"params": {**trainable, BANK: frozen["bank"]["params"]}, "buffers": {BANK: frozen["bank"]["buffers"]}}


def param_spec(shape: tuple[int, ...], model_size: int, min_size: int) -> P:
    """Sharding rule by shape: large arrays with a last dim divisible by the model axis are split on it."""
    if model_size > 1 and len(shape) >= 2 and math.prod(shape) >= min_size and shape[-1] % model_size == 0:
        return P(*([None] * (len(shape) - 1)), "model")
    return P()


def tree_shardings(tree: Any, mesh: Mesh, cfg: ConfigDict) -> Any:
    model_size = mesh.shape["model"]
    return jax.tree_util.tree_map(
        lambda x: NamedSharding(mesh, param_spec(tuple(x.shape), model_size, cfg.mesh.shard_min_size)), tree)


def init_dynamic_scale(cfg: ConfigDict) -> DynamicScale | None:
    if cfg.precision != "float16":
        return None
    return DynamicScale(growth_interval=cfg.loss_scale.growth_interval, fin_steps=jnp.zeros((), jnp.int32),
                        scale=jnp.asarray(cfg.loss_scale.init, jnp.float32))


def make_state(cfg: ConfigDict, g_trainable: dict, d_params: dict, rng: jax.Array) -> TrainState:
    adam = make_adam(cfg)
    return TrainState(step=jnp.zeros((), jnp.int32), g_params=g_trainable, g_opt=adam.init(g_trainable),
                      d_params=d_params, d_opt=adam.init(d_params), g_scale=init_dynamic_scale(cfg),
                      d_scale=init_dynamic_scale(cfg), rng=rng, bad_steps=jnp.zeros((), jnp.int32))


def _all_finite(tree: Any) -> jax.Array:
    """True when every element is finite, read off the global norm (NaN or inf anywhere makes it non-finite; so
    does a norm beyond float32's range, ~1.8e19, which no healthy step has). One norm instead of a per-leaf
    ``all(isfinite)`` chain: that chain, feeding a select of every parameter between its old and new value, made
    XLA:CPU take over 10 minutes to compile the cat x8 step (34 s with the norm)."""
    return jnp.isfinite(optax.global_norm(tree))


def make_d_apply(d: nn.Module, cfg: ConfigDict) -> Callable[[Any, jax.Array], jax.Array]:
    """``D(params, x) -> (N, 1)``; per mmagic GPU shard when ``model.mbstd_per_shard`` (see the module docstring)."""
    shards = cfg.model.mbstd_shards if cfg.model.mbstd_per_shard else 1

    def apply(params: Any, x: jax.Array) -> jax.Array:
        return d.apply({"params": params}, x, mbstd_shards=shards)

    return apply


def make_train_step_fn(cfg: ConfigDict, g: GLEAN, d: StyleGAN2Discriminator) -> Callable:
    """The un-jitted step ``(state, frozen, batch) -> (state, metrics)``.

    ``frozen = {'bank': {'params', 'buffers'}, 'vgg': VGG params}``; ``batch = {'lq', 'gt'}`` float32 in [-1, 1].
    """
    adam = make_adam(cfg)
    schedule = lr_schedule(cfg)
    d_apply = make_d_apply(d, cfg)
    dtype = compute_dtype(cfg.precision)
    w = cfg.loss

    def step(state: TrainState, frozen: dict, batch: dict) -> tuple[TrainState, dict]:
        lq, gt = batch["lq"], batch["gt"]
        rng, _ = jax.random.split(state.rng)

        def g_loss_fn(tp: dict) -> tuple[jax.Array, tuple]:
            out = g.apply(glean_variables(tp, frozen), lq)
            pix = losses.pixel_mse(out, gt) * w.pixel_weight
            perc = losses.perceptual_loss(frozen["vgg"], out, gt, norm_img=w.norm_img,
                                          perceptual_weight=w.perceptual_weight, dtype=dtype,
                                          remat=cfg.model.remat)
            gan = losses.gan_loss_g(d_apply(state.d_params, out), w.gan_weight)
            total = pix + perc + gan
            return total, (out, {"loss_pix": pix, "loss_perceptual": perc, "loss_gan": gan})

        def d_loss_fn(dp: dict, out: jax.Array) -> tuple[jax.Array, dict]:
            real, fake = losses.d_loss(d_apply(dp, gt), d_apply(dp, jax.lax.stop_gradient(out)))
            return real + fake, {"loss_d_real": real, "loss_d_fake": fake}

        if state.g_scale is not None:
            g_scale, g_fin, (g_loss, (out, g_parts)), g_grads = state.g_scale.value_and_grad(
                g_loss_fn, has_aux=True)(state.g_params)
            d_scale, d_fin, (d_total, d_parts), d_grads = state.d_scale.value_and_grad(
                d_loss_fn, has_aux=True)(state.d_params, out)
        else:
            (g_loss, (out, g_parts)), g_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(state.g_params)
            (d_total, d_parts), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(state.d_params, out)
            g_scale = d_scale = None
            g_fin, d_fin = _all_finite(g_grads), _all_finite(d_grads)

        losses_finite = jnp.isfinite(g_loss) & jnp.isfinite(d_total)
        ok = losses_finite & g_fin & d_fin
        lr = schedule(state.step)

        def update(params: Any, grads: Any, opt: Any) -> tuple[Any, Any]:
            def apply(_: None) -> tuple[Any, Any]:
                upd, new_opt = adam.update(grads, opt, params)
                return jax.tree_util.tree_map(lambda p, u: (p - lr * u).astype(p.dtype), params, upd), new_opt

            # A branch, not a select of old and new values: only one side runs (a select of the 59M-parameter
            # latent linear and its Adam moments cost ~0.9 s per cat x8 step on the 2-core CPU).
            return jax.lax.cond(ok, apply, lambda _: (params, opt), None)

        g_params, g_opt = update(state.g_params, g_grads, state.g_opt)
        d_params, d_opt = update(state.d_params, d_grads, state.d_opt)
        # fp16 overflow (finite loss, non-finite scaled grads) is normal loss-scale search, not a bad step.
        bad = ~losses_finite if g_scale is not None else ~ok
        bad_steps = jnp.where(bad, state.bad_steps + 1, 0).astype(jnp.int32)
        new_state = state.replace(step=state.step + 1, g_params=g_params, g_opt=g_opt, d_params=d_params,
                                  d_opt=d_opt, g_scale=g_scale, d_scale=d_scale, rng=rng, bad_steps=bad_steps)
        metrics = {**g_parts, "loss_g": g_loss, **d_parts, "loss_d": d_total, "lr": lr,
                   "grad_norm_g": optax.global_norm(g_grads), "grad_norm_d": optax.global_norm(d_grads),
                   "skipped": (~ok).astype(jnp.int32), "bad_steps": bad_steps}
        if g_scale is not None:
            metrics["loss_scale_g"] = g_scale.scale
            metrics["loss_scale_d"] = d_scale.scale
        return new_state, jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32)
                                                 if x.dtype != jnp.int32 else x, metrics)

    return step


def jit_train_step(cfg: ConfigDict, g: GLEAN, d: StyleGAN2Discriminator, mesh: Mesh, state_sharding: Any,
                   frozen_sharding: Any) -> Callable:
    """``jax.jit`` of the step with the state donated and every output sharding pinned."""
    batch_sharding = {"lq": NamedSharding(mesh, P("data")), "gt": NamedSharding(mesh, P("data"))}
    replicated = NamedSharding(mesh, P())
    return runtime.jit(make_train_step_fn(cfg, g, d), in_shardings=(state_sharding, frozen_sharding, batch_sharding),
                   out_shardings=(state_sharding, replicated), donate_argnums=(0,))

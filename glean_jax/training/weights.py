"""The weights a training run starts from and the model directories it writes.

:func:`initial_weights`: the bank (GLEAN ``params['bank']`` and its fixed noise buffers) from the ``generator_ema``
of a converted official StyleGAN2 checkpoint (``pretrained.stylegan2``), verified to have been loaded (mmagic 1.x
silently leaves it random); the discriminator from the same checkpoint; VGG16 from a converted torchvision
checkpoint; ``pretrained.glean`` optionally starts G (and D if present) from a converted GLEAN checkpoint. Missing
pretrained weights are an error unless ``pretrained.allow_random``. :func:`export_model` writes a model directory
from the train state. Host <-> global array helpers that work with several processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from ml_collections import ConfigDict

from glean_jax import runtime
from glean_jax.checkpoint import check_variables, load_model, save_model
from glean_jax.errors import UserError
from glean_jax.training import step as step_lib
from glean_jax.training.config import check_pretrained, glean_arch


# ----------------------------------------------------------------------------------------------------- host helpers
def to_host(tree: Any) -> Any:
    """Global (possibly multi-process, sharded) arrays -> numpy, on every process."""
    from jax.experimental import multihost_utils

    def one(x: Any) -> np.ndarray:
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return np.asarray(x)
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree_util.tree_map(one, tree)


def to_global(tree: Any, shardings: Any) -> Any:
    """Host arrays, identical on every process, -> global arrays with ``shardings`` (works multi-process)."""
    def one(x: Any, s: NamedSharding) -> jax.Array:
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])

    return jax.tree_util.tree_map(one, tree, shardings)


def flat_paths(tree: Any) -> dict[str, Any]:
    """{'a/b/c': leaf} of a tree."""
    return {"/".join(str(getattr(k, "key", k)) for k in path): v
            for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


# ------------------------------------------------------------------------------------------------ initial weights
def initial_weights(cfg: ConfigDict, g: Any, d: Any, jit_cache: runtime.JitCache | None = None
                    ) -> tuple[dict, dict, dict, dict]:
    """``(glean_variables, d_params, vgg_params, info)`` as numpy trees; see the module docstring."""
    from glean_jax.models.vgg import PERCEPTUAL_LAYER, init_vgg16_params, load_vgg16
    from glean_jax.shipped_weights import SHIPPED_VGG16, vgg16_params

    m, pre = cfg.model, cfg.pretrained
    check_pretrained(cfg)   # kinds and geometries from model.json; the arrays are checked below as they load
    key = jax.random.key(cfg.seed)
    init_g, key_g = cached_init("glean", g, jit_cache), jax.random.fold_in(key, 0)
    init_d, key_d = cached_init("stylegan2_discriminator", d, jit_cache), jax.random.fold_in(key, 1)
    # Random values only where no checkpoint brings them (pretrained.glean brings all of G); the shapes always, to
    # check what loads against them.
    gv = jax.eval_shape(init_g, key_g) if pre.glean else to_host(init_g(key_g))
    gv, d_params = {"params": dict(gv["params"]), "buffers": dict(gv["buffers"])}, \
        jax.eval_shape(init_d, key_d)["params"]
    info = {"bank": "random", "discriminator": "random", "vgg16": "random", "glean": "random"}
    arch = glean_arch(cfg)
    hint_d = f"a StyleGAN2 discriminator for {m.out_size}x{m.out_size}, channel_multiplier={m.channel_multiplier}"
    if pre.stylegan2:
        _, variables = load_model(pre.stylegan2)
        bank = variables["generator"]
        what = f"config.pretrained.stylegan2={pre.stylegan2!r} (bank)"
        hint = f"a StyleGAN2 generator for {m.out_size}x{m.out_size}, channel_multiplier={m.channel_multiplier}"
        check_variables(bank.get("params"), gv["params"][step_lib.BANK], what, hint)
        check_variables(bank.get("buffers"), gv["buffers"][step_lib.BANK], what, hint)
        gv["params"][step_lib.BANK] = bank["params"]
        gv["buffers"][step_lib.BANK] = bank["buffers"]
        info["bank"] = f"{pre.stylegan2} (generator_ema)"
        if variables.get("discriminator") is None:
            if not pre.allow_random:
                raise UserError(f"config.pretrained.stylegan2={pre.stylegan2!r}: holds no discriminator; expected the "
                                "full official checkpoint (generator_ema + discriminator)")
        else:
            check_variables(variables["discriminator"]["params"], d_params,
                            f"config.pretrained.stylegan2={pre.stylegan2!r} (discriminator)", hint_d)
            d_params = variables["discriminator"]["params"]
            info["discriminator"] = f"{pre.stylegan2} (discriminator)"
    if pre.glean:
        _, variables = load_model(pre.glean)
        check_variables(variables["generator"], gv, f"config.pretrained.glean={pre.glean!r}", arch.describe())
        if pre.stylegan2:   # the bank must stay the official one: keep it, fine-tune the rest
            variables["generator"]["params"][step_lib.BANK] = gv["params"][step_lib.BANK]
            variables["generator"]["buffers"][step_lib.BANK] = gv["buffers"][step_lib.BANK]
        else:
            info["bank"] = f"{pre.glean} (GLEAN bank)"
        gv = variables["generator"]
        info["glean"] = str(pre.glean)
        if variables.get("discriminator") is not None:
            check_variables(variables["discriminator"]["params"], d_params,
                            f"config.pretrained.glean={pre.glean!r} (discriminator)", hint_d)
            d_params = variables["discriminator"]["params"]
            info["discriminator"] = f"{pre.glean} (discriminator)"
    if info["discriminator"] == "random":
        if not pre.allow_random:
            raise UserError("config.pretrained: no discriminator weights found; expected pretrained.stylegan2 with a "
                            "discriminator, or pretrained.allow_random=True")
        d_params = to_host(init_d(key_d))["params"]
    if pre.vgg16 == SHIPPED_VGG16:
        vgg = vgg16_params(layers=(PERCEPTUAL_LAYER,))
        info["vgg16"] = f"{pre.vgg16} (torchvision's ImageNet VGG16)"
    elif pre.vgg16:
        vgg = load_vgg16(pre.vgg16)
        info["vgg16"] = str(pre.vgg16)
    else:
        vgg = init_vgg16_params(cfg.seed)
    return gv, d_params, to_host(vgg), info


def cached_init(kind: str, module: Any, jit_cache: runtime.JitCache | None = None) -> Any:
    """:func:`glean_jax.models.build.init_fn`, compiled once per ``jit_cache`` for a module."""
    from glean_jax.models.build import init_fn

    cache = jit_cache if jit_cache is not None else runtime.JitCache()
    return cache.get(("init", kind, repr(module)), lambda: init_fn(kind, module))


def export_model(path: Path, cfg: ConfigDict, g: Any, state: Any, frozen: dict, source: dict) -> None:
    """Writes a GLEAN model directory (``kind: glean``, generator + discriminator) from the train state."""
    g_params = to_host(state.g_params)
    bank = to_host(frozen["bank"])
    d_params = to_host(state.d_params)
    if jax.process_index() != 0:
        return
    variables = {"generator": {"params": {**g_params, step_lib.BANK: bank["params"]},
                               "buffers": {step_lib.BANK: bank["buffers"]}},
                 "discriminator": {"params": d_params}}
    meta = {"kind": "glean", "generator": {"kind": "glean", **g.arch.to_dict()},
            "discriminator": {"kind": "stylegan2_discriminator", **g.arch.discriminator()},
            "source": source}
    save_model(path, meta, variables, overwrite=True, only_this_process=jax.process_count() > 1)

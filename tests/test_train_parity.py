"""Full G+D update parity with mmagic 1.2.0's own ``SRGAN.train_step`` (issue #14).

The real ``mmagic.models.editors.srgan.SRGAN`` built from mmagic's GLEAN config (``tests/oracle/srgan.py``: GLEAN
generator, StyleGAN2 discriminator, MSE + VGG16 perceptual + vanilla GAN losses, ``DataPreprocessor(127.5, 127.5)``,
Adam lr 1e-4 betas (0.9, 0.99) eps 1e-8 in mmengine ``OptimWrapper``s built by mmagic's
``MultiOptimWrapperConstructor``), every weight seeded random (VGG16 included), converted to ours with
``convert.mmagic`` / ``convert.torchvision_vgg16``. Both sides take ``STEPS`` = 3 steps on one fixed uint8 batch of 2
(ours: ``make_state`` + ``jit_train_step`` on one device, constant lr, D's minibatch-stddev over the whole batch as
mmagic's single-process D sees it). Two runs of ours: *free-running* (3 steps from the converted initial weights)
and *synced* (each step from mmagic's own weights and Adam state before that step, converted).

Why the elementwise parameter criterion cannot be met after Adam steps in float32 (measured, see the report of
issue #14): a leaky-ReLU pre-activation within float32 rounding of 0 (8 -> 32: one of 1.5e-7, 3e-7 x its layer's
std, in D ``convs.2.conv2`` channel 171 on the real batch) takes the 0.2 slope in one implementation and the 1 slope
in the other. That changes that channel's gradient by O(1) and every gradient upstream of it by ~1e-3 relative, and
Adam's first update is ``lr * g / (|g| + eps)`` = +-lr for any |g| >> eps: every weight whose gradient is smaller
than that perturbation can move by lr the other way (up to 2e-4 apart per step). mmagic differs from itself by the
same amount when only its conv backend changes (``torch.backends.mkldnn`` off: 7.1e-5 of G's elements and 1.75e-4
of D's beyond 1e-5 x scale after 3 steps; ours: 0.7-3.8e-4 and 1.75e-4, depending on XLA's CPU fusion flags).

Pass criteria (float32 on both sides; scale = max(1, max|p_mmagic|) per tensor):

* every loss (pix, perceptual, gan, d_real, d_fake and the totals loss_g, loss_d) of every synced step within
  ``LOSS_RTOL`` = 1e-5 relative (the free-running steps 2 and 3 start from weights that already differ as above:
  within ``FREE_LOSS_RTOL`` = 1e-3);
* Adam's first moment after every synced step (``b1 * m_prev + (1 - b1) * grad``, the gradient without Adam's
  amplification), relative L2 error over each network <= ``MOMENT_RTOL`` = 1e-2 (a kink flip: ~1e-3);
* parameters, compared in mmagic's layout: the fraction of G's and of D's elements with
  ``|p_ours - p_mmagic| > PARAM_TOL * scale`` (``PARAM_TOL`` = 1e-5) at most ``FLIP_FRACTION`` = 1e-3 after every
  synced step (measured <= 1.5e-4) and at most ``FREE_FLIP_FRACTION`` = 1e-2 after the 3 free-running steps, where
  the flips of each step change the next ones (measured 3.8e-4 at 8 -> 32, 1.4e-3 at cat x8); the max over tensors
  of ``max|p_ours - p_mmagic| / scale`` is printed with the largest update. Each of these changes to our recipe
  fails the test: lr x 1.1, beta1 0.8, perceptual weight x 1.1, GAN weight 0, minibatch-stddev groups of 1;
* the weights really moved: max |p_after - p_before| over G and over D >= ``MOVED_FACTOR`` = 10 x ``PARAM_TOL``.

``pytest -s`` prints the per-step tables.
"""

from __future__ import annotations

import gc
import pickle
import time
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from convert import mmagic as convert_mmagic
from convert.to_mmagic import module_state
from glean_jax.data.loader import collate
from glean_jax.training import step as S
from glean_jax.training.config import base_config, validate_config
from tests.oracle import srgan as so
from tests.test_train_step import place

pytestmark = pytest.mark.oracle

STEPS = 3
BATCH = 2
LOSS_RTOL = 1e-5
FREE_LOSS_RTOL = 1e-3
MOMENT_RTOL = 1e-2
PARAM_TOL = 1e-5
FLIP_FRACTION = 1e-3
FREE_FLIP_FRACTION = 1e-2
MOVED_FACTOR = 10
LOSSES = ("loss_pix", "loss_perceptual", "loss_gan", "loss_g", "loss_d_real", "loss_d_fake", "loss_d")
NETS = ("generator", "discriminator")

# (in_size, out_size, num_rrdbs). The default run takes 8 -> 32 with 2 RRDBs (every layer type of GLEAN, D and the
# losses; mmagic's CPU reference ops make a step take ~5-15 s there, 3x that at 16 -> 64); `-m slow` adds the cat
# x8 geometry with its full 23-RRDB trunk.
GEOMETRIES = [
    pytest.param((8, 32, 2), id="8to32-2rrdb"),
    pytest.param((32, 256, 23), id="cat_x8", marks=pytest.mark.slow),
]


def parity_config(in_size: int, out_size: int, num_rrdbs: int, batch: int = BATCH):
    """Our config for mmagic's recipe at this geometry, single process: constant lr (mmagic's ``train_step`` does
    not step the scheduler), no flip, in-order data, D's minibatch-stddev over the whole batch."""
    c = base_config()
    c.model.in_size = c.data.in_size = in_size
    c.model.out_size = c.data.out_size = out_size
    c.model.num_rrdbs = num_rrdbs
    c.model.mbstd_per_shard = False
    c.model.mbstd_shards = 1
    c.pretrained.allow_random = True
    c.data.source = "synthetic"
    c.data.flip = False
    c.data.shuffle = False
    c.optim.schedule = "constant"
    c.batch_size = batch
    validate_config(c, check_files=False)
    return c


def fixed_batch(in_size: int, out_size: int, n: int = BATCH, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (lq, gt): blocky random GT with noise, and its box-downsampled LQ."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (n, out_size // 4, out_size // 4, 3))
    gt = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2) + rng.normal(0, 8, (n, out_size, out_size, 3))
    gt = np.clip(np.rint(gt), 0, 255).astype(np.uint8)
    f = out_size // in_size
    lq = gt.astype(np.float64).reshape(n, in_size, f, in_size, f, 3).mean(axis=(2, 4))
    return np.clip(np.rint(lq), 0, 255).astype(np.uint8), gt


def our_batch(lq: np.ndarray, gt: np.ndarray) -> dict:
    """The product's own collate (``DataPreprocessor`` normalisation)."""
    return collate([{"lq": a, "gt": b} for a, b in zip(lq, gt, strict=True)])


class OurSide:
    """Our jitted train step (one device) and the conversions between mmagic's weights / Adam states and ours."""

    def __init__(self, cfg, meta: dict, variables: dict, vgg: dict) -> None:
        self.meta = meta
        g, d = S.build_modules(cfg)
        trainable, bank_params = S.split_glean_params(variables["generator"]["params"])
        self.bank = {"params": bank_params, "buffers": variables["generator"]["buffers"][S.BANK]}
        _, self.fn, state, self.frozen = place(cfg, g, d, trainable, variables["discriminator"]["params"],
                                               {"bank": self.bank, "vgg": vgg}, jax.devices()[:1])
        self.shardings = jax.tree_util.tree_map(lambda x: x.sharding, state)
        self.count_dtype = state.g_opt.count.dtype
        self.rng = np.asarray(state.rng)
        self._initial = state   # used once (the step donates it); no host copy of the big arrays is kept

    def put(self, host_state):
        return jax.tree_util.tree_map(lambda x, s: jax.device_put(np.array(x), s), host_state, self.shardings)

    def initial(self):
        state, self._initial = self._initial, None
        return state

    def step(self, state, batch: dict):
        state, m = self.fn(state, self.frozen, batch)
        m = jax.device_get(m)
        assert int(m["skipped"]) == 0
        return state, {k: float(m[k]) for k in LOSSES}

    def _ours(self, net: str, sd: dict) -> dict:
        """A bare mmagic GLEAN / discriminator state_dict -> our trainable G params / D params."""
        _, variables, _ = convert_mmagic.convert_state(sd, f"mmagic {net}")
        if net == "generator":
            return S.split_glean_params(variables["generator"]["params"])[0]
        return variables["discriminator"]["params"]

    def state_from(self, snap: dict):
        """Our TrainState equal to an :func:`so.snapshot` (weights, Adam moments and step count)."""
        params, opts = {}, {}
        for net in NETS:
            adam = snap["adam"][net]
            params[net] = self._ours(net, snap[net])
            moments = []
            for key in ("exp_avg", "exp_avg_sq"):   # a parameter without torch state (no grad yet): zeros, as ours
                sd = {**snap[net], **{n: adam[key].get(n, np.zeros_like(snap[net][n])) for n in adam["trainable"]}}
                moments.append(self._ours(net, sd))
            opts[net] = optax.ScaleByAdamState(count=np.asarray(adam["step"], self.count_dtype), mu=moments[0],
                                               nu=moments[1])
        return self.put(S.TrainState(step=np.asarray(snap["adam"]["generator"]["step"], np.int32),
                                     g_params=params["generator"], g_opt=opts["generator"],
                                     d_params=params["discriminator"], d_opt=opts["discriminator"], g_scale=None,
                                     d_scale=None, rng=self.rng, bad_steps=np.zeros((), np.int32)))

    def mmagic_layout(self, g_params: dict, d_params: dict) -> dict[str, dict]:
        """Our G (trainable + bank) and D trees -> mmagic state_dicts of ``GLEANStyleGANv2`` / the discriminator."""
        g_vars = {"params": {**jax.device_get(g_params), S.BANK: self.bank["params"]},
                  "buffers": {S.BANK: self.bank["buffers"]}}
        return {"generator": module_state("glean", self.meta["generator"], g_vars),
                "discriminator": module_state("stylegan2_discriminator", self.meta["discriminator"],
                                              {"params": jax.device_get(d_params)})}

    def weights(self, state) -> dict[str, dict]:
        return self.mmagic_layout(state.g_params, state.d_params)

    def first_moments(self, state) -> dict[str, dict]:
        return self.mmagic_layout(state.g_opt.mu, state.d_opt.mu)


def param_report(ours: dict, ref: dict) -> dict:
    """Per tensor ``max|ours - ref| / scale``: the worst tensor, and the fraction of all elements beyond
    ``PARAM_TOL * scale``."""
    assert set(ours) == set(ref), sorted(set(ours) ^ set(ref))[:5]
    rel, over, total = {}, 0, 0
    for k, r in ref.items():
        scale = max(1.0, float(np.max(np.abs(r))))
        d = np.abs(ours[k] - r)   # float32: exact to 6e-8 relative, far below PARAM_TOL
        rel[k] = float(d.max()) / scale
        over += int(np.count_nonzero(d > PARAM_TOL * scale))
        total += d.size
    worst = max(rel, key=rel.get)
    return {"worst": worst, "max_rel": rel[worst], "fraction": over / total, "over": over, "total": total}


def max_update(after: dict, before: dict) -> float:
    """The largest change of any element between two state_dicts."""
    return max(float(np.max(np.abs(after[k] - before[k]))) for k in after)


def moment_error(ours: dict, ref: dict) -> float:
    """Relative L2 error of Adam's first moment over all of a network's tensors that have one."""
    num = sum(float(np.linalg.norm((ours[k] - r).ravel())) ** 2 for k, r in ref.items())
    den = sum(float(np.linalg.norm(r.ravel())) ** 2 for r in ref.values())
    return (num / den) ** 0.5


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def print_tables(c: dict) -> None:
    print(f"\n{c['title']}")
    print(f"{'step':>4} {'loss':<16} {'mmagic':>14} {'ours synced':>14} {'rel.diff':>9} {'ours free':>14} "
          f"{'rel.diff':>9}")
    for i in range(STEPS):
        ref, syn, free = c["ref"][i], c["synced"][i], c["free"][i]
        for k in LOSSES:
            print(f"{i + 1:>4} {k:<16} {ref[k]:>14.8g} {syn[k]:>14.8g} {_rel(syn[k], ref[k]):>9.2e} "
                  f"{free[k]:>14.8g} {_rel(free[k], ref[k]):>9.2e}")
    print(f"{'run':<10} {'net':<4} {'max|d|/scale (tensor)':<52} {'frac>1e-5':>9} {'max|update|':>11} "
          f"{'moment L2':>9}")
    rows = [(f"synced {i + 1}", c["synced_params"][i], c["moments"][i]) for i in range(STEPS)]
    rows.append((f"free {STEPS}", c["free_params"], None))
    for run, reports, moments in rows:
        for net in NETS:
            r = reports[net]
            m = f"{moments[net]:>9.2e}" if moments else f"{'':>9}"
            print(f"{run:<10} {net[0].upper():<4} {r['max_rel']:>9.2e} ({r['worst'][:38]:<38}) "
                  f"{r['fraction']:>9.2e} {r['max_update']:>11.2e} {m}")


def _dump(path: Path, obj: object) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)


def _load(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f)   # written by _dump in this run


def mmagic_phase(in_size: int, out_size: int, num_rrdbs: int, lq: np.ndarray, gt: np.ndarray, workdir: Path) -> dict:
    """mmagic's ``STEPS`` train steps. Writes ``workdir/snap_<k>.pkl`` = :func:`so.snapshot` before step k + 1
    (``snap_<STEPS>``: after the last); returns the initial weights converted to ours (``meta``, ``variables``,
    ``vgg``), mmagic's losses per step and its largest update per step and over all steps. The torch model is freed
    on return (the cat x8 geometry needs ~6 GB for mmagic and ~10 GB for ours)."""
    model = so.build_srgan(in_size, out_size, seed=in_size + out_size, num_rrdbs=num_rrdbs)
    optim = so.build_optim_wrappers(model)
    meta, variables, vgg = so.to_ours(so.state_numpy(model))
    out: dict = {"meta": meta, "variables": variables, "vgg": vgg, "ref": [], "update": []}
    snap = initial = so.snapshot(model, optim)
    t = time.perf_counter()
    for k in range(STEPS):
        _dump(workdir / f"snap_{k}.pkl", snap)
        before = snap
        out["ref"].append(so.train_steps(model, optim, [so.pack(lq, gt)])[0])
        snap = so.snapshot(model, optim)
        out["update"].append({net: max_update(snap[net], before[net]) for net in NETS})
        del before
    _dump(workdir / f"snap_{STEPS}.pkl", snap)
    out["total_update"] = {net: max_update(snap[net], initial[net]) for net in NETS}
    out["seconds"] = time.perf_counter() - t
    return out


def run_parity(in_size: int, out_size: int, num_rrdbs: int, workdir: Path, **overrides) -> dict:
    """mmagic's 3 steps, then ours free-running and synced (see the module docstring); ``overrides``
    (``"optim.lr": 1.1e-4``...) change our config only (to check that the criteria catch a wrong recipe)."""
    lq, gt = fixed_batch(in_size, out_size)
    t0 = time.perf_counter()
    mm = mmagic_phase(in_size, out_size, num_rrdbs, lq, gt, workdir)
    gc.collect()
    t1 = time.perf_counter()
    cfg = parity_config(in_size, out_size, num_rrdbs)
    for key, value in overrides.items():
        group, field = key.split(".")
        cfg[group][field] = value
    ours = OurSide(cfg, mm.pop("meta"), mm.pop("variables"), mm.pop("vgg"))
    batch = our_batch(lq, gt)
    c: dict = {"ref": mm["ref"], "synced": [], "synced_params": [], "moments": [], "free": []}

    def compare(state, k: int) -> None:   # ours after a step from mmagic's snap_k vs mmagic's snap_{k+1}
        ref = _load(workdir / f"snap_{k + 1}.pkl")
        after, moments = ours.weights(state), ours.first_moments(state)
        c["synced_params"].append({net: {**param_report(after[net], ref[net]), "max_update": mm["update"][k][net]}
                                   for net in NETS})
        c["moments"].append({net: moment_error(moments[net], ref["adam"][net]["exp_avg"]) for net in NETS})

    state = ours.initial()
    for k in range(STEPS):   # free-running; its first step is also the first synced step
        state, row = ours.step(state, batch)
        c["free"].append(row)
        if k == 0:
            c["synced"].append(row)
            compare(state, 0)
    ref = _load(workdir / f"snap_{STEPS}.pkl")
    final = ours.weights(state)
    c["free_params"] = {net: {**param_report(final[net], ref[net]), "max_update": mm["total_update"][net]}
                        for net in NETS}
    del state, ref, final
    for k in range(1, STEPS):   # synced: from mmagic's weights and Adam state before step k + 1
        state, row = ours.step(ours.state_from(_load(workdir / f"snap_{k}.pkl")), batch)
        c["synced"].append(row)
        compare(state, k)
        del state
    c["title"] = (f"SRGAN.train_step parity, GLEAN {in_size}->{out_size} ({num_rrdbs} RRDBs), batch {BATCH}, "
                  f"{STEPS} steps: mmagic {mm['seconds']:.0f} s (+{t1 - t0 - mm['seconds']:.0f} s build, convert, "
                  f"snapshots), ours {time.perf_counter() - t1:.0f} s ({2 * STEPS - 1} steps with compilation, "
                  "conversions)")
    print_tables(c)
    return c


@pytest.fixture(scope="module", params=GEOMETRIES)
def parity(request, module_tmp):
    return run_parity(*request.param, workdir=module_tmp("train_parity"))


def test_losses_match_every_step(parity):
    for i in range(STEPS):
        ref, syn, free = parity["ref"][i], parity["synced"][i], parity["free"][i]
        for k in LOSSES:
            assert _rel(syn[k], ref[k]) <= LOSS_RTOL, f"synced step {i + 1} {k}: ours {syn[k]!r} vs {ref[k]!r}"
            assert _rel(free[k], ref[k]) <= (LOSS_RTOL if i == 0 else FREE_LOSS_RTOL), (
                f"free-running step {i + 1} {k}: ours {free[k]!r} vs mmagic {ref[k]!r}")


def test_adam_first_moments_match(parity):
    for i, errors in enumerate(parity["moments"]):
        for net, err in errors.items():
            assert err <= MOMENT_RTOL, f"step {i + 1}: {net}'s Adam first moment off by {err:.3e} (relative L2)"


@pytest.mark.parametrize("net", NETS)
def test_parameters_match(parity, net):
    runs = [(f"synced step {i + 1}", r[net], FLIP_FRACTION) for i, r in enumerate(parity["synced_params"])]
    runs.append((f"free-running {STEPS} steps", parity["free_params"][net], FREE_FLIP_FRACTION))
    for run, r, limit in runs:
        assert r["fraction"] <= limit, (
            f"{run}: {r['over']} of {r['total']} {net} elements beyond {PARAM_TOL} x scale (worst {r['worst']}: "
            f"{r['max_rel']:.3e})")
        assert r["max_update"] >= MOVED_FACTOR * PARAM_TOL, f"{run}: {net} barely moved ({r['max_update']:.3e})"

"""GLEAN vs the real mmagic 1.2.0 ``GLEANStyleGANv2`` (oracle) for the four seed geometries, through our converter:
output and per-block activations (encoder, fusion, every bank layer, decoder, so a failure names its block), the
bfloat16 output against float32, and the mmagic -> glean-jax -> mmagic round trip (bit-identical, strict load).

Pass (float32, batch 2): on the output and on every block, max|ours - mmagic| <= ``PARITY_RTOL`` (3e-5) x that
tensor's own max|mmagic| (``tests/tolerances.py`` says why the scale is each tensor's own). The check's power is
itself tested: one wrong bias, a zeroed bias, a wrong scale or a transposed kernel must fail it at the right block.
"""

import math
import re
import time

import jax
import numpy as np
import pytest

from convert import mmagic as convert_mmagic
from convert.to_mmagic import module_state
from glean_jax import mmagic_reference as mo
from glean_jax.models.build import build_glean
from tests.tolerances import PARITY_RTOL, scaled_error

pytestmark = pytest.mark.oracle
BATCH = 2

# (in_size, out_size, num_rrdbs): cat x16, cat x8, ffhq x16, ffhq in128out1024. By default cat x8 runs with the full
# 23-RRDB trunk and cat x16 / ffhq x16 with 2 RRDBs (the same code path: the trunk repeats one block); `-m slow` runs
# them with 23, and the blind 128 -> 1024 geometry (its 2-RRDB case too: the default run's 15-minute budget).
GEOMETRIES = [
    pytest.param((16, 256, 2), id="16to256-2rrdb"),
    pytest.param((32, 256, 23), id="32to256"),
    pytest.param((64, 1024, 2), id="64to1024-2rrdb"),
    pytest.param((128, 1024, 2), id="128to1024-2rrdb", marks=pytest.mark.slow),
    pytest.param((16, 256, 23), id="16to256", marks=pytest.mark.slow),
    pytest.param((64, 1024, 23), id="64to1024", marks=pytest.mark.slow),
    pytest.param((128, 1024, 23), id="128to1024", marks=pytest.mark.slow),
]


def psnr_pm1(a, b) -> float:
    return 10 * math.log10(4.0 / float(np.mean((np.asarray(a, np.float64) - b) ** 2)))


def block_paths(in_size: int, out_size: int) -> list[tuple[str, ...]]:
    """Our module paths of every block compared, in data-flow order."""
    n_enc = int(math.log2(in_size)) - 1                      # stride-2 blocks + the 4x4 block
    n_up = int(math.log2(out_size)) - 2
    paths = [("encoder_0_0",), ("encoder_0_1",)]
    for k in range(1, n_enc):
        paths += [(f"encoder_{k}_0",), (f"encoder_{k}_2",)]
    paths += [(f"encoder_{n_enc}_0",), (f"encoder_{n_enc}_3",), ("generator", "conv1")]
    for k in range(n_up):
        if 4 * 2 ** k <= in_size:
            paths.append((f"fusion_out_{k}",))
        paths += [("generator", f"convs_{2 * k}"), ("generator", f"convs_{2 * k + 1}")]
    n_dec = int(math.log2(out_size // in_size))
    paths += [(f"decoder_{i}",) for i in range(n_dec)] + [(f"decoder_{n_dec}_0",), (f"decoder_{n_dec}_2",)]
    return paths


def torch_name(path: tuple[str, ...]) -> str:
    return re.sub(r"_(\d+)", r".\1", ".".join(path))


@pytest.fixture(scope="module", params=GEOMETRIES)
def glean_case(request):
    in_size, out_size, num_rrdbs = request.param
    torch = mo.load().torch
    t0 = time.perf_counter()
    model = mo.build_glean(in_size, out_size, seed=in_size + out_size, num_rrdbs=num_rrdbs)
    state = mo.state_dict_numpy(model)
    meta, variables, _ = convert_mmagic.convert_state(state, f"glean{in_size}to{out_size}")
    arch = meta["generator"]
    assert (arch["in_size"], arch["out_size"], arch["num_rrdbs"]) == (in_size, out_size, num_rrdbs)
    paths = block_paths(in_size, out_size)
    modules = dict(model.named_modules())
    torch_feats = {}
    hooks = [modules[torch_name(p)].register_forward_hook(
        lambda mod, inp, out, p=p: torch_feats.__setitem__(p, mo.to_nhwc(out) if out.ndim == 4 else out.numpy()))
        for p in paths]
    x = np.random.RandomState(in_size).uniform(-1, 1, (BATCH, in_size, in_size, 3)).astype(np.float32)
    t1 = time.perf_counter()
    with torch.no_grad():
        ref = mo.to_nhwc(model(mo.to_nchw(x)))
    t2 = time.perf_counter()
    for h in hooks:
        h.remove()
    wanted = set(paths)
    glean = build_glean(arch)
    forward = jax.jit(lambda v, x: glean.apply(
        v, x, capture_intermediates=lambda mdl, method: method == "__call__" and tuple(mdl.path) in wanted,
        mutable=["intermediates"]))
    out, ours = run_blocks(forward, variables["generator"], x, paths)
    t3 = time.perf_counter()
    print(f"\nGLEAN {in_size}->{out_size} ({num_rrdbs} RRDBs), batch {BATCH}: build+convert {t1 - t0:.1f}s, "
          f"torch fwd {t2 - t1:.1f}s, jax compile+fwd {t3 - t2:.1f}s")
    return dict(model=model, state=state, arch=arch, variables=variables, x=x, ref=ref, out=out,
                torch_feats=torch_feats, ours=ours, paths=paths, forward=forward)


def run_blocks(forward, variables: dict, x: np.ndarray, paths: list) -> tuple[np.ndarray, dict]:
    """Our output and every compared block's output."""
    out, inter = forward(variables, x)
    ours = {}
    for p in paths:
        node = inter["intermediates"]
        for name in p:
            node = node[name]
        ours[p] = np.asarray(node["__call__"][0])
    return np.asarray(out), ours


def block_errors(ours: dict, torch_feats: dict, paths: list) -> dict[str, float]:
    """``scaled_error`` of every block, in data-flow order, keyed by mmagic's module name."""
    return {torch_name(p): scaled_error(ours[p], torch_feats[p]) for p in paths}


def failing(errs: dict[str, float]) -> list[tuple[str, float]]:
    return [(k, v) for k, v in errs.items() if v > PARITY_RTOL]


def test_output(glean_case):
    c = glean_case
    err = scaled_error(c["out"], c["ref"])
    print(f"output max|d| / max|ref| = {err:.3g} (max|ref| {np.abs(c['ref']).max():.3f}, std {c['ref'].std():.3f})")
    assert err <= PARITY_RTOL


def test_every_block(glean_case):
    c = glean_case
    errs = block_errors(c["ours"], c["torch_feats"], c["paths"])
    worst = max(errs, key=errs.get)
    print(f"{len(errs)} blocks, worst max|d| / max|ref|: {worst} {errs[worst]:.3g}")
    bad = failing(errs)
    assert not bad, f"first block off: {bad[0][0]} max|d| / max|ref| = {bad[0][1]:.3g} (all failing: {bad})"


# (parameter path in our tree, mutation, what it stands for, the mmagic block where the check must first fail)
MUTATIONS = [
    (("decoder_0", "upsample_conv", "bias"), lambda a: a * 1.01, "a decoder bias off by 1 %", "decoder.0"),
    (("encoder_0_1", "bias"), lambda a: a * 0.0, "a missing bias", "encoder.0.1"),
    (("generator", "convs_2", "noise_weight"), lambda a: a * 1.01, "a bank noise scale off by 1 %",
     "generator.convs.2"),
    (("encoder_1_0", "weight"), lambda a: np.swapaxes(a, 0, 1), "a transposed kernel", "encoder.1.0"),
]


# every geometry, the 64 -> 1024 one in the slow set here (90 s: the mutated forwards at 1024^2)
MUTATION_GEOMETRIES = [pytest.param(*p.values, id=p.id, marks=[*p.marks, pytest.mark.slow])
                       if p.id == "64to1024-2rrdb" else p for p in GEOMETRIES]


@pytest.mark.parametrize("glean_case", MUTATION_GEOMETRIES, indirect=True)
def test_mutations_are_caught(glean_case):
    """The block check fails, at the mutated block first, for each mistake a converter could make."""
    c = glean_case
    for path, mutate, what, block in MUTATIONS:
        variables = jax.tree_util.tree_map(np.asarray, c["variables"]["generator"])
        node = variables["params"]
        for name in path[:-1]:
            node = node[name]
        node[path[-1]] = np.asarray(mutate(node[path[-1]]), np.float32)
        _, ours = run_blocks(c["forward"], variables, c["x"], c["paths"])
        bad = failing(block_errors(ours, c["torch_feats"], c["paths"]))
        print(f"{what} ({'/'.join(path)}): first failing block {bad[0] if bad else None}")
        assert bad and bad[0][0] == block, f"{what} at {'/'.join(path)}: first failing block {bad[:1]}, " \
                                           f"expected {block}"


def test_bfloat16_psnr(glean_case):
    c = glean_case
    out = np.asarray(jax.jit(build_glean(c["arch"], "bfloat16").apply)(c["variables"]["generator"], c["x"]))
    p = psnr_pm1(out, c["ref"])
    print(f"bfloat16 vs float32 output: PSNR {p:.1f} dB (goal >= 40)")
    assert p >= 38.0


def test_round_trip_bit_identical(glean_case):
    c = glean_case
    torch = mo.load().torch
    back = module_state("glean", c["arch"], c["variables"]["generator"])
    assert set(back) == set(c["state"])
    for k, v in c["state"].items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and np.array_equal(back[k], v), k
    result = c["model"].load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)
    assert not result.missing_keys and not result.unexpected_keys

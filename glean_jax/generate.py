"""Sample a picture grid from a converted StyleGAN2 latent bank.

    python -m glean_jax.generate --model stylegan2_ffhq1024 | --checkpoint DIR [--seeds 0-15 | --z Z.npy
        | --w-plus W.npy] [--truncation T]
        [--truncation-samples 4096] [--noise fixed|random] [--noise-seed S] [--batch-size N]
        [--dtype float32|bfloat16] --out grid.png [--save-raw OUT.npy] [--nrow K]

The first look at whether a converted FFHQ or cat bank makes faces or cats. ``DIR`` is a model directory written by
``python -m convert.mmagic`` from a StyleGAN2 checkpoint (kind ``stylegan2`` with a generator) or from a GLEAN
checkpoint (kind ``glean``: its frozen ``bank`` is sampled).

Equal to mmagic ``StyleGAN2Generator.forward``: ``--seeds`` gives z_i = ``np.random.RandomState(seed).randn(1,
style_channels)`` (the official StyleGAN2 scripts' convention); ``--z`` is an (N, C) z array; ``--w-plus`` an
(N, num_latents, C) or (N, C) array of W latents (``input_is_latent=True``). ``--truncation T`` < 1 moves every W
toward the mean W of ``--truncation-samples`` z, with the model's own ``StyleGAN2Generator.mean_latent`` (z =
``jax.random.normal(jax.random.key(0), (N, C))``) and ``truncate`` (mmagic's ``truncation_latent + T * (w -
truncation_latent)``; T = 1 is no truncation, as in mmagic). ``--noise fixed`` uses the stored noise buffers (mmagic
``randomize_noise=False``); ``random`` draws fresh noise per batch from ``--noise-seed``. The grid PNG is
``x * 127.5 + 127.5``, clipped, rounded; ``--save-raw`` writes the float32 output (N, H, W, 3), RGB, in [-1, 1],
before any clipping.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from glean_jax import zoo
from glean_jax.arch import num_latents as arch_num_latents
from glean_jax.errors import UserError, cli_entry
from glean_jax.images import check_output_file

MAX_SEED = 2 ** 32 - 1  # np.random.RandomState accepts seeds in [0, 2**32)
MAX_IMAGES = 100_000


def parse_seeds(spec: str) -> list[int]:
    """``"0-15"``, ``"1,4,9"``, ``"3"`` or a mix (``"0-3,8"``) -> the list of seeds, in order."""
    seeds: list[int] = []
    text = spec.strip()
    if not text:
        raise UserError("--seeds '': empty; expected e.g. 0-15, 1,4,9 or 3")
    for part in text.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise UserError(f"--seeds {spec!r}: {part!r} is not a seed or a range; expected non-negative integers "
                            "like 0-15, 1,4,9 or 3") from None
        if a < 0 or b > MAX_SEED:
            raise UserError(f"--seeds {spec!r}: seeds must be in 0..{MAX_SEED}")
        if b < a:
            raise UserError(f"--seeds {spec!r}: range {part!r} is empty; expected START-END with START <= END")
        if len(seeds) + b - a + 1 > MAX_IMAGES:
            raise UserError(f"--seeds {spec!r}: more than {MAX_IMAGES} images")
        seeds.extend(range(a, b + 1))
    return seeds


def seed_latents(seeds: Sequence[int], style_channels: int) -> np.ndarray:
    """z for each seed: ``np.random.RandomState(seed).randn(1, style_channels)`` stacked, float32 (N, C)."""
    return np.concatenate([np.random.RandomState(s).randn(1, style_channels) for s in seeds]).astype(np.float32)


def load_latent_file(path: str, flag: str, style_channels: int, num_latents: int | None) -> np.ndarray:
    """Reads an ``.npy`` latent array and checks it: (N, C) for z (``num_latents`` None), (N, L, C) or (N, C) for W."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{flag} {p}: no such file")
    with open(p, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY" and magic[:2] != b"PK":   # (PK: an .npz archive, reported below)
        raise UserError(f"{flag} {p}: not a .npy file (no NumPy header); expected a float array saved with np.save")
    try:
        arr = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{flag} {p}: not a readable .npy array ({msg}); expected a float array saved with np.save"
                        ) from e
    if not isinstance(arr, np.ndarray):  # an .npz archive
        if hasattr(arr, "close"):
            arr.close()
        raise UserError(f"{flag} {p}: is an .npz archive; expected a single array saved with np.save (.npy)")
    if arr.dtype.kind not in "fiu":
        raise UserError(f"{flag} {p}: has dtype {arr.dtype}; expected a real floating-point array")
    c = style_channels
    if num_latents is None:
        ok, want = arr.ndim == 2 and arr.shape[1] == c, f"(N, {c})"
    else:
        ok = (arr.ndim == 2 and arr.shape[1] == c) or (arr.ndim == 3 and arr.shape[1:] == (num_latents, c))
        want = f"(N, {num_latents}, {c}) or (N, {c})"
    if not ok or arr.shape[0] < 1:
        raise UserError(f"{flag} {p}: has shape {arr.shape}; expected {want} with N >= 1 for this bank")
    if arr.shape[0] > MAX_IMAGES:
        raise UserError(f"{flag} {p}: holds {arr.shape[0]} latents; expected at most {MAX_IMAGES}")
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        bad = int(arr.size - np.isfinite(arr).sum())
        raise UserError(f"{flag} {p}: holds {bad} non-finite value(s) (NaN/Inf); expected finite latents")
    return arr


def bank_arch(ckpt_dir: str | os.PathLike) -> dict:
    """The bank architecture from ``model.json`` alone (no variables read): a StyleGAN2 generator or a GLEAN bank."""
    from glean_jax.checkpoint import load_meta

    meta = load_meta(ckpt_dir)
    kind, gen = meta.get("kind"), meta.get("generator") or {}
    if kind == "stylegan2":
        if gen.get("kind") != "stylegan2_generator":
            raise UserError(f"{ckpt_dir}: StyleGAN2 checkpoint holds no generator (only a discriminator); expected "
                            "a checkpoint converted from a StyleGAN2 generator or model checkpoint")
        return {k: v for k, v in gen.items() if k != "kind"}
    if kind == "glean" and gen.get("kind") == "glean":
        from glean_jax.arch import GleanArch

        return GleanArch.from_dict(gen, f"{ckpt_dir}/model.json generator").bank()
    raise UserError(f"{ckpt_dir}: holds a {kind!r} model; expected a 'stylegan2' (with a generator) or 'glean' "
                    "checkpoint written by `python -m convert.mmagic`")


def load_bank(ckpt_dir: str | os.PathLike) -> tuple[dict, dict]:
    """(arch, variables) of the StyleGAN2 generator in a model directory (a StyleGAN2 bank or a GLEAN's bank)."""
    from glean_jax.checkpoint import load_model

    arch = bank_arch(ckpt_dir)   # validates the description before the (slower) variable restore
    meta, variables = load_model(ckpt_dir)
    if meta["kind"] == "stylegan2":
        _check_bank(ckpt_dir, arch, variables.get("generator") or {})
        return arch, variables["generator"]
    try:
        v = variables["generator"]
        bank = {"params": v["params"]["bank"], "buffers": v["buffers"]["bank"]}
    except KeyError as e:
        raise UserError(f"{ckpt_dir}: GLEAN checkpoint has no latent bank variables ({e}); expected "
                        "generator/params/bank and generator/buffers/bank") from None
    _check_bank(ckpt_dir, arch, bank)
    return arch, bank


def _check_bank(ckpt_dir: str | os.PathLike, arch: dict, bank: dict) -> None:
    """Every array of the bank present with the shape ``arch`` implies (a clear error instead of a flax one)."""
    from glean_jax.checkpoint import check_variables
    from glean_jax.models.build import build_generator, variable_shapes

    expected = variable_shapes("stylegan2_generator", build_generator(arch))
    check_variables(bank, expected, str(ckpt_dir), f"a StyleGAN2 generator {arch['out_size']}x{arch['out_size']} "
                    f"with {arch.get('style_channels', 512)} style channels as model.json describes it")


_COMPILED: dict = {}   # (arch, dtype, what, shape, noise) -> compiled function, reused within a process


def _compiled(arch: dict, dtype: str, what: str, variables: dict, x: np.ndarray, noise: str = "fixed"):
    """The compiled bank function for one batch shape, and its compile time in s (0 when cached).

    ``what`` = 'mapping': ``(variables, z) -> W`` (mmagic ``style_mapping``); 'synthesis': ``(variables, W+, key) ->
    images`` (mmagic's forward after the latents are formed). Every input kind (z, W, W+, truncated or not) runs
    the same synthesis executable, so a session compiles it once per batch shape, dtype and noise mode.
    """
    import jax

    from glean_jax import runtime
    from glean_jax.models.build import build_generator

    key = (tuple(sorted(arch.items())), dtype, what, x.shape, noise)
    if key in _COMPILED:
        return _COMPILED[key], 0.0
    g = build_generator(arch, dtype)
    t0 = time.perf_counter()
    if what == "mapping":
        fn = runtime.jit(lambda v, z: g.apply(v, z, method=lambda m, z: m.mapping(z))).lower(variables, x).compile()
    else:
        fn = runtime.jit(lambda v, w, rng: g.apply(v, w, noise, method="synthesis", rngs={"noise": rng})).lower(
            variables, x, jax.random.key(0)).compile()
    _COMPILED[key] = fn
    return fn, time.perf_counter() - t0


def mean_w(arch: dict, variables: dict, num_samples: int, seed: int = 0) -> np.ndarray:
    """The bank's mean W (1, C): :meth:`StyleGAN2Generator.mean_latent` over ``num_samples`` z =
    ``jax.random.normal(jax.random.key(seed), (num_samples, C))``."""
    import jax

    from glean_jax import runtime
    from glean_jax.models.build import build_generator

    g = build_generator(arch, "float32")
    z = jax.random.normal(jax.random.key(seed), (num_samples, int(arch["style_channels"])), jax.numpy.float32)
    return np.asarray(runtime.jit(lambda v, z: g.apply(v, z, method="mean_latent"))(variables, z), np.float32)


def generate(arch: dict, variables: dict, latents: np.ndarray, *, input_is_latent: bool = False,
             truncation: float = 1.0, truncation_samples: int = 4096, noise: str = "fixed", noise_seed: int = 0,
             batch_size: int = 8, dtype: str = "float32", progress: bool = True) -> tuple[np.ndarray, dict]:
    """Runs the bank on ``latents`` in batches; returns (float32 (N, H, W, 3) raw output, wall times in s)."""
    import jax
    from tqdm import tqdm

    from glean_jax.models.stylegan2 import truncate

    times = {"compile": 0.0, "generate": 0.0, "mean_latent": 0.0}
    mean = None
    if truncation < 1:
        t0 = time.perf_counter()
        mean = mean_w(arch, variables, truncation_samples)
        times["mean_latent"] = time.perf_counter() - t0
    n = latents.shape[0]
    bs = min(batch_size, n)
    variables = jax.device_put(variables)
    outs = []
    base = jax.random.key(noise_seed)
    num_latents = arch_num_latents(int(arch["out_size"]))
    with tqdm(total=n, desc="generate", unit="img", disable=not progress, file=sys.stderr) as bar:
        for i, start in enumerate(range(0, n, bs)):
            batch = latents[start:start + bs]
            real = batch.shape[0]
            if real < bs:  # pad the last batch: one compiled shape for all batches
                batch = np.concatenate([batch, np.repeat(batch[-1:], bs - real, axis=0)])
            t0 = time.perf_counter()
            if input_is_latent:
                w = batch
            else:
                fn, ct = _compiled(arch, dtype, "mapping", variables, batch)
                times["compile"] += ct
                t0 += ct
                w = np.asarray(fn(variables, batch), np.float32)
            if mean is not None:
                w = np.asarray(truncate(w, mean, truncation), np.float32)
            if w.ndim == 2:        # mmagic: a single W is repeated for every layer
                w = np.repeat(w[:, None], num_latents, axis=1)
            fn, ct = _compiled(arch, dtype, "synthesis", variables, w, noise)
            times["compile"] += ct
            t0 += ct
            out = np.asarray(fn(variables, w, jax.random.fold_in(base, i)), np.float32)[:real]
            times["generate"] += time.perf_counter() - t0
            outs.append(out)
            bar.update(real)
    return np.concatenate(outs), times


def main(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m glean_jax.generate", description=__doc__.split("\n\n")[1])
    zoo.add_model_arguments(ap, "the StyleGAN2 bank to sample (a StyleGAN2 or GLEAN model)")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--seeds", default=None, help="seeds: 0-15 (default), 1,4,9 or 3")
    src.add_argument("--z", default=None, help="(N, style_channels) .npy array of z latents")
    src.add_argument("--w-plus", default=None, help="(N, num_latents, C) or (N, C) .npy array of W latents")
    ap.add_argument("--truncation", type=float, default=1.0, help="truncation psi in [0, 1] (1 = none)")
    ap.add_argument("--truncation-samples", type=int, default=4096, help="z samples for the mean W")
    ap.add_argument("--noise", choices=("fixed", "random"), default="fixed",
                    help="fixed: the stored noise buffers (default); random: fresh noise from --noise-seed")
    ap.add_argument("--noise-seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--out", required=True, help="output grid .png")
    ap.add_argument("--save-raw", default=None, help="also write the raw float32 (N, H, W, 3) output as .npy")
    ap.add_argument("--nrow", type=int, default=None, help="images per grid row (default: about sqrt(N))")
    args = ap.parse_args(argv)

    # Argument checks first: nothing is loaded or written before they pass.
    if not (0.0 <= args.truncation <= 1.0) or math.isnan(args.truncation):
        raise UserError(f"--truncation {args.truncation}: expected a value in [0, 1] (1 = no truncation)")
    if args.truncation_samples < 1:
        raise UserError(f"--truncation-samples {args.truncation_samples}: expected a positive integer")
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: expected a positive integer")
    if args.nrow is not None and args.nrow < 1:
        raise UserError(f"--nrow {args.nrow}: expected a positive integer")
    if not 0 <= args.noise_seed <= MAX_SEED:
        raise UserError(f"--noise-seed {args.noise_seed}: expected an integer in 0..{MAX_SEED}")
    seeds = parse_seeds(args.seeds if args.seeds is not None else "0-15") \
        if args.z is None and args.w_plus is None else None
    out = check_output_file(args.out, "--out", ".png")
    raw = check_output_file(args.save_raw, "--save-raw", ".npy") if args.save_raw else None
    if raw is not None and raw.resolve() == out.resolve():
        raise UserError(f"--save-raw {raw}: same file as --out")
    from glean_jax import runtime

    with runtime.compilation_cache(zoo.compile_cache_dir(args)):
        return _generate(args, seeds, out, raw)


def _generate(args: argparse.Namespace, seeds: list[int] | None, out: Path, raw: Path | None) -> int:
    args.checkpoint = zoo.model_from_arguments(args)
    arch = bank_arch(args.checkpoint)   # latents are checked before the (slower) variable restore
    c = int(arch["style_channels"])
    num_latents = arch_num_latents(int(arch["out_size"]))
    if seeds is not None:
        latents, is_latent = seed_latents(seeds, c), False
    elif args.z is not None:
        latents, is_latent = load_latent_file(args.z, "--z", c, None), False
    else:
        latents, is_latent = load_latent_file(args.w_plus, "--w-plus", c, num_latents), True
    t0 = time.perf_counter()
    arch, variables = load_bank(args.checkpoint)
    t_load = time.perf_counter() - t0

    images, times = generate(arch, variables, latents, input_is_latent=is_latent, truncation=args.truncation,
                             truncation_samples=args.truncation_samples, noise=args.noise,
                             noise_seed=args.noise_seed, batch_size=args.batch_size, dtype=args.dtype)

    from glean_jax.images import make_grid, to_uint8, write_npy, write_png

    grid = make_grid(to_uint8(images), nrow=args.nrow)
    raw_existed = raw is not None and raw.exists()
    if raw is not None:
        write_npy(raw, images)
    try:
        write_png(out, grid)
    except BaseException:
        if raw is not None and not raw_existed:  # no partial output: the pair is written together or not at all
            raw.unlink(missing_ok=True)
        raise
    n, size = images.shape[0], images.shape[1]
    print(f"wrote {out} ({n} images {size}x{size}, grid {grid.shape[1]}x{grid.shape[0]})"
          + (f" and {raw}" if raw is not None else ""))
    print(f"times: load {t_load:.2f} s, compile {times['compile']:.2f} s, generate {times['generate']:.2f} s"
          + (f", mean latent {times['mean_latent']:.2f} s" if args.truncation < 1 else "")
          + f" ({n / max(times['generate'], 1e-9):.2f} img/s, batch {min(args.batch_size, n)}, {args.dtype})")
    return 0


if __name__ == "__main__":
    cli_entry(main)

"""``python -m glean_jax.export``: a GLEAN as an ONNX model or a StableHLO program, equal to the JAX model.

::

    python -m glean_jax.export (--model NAME | --checkpoint DIR) --format onnx|stablehlo --batch-size N
        [--dtype float32|bfloat16|float16] [--platforms cpu[,cuda,...]] --output FILE

Both take float32 NHWC input (N, in, in, 3) in [-1, 1] (mmagic's ``(x - 127.5) / 127.5``, RGB) and give the raw
float32 model output (N, out, out, 3); ``--dtype`` is the compute dtype inside (as ``upscale --dtype``). The batch
size is fixed at export.

* ``stablehlo``: the jitted program of ``GLEAN.apply``, exported with ``jax.export`` for ``--platforms`` (default
  cpu), with the weights as an **argument**, not baked in: one uncompressed ``.npz`` (zip) holding ``stablehlo`` (the
  ``Exported.serialize()`` bytes), ``meta`` (JSON) and the float32 weights ``w0000``, ``w0001``, ... in the order the
  program takes them. Baking them in would make the program itself hold ~0.6 GB of MLIR constants, which XLA then
  constant-folds at every load (16->64 GLEAN: 48 s instead of 16 s to compile) and which moves the result by ~1e-7;
  as an argument the program is ~100 kB, its compiled code is the one ``jax.jit`` makes (bit-identical output) and
  the loader is still a few lines of jax + numpy: :mod:`glean_jax.stablehlo_runner` (no flax, no model code).
* ``onnx``: converted by ``jax2onnx`` (``pip install --no-deps -r requirements/export.txt``), weights as ONNX
  initializers (ONNX's own convention; one file, < 2 GB for every GLEAN), opset 23. Input ``lq``, output ``hr``.

``lax.platform_dependent`` (the conv's CPU-only matrix-product form of narrow convs, glean_jax.models.conv) is resolved
for ONNX by :func:`resolve_platform_dependent`, an argument of the conversion only: the traced program is replayed with
each ``platform_index`` taken as its ``default`` branch (the plain convolution, the same values), so the model code
is unchanged. ``jax.export`` handles it itself, per platform.

Every problem is one line (exit code 2) before anything is written, and the file appears by one rename (no partial
file). ``bfloat16`` is refused for ONNX: jax2onnx would write bfloat16 convolutions, which onnxruntime's CPU provider
cannot run (no kernel), so the file could not even be checked; ``float16`` it runs (measured in tests/test_export.py).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glean_jax import zoo
from glean_jax.checkpoint import glean_geometry
from glean_jax.errors import UserError, cli_entry, positive_int
from glean_jax.images import check_output_file

FORMATS = ("onnx", "stablehlo")
DTYPES = ("float32", "bfloat16", "float16")
ONNX_DTYPES = ("float32", "float16")
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
CONTAINER_FORMAT = "glean-jax-stablehlo"
CONTAINER_VERSION = 1
ONNX_INSTALL = "pip install --no-deps -r requirements/export.txt"
ONNX_OPSET = 23


# ------------------------------------------------------------------------------ platform_dependent, resolved statically
def _subjaxprs(params: dict) -> list:
    from jax.extend import core as jc

    out = []
    for v in params.values():
        for item in v if isinstance(v, tuple | list) else (v,):
            if isinstance(item, jc.ClosedJaxpr):
                out.append(item)
            elif isinstance(item, jc.Jaxpr):
                out.append(jc.ClosedJaxpr(item, ()))
    return out


def _uses_platform(jaxpr: Any) -> bool:
    return any(e.primitive.name == "platform_index" or any(_uses_platform(j.jaxpr) for j in _subjaxprs(e.params))
               for e in jaxpr.eqns)


_INLINE = ("custom_vjp_call", "custom_jvp_call", "jit", "pjit", "closed_call", "core_call", "remat", "checkpoint")


def _eval(jaxpr: Any, consts: Sequence[Any], args: Sequence[Any]) -> list:
    """``jax.core.eval_jaxpr`` that takes every ``lax.platform_dependent`` as its ``default`` branch (inlined; the
    calls around it are inlined too, custom VJPs dropped: the result is for a forward-only conversion)."""
    from jax.extend import core as jc

    env: dict = {}
    chosen: dict = {}   # var of a platform_index -> the branch index taken

    def read(v: Any) -> Any:
        return v.val if isinstance(v, jc.Literal) else env[v]

    env.update(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "platform_index":
            platforms = eqn.params["platforms"]
            if None not in platforms:
                raise NotImplementedError(f"lax.platform_dependent for {platforms} only, without a default branch")
            chosen[eqn.outvars[0]] = platforms.index(None)
            env[eqn.outvars[0]] = np.int32(platforms.index(None))
            continue
        invals = [read(v) for v in eqn.invars]
        subs = _subjaxprs(eqn.params)
        if name == "cond" and isinstance(eqn.invars[0], jc.Var) and eqn.invars[0] in chosen:
            branch = eqn.params["branches"][chosen[eqn.invars[0]]]
            outs = _eval(branch.jaxpr, branch.consts, invals[1:])
        elif not any(_uses_platform(j.jaxpr) for j in subs):
            with eqn.ctx.manager:   # as jax.core.eval_jaxpr (jax 0.10: the params carry the sub-functions)
                outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
            outs = outs if eqn.primitive.multiple_results else [outs]
        elif name in _INLINE and len(subs) >= 1:
            inner = eqn.params.get("call_jaxpr", eqn.params.get("jaxpr"))
            inner = inner if isinstance(inner, jc.ClosedJaxpr) else jc.ClosedJaxpr(inner, ())
            outs = _eval(inner.jaxpr, inner.consts, invals)
        elif name == "scan":
            outs = _eval_scan(eqn.params, invals)
        else:
            raise NotImplementedError(f"lax.platform_dependent inside a {name!r} cannot be resolved for conversion")
        env.update(zip(eqn.outvars, outs, strict=True))
    return [read(v) for v in jaxpr.outvars]


def _eval_scan(params: dict, invals: list) -> list:
    """A ``scan`` whose body uses ``platform_dependent``: traced again with the body resolved by :func:`_eval`."""
    from jax import lax

    body, nc, nk = params["jaxpr"], params["num_consts"], params["num_carry"]
    consts, init, xs = invals[:nc], invals[nc:nc + nk], invals[nc + nk:]

    def step(carry: list, x: list) -> tuple[list, list]:
        outs = _eval(body.jaxpr, body.consts, [*consts, *carry, *x])
        return outs[:nk], outs[nk:]

    carry, ys = lax.scan(step, list(init), list(xs), length=params["length"], reverse=params["reverse"],
                         unroll=params["unroll"])
    return [*carry, *ys]


def resolve_platform_dependent(fn: Callable[..., Any], *example: Any) -> Callable[..., Any]:
    """``fn`` traced at ``example`` (arrays or ShapeDtypeStructs), as a function whose program has no
    ``platform_index``: each ``lax.platform_dependent`` is its ``default`` branch (for a converter whose target is
    no JAX platform, e.g. ONNX). Single output."""
    import jax

    closed = jax.make_jaxpr(fn)(*example)
    return lambda *args: _eval(closed.jaxpr, closed.consts, args)[0]


# ------------------------------------------------------------------------------------------------------------ exports
def load_glean(ckpt: str | os.PathLike, dtype: str = "float32") -> tuple[Any, Any, dict]:
    """(Flax module in ``dtype``, float32 variables, architecture dict) of a GLEAN model directory; one line for
    anything else (a StyleGAN2 directory, damaged weights)."""
    from glean_jax.inference import SRModel

    glean_geometry(ckpt)   # fast: model.json only
    m = SRModel(ckpt, dtype)
    return m.module, m.variables, dict(m.arch)


def export_stablehlo(module: Any, variables: Any, batch: int, platforms: Sequence[str] = ("cpu",)
                     ) -> tuple[bytes, list[np.ndarray]]:
    """(serialized ``jax.export.Exported`` of ``(weights, lq) -> hr``, the weights it takes in that order)."""
    import jax
    import jax.numpy as jnp

    from glean_jax import runtime

    leaves, treedef = jax.tree_util.tree_flatten(variables)
    leaves = [np.asarray(a, np.float32) for a in leaves]

    def fn(weights: list, lq: jax.Array) -> jax.Array:
        return module.apply(jax.tree_util.tree_unflatten(treedef, weights), lq)

    spec = jax.ShapeDtypeStruct((batch, module.in_size, module.in_size, 3), jnp.float32)
    wspec = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in leaves]
    exp = jax.export.export(runtime.jit(fn), platforms=tuple(platforms))(wspec, spec)
    return exp.serialize(), leaves


def export_onnx(module: Any, variables: Any, batch: int) -> Any:
    """The ONNX ModelProto of ``lq -> hr`` (weights as initializers), converted by jax2onnx."""
    try:
        import logging

        logging.getLogger("jax2onnx").setLevel(logging.ERROR)   # it reports every optional plugin it skips
        from jax2onnx import to_onnx
    except ImportError as e:
        raise UserError(f"--format onnx needs jax2onnx and onnx ({e.name or e} is not installed): "
                        f"{ONNX_INSTALL}") from None
    import jax
    import jax.numpy as jnp

    spec = jax.ShapeDtypeStruct((batch, module.in_size, module.in_size, 3), jnp.float32)
    variables = jax.tree_util.tree_map(np.asarray, variables)
    fn = resolve_platform_dependent(lambda lq: module.apply(variables, lq), spec)
    return to_onnx(fn, [spec], model_name="glean", opset=ONNX_OPSET, input_names=["lq"], output_names=["hr"])


def write_atomic(path: str | os.PathLike, write: Callable[[Any], None]) -> None:
    """``write(f)`` into a temporary file beside ``path``, renamed to ``path`` when complete (as
    :func:`glean_jax.images.atomic_write_bytes`, for outputs too large to hold twice in memory)."""
    from glean_jax.images import atomic_write

    path = Path(path)
    try:
        atomic_write(path, write)
    except OSError as e:
        raise UserError(f"--output {path}: cannot write ({e.strerror or e})") from e


def write_stablehlo(path: str | os.PathLike, blob: bytes, weights: Sequence[np.ndarray], meta: dict) -> None:
    """The container (module docstring): an uncompressed .npz of ``stablehlo``, ``meta`` and ``w0000``..."""
    arrays = {"stablehlo": np.frombuffer(blob, np.uint8),
              "meta": np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)}
    arrays.update({f"w{i:04d}": w for i, w in enumerate(weights)})
    write_atomic(path, lambda f: np.savez(f, **arrays))


# ---------------------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m glean_jax.export",
                                description="Export a GLEAN as ONNX or StableHLO (float32 in, float32 out).")
    zoo.add_model_arguments(p, "the GLEAN to export")
    p.add_argument("--format", required=True, choices=FORMATS, help="onnx (jax2onnx) or stablehlo (jax.export)")
    p.add_argument("--batch-size", type=positive_int, required=True,
                   help="the (fixed) batch size of the exported model")
    p.add_argument("--dtype", default="float32",
                   help=f"compute dtype inside ({', '.join(DTYPES)}; onnx: {', '.join(ONNX_DTYPES)}); default float32")
    p.add_argument("--platforms", default="cpu",
                   help=f"stablehlo: comma-separated platforms to export for ({', '.join(PLATFORMS)}); default cpu")
    p.add_argument("--output", required=True, help="the file to write (.onnx, or .npz for stablehlo)")
    return p


def check_request(fmt: str, dtype: str, batch: Any, platforms: Sequence[str]) -> None:
    """One line for a combination the exporter does not make."""
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if fmt == "onnx" and dtype not in ONNX_DTYPES:
        raise UserError(f"--dtype {dtype} with --format onnx: onnxruntime's CPU provider has no {dtype} convolution "
                        f"kernel, so the model could not run; expected {' or '.join(ONNX_DTYPES)} (or --format "
                        "stablehlo)")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise UserError(f"--batch-size {batch!r}: expected an integer >= 1")
    bad = [p for p in platforms if p not in PLATFORMS]
    if bad or not platforms:
        raise UserError(f"--platforms {','.join(platforms)!r}: expected a comma-separated list of "
                        f"{', '.join(PLATFORMS)}")
    if fmt == "onnx" and tuple(platforms) != ("cpu",):
        raise UserError("--platforms is for --format stablehlo; an ONNX model names no platform")


def main(argv: Sequence[str] | None = None) -> int:
    from glean_jax import runtime

    args = build_parser().parse_args(argv)
    with runtime.compilation_cache(zoo.compile_cache_dir(args)):
        return _export(args)


def _export(args: argparse.Namespace) -> int:
    platforms = tuple(p.strip() for p in args.platforms.split(",") if p.strip())
    check_request(args.format, args.dtype, args.batch_size, platforms)
    out = check_output_file(args.output, "--output")
    if args.format == "onnx":
        try:
            import jax2onnx  # noqa: F401
            import onnx  # noqa: F401
        except ImportError as e:
            raise UserError(f"--format onnx needs jax2onnx and onnx ({e.name or e} is not installed): "
                            f"{ONNX_INSTALL}") from None
    ckpt = zoo.model_from_arguments(args)
    module, variables, arch = load_glean(ckpt, args.dtype)
    meta = {"format": CONTAINER_FORMAT, "version": CONTAINER_VERSION, "in_size": module.in_size,
            "out_size": module.out_size, "batch": args.batch_size, "dtype": args.dtype, "platforms": list(platforms),
            "input": "float32 (N, in, in, 3) NHWC RGB in [-1, 1] = (x - 127.5) / 127.5",
            "output": "float32 (N, out, out, 3) in [-1, 1], unclipped", "generator": arch, "source": str(ckpt)}
    t0 = time.perf_counter()
    if args.format == "stablehlo":
        blob, weights = export_stablehlo(module, variables, args.batch_size, platforms)
        write_stablehlo(out, blob, weights, meta)
    else:
        proto = export_onnx(module, variables, args.batch_size)
        proto.doc_string = json.dumps(meta, sort_keys=True)
        data = proto.SerializeToString()
        write_atomic(out, lambda f: f.write(data))
    size = out.stat().st_size / 2 ** 20
    print(f"exported GLEAN {module.in_size}->{module.out_size} ({args.dtype}, batch {args.batch_size}) as "
          f"{args.format} to {out} ({size:.1f} MiB, {time.perf_counter() - t0:.1f} s)")
    return 0


def onnx_session(model: Any, threads: int | None = None) -> Any:
    """An onnxruntime CPU session of a ModelProto, serialized bytes or file."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3   # not its warnings about initializers it drops
    if threads:
        opts.intra_op_num_threads = threads
    src = model.SerializeToString() if hasattr(model, "SerializeToString") else model
    return ort.InferenceSession(src if isinstance(src, bytes) else str(src), opts, providers=["CPUExecutionProvider"])


if __name__ == "__main__":
    cli_entry(main)

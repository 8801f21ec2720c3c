"""Model checkpoints: an orbax PyTree of variables plus ``model.json`` (the architecture).

A converted or trained model lives in one directory::

    DIR/model.json     {"format": "glean-jax-model", "version": 1, "kind": ..., "generator": {...},
                        "discriminator": {...} | null, "source": {...}}
    DIR/variables/     orbax checkpoint of {"generator": {"params": ..., "buffers": ...},
                                            "discriminator": {"params": ...}}   (float32, NHWC/HWIO)

Directories are written atomically: everything goes to a temporary sibling first and is renamed
into place only when complete, so a failure never leaves a half-written ``DIR``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from glean_jax.errors import UserError

FORMAT = "glean-jax-model"
VERSION = 1
META_FILE = "model.json"
VARS_DIR = "variables"


def _to_numpy_tree(tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda x: np.asarray(x), tree)


def check_finite(tree: Any, what: str) -> None:
    """Raises a UserError naming the first array of ``tree`` that holds NaN or Inf."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        arr = np.asarray(leaf)
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            name = "/".join(str(getattr(k, "key", k)) for k in path)
            bad = int(np.size(arr) - np.isfinite(arr).sum())
            raise UserError(f"{what}: {name} holds {bad} non-finite value(s) (NaN/Inf); expected finite weights")


def check_variables(variables: Any, expected: Any, what: str, hint: str) -> None:
    """Raises a UserError naming the first array of ``expected`` (arrays or ShapeDtypeStructs) that ``variables``
    lacks or holds with another shape, or the first array ``variables`` has in excess."""
    def flat(tree: Any) -> dict[str, tuple]:
        return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(np.shape(leaf))
                for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}

    have, want = flat(variables), flat(expected)
    for name, shape in want.items():
        if name not in have:
            raise UserError(f"{what}: array {name} is missing; expected the arrays of {hint}")
        if have[name] != shape:
            raise UserError(f"{what}: array {name} has shape {have[name]}; expected {shape} for {hint}")
    extra = sorted(set(have) - set(want))
    if extra:
        raise UserError(f"{what}: unexpected array {extra[0]} ({len(extra)} in all); expected only the arrays of "
                        f"{hint}")


def prepare_output_dir(out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Checks that ``out_dir`` may be (re)written; returns it as a Path. Creates nothing."""
    out = Path(out_dir)
    if out.exists():
        if not out.is_dir():
            raise UserError(f"{out}: exists and is not a directory; expected a new or empty output directory")
        if any(out.iterdir()) and not overwrite:
            raise UserError(f"{out}: directory is not empty; choose a new output directory or pass --overwrite")
    parent = out.resolve().parent
    if not parent.exists():
        raise UserError(f"{out}: parent directory {parent} does not exist")
    if not parent.is_dir():
        raise UserError(f"{out}: {parent} is not a directory")
    if not os.access(parent, os.W_OK):
        raise UserError(f"{out}: cannot write to {parent} (permission denied)")
    return out


def save_model(out_dir: str | os.PathLike, meta: dict, variables: dict, overwrite: bool = False,
               only_this_process: bool = False) -> Path:
    """Writes ``meta`` (JSON) and ``variables`` (orbax) to ``out_dir`` atomically.

    ``only_this_process``: in a multi-process run, this process writes alone (training's exports from process 0);
    orbax would otherwise wait for every process to take part."""
    import orbax.checkpoint as ocp

    out = prepare_output_dir(out_dir, overwrite)
    meta = {"format": FORMAT, "version": VERSION, **meta}
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.resolve().parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        with open(tmp / META_FILE, "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
        kw = {}
        if only_this_process:
            me = jax.process_index()
            kw["multiprocessing_options"] = ocp.options.MultiprocessingOptions(
                primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"export_{out.name}")
        with ocp.StandardCheckpointer(**kw) as ckptr:
            ckptr.save((tmp / VARS_DIR).resolve(), _to_numpy_tree(variables))
            ckptr.wait_until_finished()
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"{out}: could not write the checkpoint ({e.strerror or e})") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_meta(ckpt_dir: str | os.PathLike) -> dict:
    """Reads and validates ``model.json`` of a model directory."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        raise UserError(f"{d}: no such checkpoint directory (expected a directory written by convert or train)")
    mf = d / META_FILE
    if not mf.is_file():
        raise UserError(f"{d}: not a glean-jax checkpoint ({META_FILE} is missing)")
    try:
        meta = json.loads(mf.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{mf}: corrupt model description ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{mf}: not a glean-jax model description (format field is {meta.get('format')!r})")
    if meta.get("version") != VERSION:
        raise UserError(f"{mf}: unsupported version {meta.get('version')!r}; expected {VERSION}")
    return meta


def load_model(ckpt_dir: str | os.PathLike) -> tuple[dict, dict]:
    """Returns ``(meta, variables)`` of a model directory; variables are numpy float32 arrays."""
    import orbax.checkpoint as ocp

    meta = load_meta(ckpt_dir)
    vdir = (Path(ckpt_dir) / VARS_DIR).resolve()
    if not vdir.is_dir():
        raise UserError(f"{ckpt_dir}: checkpoint is incomplete ({VARS_DIR}/ is missing)")
    try:
        with ocp.StandardCheckpointer() as ckptr:
            variables = ckptr.restore(vdir)
    except Exception as e:  # orbax raises many types for damaged files
        raise UserError(f"{vdir}: could not read the checkpoint ({type(e).__name__}: {e})") from e
    variables = _to_numpy_tree(variables)
    check_finite(variables, str(ckpt_dir))
    return meta, variables


def glean_geometry(ckpt_dir: str | Path) -> tuple[int, int]:
    """(in_size, out_size) of a GLEAN checkpoint, from its ``model.json`` only (fast; the weights load later)."""
    meta = load_meta(ckpt_dir)
    gen = meta.get("generator") or {}
    if meta.get("kind") != "glean" or gen.get("kind") != "glean":
        raise UserError(f"{ckpt_dir}: holds a {meta.get('kind')!r} model; expected a GLEAN checkpoint (convert a "
                        "GLEAN restorer checkpoint with `python -m convert.mmagic`, or train one)")
    try:
        return int(gen["in_size"]), int(gen["out_size"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{ckpt_dir}: model.json has no valid generator in_size/out_size; expected a GLEAN "
                        "checkpoint written by convert or train") from None

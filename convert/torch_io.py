"""Reading and writing PyTorch checkpoint files, with one clear error for every way they can be bad."""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np

from glean_jax.errors import UserError


def _import_torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the install
        raise UserError("reading PyTorch checkpoints needs torch: pip install 'glean-jax[convert]'") from e
    return torch


def load_torch_state(path: str | os.PathLike, allow_pickle: bool = False) -> dict[str, np.ndarray]:
    """Loads a ``.pth`` file and returns its flat ``{key: float32/int numpy array}`` state dict.

    Accepts a bare state_dict or a dict with a ``state_dict`` entry (mmagic/mmengine checkpoints; meta and
    optimizer entries are ignored). Loads with ``weights_only=True``; legacy pickles that need arbitrary
    code only load with ``allow_pickle=True``.
    """
    torch = _import_torch()
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: file is empty (0 bytes); expected a PyTorch checkpoint (.pth)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as e:
        text = str(e)
        detail = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
        msg = detail.group(1).strip() if detail else (text.splitlines()[0] if text else "unpickling failed")
        if "Unsupported global" in text and not allow_pickle:
            raise UserError(
                f"{path}: checkpoint needs arbitrary Python objects to load ({msg}); if you trust the file, "
                "pass --allow-pickle") from e
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({msg or 'neither a zip nor a pickle file'}); "
                        "expected a .pth file written by torch.save") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, AttributeError, ImportError, IndexError,
            KeyError, TypeError, MemoryError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path}: not a readable PyTorch checkpoint, or truncated ({msg})") from e
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise UserError(f"{path}: holds a {type(obj).__name__}, expected a state_dict (a dict of tensors)")
    out: dict[str, np.ndarray] = {}
    for k, v in obj.items():
        if not isinstance(k, str):
            raise UserError(f"{path}: key {k!r} is not a string; expected a state_dict")
        if isinstance(v, torch.Tensor):
            out[k] = v.detach().cpu().numpy()
        elif isinstance(v, int | float) and k.endswith("step_counter"):
            continue  # mmediting 0.x stores a plain int step counter; not part of the model
        else:
            raise UserError(f"{path}: entry {k!r} is a {type(v).__name__}, expected a tensor")
    if not out:
        raise UserError(f"{path}: state_dict is empty")
    return out


def save_torch_state(path: str | os.PathLike, state: dict[str, np.ndarray], wrap: bool = False) -> None:
    """Writes ``state`` as a torch state_dict (``{'state_dict': ...}`` if ``wrap``) atomically."""
    import io
    from collections import OrderedDict

    from glean_jax.images import atomic_write_bytes

    torch = _import_torch()
    sd = OrderedDict((k, torch.from_numpy(np.ascontiguousarray(v))) for k, v in state.items())
    buf = io.BytesIO()
    torch.save({"state_dict": sd} if wrap else sd, buf)
    path = Path(path)
    if not path.parent.is_dir():
        what = "is not a folder" if path.parent.exists() else "does not exist"
        raise UserError(f"{path}: folder {path.parent} {what}; expected a file path in an existing folder")
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError as e:
        raise UserError(f"{path}: cannot write ({e.strerror or e})") from e

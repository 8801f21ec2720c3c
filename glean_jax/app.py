"""``python -m glean_jax.app``: a web page that upscales pictures and restores faces in photos with GLEAN.

::

    python -m glean_jax.app --model glean_ffhq_16x [--host 127.0.0.1] [--port 7860]
    python -m glean_jax.app --checkpoint DIR|FILE.pth|WORKDIR [--any-model] [--max-upload-mb 20] [--max-side 4096]

Then open ``http://127.0.0.1:7860``. A person uploads a picture, chooses

* **Upscale**: the picture area-resized to the model's input size and super-resolved, as
  ``python -m glean_jax.upscale --resize`` does (the same PNG, byte for byte); or
* **Restore faces** (FFHQ models): every face detected, aligned, restored and pasted back into the photo upscaled
  xN, as ``python -m glean_jax.faces --upscale N`` does, with N the largest factor up to the model's own
  (out_size / in_size) that keeps the result within ``--max-side`` pixels,

sees the input and the result side by side, with a progress bar while it works, and downloads the PNG.

The page is gradio (``pip install 'glean-jax[app]'``). One picture is processed at a time (a queue of
``--queue-size`` waiting requests: concurrent users cannot run the machine out of memory) and the model is loaded and
compiled once, at start. Bad uploads (not an image, a corrupt or truncated file, more than ``--max-upload-mb``
megabytes or ``--max-side`` pixels on a side, a photo without a face) get one line on the page and the server keeps
serving. Start-up errors (a port in use, a model that is not GLEAN, gradio missing) are one line and exit code 2.
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glean_jax import zoo
from glean_jax.errors import UserError, cli_entry

UPSCALE = "Upscale"
FACES = "Restore faces"
INSTALL_HINT = "pip install 'glean-jax[app]'"
KEEP_RESULTS = 32          # results kept for download; uploads are deleted by gradio after UPLOAD_AGE_S
UPLOAD_AGE_S = 3600


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m glean_jax.app", description=__doc__.split("\n\n")[0].strip("`: "))
    zoo.add_model_arguments(p, "the GLEAN to serve")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--any-model", action="store_true",
                   help="offer face restoration with a GLEAN that is not an FFHQ-1024 one (a face model of your own)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload accepted (default 20 MB)")
    p.add_argument("--max-side", type=int, default=4096,
                   help="largest input side, and largest side of a face restoration's result (default 4096)")
    p.add_argument("--queue-size", type=int, default=16, help="requests that may wait for their turn (default 16)")
    return p


def check_port(host: str, port: int) -> None:
    """A UserError when ``host:port`` cannot be listened on (in use, or not an address of this machine)."""
    if not 0 < port < 65536:
        raise UserError(f"--port {port}: expected a port number in 1..65535")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UserError(f"--port {port}: {host}:{port} is already in use; expected a free port (--port N)") \
                    from e
            raise UserError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e}); expected an "
                            "address of this machine") from e


def read_upload(path: str | os.PathLike, max_side: int) -> np.ndarray:
    """An uploaded file as uint8 RGB, its size checked from the header before it is decoded."""
    from PIL import Image, UnidentifiedImageError

    from glean_jax.images import read_rgb

    name = Path(path).name
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"{name}: not an image we can read ({type(e).__name__}); expected a PNG, JPEG, WebP or BMP "
                        "file") from e
    if max(w, h) > max_side:
        raise UserError(f"{name}: {w}x{h} pixels is larger than this page takes ({max_side} on a side); expected a "
                        "smaller picture")
    try:
        return read_rgb(path)
    except UserError as e:
        raise UserError(str(e).replace(str(path), name)) from e


def face_factor(shape: tuple[int, ...], in_size: int, out_size: int, max_side: int) -> int:
    """The upscale factor of a face restoration: the model's own (out_size // in_size), less if the result would be
    larger than ``max_side`` on a side (at least 1)."""
    return max(1, min(out_size // in_size, max_side // max(shape[:2])))


def result_path(workdir: Path, name: str, keep: int = KEEP_RESULTS) -> Path:
    """``name`` in a fresh folder of ``workdir`` for one result; older results beyond the newest ``keep`` are
    deleted (a long-running page does not fill the disk)."""
    import shutil

    for old in sorted(workdir.iterdir(), key=lambda p: p.stat().st_mtime)[:-keep + 1]:
        shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=workdir)) / name


class Service:
    """The model and what the page does with it (no gradio here: the tests call it directly too)."""

    def __init__(self, checkpoint: Path, any_model: bool, max_side: int, workdir: Path) -> None:
        from glean_jax.checkpoint import load_meta
        from glean_jax.inference import SRModel

        self.meta = load_meta(checkpoint)
        self.model = SRModel(checkpoint)
        self.max_side = max_side
        self.workdir = workdir
        self.face_reason = None
        if not any_model:
            from glean_jax import faces

            try:
                faces.check_face_model(self.meta, str(checkpoint))
            except UserError as e:
                self.face_reason = str(e)

    def warm_up(self) -> None:
        """Compiles the model once (the first visitor does not wait for it)."""
        n = self.model.in_size
        self.model.upscale_uint8(np.zeros((1, n, n, 3), np.uint8))

    def restore(self, batch: np.ndarray) -> np.ndarray:
        from glean_jax.images import to_uint8

        return np.stack([to_uint8(self.model.upscale_uint8(face[None])[0]) for face in batch]) if len(batch) \
            else np.zeros((0, self.model.out_size, self.model.out_size, 3), np.uint8)

    def run(self, path: str | None, mode: str, progress: Callable[[float, str], None]) -> tuple[np.ndarray, Path,
                                                                                                 str]:
        """(the input picture, the result PNG, a one-line summary) for an uploaded file; UserError otherwise."""
        from glean_jax.images import to_uint8, write_png
        from glean_jax.upscale import area_resize

        if not path:
            raise UserError("no picture: upload one first")
        photo = read_upload(path, self.max_side)
        progress(0.05, "read")
        stem = Path(path).stem or "picture"
        t0 = time.perf_counter()
        if mode == FACES:
            if self.face_reason:
                raise UserError(f"face restoration needs an FFHQ GLEAN: {self.face_reason}")
            from glean_jax import faces

            n = face_factor(photo.shape, self.model.in_size, self.model.out_size, self.max_side)
            result = faces.restore_photo(photo, self.restore, self.model.in_size, self.model.out_size, n,
                                         progress=lambda f, msg: progress(0.05 + 0.9 * f, msg))
            if not result.faces:
                raise UserError(f"{Path(path).name}: no face found; expected a photo with a face, or choose "
                                f"{UPSCALE!r}")
            image = result.image
            what = f"{len(result.faces)} face{'s' if len(result.faces) != 1 else ''} restored, photo upscaled x{n}"
            out = self._out_path(f"{stem}_faces_x{n}.png")
        elif mode == UPSCALE:
            small = area_resize(photo, self.model.in_size)
            progress(0.2, "upscaling")
            image = to_uint8(self.model.upscale_uint8(small[None])[0])
            what = f"resized to {self.model.in_size}x{self.model.in_size} and upscaled to {self.model.out_size}"
            out = self._out_path(f"{stem}_x{self.model.out_size // self.model.in_size}.png")
        else:
            raise UserError(f"mode {mode!r}: expected {UPSCALE!r} or {FACES!r}")
        write_png(out, image)
        progress(1.0, "done")
        return photo, out, f"{what} in {time.perf_counter() - t0:.1f} s ({image.shape[1]}x{image.shape[0]})"

    def _out_path(self, name: str) -> Path:
        return result_path(self.workdir, name)


def build_page(service: Service, max_upload_mb: float) -> Any:
    """The gradio page (``gradio.Blocks``) around ``service``."""
    import gradio as gr

    modes = [UPSCALE] + ([FACES] if service.face_reason is None else [])
    m = service.model
    with gr.Blocks(title="GLEAN super-resolution", delete_cache=(UPLOAD_AGE_S, UPLOAD_AGE_S)) as page:
        gr.Markdown(f"## GLEAN super-resolution\nModel: {m.in_size}x{m.in_size} -> {m.out_size}x{m.out_size}. "
                    f"Upload a picture (at most {max_upload_mb:g} MB, {service.max_side} px on a side).")
        with gr.Row():
            upload = gr.File(label="Your picture", file_types=["image"], type="filepath", elem_id="upload")
            mode = gr.Radio(modes, value=modes[-1], label="What to do", elem_id="mode")
        run = gr.Button("Run", variant="primary", elem_id="run")
        status = gr.Markdown(elem_id="status")
        with gr.Row():
            before = gr.Image(label="Input", type="numpy", interactive=False, format="png", height=480,
                              elem_id="before")
            after = gr.Image(label="Result", type="filepath", interactive=False, format="png", height=480,
                             elem_id="after")
        download = gr.File(label="Download the result", interactive=False, elem_id="download")

        def on_run(path: str | None, how: str, progress: Any = gr.Progress()) -> tuple:  # noqa: B008 - gradio's API
            try:
                photo, out, summary = service.run(path, how, lambda f, msg: progress(f, desc=msg))
            except UserError as e:
                raise gr.Error(str(e), print_exception=False) from None
            return photo, str(out), str(out), summary

        run.click(on_run, inputs=[upload, mode], outputs=[before, after, download, status], concurrency_limit=1)
    return page


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for flag, value in (("--max-upload-mb", args.max_upload_mb), ("--max-side", args.max_side),
                        ("--queue-size", args.queue_size)):
        if not value > 0:
            raise UserError(f"{flag} {value}: expected a positive number")
    check_port(args.host, args.port)
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise UserError(f"the web page needs gradio, which is not installed; expected it: {INSTALL_HINT}")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from glean_jax import runtime

    workdir = Path(tempfile.mkdtemp(prefix="glean_jax_app_"))
    with runtime.compilation_cache(zoo.compile_cache_dir(args)):
        checkpoint = zoo.model_from_arguments(args)
        from glean_jax.checkpoint import glean_geometry

        glean_geometry(checkpoint)   # a GLEAN? (one line otherwise, before the weights load)
        service = Service(checkpoint, args.any_model, args.max_side, workdir)
        print(f"loaded {checkpoint}; compiling ...", file=sys.stderr, flush=True)
        service.warm_up()
        page = build_page(service, args.max_upload_mb)
        page.queue(default_concurrency_limit=1, max_size=args.queue_size)
        print(f"serving on http://{args.host}:{args.port} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        page.launch(server_name=args.host, server_port=args.port, max_file_size=int(args.max_upload_mb * 1024 * 1024),
                    allowed_paths=[str(workdir)], show_error=True, quiet=True)
    return 0


if __name__ == "__main__":
    cli_entry(main)

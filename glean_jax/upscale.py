"""``python -m glean_jax.upscale``: super-resolve images with a converted or trained GLEAN checkpoint.

::

    python -m glean_jax.upscale --model glean_cat_8x INPUT... --output OUT [--resize] [--batch-size N]
    python -m glean_jax.upscale --checkpoint DIR|FILE.pth|WORKDIR INPUT... --output OUT ...
        [--dtype float32|bfloat16] [--save-raw]

Inputs are image files or folders of them (PNG, JPEG, WebP, BMP; folders are not searched recursively). Each image
is read as uint8 RGB (:func:`glean_jax.images.read_rgb`: grayscale repeated to 3 channels, alpha dropped with a
warning, 16-bit scaled to 8-bit) and must be ``in_size x in_size``; ``--resize`` instead resizes it to that size
with area interpolation (``cv2.INTER_AREA``, as mmagic's ``RandomResize(resize_opt=['area'])``; integer factors
are computed in NumPy, equal bit for bit to OpenCV). The image is normalised as mmagic's ``DataPreprocessor``
(``(x - 127.5) / 127.5``, RGB), run through the model in batches, and written as PNG the way mmagic turns an
output into an image (``x * 127.5 + 127.5``, clipped to [0, 255], rounded). ``--save-raw`` also writes the float32
output (H, W, 3) in [-1, 1], unclipped, as ``<name>.npy`` beside the PNG (what ``evaluate --pred-dir`` scores with
either metric convention).

Output: with one input and ``--output FILE.png`` that file (``FILE.npy`` beside it); otherwise ``--output`` is a
folder (created) receiving ``<input stem>.png``. Inputs never get overwritten, and two inputs with the same stem
(``a.png`` and ``a.jpg``) are an error.

Every input is read and checked before the model runs. Problems with the command as a whole (no images, clashing
names, an output that is an input, a checkpoint that is not GLEAN) stop before anything is written. A bad image
(undecodable, wrong size) is reported as one line naming the file; the other inputs are still upscaled and the exit
code is 2. Every file is written atomically, so there are never partial outputs.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from glean_jax import zoo
from glean_jax.checkpoint import glean_geometry
from glean_jax.errors import EXIT_USER_ERROR, UserError, cli_entry, positive_int
from glean_jax.images import (
    IMAGE_EXTENSIONS,
    list_images,
    load_each,
    read_input,
    to_uint8,
    write_npy,
    write_png,
)

DTYPE_CHOICES = ("float32", "bfloat16")


def area_resize(img: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, C) -> uint8 (size, size, C), equal to ``cv2.resize(img, (size, size), cv2.INTER_AREA)``.

    When H and W are integer multiples of ``size`` the block means are computed here (sum of the block in integers,
    times ``float32(1 / area)``, rounded half to even: OpenCV's fast area path, checked bit-exact in the tests), so
    OpenCV is not needed; other sizes use OpenCV itself.
    """
    img = np.asarray(img)
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img
    if h % size == 0 and w % size == 0:
        fy, fx = h // size, w // size
        blocks = img.reshape(size, fy, size, fx, *img.shape[2:]).astype(np.int64)
        sums = blocks.sum(axis=(1, 3)).astype(np.float32)
        out = np.rint(sums * np.float32(1.0 / (fy * fx)))
        return np.clip(out, 0, 255).astype(np.uint8)
    try:
        import cv2
    except ImportError:
        raise UserError(f"resizing a {w}x{h} image to {size}x{size} (not an integer factor) needs OpenCV: "
                        "pip install opencv-python-headless; or resize it to a multiple of "
                        f"{size}x{size} first") from None
    out = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    return out.reshape(size, size, *img.shape[2:])


def plan_outputs(inputs: Sequence[Path], output: str | Path, save_raw: bool
                 ) -> tuple[list[tuple[Path, Path | None]], bool]:
    """(PNG path, .npy path or None) per input, and whether ``output`` is a single file; raises UserError for
    name clashes and outputs that are inputs."""
    out = Path(output)
    suffix = out.suffix.lower()
    if out.is_dir():
        single = False
    elif suffix == ".png":
        if len(inputs) != 1:
            raise UserError(f"--output {out}: a single .png file, but there are {len(inputs)} inputs; expected a "
                            "folder for several inputs")
        single = True
    elif suffix in IMAGE_EXTENSIONS:
        raise UserError(f"--output {out}: outputs are PNG; expected a .png file name (one input) or a folder")
    elif out.exists():
        raise UserError(f"--output {out}: exists and is not a folder; expected a folder or a .png file name")
    else:
        single = False
    if single:
        if not out.parent.is_dir():
            raise UserError(f"--output {out}: folder {out.parent} does not exist; expected an existing folder")
        plan = [(out, out.with_suffix(".npy") if save_raw else None)]
    else:
        by_stem: dict[str, Path] = {}
        plan = []
        for f in inputs:
            if f.stem in by_stem:
                raise UserError(f"inputs {by_stem[f.stem]} and {f} would both be written to {out / (f.stem + '.png')}; "
                                "expected inputs with different file-name stems")
            by_stem[f.stem] = f
            plan.append((out / f"{f.stem}.png", out / f"{f.stem}.npy" if save_raw else None))
    resolved_inputs = {f.resolve(): f for f in inputs}
    for png, npy in plan:
        for p in (png, npy):
            if p is not None and p.resolve() in resolved_inputs:
                raise UserError(f"{resolved_inputs[p.resolve()]}: is an input and would be overwritten by the output "
                                f"{p}; expected an --output that is not an input")
    return plan, single


def _load_input(path: Path, in_size: int, resize: bool) -> np.ndarray:
    """Decodes one input (alpha / 16-bit warnings printed as one line each) and checks or fixes its size."""
    img = read_input(path)
    h, w_ = img.shape[:2]
    if (h, w_) != (in_size, in_size):
        if not resize:
            raise UserError(f"{path}: image is {w_}x{h}; expected {in_size}x{in_size}, the checkpoint's input size "
                            "(pass --resize to area-resize it)")
        img = area_resize(img, in_size)
    return img


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m glean_jax.upscale",
        description="Super-resolve images with a GLEAN checkpoint (converted from mmagic or trained here).")
    zoo.add_model_arguments(p, "the GLEAN to use")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders (PNG, JPEG, WebP, BMP)")
    p.add_argument("--output", required=True,
                   help="output folder (created), or FILE.png when there is a single input")
    p.add_argument("--resize", action="store_true",
                   help="area-resize inputs to the checkpoint's input size (default: a size mismatch is an error)")
    p.add_argument("--batch-size", type=positive_int, default=1, help="images per model call (default 1)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="float32", help="compute dtype (default float32)")
    p.add_argument("--save-raw", action="store_true",
                   help="also write the float32 output (H, W, 3) in [-1, 1], unclipped, as <name>.npy")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from glean_jax import runtime

    args = build_parser().parse_args(argv)
    with runtime.compilation_cache(zoo.compile_cache_dir(args)):
        return _upscale(args)


def _upscale(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    args.checkpoint = zoo.model_from_arguments(args)
    in_size, out_size = glean_geometry(args.checkpoint)
    inputs = list_images(args.inputs)
    plan, single = plan_outputs(inputs, args.output, args.save_raw)

    # Read and check every input before the model is loaded; keep the (small) in_size images.
    loaded, n_bad = load_each(list(zip(inputs, plan, strict=True)),
                              lambda item: _load_input(item[0], in_size, args.resize))
    good = [(f, img, png, npy) for (f, (png, npy)), img in loaded]

    from glean_jax.inference import SRModel

    model = SRModel(args.checkpoint, args.dtype)
    if (model.in_size, model.out_size) != (in_size, out_size):  # model.json changed under us
        raise UserError(f"{args.checkpoint}: model is {model.in_size}->{model.out_size}; expected "
                        f"{in_size}->{out_size} as its model.json said")
    if not plan[0][0].parent.exists():
        try:
            plan[0][0].parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"--output {args.output}: cannot create the folder ({e.strerror or e})") from e
    bs = args.batch_size
    bar = tqdm(total=len(good), desc="upscale", unit="img", disable=None)
    for start in range(0, len(good), bs):
        chunk = good[start:start + bs]
        batch = np.stack([img for _, img, _, _ in chunk])
        if len(chunk) < bs and len(good) > bs:  # pad the last batch: one compiled shape for the whole run
            batch = np.concatenate([batch, np.repeat(batch[-1:], bs - len(chunk), axis=0)])
        raw = model.upscale_uint8(batch)
        for (_, _, png, npy), out in zip(chunk, raw, strict=False):
            write_png(png, to_uint8(out))
            if npy is not None:
                write_npy(npy, np.asarray(out, np.float32))
        bar.update(len(chunk))
    bar.close()
    where = plan[0][0] if single else Path(args.output)
    print(f"upscaled {len(good)} image{'s' if len(good) != 1 else ''} {in_size}->{out_size} to {where}"
          + (f"; {n_bad} input{'s' if n_bad != 1 else ''} failed (listed above)" if n_bad else ""))
    return EXIT_USER_ERROR if n_bad else 0


if __name__ == "__main__":
    cli_entry(main)

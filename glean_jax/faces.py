"""``python -m glean_jax.faces``: restore the faces of ordinary photos with an FFHQ GLEAN and paste them back.

::

    python -m glean_jax.faces (--model NAME | --checkpoint DIR) PHOTO... --output DIR [--upscale N]
        [--json FILE] [--only-faces] [--landmarks 68|5] [--threshold T] [--any-model]

Pipeline: dlib's HOG face detector -> dlib landmarks -> the FFHQ alignment crop (:mod:`glean_jax.face_align`) at the
model's in_size -> GLEAN -> the restored face warped back (bilinear, feathered edges) onto the photo resized xN
(bicubic, ``cv2.INTER_CUBIC``). N defaults to out_size / in_size (16 for glean_ffhq_16x, 8 for glean_in128out1024), so
a face keeps the resolution GLEAN gave it.

Outputs in ``DIR``: ``<stem>.png`` (the whole picture), ``<stem>_face<i>.png`` (GLEAN's out_size output for face i,
faces numbered from 0 left to right) and the JSON (``--json``, default ``DIR/faces.json``): ``{input file name: [face,
...]}``, each face ``{"box", "landmarks5", "score", "transform": {"matrix", "crop_size", "center", "side", "angle"},
"file"}`` (:meth:`Face.to_json`). A photo without a face is said on stderr in one line, gets the plain bicubic
upscale and ``[]`` in the JSON; the exit code stays 0. With ``--only-faces`` only the face PNGs and the JSON are
written; when no input has a face that is an error (exit 2, nothing written). Inputs are all read and checked before
the model loads; a bad one (not an image, an output too large) is one line, the others go on, exit 2; every file is
written atomically.

Detector and landmarks: dlib (``pip install 'glean-jax[faces]'``). The HOG detector is built into dlib (no weight
file); HOG alone finds faces from ~80 px, so photos up to 2 MP are also searched at 2x and up to 0.125 MP at 4x
(the astronaut, 512 x 512: 0.16 s; shrunk to 96 x 96, its 18 px face is still found). The
landmark models come from the ``face-recognition-models`` package (located with ``find_spec``, never imported: its
``__init__`` needs ``pkg_resources``). Default ``--landmarks 5``: dlib's 5-point model (eye corners + nose base;
its training data carries no use restriction; a 9 MB file, loaded in 0.15 s). ``--landmarks 68`` is the model FFHQ
itself was aligned with, but its iBUG 300-W training data excludes commercial use (and the file is 100 MB, 1.3 s to
load). The 5-point model has no mouth: it is estimated from the eyes and the nose base with ratios read off dlib's
mean 68-point face (``face_align.MOUTH_FROM_NOSE_BASE``). Against the 68-point FFHQ crop, on scikit-image's
astronaut, rotated +-20 degrees, scaled x1.5 / x0.5 and mirrored, the 5-point crop's centre lies within 0.53 px (0.31
% of the crop side), its side within 1.7 % and its angle within 1.5 degrees: about 1 px of a 64 px crop at its
corners, so GLEAN sees the same face; the 5-point model is the default.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import json
import re
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from glean_jax import face_align as fa
from glean_jax import zoo
from glean_jax.errors import EXIT_USER_ERROR, UserError, cli_entry, positive_int
from glean_jax.images import MAX_PIXELS, atomic_write_bytes, list_images, load_each, read_input, write_png

DEFAULT_LANDMARKS = "5"
LANDMARK_CHOICES = ("5", "68")
LANDMARK_FILES = {"5": "shape_predictor_5_face_landmarks.dat", "68": "shape_predictor_68_face_landmarks.dat"}
FACE_OUT_SIZE = 1024             # the FFHQ StyleGAN2 bank: glean_ffhq_16x and glean_in128out1024
FEATHER = 0.1                    # paste-back weight ramps 0 -> 1 over this fraction of the crop side at each edge
# HOG alone finds faces from ~80 px: photos up to 2 MP are searched at 2x, up to 0.125 MP at 4x too (dlib upsamples)
UPSAMPLE_BELOW_PIXELS = (2 ** 21, 2 ** 17)
INSTALL = "pip install 'glean-jax[faces]'"
_DLIB_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class Face:
    """One face: ``box`` (x0, y0, x1, y1; dlib's rectangle, corner pixels inclusive), ``landmarks5`` (5, 2) [x, y]
    (eye on the viewer's left, other eye, nose (tip with 68 points, base with 5), mouth corner on the viewer's left,
    other mouth corner; with 5 points the mouth is estimated), detector ``score``, and ``matrix`` (2, 3): photo pixel
    -> pixel of the aligned crop (FFHQ recipe, crop side :attr:`crop_size`)."""

    box: tuple[float, float, float, float]
    landmarks5: np.ndarray
    score: float
    matrix: np.ndarray

    @property
    def crop_size(self) -> int:
        return int(round(np.sqrt(abs(np.linalg.det(self.matrix[:, :2]))) * fa.frame_summary(self.landmarks5)["side"]))

    def for_size(self, size: int) -> Face:
        """The same face with ``matrix`` for a ``size`` x ``size`` crop."""
        return dataclasses.replace(self, matrix=fa.crop_matrix(self.landmarks5, size))

    def to_json(self) -> dict:
        """{"box", "landmarks5", "score", "transform": {"matrix", "crop_size", "center", "side", "angle"}}: plain
        lists and floats; center/side/angle are the FFHQ quad's centre, side and rotation (degrees) in the photo."""
        return {"box": [float(v) for v in self.box], "landmarks5": np.asarray(self.landmarks5, float).tolist(),
                "score": float(self.score),
                "transform": {"matrix": np.asarray(self.matrix, float).tolist(), "crop_size": self.crop_size,
                              **fa.frame_summary(self.landmarks5)}}


@dataclasses.dataclass(frozen=True)
class PhotoResult:
    image: np.ndarray           # uint8 (H*N, W*N, 3): the photo upscaled xN with every face pasted back
    faces: list[Face]
    restored: list[np.ndarray]  # uint8 (out_size, out_size, 3) per face, GLEAN's output


def _model_file(name: str) -> str:
    """Path of a ``face-recognition-models`` data file, or a UserError with the install line if dlib or the package
    is missing (the package itself is never imported: its ``__init__`` needs ``pkg_resources``)."""
    missing = [m for m in ("dlib", "face_recognition_models") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"face detection needs {' and '.join(missing)} (not installed); install with: {INSTALL}")
    path = Path(importlib.util.find_spec("face_recognition_models").submodule_search_locations[0]) / "models" / name
    if not path.is_file():
        raise UserError(f"{path}: missing (a broken face-recognition-models install); reinstall with: {INSTALL}")
    return str(path)


def require_dlib(landmarks: str = DEFAULT_LANDMARKS) -> None:
    """UserError (one line, with the install command) unless dlib and the ``landmarks`` model are installed."""
    if landmarks not in LANDMARK_CHOICES:
        raise UserError(f"landmarks {landmarks!r}; expected one of {', '.join(LANDMARK_CHOICES)}")
    _model_file(LANDMARK_FILES[landmarks])


@functools.cache
def _dlib_models(landmarks: str) -> tuple:
    path = _model_file(LANDMARK_FILES[landmarks])
    import dlib

    return dlib.get_frontal_face_detector(), dlib.shape_predictor(path)


def detect_faces(photo: np.ndarray, *, threshold: float = 0.5, landmarks: str = DEFAULT_LANDMARKS,
                 in_size: int = FACE_OUT_SIZE) -> list[Face]:
    """Faces of uint8 RGB ``photo`` (H, W, 3) whose HOG score exceeds ``threshold``, left to right. ``matrix`` maps
    to an ``in_size`` crop (:meth:`Face.for_size` re-targets it; :func:`restore_photo` does so itself)."""
    require_dlib(landmarks)
    detector, predictor = _dlib_models(landmarks)
    img = np.ascontiguousarray(photo, np.uint8)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"photo has shape {img.shape}; expected uint8 (H, W, 3) RGB")
    upsample = sum(img.shape[0] * img.shape[1] <= limit for limit in UPSAMPLE_BELOW_PIXELS)
    with _DLIB_LOCK:   # the web page may call from several threads; dlib's objects are shared
        rects, scores, _ = detector.run(img, upsample, float(threshold))
        shapes = [predictor(img, rect) for rect in rects]
    faces = []
    for rect, score, shape in zip(rects, scores, shapes, strict=True):
        pts = np.array([[p.x, p.y] for p in shape.parts()], np.float64)
        lm5 = fa.landmarks5_from_68(pts) if landmarks == "68" else fa.landmarks5_from_dlib5(pts)
        faces.append(Face((float(rect.left()), float(rect.top()), float(rect.right()), float(rect.bottom())), lm5,
                          float(score), fa.crop_matrix(lm5, in_size)))
    return sorted(faces, key=lambda f: (f.box[0], f.box[1]))


def check_face_model(meta: dict, where: str) -> None:
    """UserError unless ``meta`` (a model.json) is a GLEAN for faces: kind glean with out_size 1024 (the FFHQ bank:
    glean_ffhq_16x, glean_in128out1024)."""
    gen = meta.get("generator") or {}
    if meta.get("kind") != "glean" or gen.get("kind") != "glean":
        raise UserError(f"{where}: holds a {meta.get('kind')!r} model; expected a GLEAN for faces (glean_ffhq_16x or "
                        "glean_in128out1024)")
    if gen.get("out_size") != FACE_OUT_SIZE:
        raise UserError(f"{where}: a GLEAN {gen.get('in_size')}->{gen.get('out_size')}, not one for human faces; "
                        f"expected out_size {FACE_OUT_SIZE} (glean_ffhq_16x or glean_in128out1024), or pass "
                        "--any-model for a custom face GLEAN")


def restore_faces(photo: np.ndarray, faces: Sequence[Face], restore: Callable[[np.ndarray], np.ndarray],
                  in_size: int, out_size: int, progress: Callable[[float, str], None] | None = None,
                  span: tuple[float, float] = (0.0, 1.0)) -> list[np.ndarray]:
    """GLEAN's uint8 (out_size, out_size, 3) output per face (one ``restore`` call per face, batch of 1)."""
    out = []
    for i, face in enumerate(faces):
        crop = fa.align_crop(photo, fa.crop_matrix(face.landmarks5, in_size), in_size)
        got = np.asarray(restore(crop[None]))
        if got.shape != (1, out_size, out_size, 3) or got.dtype != np.uint8:
            raise ValueError(f"restore returned {got.dtype} {got.shape}; expected uint8 (1, {out_size}, {out_size}, 3)")
        out.append(got[0])
        if progress:
            progress(span[0] + (span[1] - span[0]) * (i + 1) / len(faces), f"restored face {i + 1} of {len(faces)}")
    return out


def restore_photo(photo: np.ndarray, restore: Callable[[np.ndarray], np.ndarray], in_size: int, out_size: int,
                  upscale: int, *, faces: list[Face] | None = None, threshold: float = 0.5,
                  landmarks: str = DEFAULT_LANDMARKS,
                  progress: Callable[[float, str], None] | None = None) -> PhotoResult:
    """Detects (unless ``faces`` are given), aligns, restores and pastes back every face of uint8 RGB ``photo``
    onto the photo upscaled x``upscale`` (bicubic). Given faces are re-aligned from their ``landmarks5``."""
    import cv2

    photo = np.ascontiguousarray(photo, np.uint8)
    if photo.ndim != 3 or photo.shape[2] != 3:
        raise ValueError(f"photo has shape {photo.shape}; expected uint8 (H, W, 3) RGB")
    if int(upscale) != upscale or upscale < 1:
        raise UserError(f"upscale {upscale!r}; expected an integer >= 1")
    upscale = int(upscale)
    if progress:
        progress(0.0, "detecting faces")
    if faces is None:
        faces = detect_faces(photo, threshold=threshold, landmarks=landmarks, in_size=in_size)
    faces = [f.for_size(in_size) for f in faces]
    if progress:
        progress(0.1, f"found {len(faces)} face{'s' if len(faces) != 1 else ''}")
    restored = restore_faces(photo, faces, restore, in_size, out_size, progress, (0.1, 0.9))
    h, w = photo.shape[:2]
    canvas = photo.copy() if upscale == 1 else cv2.resize(photo, (w * upscale, h * upscale),
                                                          interpolation=cv2.INTER_CUBIC)
    # canvas pixel -> photo pixel -> crop pixel -> restored pixel
    canvas_to_photo = fa.invert(fa.scale_matrix(upscale))
    for face, out in zip(faces, restored, strict=True):
        m = fa.compose(fa.scale_matrix(out_size / in_size), fa.compose(face.matrix, canvas_to_photo))
        fa.paste(canvas, out, m, FEATHER)
    if progress:
        progress(1.0, "done")
    return PhotoResult(canvas, list(faces), restored)


# ------------------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m glean_jax.faces",
                                description="Restore the faces in photos with an FFHQ GLEAN and paste them back.")
    zoo.add_model_arguments(p, "the face GLEAN (glean_ffhq_16x or glean_in128out1024)")
    p.add_argument("inputs", nargs="+", metavar="PHOTO", help="photos or folders of them (PNG, JPEG, WebP, BMP)")
    p.add_argument("--output", required=True, help="output folder (created)")
    p.add_argument("--upscale", type=positive_int, default=None,
                   help="the picture's scale factor N (default out_size / in_size of the model)")
    p.add_argument("--json", default=None, help="where the faces are described (default OUTPUT/faces.json)")
    p.add_argument("--only-faces", action="store_true", help="write only the restored faces (and the JSON)")
    p.add_argument("--landmarks", choices=LANDMARK_CHOICES, default=DEFAULT_LANDMARKS,
                   help="dlib landmark model: 5 (default; no use restriction) or 68 (FFHQ's own; iBUG 300-W data, "
                        "non-commercial)")
    p.add_argument("--threshold", type=float, default=0.5, help="HOG detector score threshold (default 0.5)")
    p.add_argument("--any-model", action="store_true", help="accept any GLEAN, not only out_size 1024 ones")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (see the module docstring)."""
    from glean_jax import runtime

    args = build_parser().parse_args(argv)
    with runtime.compilation_cache(zoo.compile_cache_dir(args)):
        return _run(args)


def _plan(inputs: list[Path], out: Path, json_path: Path) -> None:
    """UserError for clashing stems and outputs that would overwrite an input."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--output {out}: exists and is not a folder; expected a folder")
    by_stem: dict[str, Path] = {}
    for f in inputs:
        if f.stem in by_stem:
            raise UserError(f"inputs {by_stem[f.stem]} and {f} would both be written to {out / (f.stem + '.png')}; "
                            "expected inputs with different file-name stems")
        by_stem[f.stem] = f
    outputs = {(out / f"{f.stem}.png").resolve(): out / f"{f.stem}.png" for f in inputs}
    outputs[json_path.resolve()] = json_path
    face_png = re.compile(r"(.+)_face[0-9]+\.png")
    for f in inputs:
        r = f.resolve()
        m = face_png.fullmatch(f.name)
        if r in outputs or (r.parent == out.resolve() and m and m.group(1) in by_stem):
            raise UserError(f"{f}: is an input and would be overwritten by an output ({outputs.get(r, f.name)}); "
                            "expected an --output that is not an input")


def _load(path: Path, upscale: int, only_faces: bool) -> np.ndarray:
    img = read_input(path)
    h, w_ = img.shape[:2]
    if not only_faces and h * w_ * upscale * upscale > MAX_PIXELS:
        raise UserError(f"{path}: {w_}x{h} x{upscale} would be {w_ * upscale}x{h * upscale}, over the {MAX_PIXELS} "
                        f"pixel limit; expected a smaller --upscale (at most "
                        f"{max(1, int((MAX_PIXELS / (h * w_)) ** 0.5))} here) or --only-faces")
    return img


def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from glean_jax.checkpoint import glean_geometry, load_meta

    require_dlib(args.landmarks)          # before a model download
    ckpt = zoo.model_from_arguments(args)
    in_size, out_size = glean_geometry(ckpt)
    if not args.any_model:
        check_face_model(load_meta(ckpt), str(ckpt))
    upscale = args.upscale
    if upscale is None:
        if out_size % in_size:
            raise UserError(f"{ckpt}: out_size / in_size = {out_size}/{in_size} is not an integer; pass --upscale N")
        upscale = out_size // in_size
    out = Path(args.output)
    json_path = Path(args.json) if args.json else out / "faces.json"
    inputs = list_images(args.inputs)
    _plan(inputs, out, json_path)

    photos, n_bad = load_each(inputs, lambda f: _load(f, upscale, args.only_faces))

    found = [detect_faces(img, threshold=args.threshold, landmarks=args.landmarks, in_size=in_size)
             for _, img in tqdm(photos, desc="detect", unit="photo", disable=None)]
    for (f, _), faces in zip(photos, found, strict=True):
        if not faces:
            what = "nothing written for it" if args.only_faces else f"writing the plain bicubic x{upscale} upscale"
            print(f"{f}: no face found (HOG score > {args.threshold}); {what}", file=sys.stderr)
    n_faces = sum(map(len, found))
    if args.only_faces and not n_faces:
        raise UserError(f"no face found in any of the {len(photos)} photos (HOG score > {args.threshold}); nothing "
                        "written (try a lower --threshold)")

    restore = None
    if n_faces:
        from glean_jax.images import to_uint8
        from glean_jax.inference import SRModel

        model = SRModel(ckpt)
        if (model.in_size, model.out_size) != (in_size, out_size):
            raise UserError(f"{ckpt}: model is {model.in_size}->{model.out_size}; expected {in_size}->{out_size}")

        def restore(x: np.ndarray) -> np.ndarray:
            return to_uint8(model.upscale_uint8(x))
    try:
        out.mkdir(parents=True, exist_ok=True)
        json_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--output {out}: cannot create the folder ({e.strerror or e})") from e
    report: dict[str, list[dict]] = {}
    bar = tqdm(total=n_faces + (0 if args.only_faces else len(photos)), desc="faces", unit="step", disable=None)
    for (f, img), faces in zip(photos, found, strict=True):
        if args.only_faces:
            restored = restore_faces(img, [x.for_size(in_size) for x in faces], restore, in_size, out_size) \
                if faces else []
        else:
            result = restore_photo(img, restore, in_size, out_size, upscale, faces=faces)
            restored = result.restored
            write_png(out / f"{f.stem}.png", result.image)
            bar.update(1)
        entries = []
        for i, (face, pic) in enumerate(zip(faces, restored, strict=True)):
            write_png(out / f"{f.stem}_face{i}.png", pic)
            entries.append({**face.to_json(), "file": f"{f.stem}_face{i}.png"})
            bar.update(1)
        report[f.name] = entries
    bar.close()
    try:
        atomic_write_bytes(json_path, (json.dumps(report, indent=2) + "\n").encode())
    except OSError as e:
        raise UserError(f"{json_path}: cannot write ({e.strerror or e})") from e
    n_without = sum(1 for x in found if not x)
    print(f"restored {n_faces} face{'s' if n_faces != 1 else ''} {in_size}->{out_size} in {len(photos)} photo"
          f"{'s' if len(photos) != 1 else ''}" + (f" ({n_without} without a face)" if n_without else "")
          + f" to {out}; faces described in {json_path}"
          + (f"; {n_bad} input{'s' if n_bad != 1 else ''} failed (listed above)" if n_bad else ""))
    return EXIT_USER_ERROR if n_bad else 0


if __name__ == "__main__":
    cli_entry(main)

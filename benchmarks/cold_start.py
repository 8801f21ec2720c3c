"""One picture, whole processes: ``upscale --model NAME`` the first time and the second time, against mmagic's own
inference of the same checkpoint, in one session.

    python benchmarks/cold_start.py [--models glean_cat_8x glean_ffhq_16x] [--repeats 2] [--json OUT.json]

For each model of the index (``glean_jax/model_index.json``), a checkpoint of the released architecture with random
weights (mmagic's ``GLEANStyleGANv2`` at the entry's geometry and mmagic's default widths, which is what the released
file holds, saved the way mmagic saves a restorer: ``{'state_dict': {'generator.<key>': ...}}``) is served from a
loopback HTTP server through a model index of its own, so the first run does what a user's first run does. Every
figure is the wall time of one fresh process, from spawn to exit, for one ``in_size`` picture (a crop of a photo that
scikit-image ships, area-resized):

* ``ours_first``: ``python -m glean_jax.upscale --model NAME IMG --output OUT`` with an empty cache: download,
  SHA-256, convert, compile, upscale, write the PNG;
* ``ours_second``: the same command again (the converted model and the compiled functions come from the cache);
* ``ours_no_xla_cache``: again with ``--no-cache`` (converted model, compiled afresh): what the compilation cache saves;
* ``mmagic``: mmagic's inference in a fresh process, as ``mmagic.apis.inferencers.ImageSuperResolutionInferencer``
  does it: ``Config.fromfile`` of mmagic's GLEAN config, ``MODELS.build`` of its generator, mmengine's
  ``load_checkpoint`` of the ``.pth``, mmcv's ``imread`` (RGB), the ``(x - 127.5) / 127.5`` of its
  ``DataPreprocessor``, the forward under ``torch.no_grad()``, de-normalise, clamp and BGR as its ``destruct``,
  ``tensor2img`` and ``imwrite`` as the inferencer's ``visualize``.
  (The inferencer itself cannot be built here: the oracle install lacks what ``SRGAN``'s full config pulls in.)

The runs alternate (ours, mmagic, ours, ...) so that the machine's drift hits both sides alike; the second-run and
mmagic figures are medians of ``--repeats`` runs. The PNGs of both sides are compared (the same picture to within
one grey level where float32 rounding lands on .5). Needs the oracle install (``requirements/oracle.txt``).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import http.server
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MMAGIC_CONFIGS = {"glean_cat_8x": "glean_x8_2xb8_cat", "glean_cat_16x": "glean_x16_2xb8_cat",
                  "glean_ffhq_16x": "glean_x16_2xb8_ffhq",
                  "glean_in128out1024": "glean_in128out1024_4xb2-300k_ffhq-celeba-hq"}


def mmagic_worker(config: str, pth: str, src: str, out: str) -> None:
    """mmagic's single-image inference (see the module docstring); runs in its own process."""
    from glean_jax import mmagic_reference as mo

    ns = mo.load()
    import mmagic
    import mmcv
    import torch
    from mmagic.utils import tensor2img
    from mmengine.config import Config
    from mmengine.runner import load_checkpoint

    cfg = Config.fromfile(os.path.join(os.path.dirname(mmagic.__file__), ".mim", "configs", "glean", config + ".py"))
    gen = cfg.model.generator.copy()
    gen.pop("init_cfg", None)   # the StyleGAN2 bank's download; the .pth below brings every weight
    model = ns.MODELS.build(gen).eval()
    load_checkpoint(model, pth, map_location="cpu", revise_keys=[(r"^generator\.", "")], strict=True, logger="silent")
    img = mmcv.imread(src, channel_order="rgb")
    x = (torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() - 127.5) / 127.5
    with torch.no_grad():
        pred = (model(x) * 127.5 + 127.5).clamp(0, 255)[:, [2, 1, 0]]   # DataPreprocessor.destruct: to BGR
    mmcv.imwrite(tensor2img(pred / 255.0)[..., ::-1], out)   # ImageSuperResolutionInferencer.visualize


def _picture(name: str, size: int, path: Path) -> None:
    from PIL import Image
    from skimage import data

    from glean_jax.upscale import area_resize

    photo = data.chelsea()[:, 50:350] if "cat" in name else data.astronaut()[20:220, 140:340]   # the cat; a face
    side = min(photo.shape[:2])
    Image.fromarray(area_resize(np.ascontiguousarray(photo[:side, :side]), size)).save(path)


def _random_release(name: str, entry: dict, path: Path) -> str:
    """A randomised mmagic checkpoint of ``name``'s released architecture at ``path``; returns its SHA-256."""
    from convert.torch_io import save_torch_state
    from glean_jax import mmagic_reference as mo

    g = mo.state_dict_numpy(mo.build_glean(entry["in_size"], entry["out_size"], seed=0))
    save_torch_state(path, {f"generator.{k}": v for k, v in g.items()}, wrap=True)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def _serve(directory: Path) -> http.server.ThreadingHTTPServer:
    handler = functools.partial(_QuietHandler, directory=str(directory))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    return wall


def bench_model(name: str, entry: dict, work: Path, repeats: int) -> dict:
    from PIL import Image

    serve = work / "serve"
    serve.mkdir()
    stem = Path(entry["url"]).name
    pth = serve / stem
    t0 = time.perf_counter()
    digest = _random_release(name, entry, pth)
    print(f"{name}: random {entry['in_size']}->{entry['out_size']} checkpoint, {pth.stat().st_size / 1e6:.0f} MB "
          f"({time.perf_counter() - t0:.0f} s to make)", flush=True)
    httpd = _serve(serve)
    index = work / "index.json"
    index.write_text(json.dumps({name: {"url": f"http://127.0.0.1:{httpd.server_address[1]}/{stem}",
                                        "sha256": digest, "kind": "glean", "in_size": entry["in_size"],
                                        "out_size": entry["out_size"]}}))
    img = work / "lq.png"
    _picture(name, entry["in_size"], img)
    env = {**os.environ, "GLEAN_JAX_CACHE": str(work / "cache"), "GLEAN_JAX_MODEL_INDEX": str(index)}
    ours = [sys.executable, "-m", "glean_jax.upscale", "--model", name, str(img), "--output"]
    mm = [sys.executable, str(Path(__file__).resolve()), "--mmagic-worker", MMAGIC_CONFIGS[name], str(pth), str(img)]

    times: dict[str, list[float]] = {"ours_first": [], "ours_second": [], "ours_no_xla_cache": [], "mmagic": []}
    times["ours_first"].append(_timed([*ours, str(work / "first.png")], env))
    for i in range(repeats):
        times["mmagic"].append(_timed([*mm, str(work / "mmagic.png")], env))
        times["ours_second"].append(_timed([*ours, str(work / f"second{i}.png")], env))
    times["ours_no_xla_cache"].append(_timed([*ours, str(work / "nocache.png"), "--no-cache"], env))
    httpd.shutdown()

    first = np.asarray(Image.open(work / "first.png"), np.int16)
    theirs = np.asarray(Image.open(work / "mmagic.png").convert("RGB"), np.int16)
    same_every_run = all(np.array_equal(first, np.asarray(Image.open(work / f), np.int16))
                         for f in [*(f"second{i}.png" for i in range(repeats)), "nocache.png"])
    diff = np.abs(first - theirs)
    row = {"model": name, "geometry": f"{entry['in_size']}->{entry['out_size']}",
           "checkpoint_mb": round(pth.stat().st_size / 1e6, 1), "times_s": times,
           **{k: round(statistics.median(v), 2) for k, v in times.items()},
           "xla_cache_entries": len(list((work / "cache" / "xla").iterdir())),
           "ours_identical_every_run": same_every_run, "vs_mmagic_max_abs_diff": int(diff.max()),
           "vs_mmagic_pixels_differing": float(np.mean(diff > 0))}
    row["second_over_first"] = round(row["ours_second"] / row["ours_first"], 3)
    row["second_over_mmagic"] = round(row["ours_second"] / row["mmagic"], 3)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["glean_cat_8x", "glean_ffhq_16x"])
    ap.add_argument("--repeats", type=int, default=2, help="second runs and mmagic runs per model (median)")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--mmagic-worker", nargs=4, metavar=("CONFIG", "PTH", "IN", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mmagic_worker:
        mmagic_worker(*args.mmagic_worker)
        return 0
    from glean_jax import zoo

    index = zoo.load_index()
    rows = []
    for name in args.models:
        with tempfile.TemporaryDirectory(prefix=f"cold_start_{name}_") as tmp:
            rows.append(bench_model(name, index[name], Path(tmp), args.repeats))
    head = ("model", "geometry", "ours_first", "ours_second", "ours_no_xla_cache", "mmagic", "second_over_first",
            "second_over_mmagic", "vs_mmagic_max_abs_diff")
    print("\n" + " | ".join(head))
    for r in rows:
        print(" | ".join(str(r[k]) for k in head))
    if args.json:
        result = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
                  "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                              "load_avg_end": os.getloadavg()[0]},
                  "date": time.strftime("%Y-%m-%d"), "results": rows}
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

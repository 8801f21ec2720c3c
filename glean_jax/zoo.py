"""The model zoo: names -> verified, cached, converted model directories.

    python -m glean_jax.zoo [list]                 # the known models, and what of each is in the cache
    python -m glean_jax.zoo fetch NAME...          # download, verify and convert; prints each model directory
    python -m glean_jax.zoo --model-index FILE ... # another index (also $GLEAN_JAX_MODEL_INDEX)

The index (``glean_jax/model_index.json``) maps a name to ``{"url", "sha256", "kind", "description", "config",
"psnr", "in_size", "out_size"}``: mmagic's four released GLEAN restorers (``download.openmmlab.com/mmediting/
restorers/glean/``, PSNRs as mmagic's ``configs/glean/README.md`` reports them), the two official StyleGAN2 config-f
banks they were trained with (``.../mmediting/stylegan2/official_weights/``) and torchvision's ImageNet VGG16
(``download.pytorch.org/models/vgg16-397923af.pth``). ``sha256`` is the file's SHA-256 in hex, whole or a prefix of
at least 8 digits: OpenMMLab's ``publish_model`` (mmcv/mmengine) names a published file ``<stem>-<sha256[:8]>.pth``,
and torchvision/``torch.hub`` names its files the same way (``check_hash`` compares that prefix of the SHA-256), so
those 8 digits are what the file names themselves pin down.

The cache (``$GLEAN_JAX_CACHE``, default ``~/.cache/glean_jax``)::

    downloads/<file>            verified downloads (renamed into place only after the SHA-256 matched)
    downloads/<file>.part       a download in progress or cut off; the next fetch resumes it (HTTP Range)
    models/<name>-<sha8>/       the converted model directory (model.json + variables/, see glean_jax.checkpoint)
    pth/<sha256>/               a user's .pth (resolve_checkpoint) converted, keyed by the SHA-256 of its bytes
    locks/<file>.lock, locks/pth-<sha256>.lock
                                fcntl.flock locks: two processes fetching the same model download and convert once

Model directories appear by one rename of a finished directory (a temporary sibling ``.<dir>.tmp-*`` is converted
into first), so a directory with ``model.json`` is always complete. Importing this module imports neither jax nor
torch; the converters (``convert.mmagic``, ``convert.torchvision_vgg16``) are imported only to convert.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlparse

from glean_jax.errors import UserError, cli_entry

INDEX_FILE = Path(__file__).with_name("model_index.json")
CACHE_ENV = "GLEAN_JAX_CACHE"
INDEX_ENV = "GLEAN_JAX_MODEL_INDEX"
KINDS = ("glean", "stylegan2", "vgg16")
META_FILE = "model.json"   # = glean_jax.checkpoint.META_FILE (not imported: that module imports jax)
TIMEOUT_S = 60.0           # per socket operation (connect, each read), not for the whole download
CHUNK = 1 << 20
USER_AGENT = "glean-jax-zoo (python urllib)"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_HEX_RE = re.compile(r"[0-9a-fA-F]{8,64}")
# Signs that a folder is a training run's WORKDIR (glean_jax.training.loop writes these).
_WORKDIR_MARKERS = ("best_psnr", "checkpoints", "tb", "samples", "summary.json")


# ---------------------------------------------------------------------------------------------------- small helpers
def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _one_line(x: object) -> str:
    return " ".join(str(x).split())


def cache_dir() -> Path:
    """``$GLEAN_JAX_CACHE`` or ``~/.cache/glean_jax`` (not created here)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "glean_jax"


def _mkdir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{path}: cannot create the cache folder ({e.strerror or e}); set {CACHE_ENV} to a "
                        "writable folder") from e
    return path


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _locked(path: Path, what: str) -> Iterator[None]:
    """An exclusive ``fcntl.flock`` on ``path`` for the block (no lock where fcntl does not exist)."""
    _mkdir(path.parent)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(path, "a+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"waiting for another process {what} (lock {path})")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------------------------------ index
def load_index(path: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """The model index: ``path``, else ``$GLEAN_JAX_MODEL_INDEX``, else the packaged ``model_index.json``.

    Each entry must hold a ``url`` (http, https or file) ending in a file name and a ``sha256`` of 8-64 hex digits;
    ``kind``, when given, is one of glean/stylegan2/vgg16 (without it the file is converted by ``convert.mmagic``,
    which detects GLEAN or StyleGAN2). Anything else is a one-line UserError naming the file and the entry."""
    src = Path(path if path is not None else os.environ.get(INDEX_ENV) or INDEX_FILE)
    try:
        text = src.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{src}: no such model index file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{src}: cannot read the model index ({_one_line(getattr(e, 'strerror', None) or e)})") \
            from e
    expected = 'expected a JSON object {"name": {"url": ..., "sha256": ..., "kind": ...}, ...}'
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{src}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); {expected}") from None
    if not isinstance(data, dict):
        raise UserError(f"{src}: holds a JSON {type(data).__name__}; {expected}")
    if not data:
        raise UserError(f"{src}: the index is empty; {expected}")
    index: dict[str, dict[str, Any]] = {}
    for name, entry in data.items():
        where = f"{src}: entry {name!r}"
        if not _NAME_RE.fullmatch(name):
            raise UserError(f"{where}: bad name; expected letters, digits, '.', '_' or '-' (it names cache folders)")
        if not isinstance(entry, dict):
            raise UserError(f"{where} is a {type(entry).__name__}; expected an object with url and sha256")
        for key in ("url", "sha256"):
            if key not in entry:
                raise UserError(f"{where} lacks {key!r}; expected an object with url and sha256")
            if not isinstance(entry[key], str):
                raise UserError(f"{where}: {key} is a {type(entry[key]).__name__}; expected a string")
        sha = entry["sha256"]
        if not _HEX_RE.fullmatch(sha):
            raise UserError(f"{where}: sha256 {sha!r} is not 8 to 64 hex digits; expected the file's SHA-256 in hex, "
                            "whole or a prefix of at least 8 digits")
        url = urlparse(entry["url"])
        if url.scheme not in ("http", "https", "file") or not _NAME_RE.fullmatch(file_name(entry)):
            raise UserError(f"{where}: url {entry['url']!r}; expected an http(s) or file URL ending in a file name "
                            "(letters, digits, '.', '_', '-')")
        kind = entry.get("kind")
        if kind is not None and kind not in KINDS:
            raise UserError(f"{where}: kind {kind!r}; expected one of {', '.join(KINDS)}")
        for key in ("in_size", "out_size"):
            if key in entry and (not isinstance(entry[key], int) or isinstance(entry[key], bool) or entry[key] < 1):
                raise UserError(f"{where}: {key} {entry[key]!r}; expected a positive integer")
        if "psnr" in entry and (not isinstance(entry["psnr"], int | float) or isinstance(entry["psnr"], bool)):
            raise UserError(f"{where}: psnr {entry['psnr']!r}; expected a number (dB)")
        index[name] = {**entry, "sha256": sha.lower()}
    return index


def _as_index(index: dict | str | os.PathLike | None) -> dict[str, dict[str, Any]]:
    return index if isinstance(index, dict) else load_index(index)


def _entry(index: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    if name not in index:
        raise UserError(f"unknown model {name!r}; known names: {', '.join(index)}")
    return index[name]


def file_name(entry: dict[str, Any]) -> str:
    """The file name of an entry's download (the last part of its URL)."""
    return unquote(urlparse(entry["url"]).path).rsplit("/", 1)[-1]


def model_dir(name: str, entry: dict[str, Any]) -> Path:
    """``<cache>/models/<name>-<sha8>``: where ``fetch(name)`` puts the converted model."""
    return cache_dir() / "models" / f"{name}-{entry['sha256'][:8]}"


def cache_state(name: str, entry: dict[str, Any]) -> str:
    """'converted', 'downloaded', 'partial (N MB)' or 'not cached'."""
    if (model_dir(name, entry) / META_FILE).is_file():
        return "converted"
    dl = cache_dir() / "downloads" / file_name(entry)
    if dl.is_file():
        return "downloaded"
    part = dl.with_name(dl.name + ".part")
    if part.is_file():
        return f"partial ({part.stat().st_size / 1e6:.1f} MB)"
    return "not cached"


# --------------------------------------------------------------------------------------------------------- download
def _write(f: BinaryIO, data: bytes) -> None:
    """Writes all of ``data`` to the unbuffered file ``f`` (a failing write leaves a prefix of the stream)."""
    view = memoryview(data)
    while view:
        n = f.write(view)
        view = view[n or 0:]


def _net_error(url: str, why: str, part: Path) -> UserError:
    kept = part.stat().st_size if part.is_file() else 0
    tail = (f"run the same command again to resume the download ({kept} bytes kept in {part})" if kept else
            "run the same command again to retry")
    return UserError(f"download of {url} failed ({_one_line(why)}); {tail}")


def _content_range_start(value: str | None) -> int | None:
    m = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", value or "")
    return int(m.group(1)) if m else None


def _download(url: str, expected: str, dest: Path, progress: bool) -> None:
    """Downloads ``url`` to ``dest`` through ``dest.part``: resumes a partial file with ``Range: bytes=N-`` (a 200
    answer restarts from byte 0), checks the SHA-256 prefix ``expected`` and only then renames the file into place.
    A wrong digest deletes the .part; network errors and a full disk keep it (the next call resumes). The caller
    holds the lock."""
    import http.client
    from urllib.error import HTTPError, URLError
    from urllib.request import Request, urlopen

    from tqdm import tqdm

    part = dest.with_name(dest.name + ".part")
    for _attempt in range(2):   # a second pass only after a 416 on a stale .part
        have = part.stat().st_size if part.is_file() else 0
        req = Request(url, headers={"User-Agent": USER_AGENT})
        if have:
            req.add_header("Range", f"bytes={have}-")
        try:
            resp = urlopen(req, timeout=TIMEOUT_S)
        except HTTPError as e:
            e.close()
            if e.code == 416 and have:   # nothing left after byte `have`: complete already, or stale
                if sha256_file(part).startswith(expected):
                    os.replace(part, dest)
                    return
                part.unlink()
                continue
            raise _net_error(url, f"HTTP {e.code} {e.reason}", part) from None
        except (URLError, OSError, http.client.HTTPException, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            raise _net_error(url, str(reason) or type(e).__name__, part) from None
        with resp:
            start = _content_range_start(resp.headers.get("Content-Range")) if resp.status == 206 else None
            if have and start != have:
                if progress:
                    _say(f"{url}: the server did not resume at byte {have}; downloading from the start")
                have = 0
            length = resp.headers.get("Content-Length")
            length = int(length) if length and length.isdigit() else None
            h = hashlib.sha256()
            if have:
                with open(part, "rb") as f:
                    for chunk in iter(lambda: f.read(CHUNK), b""):
                        h.update(chunk)
            got = 0
            with open(part, "ab" if have else "wb", buffering=0) as f, \
                    tqdm(total=None if length is None else have + length, initial=have, unit="B", unit_scale=True,
                         unit_divisor=1024, desc=dest.name, file=sys.stderr, disable=not progress,
                         leave=False) as bar:
                while True:
                    try:
                        chunk = resp.read(CHUNK)
                    except (OSError, http.client.HTTPException) as e:
                        raise _net_error(url, f"{type(e).__name__}: {e}", part) from None
                    if not chunk:
                        break
                    try:
                        _write(f, chunk)
                    except OSError as e:
                        if e.errno == errno.ENOSPC:
                            raise UserError(
                                f"{part}: disk full while downloading {url} ({have + got} bytes written); free space "
                                f"or set {CACHE_ENV} to another disk, then run again to resume (the partial file is "
                                "kept; nothing was cached)") from None
                        raise UserError(f"{part}: cannot write ({e.strerror or e}); nothing was cached") from None
                    h.update(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
            if length is not None and got < length:
                raise _net_error(url, f"connection closed after {have + got} of {have + length} bytes", part)
        found = h.hexdigest()
        if not found.startswith(expected):
            size = part.stat().st_size
            part.unlink()
            raise UserError(f"{url}: SHA-256 mismatch: expected {expected[:8]}..., found {found[:8]}... ({size} bytes);"
                            " the file was deleted and nothing was cached (a wrong URL or index entry, or a corrupt "
                            "transfer)")
        os.replace(part, dest)
        return
    raise _net_error(url, "the server refused the range of a stale partial file (HTTP 416) twice", part)


# -------------------------------------------------------------------------------------------------------- convert
def _run_converter(src: Path, out: Path, kind: str | None) -> dict:
    """``convert.torchvision_vgg16.convert`` for kind vgg16, else ``convert.mmagic.convert_file`` (which detects a
    GLEAN restorer or a StyleGAN2 model); returns the model.json written to ``out``."""
    try:
        if kind == "vgg16":
            from convert.torchvision_vgg16 import convert as convert_vgg16

            return convert_vgg16(src, out)
        from convert.mmagic import convert_file

        return convert_file(src, out)[0]
    except UserError:
        raise
    except Exception as e:   # orbax/tensorstore may report a full disk with another type than OSError
        if getattr(e, "errno", None) == errno.ENOSPC or "No space left" in str(e):
            raise UserError(f"{out.parent.parent}: disk full while converting {src}; free space or set {CACHE_ENV} "
                            "to another disk, then run again (no model was cached)") from e
        raise


def _convert(src: Path, final: Path, kind: str | None, label: str) -> dict:
    """Converts ``src`` into a temporary sibling of ``final`` and renames it into place once complete (the caller
    holds the lock). ``kind`` (if given) must be what the file holds. Returns the model.json written."""
    parent = _mkdir(final.parent)
    for stale in parent.glob(f".{final.name}.tmp-*"):   # left by a killed process; we hold the lock
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=parent))
    try:
        out = tmp / "model"
        meta = _run_converter(src, out, kind)
        if kind is not None and meta.get("kind") != kind:
            raise UserError(f"{src}: holds a {meta.get('kind')!r} model; expected {kind!r} for {label}")
        try:
            os.rename(out, final)
        except OSError as e:
            raise UserError(f"{final}: cannot put the converted model in place ({e.strerror or e}); remove {final} "
                            "and run again") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


# ---------------------------------------------------------------------------------------------------------- public
def fetch(name: str, index: dict | str | os.PathLike | None = None, progress: bool = True) -> Path:
    """The converted model directory of ``name``: downloaded (resumably), SHA-256-verified and converted on first use
    (``<cache>/models/<name>-<sha8>``), reused afterwards without any network access.

    ``index``: a loaded index, a path to one, or None (:func:`load_index`). Concurrent calls from several processes
    download and convert once (the others wait on the lock and then find the result)."""
    idx = _as_index(index)
    entry = _entry(idx, name)
    final = model_dir(name, entry)
    if (final / META_FILE).is_file():
        return final
    root = cache_dir()
    dl = _mkdir(root / "downloads") / file_name(entry)
    with _locked(root / "locks" / f"{dl.name}.lock", f"fetching {name}"):
        if (final / META_FILE).is_file():
            return final
        sha = entry["sha256"]
        if dl.is_file():
            found = sha256_file(dl)
            if not found.startswith(sha):
                _say(f"{dl}: SHA-256 {found[:8]}... does not match the index ({sha[:8]}...); downloading again")
                dl.unlink()
        if not dl.is_file():
            if progress:
                _say(f"downloading {entry['url']}")
            _download(entry["url"], sha, dl, progress)
        if progress:
            _say(f"converting {dl.name} -> {final}")
        _convert(dl, final, entry.get("kind"), f"model {name!r}")
    return final


def resolve_checkpoint(arg: str | os.PathLike, index: dict | str | os.PathLike | None = None) -> Path:
    """What a CLI's ``--checkpoint`` names, as a model directory:

    * a model directory (has model.json): itself;
    * a training WORKDIR (has ``model/model.json``): its ``model/`` export (the final one), saying so on stderr;
    * a ``.pth``/``.pt`` file (an mmagic GLEAN or StyleGAN2 checkpoint): converted by ``convert.mmagic`` into
      ``<cache>/pth/<sha256>/`` once (keyed by the file's digest, so a renamed or copied file is not converted again);
    * a name of the model index (when no such path exists): :func:`fetch`.
    """
    p = Path(arg)
    if p.is_dir():
        if (p / META_FILE).is_file():
            return p
        if (p / "model" / META_FILE).is_file():
            _say(f"using {p / 'model'} (the final export of the training run)")
            return p / "model"
        if any((p / m).exists() for m in _WORKDIR_MARKERS):
            best = p / "best_psnr"
            hint = f"pass {best} (the best model by PSNR so far) or " if (best / META_FILE).is_file() else ""
            raise UserError(f"{p}: a training run without its final export (no model/{META_FILE} yet); {hint}wait "
                            "for the run to finish")
        raise UserError(f"{p}: not a model directory (no {META_FILE}) nor a training WORKDIR (no model/{META_FILE}); "
                        "expected a directory written by convert or train, a WORKDIR, a .pth file or a model name")
    if p.is_file():
        if p.suffix.lower() not in (".pth", ".pt"):
            raise UserError(f"{p}: not a .pth file; expected a model directory, a training WORKDIR, an mmagic .pth "
                            "checkpoint or a model name")
        try:
            digest = sha256_file(p)
        except OSError as e:
            raise UserError(f"{p}: cannot read ({e.strerror or e})") from e
        root = cache_dir()
        final = root / "pth" / digest
        if not (final / META_FILE).is_file():
            with _locked(root / "locks" / f"pth-{digest}.lock", f"converting {p}"):
                if not (final / META_FILE).is_file():
                    _say(f"converting {p} -> {final} (once; cached by the file's SHA-256)")
                    _convert(p, final, None, str(p))
                    return final
        _say(f"using {final} ({p} converted before; same SHA-256 {digest[:8]}...)")
        return final
    if not p.exists() and os.sep not in str(arg):
        idx = _as_index(index)
        if str(arg) in idx:
            return fetch(str(arg), idx)
        raise UserError(f"{arg}: no such file or directory, nor a model name ({', '.join(idx)}); expected a model "
                        "directory, a training WORKDIR, a .pth file or a model name")
    raise UserError(f"{arg}: no such file or directory; expected a model directory, a training WORKDIR, a .pth file or "
                    "a model name")


# ------------------------------------------------------------------------------------------------------------- CLI
def _geometry(entry: dict[str, Any]) -> str:
    if "in_size" in entry and "out_size" in entry:
        return f"{entry['in_size']}->{entry['out_size']}"
    if "out_size" in entry:
        return f"{entry['out_size']} px"
    return "-"


def _table(index: dict[str, dict[str, Any]]) -> str:
    rows = [("name", "kind", "size", "PSNR", "cache", "what it is")]
    for name, e in index.items():
        rows.append((name, e.get("kind") or "auto", _geometry(e), f"{e['psnr']:.2f}" if "psnr" in e else "-",
                     cache_state(name, e), e.get("description", "")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
                     for r in rows)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m glean_jax.zoo [--model-index FILE] [list | fetch NAME...]``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model-index", default=argparse.SUPPRESS, metavar="FILE",
                        help=f"model index JSON (default: ${INDEX_ENV} or the packaged glean_jax/model_index.json)")
    ap = argparse.ArgumentParser(prog="python -m glean_jax.zoo", parents=[common],
                                 description="The released models: list them, or download+verify+convert them.")
    sub = ap.add_subparsers(dest="cmd")
    sub.add_parser("list", parents=[common], help="the known models and their state in the cache (default)")
    f = sub.add_parser("fetch", parents=[common], help="download, verify and convert; prints each model directory")
    f.add_argument("names", nargs="+", metavar="NAME")
    f.add_argument("--quiet", action="store_true", help="no progress bar or status lines")
    args = ap.parse_args(list(sys.argv[1:] if argv is None else argv))
    index = load_index(getattr(args, "model_index", None))
    if args.cmd == "fetch":
        for name in args.names:
            _entry(index, name)   # every name checked before the first download
        for name in args.names:
            print(fetch(name, index, progress=not args.quiet), flush=True)
        return 0
    print(_table(index))
    print(f"\ncache: {cache_dir()} (${CACHE_ENV}); `python -m glean_jax.zoo fetch NAME` downloads, verifies and "
          "converts")
    return 0


def add_model_arguments(parser: Any, what: str) -> None:
    """``--checkpoint PATH`` / ``--model NAME`` (one of them) and ``--model-index FILE`` for a CLI that reads a
    model: ``what`` says which models it takes (help text)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--checkpoint", help=f"{what}: a model directory (convert.mmagic or train), a training "
                                            "workdir (its model/ export), an mmagic .pth (converted once into the "
                                            "cache) or a model name")
    group.add_argument("--model", help="a model name of the index (python -m glean_jax.zoo list): downloaded, "
                                       "verified and converted on first use, cached after")
    parser.add_argument("--model-index", default=None,
                        help="another model index (JSON name -> {url, sha256}); default $GLEAN_JAX_MODEL_INDEX or "
                             "the packaged one")
    parser.add_argument("--no-cache", action="store_true",
                        help="do not keep compiled functions in the cache (<cache>/xla, JAX's persistent compilation "
                             "cache: a second run loads them instead of compiling)")


def compile_cache_dir(args: Any) -> Path | None:
    """Where a CLI keeps its compiled functions (``glean_jax.runtime.compilation_cache``): ``<cache>/xla``, or None
    with ``--no-cache`` (see :func:`add_model_arguments`)."""
    return None if getattr(args, "no_cache", True) else cache_dir() / "xla"


def model_from_arguments(args: Any, required: bool = True) -> Path | None:
    """The model directory that ``--checkpoint`` / ``--model`` (see :func:`add_model_arguments`) name; None when
    neither is given and not ``required`` (else one line)."""
    if getattr(args, "model", None):
        return fetch(args.model, args.model_index)
    if getattr(args, "checkpoint", None):
        return resolve_checkpoint(args.checkpoint, args.model_index)
    if required:
        raise UserError("--checkpoint or --model: missing; expected a model directory, a .pth, a training workdir "
                        "or a model name (python -m glean_jax.zoo list)")
    return None


if __name__ == "__main__":
    cli_entry(main)

"""The model zoo (``glean_jax.zoo``) against a loopback HTTP server: download, SHA-256 check, resume, locking,
conversion, the cache layout, and every failure as one line.

The server (``http.server`` on 127.0.0.1, port 0) answers ``Range: bytes=N-`` with 206 and can be told to cut the
next response after N bytes, to ignore ranges (answer 200), to serve a corrupted file, or to be slow. The checkpoints
it serves are randomised mmagic modules of the released architectures (``GLEANStyleGANv2``, ``StyleGAN2Generator``
as the ``generator_ema`` of a model checkpoint) made small (16 -> 64, one RRDB, channel_multiplier 1), written as
torch files the way mmagic's restorer checkpoints hold them (``{'state_dict': {'generator.<key>': ...}}``).
"""

import errno
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jax
import numpy as np
import pytest

from glean_jax import zoo
from glean_jax.errors import UserError, run_cli

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------------ the file server
class FileServer:
    """Serves ``files`` (path -> bytes) on 127.0.0.1 with Range support and fault knobs; records every request."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.reset()
        srv = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):  # noqa: N802 - http.server's name
                srv.requests.append((self.path, self.headers.get("Range")))
                data = srv.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                if srv.corrupt:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                start, rng = 0, self.headers.get("Range")
                m = re.fullmatch(r"bytes=(\d+)-", rng or "")
                if m and not srv.ignore_range:
                    start = int(m.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = memoryview(data)[start:]
                if srv.drop_after is not None:   # send part of the body, then hang up (once)
                    body, srv.drop_after = body[:srv.drop_after], None
                    self.wfile.write(body)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                try:
                    for i in range(0, len(body), 1 << 20):
                        self.wfile.write(body[i:i + (1 << 20)])
                        if srv.delay:
                            time.sleep(srv.delay)
                except (BrokenPipeError, ConnectionResetError):   # the client gave up (timeout test)
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def reset(self) -> None:
        self.requests.clear()
        self.drop_after: int | None = None
        self.corrupt = False
        self.ignore_range = False
        self.delay = 0.0

    def add(self, name: str, data: bytes) -> str:
        self.files["/" + name] = data
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def gets(self, name: str) -> list[str | None]:
        """The Range headers of the requests for ``name`` (None: a whole-file request)."""
        return [r for p, r in self.requests if p == "/" + name]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server():
    s = FileServer()
    yield s
    s.close()


@pytest.fixture
def srv(server):
    server.reset()
    yield server
    server.reset()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("GLEAN_JAX_CACHE", str(d))
    monkeypatch.delenv("GLEAN_JAX_MODEL_INDEX", raising=False)
    return d


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _index(path: Path, entries: dict) -> Path:
    path.write_text(json.dumps(entries))
    return path


def _serve(srv: FileServer, stem: str, data: bytes, **entry) -> tuple[str, dict]:
    """Serves ``data`` as ``<stem>-<sha8>.pth`` (named as OpenMMLab names its files); returns (file, index entry)."""
    sha = _sha(data)
    name = f"{stem}-{sha[:8]}.pth"
    return name, {"url": srv.add(name, data), "sha256": sha[:8], **entry}


def _error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    return msg


def _no_cached_model(cache: Path) -> None:
    models = cache / "models"
    assert not models.exists() or not [p for p in models.iterdir()], list(models.iterdir())


# ------------------------------------------------------------------------------------- randomised mmagic checkpoints
@pytest.fixture(scope="module")
def ckpts(module_tmp):
    """Small randomised mmagic checkpoints: a GLEAN restorer (16 -> 64) and a StyleGAN2 model (64 px)."""
    from tests.oracle import load_or_skip

    load_or_skip()
    from convert.torch_io import save_torch_state
    from glean_jax import mmagic_reference as mo

    d = module_tmp("zoo_ckpts")
    g = mo.state_dict_numpy(mo.build_glean(16, 64, seed=0, num_rrdbs=1, channel_multiplier=1, style_channels=64))
    save_torch_state(d / "glean.pth", {f"generator.{k}": v for k, v in g.items()}, wrap=True)
    s = mo.state_dict_numpy(mo.build_generator(64, seed=1, channel_multiplier=1))
    save_torch_state(d / "sg2.pth", {f"generator_ema.{k}": v for k, v in s.items()}, wrap=True)
    return {"glean": d / "glean.pth", "sg2": d / "sg2.pth"}


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[prefix + k] = np.asarray(v)
    return out


# ------------------------------------------------------------------------------------------------------- the index
def test_packaged_index_names_files_by_their_sha256_prefix():
    index = zoo.load_index()
    assert set(index) == {"glean_cat_8x", "glean_cat_16x", "glean_ffhq_16x", "glean_in128out1024",
                          "stylegan2_cat256", "stylegan2_ffhq1024", "vgg16"}
    for name, e in index.items():
        file = zoo.file_name(e)
        # OpenMMLab's publish_model and torch.hub name files <stem>-<sha256[:8]>.pth
        assert file.endswith(f"-{e['sha256'][:8]}.pth"), (name, file)
        assert e["kind"] in zoo.KINDS and e["description"]
        if e["kind"] == "glean":
            assert e["url"].startswith("https://download.openmmlab.com/mmediting/restorers/glean/")
            assert (ROOT / e["config"]).is_file() and e["psnr"] > 20 and e["out_size"] > e["in_size"]
    assert index["glean_cat_8x"]["psnr"] == 23.98 and index["glean_in128out1024"]["in_size"] == 128
    assert index["vgg16"]["url"] == "https://download.pytorch.org/models/vgg16-397923af.pth"


@pytest.mark.parametrize("text, expect", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "holds a JSON list"),
    ('{"m": {"url": "http://h/m-12345678.pth"}}', "entry 'm' lacks 'sha256'"),
    ('{"m": {"sha256": "12345678"}}', "entry 'm' lacks 'url'"),
    ('{"m": {"url": "http://h/m.pth", "sha256": "1234567"}}', "entry 'm': sha256 '1234567' is not 8 to 64 hex"),
    ('{"m": {"url": "http://h/m.pth", "sha256": "1234567z"}}', "entry 'm': sha256 '1234567z' is not 8 to 64 hex"),
    ('{"m": {"url": "http://h/m.pth", "sha256": "12345678", "kind": "vgg19"}}', "entry 'm': kind 'vgg19'"),
    ('{"m": {"url": "ftp://h/m.pth", "sha256": "12345678"}}', "entry 'm': url 'ftp://h/m.pth'"),
    ('{"m": "x"}', "entry 'm' is a str"),
    ('{"m": {"url": "http://h/..", "sha256": "12345678"}}', "entry 'm': url 'http://h/..'"),
])
def test_bad_index_is_one_line_naming_file_and_entry(tmp_path, monkeypatch, text, expect):
    f = tmp_path / "index.json"
    f.write_text(text)
    with pytest.raises(UserError) as e:
        zoo.load_index(f)
    msg = _error(e)
    assert str(f) in msg and expect in msg, msg
    # the same through $GLEAN_JAX_MODEL_INDEX and the CLI: exit 2, one line
    monkeypatch.setenv("GLEAN_JAX_MODEL_INDEX", str(f))
    with pytest.raises(UserError, match=re.escape(expect)):
        zoo.load_index()
    assert run_cli(zoo.main, ["list"]) == 2


def test_unknown_name_lists_the_known_names(cache, capsys):
    with pytest.raises(UserError) as e:
        zoo.fetch("glean_dog_8x")
    msg = _error(e)
    assert "unknown model 'glean_dog_8x'" in msg and all(n in msg for n in zoo.load_index())
    assert run_cli(zoo.main, ["fetch", "glean_cat_8x", "glean_dog_8x"]) == 2   # checked before any download
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "glean_dog_8x" in err
    assert not (cache / "downloads").exists() or not list((cache / "downloads").iterdir())


# ------------------------------------------------------------------------------------------------ download failures
def test_wrong_bytes_fail_the_digest_and_cache_nothing(srv, cache, tmp_path):
    data = os.urandom(3 << 20)
    file, entry = _serve(srv, "m", data, kind="glean")
    srv.corrupt = True
    with pytest.raises(UserError) as e:
        zoo.fetch("m", _index(tmp_path / "i.json", {"m": entry}), progress=False)
    msg = _error(e)
    found = _sha(bytes([data[0] ^ 0xFF]) + data[1:])[:8]
    assert f"expected {entry['sha256']}" in msg and f"found {found}" in msg and entry["url"] in msg, msg
    assert list((cache / "downloads").iterdir()) == []   # the .part was deleted, no final file
    _no_cached_model(cache)
    # an index with the wrong digest for the right bytes: the same
    srv.corrupt = False
    bad = {**entry, "sha256": "0123abcd"}
    with pytest.raises(UserError, match="expected 0123abcd.*found " + _sha(data)[:8]):
        zoo.fetch("m", _index(tmp_path / "j.json", {"m": bad}), progress=False)
    assert list((cache / "downloads").iterdir()) == []
    _no_cached_model(cache)


def test_server_down_names_the_url(cache, tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()   # nothing listens there now: connection refused
    url = f"http://127.0.0.1:{port}/m-12345678.pth"
    with pytest.raises(UserError) as e:
        zoo.fetch("m", _index(tmp_path / "i.json", {"m": {"url": url, "sha256": "12345678"}}), progress=False)
    msg = _error(e)
    assert url in msg and "refused" in msg.lower() and "run the same command again" in msg, msg
    _no_cached_model(cache)


def test_stalled_server_times_out_and_keeps_the_part(srv, cache, tmp_path, monkeypatch):
    data = os.urandom(3 << 20)
    file, entry = _serve(srv, "m", data)
    srv.delay = 1.0   # after each 1 MiB
    monkeypatch.setattr(zoo, "TIMEOUT_S", 0.3)
    with pytest.raises(UserError) as e:
        zoo.fetch("m", _index(tmp_path / "i.json", {"m": entry}), progress=False)
    msg = _error(e)
    assert entry["url"] in msg and "timed out" in msg and "resume" in msg, msg
    part = cache / "downloads" / (file + ".part")
    assert part.read_bytes() == data[:1 << 20] and not (cache / "downloads" / file).exists()


def test_http_404_names_the_url(srv, cache, tmp_path):
    url = srv.add("there.pth", b"x")[:-len("there.pth")] + "missing-12345678.pth"
    with pytest.raises(UserError) as e:
        zoo.fetch("m", _index(tmp_path / "i.json", {"m": {"url": url, "sha256": "12345678"}}), progress=False)
    msg = _error(e)
    assert url in msg and "HTTP 404" in msg, msg


def test_disk_full_is_one_line_and_leaves_no_final_file(srv, cache, tmp_path, monkeypatch):
    data = os.urandom(3 << 20)
    file, entry = _serve(srv, "m", data)
    calls = []

    def write(f, chunk):
        calls.append(len(chunk))
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        f.write(chunk)

    monkeypatch.setattr(zoo, "_write", write)
    with pytest.raises(UserError) as e:
        zoo.fetch("m", _index(tmp_path / "i.json", {"m": entry}), progress=False)
    msg = _error(e)
    assert "disk full" in msg and entry["url"] in msg and "run again to resume" in msg, msg
    dl = cache / "downloads"
    assert not (dl / file).exists()
    assert (dl / (file + ".part")).stat().st_size == calls[0] == 1 << 20   # kept: a prefix of the file
    assert (dl / (file + ".part")).read_bytes() == data[:1 << 20]
    _no_cached_model(cache)


# ------------------------------------------------------------------------------------------- fetch (real checkpoints)
@pytest.mark.oracle
def test_fetch_downloads_verifies_converts_then_reuses(ckpts, srv, cache, tmp_path, capsys):
    from convert import mmagic as conv
    from glean_jax.checkpoint import load_model

    data = ckpts["glean"].read_bytes()
    file, entry = _serve(srv, "glean_small", data, kind="glean", in_size=16, out_size=64)
    entry["sha256"] = _sha(data)   # the full digest works as well as a prefix
    index = _index(tmp_path / "i.json", {"glean_small": entry})
    t0 = time.perf_counter()
    out = zoo.fetch("glean_small", index, progress=False)
    t_fetch = time.perf_counter() - t0
    assert out == cache / "models" / f"glean_small-{entry['sha256'][:8]}"
    assert srv.gets(file) == [None]
    assert (cache / "downloads" / file).read_bytes() == data
    assert not (cache / "downloads" / (file + ".part")).exists()
    assert [p.name for p in (cache / "models").iterdir()] == [out.name]   # no temporary siblings left

    meta, got = load_model(out)
    hand_meta, _ = conv.convert_file(ckpts["glean"], tmp_path / "by_hand")
    _, want = load_model(tmp_path / "by_hand")
    assert meta["kind"] == "glean" and meta["generator"] == hand_meta["generator"]
    assert meta["generator"]["in_size"] == 16 and meta["generator"]["out_size"] == 64
    assert meta["source"]["sha256"] == _sha(data)
    got, want = _flat(got), _flat(want)
    assert sorted(got) == sorted(want) and len(want) > 50
    for k in want:
        assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]), k

    # again: no request, the same directory untouched
    stamp = (out / "model.json").stat().st_mtime_ns
    t0 = time.perf_counter()
    assert zoo.fetch("glean_small", index, progress=False) == out
    assert time.perf_counter() - t0 < 1.0
    assert srv.gets(file) == [None] and (out / "model.json").stat().st_mtime_ns == stamp
    print(f"\nfetch of a {len(data) / 1e6:.0f} MB GLEAN: {t_fetch:.1f} s (download, verify, convert)")

    # the CLI: fetch prints the model directory (stdout), list shows it converted
    capsys.readouterr()
    assert run_cli(zoo.main, ["fetch", "glean_small", "--model-index", str(index)]) == 0
    assert capsys.readouterr().out == f"{out}\n" and srv.gets(file) == [None]
    assert run_cli(zoo.main, ["--model-index", str(index), "list"]) == 0
    line = capsys.readouterr().out.splitlines()[1]
    assert line.split()[:5] == ["glean_small", "glean", "16->64", "-", "converted"], line


@pytest.mark.oracle
def test_cut_download_resumes_with_a_range_request(ckpts, srv, cache, tmp_path, capsys):
    data = ckpts["sg2"].read_bytes()
    file, entry = _serve(srv, "sg2_small", data, kind="stylegan2")
    index = _index(tmp_path / "i.json", {"sg2_small": entry})
    srv.drop_after = cut = len(data) // 3
    with pytest.raises(UserError) as e:
        zoo.fetch("sg2_small", index, progress=False)
    msg = _error(e)
    part = cache / "downloads" / (file + ".part")
    assert entry["url"] in msg and "resume" in msg and f"{cut} of {len(data)} bytes" in msg, msg
    assert part.stat().st_size == cut and not (cache / "downloads" / file).exists()
    _no_cached_model(cache)

    out = zoo.fetch("sg2_small", index, progress=True)   # with the progress bar (stderr)
    assert srv.gets(file) == [None, f"bytes={cut}-"]
    assert (cache / "downloads" / file).read_bytes() == data and not part.exists()
    assert out.name == f"sg2_small-{entry['sha256']}" and (out / "model.json").is_file()
    assert json.loads((out / "model.json").read_text())["kind"] == "stylegan2"
    assert "downloading" in capsys.readouterr().err


@pytest.mark.oracle
def test_server_ignoring_the_range_restarts_from_zero(ckpts, srv, cache, tmp_path):
    data = ckpts["sg2"].read_bytes()
    file, entry = _serve(srv, "sg2_small", data)
    index = _index(tmp_path / "i.json", {"sg2_small": entry})
    srv.drop_after = len(data) // 2
    with pytest.raises(UserError):
        zoo.fetch("sg2_small", index, progress=False)
    srv.ignore_range = True   # answers 200 with the whole file to the Range request
    out = zoo.fetch("sg2_small", index, progress=False)
    assert srv.gets(file) == [None, f"bytes={len(data) // 2}-"]
    assert (cache / "downloads" / file).read_bytes() == data and (out / "model.json").is_file()


@pytest.mark.oracle
def test_kind_mismatch_caches_no_model(ckpts, srv, cache, tmp_path):
    file, entry = _serve(srv, "sg2_small", ckpts["sg2"].read_bytes(), kind="glean")
    with pytest.raises(UserError) as e:
        zoo.fetch("sg2_small", _index(tmp_path / "i.json", {"sg2_small": entry}), progress=False)
    msg = _error(e)
    assert "holds a 'stylegan2' model; expected 'glean'" in msg, msg
    _no_cached_model(cache)
    assert (cache / "downloads" / file).is_file()   # the verified download stays


@pytest.mark.oracle
def test_stale_cache_states_are_repaired(ckpts, srv, cache, tmp_path, capsys):
    """A complete .part that was never renamed (the server answers the range with 416) is verified and used; a cached
    download whose digest no longer matches is downloaded again."""
    data = ckpts["sg2"].read_bytes()
    file, entry = _serve(srv, "sg2_small", data)
    index = _index(tmp_path / "i.json", {"sg2_small": entry})
    dl = cache / "downloads"
    dl.mkdir(parents=True)
    (dl / (file + ".part")).write_bytes(data)
    out = zoo.fetch("sg2_small", index, progress=False)
    assert srv.gets(file) == [f"bytes={len(data)}-"] and (dl / file).read_bytes() == data
    shutil.rmtree(out)
    (dl / file).write_bytes(b"damaged")
    assert zoo.fetch("sg2_small", index, progress=False) == out
    assert "does not match the index" in capsys.readouterr().err
    assert srv.gets(file)[1:] == [None] and (dl / file).read_bytes() == data and (out / "model.json").is_file()


@pytest.mark.oracle
def test_disk_full_while_converting_caches_no_model(ckpts, srv, cache, tmp_path, monkeypatch):
    from convert import mmagic as conv

    def full(*args, **kwargs):
        raise ValueError("tensorstore: [Errno 28] No space left on device")

    monkeypatch.setattr(conv, "save_model", full)
    file, entry = _serve(srv, "sg2_small", ckpts["sg2"].read_bytes())
    with pytest.raises(UserError) as e:
        zoo.fetch("sg2_small", _index(tmp_path / "i.json", {"sg2_small": entry}), progress=False)
    assert "disk full while converting" in _error(e)
    assert list((cache / "models").iterdir()) == []   # no model, no temporary sibling
    assert (cache / "downloads" / file).is_file()


@pytest.mark.oracle
def test_vgg16_entry_uses_the_torchvision_converter(srv, cache, tmp_path):
    """kind vgg16 goes through convert.torchvision_vgg16: a randomised torchvision vgg16 state_dict (the 13 convs;
    ``classifier.*`` is optional there) comes out as model.json kind vgg16 with conv1_1..conv4_3."""
    pytest.importorskip("torch")
    from convert.torch_io import save_torch_state
    from glean_jax.checkpoint import load_model
    from glean_jax.models.vgg import VGG16_CONV_INDICES, conv_shape_torch

    rng = np.random.default_rng(0)
    state = {}
    for i in VGG16_CONV_INDICES:
        shape = conv_shape_torch(i)
        state[f"features.{i}.weight"] = rng.standard_normal(shape, dtype=np.float32) * 0.01
        state[f"features.{i}.bias"] = rng.standard_normal(shape[0], dtype=np.float32)
    save_torch_state(tmp_path / "vgg.pth", state)
    file, entry = _serve(srv, "vgg16", (tmp_path / "vgg.pth").read_bytes(), kind="vgg16")
    out = zoo.fetch("vgg16", _index(tmp_path / "i.json", {"vgg16": entry}), progress=False)
    meta, variables = load_model(out)
    assert meta["kind"] == "vgg16" and meta["source"]["format"] == "torchvision"
    params = variables["vgg"]["params"]
    assert sorted(params)[0] == "conv1_1" and "conv4_3" in params and "conv5_1" not in params
    assert np.array_equal(params["conv1_1"]["kernel"], state["features.0.weight"].transpose(2, 3, 1, 0))


@pytest.mark.oracle
def test_two_processes_download_once(ckpts, srv, cache, tmp_path):
    data = ckpts["sg2"].read_bytes()
    file, entry = _serve(srv, "sg2_small", data)
    index = _index(tmp_path / "i.json", {"sg2_small": entry})
    srv.delay = 1.5 / (len(data) >> 20)   # ~1.5 s for the download: the second process starts meanwhile
    env = {**os.environ, "GLEAN_JAX_CACHE": str(cache), "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    code = "import sys; from glean_jax import zoo; print(zoo.fetch('sg2_small', sys.argv[1], progress=False))"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(index)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    assert outs[0][0] == outs[1][0] == str(cache / "models" / f"sg2_small-{entry['sha256']}") + "\n"
    assert srv.gets(file) == [None]   # one download in all
    assert sum("waiting for another process" in err for _, err in outs) == 1, [err for _, err in outs]
    assert [p.name for p in (cache / "models").iterdir()] == [f"sg2_small-{entry['sha256']}"]


# ------------------------------------------------------------------------------------------------ resolve_checkpoint
@pytest.mark.oracle
def test_resolve_pth_converts_once_keyed_by_sha256(ckpts, cache, tmp_path, monkeypatch, capsys):
    from glean_jax.checkpoint import load_meta

    a = tmp_path / "a.pth"
    shutil.copy(ckpts["sg2"], a)
    out = zoo.resolve_checkpoint(str(a))
    digest = _sha(a.read_bytes())
    assert out == cache / "pth" / digest and load_meta(out)["kind"] == "stylegan2"
    assert "converting" in capsys.readouterr().err

    def no_convert(*args, **kwargs):
        raise AssertionError("converted twice")

    monkeypatch.setattr(zoo, "_convert", no_convert)
    b = tmp_path / "renamed.pth"   # same bytes under another name: the same cached model
    a.rename(b)
    assert zoo.resolve_checkpoint(b) == out
    assert "converted before" in capsys.readouterr().err
    assert [p.name for p in (cache / "pth").iterdir()] == [digest]


def test_resolve_model_dir_workdir_and_bad_paths(tmp_path, cache, capsys):
    model = tmp_path / "m"
    model.mkdir()
    (model / "model.json").write_text("{}")
    assert zoo.resolve_checkpoint(str(model)) == model

    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "model.json").write_text("{}")
    (run / "best_psnr").mkdir()
    assert zoo.resolve_checkpoint(str(run)) == run / "model"
    assert f"using {run / 'model'} (the final export of the training run)" in capsys.readouterr().err

    unfinished = tmp_path / "unfinished"
    (unfinished / "best_psnr").mkdir(parents=True)
    (unfinished / "best_psnr" / "model.json").write_text("{}")
    (unfinished / "checkpoints").mkdir()
    with pytest.raises(UserError) as e:
        zoo.resolve_checkpoint(unfinished)
    msg = _error(e)
    assert "without its final export" in msg and str(unfinished / "best_psnr") in msg, msg

    for bad, expect in [(tmp_path, "not a model directory"), (tmp_path / "nothing" / "here", "no such file"),
                        ("no_such_model", "nor a model name (glean_cat_8x"),
                        (model / "model.json", "not a .pth file")]:
        with pytest.raises(UserError) as e:
            zoo.resolve_checkpoint(bad)
        assert expect in _error(e), (bad, str(e.value))


@pytest.mark.oracle
def test_training_pretrained_takes_names_and_pth_files(ckpts, srv, cache, tmp_path, monkeypatch):
    """config.pretrained.* take zoo names and .pth files (training.config.resolve_pretrained, which train runs): a
    name is fetched through the index ($GLEAN_JAX_MODEL_INDEX), a .pth converted into the cache; the bank that
    training then loads is the fetched model's, array for array."""
    from glean_jax.arch import GleanArch
    from glean_jax.checkpoint import load_meta, load_model
    from glean_jax.training import step as S
    from glean_jax.training.config import base_config, pretrained_as_given, resolve_pretrained, validate_config
    from glean_jax.training.weights import initial_weights

    file, entry = _serve(srv, "sg2_train", ckpts["sg2"].read_bytes(), kind="stylegan2", out_size=64)
    monkeypatch.setenv("GLEAN_JAX_MODEL_INDEX", str(_index(tmp_path / "i.json", {"sg2_train": entry})))
    sg2 = load_meta(zoo.resolve_checkpoint(ckpts["sg2"]))["generator"]
    c = base_config()
    c.model.update(GleanArch(16, 64, rrdb_channels=8, num_rrdbs=1, style_channels=sg2["style_channels"],
                             num_mlps=sg2["num_mlps"], channel_multiplier=sg2["channel_multiplier"]).to_dict())
    c.pretrained.stylegan2 = "sg2_train"
    c.pretrained.allow_random = True   # the served StyleGAN2 holds no discriminator
    c.data.source = "synthetic"
    with pytest.raises(UserError, match="no such directory; expected a model directory"):
        validate_config(c)   # a name is not a directory until resolved
    given = resolve_pretrained(c)
    assert given == {"stylegan2": "sg2_train"}
    assert c.pretrained.stylegan2 == str(cache / "models" / f"sg2_train-{entry['sha256']}")
    assert srv.gets(file) == [None]
    validate_config(c)
    g, d = S.build_modules(c)
    gv, _, _, info = initial_weights(c, g, d)
    _, fetched = load_model(c.pretrained.stylegan2)
    want, got = _flat(fetched["generator"]["params"]), _flat(gv["params"][S.BANK])
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert info["bank"].startswith(str(cache / "models"))
    assert resolve_pretrained(c) == {} and srv.gets(file) == [None]   # a directory stays; nothing fetched again
    c.model.in_size, c.model.out_size = 32, 128   # a geometry the bank does not have: the error names the name
    with pytest.raises(UserError) as e, pretrained_as_given(c, given):
        validate_config(c)
    assert _error(e).startswith(f"config.pretrained.stylegan2='sg2_train' (converted: {c.pretrained.stylegan2}): the "
                                "StyleGAN2 generator has out_size=64 but the config needs 128"), str(e.value)

    glean = base_config()
    glean.pretrained.glean = str(ckpts["glean"])   # a released-style GLEAN .pth to fine-tune
    assert resolve_pretrained(glean) == {"glean": str(ckpts["glean"])}
    assert glean.pretrained.glean == str(cache / "pth" / _sha(ckpts["glean"].read_bytes()))
    assert load_meta(glean.pretrained.glean)["kind"] == "glean"


def test_train_with_an_unknown_pretrained_name_is_one_line(tmp_path, cache, capsys):
    from glean_jax import train

    workdir = tmp_path / "run"
    code = run_cli(train.main, ["--config", str(ROOT / "configs" / "demo.py"), "--workdir", str(workdir),
                                "--config.pretrained.stylegan2=stylegan2_dog512"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not workdir.exists()
    assert err[-1].startswith("error: config.pretrained.stylegan2='stylegan2_dog512': no such file or directory, nor "
                              "a model name (glean_cat_8x"), err


# ------------------------------------------------------------------------------------------------------------- list
def test_list_shows_every_packaged_name_and_its_cache_state(tmp_path):
    cache = tmp_path / "cache"
    index = zoo.load_index()
    (cache / "models" / "glean_cat_8x-d3ac8683").mkdir(parents=True)
    (cache / "models" / "glean_cat_8x-d3ac8683" / "model.json").write_text("{}")
    (cache / "downloads").mkdir()
    (cache / "downloads" / zoo.file_name(index["vgg16"])).write_bytes(b"v")
    (cache / "downloads" / (zoo.file_name(index["stylegan2_ffhq1024"]) + ".part")).write_bytes(b"p" * 2_500_000)
    env = {**os.environ, "GLEAN_JAX_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    env.pop("GLEAN_JAX_MODEL_INDEX", None)
    r = subprocess.run([sys.executable, "-m", "glean_jax.zoo", "list"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = {line.split()[0]: line for line in r.stdout.splitlines() if line.strip()}
    for name in index:
        assert name in lines, r.stdout
    assert "converted" in lines["glean_cat_8x"] and "23.98" in lines["glean_cat_8x"]
    assert "32->256" in lines["glean_cat_8x"] and "Cat100" in lines["glean_cat_8x"]
    assert "downloaded" in lines["vgg16"] and "partial (2.5 MB)" in lines["stylegan2_ffhq1024"]
    assert "not cached" in lines["glean_ffhq_16x"] and "1024 px" in lines["stylegan2_ffhq1024"]
    assert str(cache) in r.stdout
    # listing (and importing the module) imports neither jax nor torch
    code = ("import sys; from glean_jax import zoo; zoo.main(['list']); "
            "assert 'jax' not in sys.modules and 'torch' not in sys.modules, 'imported'")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_upscale_model_name_pth_and_workdir_equal_the_hand_conversion(ckpts, srv, cache, tmp_path, capsys):
    """The one-command path: ``upscale --model NAME --model-index I`` (downloaded, verified, converted into the cache),
    ``--checkpoint FILE.pth`` and ``--checkpoint WORKDIR`` (its model/ export) give the pictures that converting by
    hand and ``--checkpoint DIR`` give, byte for byte."""
    from PIL import Image

    from convert import mmagic as conv
    from glean_jax import upscale
    from glean_jax.errors import run_cli

    data = ckpts["glean"].read_bytes()
    _, entry = _serve(srv, "glean_cli", data, kind="glean", in_size=16, out_size=64)
    index = _index(tmp_path / "i.json", {"glean_cli": entry})
    img = tmp_path / "lq.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(img)
    (tmp_path / "work").mkdir()
    conv.convert_file(ckpts["glean"], tmp_path / "work" / "model")   # a training workdir's final export
    outs, cache_setting = {}, jax.config.jax_compilation_cache_dir
    for label, args in (("hand", ["--checkpoint", str(tmp_path / "work" / "model")]),
                        ("model", ["--model", "glean_cli", "--model-index", str(index)]),
                        ("pth", ["--checkpoint", str(ckpts["glean"])]),
                        ("workdir", ["--checkpoint", str(tmp_path / "work")])):
        assert run_cli(upscale.main, [*args, str(img), "--output", str(tmp_path / f"{label}.png")]) == 0, label
        outs[label] = np.asarray(Image.open(tmp_path / f"{label}.png"))
    assert "the final export of the training run" in capsys.readouterr().err
    assert jax.config.jax_compilation_cache_dir == cache_setting   # <cache>/xla was used within each call only
    for label in ("model", "pth", "workdir"):
        np.testing.assert_array_equal(outs[label], outs["hand"], err_msg=label)
    assert outs["hand"].shape == (64, 64, 3)
    assert run_cli(upscale.main, ["--model", "nope", "--model-index", str(index), str(img), "--output",
                                  str(tmp_path / "x.png")]) == 2
    assert "glean_cli" in capsys.readouterr().err   # the known names


def test_second_run_loads_compiled_functions_from_the_cache(tmp_path):
    """upscale keeps its compiled functions in <cache>/xla (JAX's persistent compilation cache) unless --no-cache;
    a second process then reads them (the cache gains no entry and the output is the same)."""
    from PIL import Image

    from glean_jax.arch import GleanArch
    from glean_jax.checkpoint import save_model
    from glean_jax.models.build import build_glean, init_variables

    arch = GleanArch(8, 32, rrdb_channels=8, num_rrdbs=1, style_channels=32)
    v = jax.device_get(init_variables("glean", build_glean(arch), jax.random.key(0)))
    save_model(tmp_path / "m", {"kind": "glean", "generator": {"kind": "glean", **arch.to_dict()},
                                "discriminator": None}, {"generator": v})
    Image.fromarray(np.full((8, 8, 3), 99, np.uint8)).save(tmp_path / "a.png")
    env = {**os.environ, "GLEAN_JAX_CACHE": str(tmp_path / "cache")}

    def run(out: str, *extra: str) -> None:
        r = subprocess.run([sys.executable, "-m", "glean_jax.upscale", "--checkpoint", str(tmp_path / "m"),
                            str(tmp_path / "a.png"), "--output", str(tmp_path / out), *extra],
                           env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr

    xla = tmp_path / "cache" / "xla"
    run("nocache.png", "--no-cache")
    assert not xla.exists()
    run("first.png")
    entries = sorted(p.name for p in xla.iterdir())
    assert any(name.startswith("jit_") for name in entries), entries
    run("second.png")
    assert sorted(p.name for p in xla.iterdir()) == entries   # nothing compiled again, so nothing new stored
    first = np.asarray(Image.open(tmp_path / "first.png"))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "second.png")), first)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "nocache.png")), first)

"""The web page (``python -m glean_jax.app``) in a real browser: Playwright drives the system Chromium
(``/usr/bin/chromium``, headless; ``apt-get install chromium``, no browser download) against the page started as a
user starts it, in its own process, with a small random GLEAN.

What a person does is what the test does: upload a file, choose the mode, press Run, wait, download. The downloaded
PNG must equal the command line's output byte for byte (``upscale --resize``; ``faces`` for the face mode). A corrupt
upload shows its one-line message and the page keeps serving the next request. ``GLEAN_SCREENSHOT`` names a file to
keep a screenshot of the page in (the README's picture comes from it); the test always takes one.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from glean_jax import app
from glean_jax.errors import UserError, run_cli

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_dir(module_tmp) -> Path:
    """A small random GLEAN (16 -> 64) saved as a model directory."""
    from glean_jax.arch import GleanArch
    from glean_jax.checkpoint import save_model
    from glean_jax.models.build import build_glean, init_variables

    arch = GleanArch(16, 64, rrdb_channels=8, num_rrdbs=1, style_channels=32)
    v = jax.device_get(init_variables("glean", build_glean(arch), jax.random.key(0)))
    d = module_tmp("app_model") / "m"
    save_model(d, {"kind": "glean", "generator": {"kind": "glean", **arch.to_dict()}, "discriminator": None},
               {"generator": v})
    return d


@pytest.fixture(scope="module")
def server(model_dir, module_tmp):
    """``python -m glean_jax.app --checkpoint DIR --any-model`` on a free port; yields its URL."""
    port = _free_port()
    env = {**os.environ, "GLEAN_JAX_CACHE": str(module_tmp("app_cache")), "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("XLA_FLAGS", None)   # one CPU device, as a user runs it
    proc = subprocess.Popen([sys.executable, "-m", "glean_jax.app", "--checkpoint", str(model_dir), "--any-model",
                             "--port", str(port), "--max-upload-mb", "1"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the app exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("the app did not start listening within 240 s")
    yield url, port
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    pw = sync_api.sync_playwright().start()
    b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
    yield b
    b.close()
    pw.stop()


def _astronaut(path: Path) -> Path:
    from skimage import data

    Image.fromarray(data.astronaut()).save(path)
    return path


def _run_page(page, url: str, upload: Path, mode: str) -> None:
    page.goto(url)
    page.locator("#upload input[type=file]").set_input_files(str(upload))
    page.get_by_label(mode).check()
    page.locator("#run").click()


def _run_and_download(page, url: str, upload: Path, mode: str, tmp_path: Path) -> Path:
    """Upload, choose ``mode``, Run, wait for the result and download it as a person would; returns the file."""
    _run_page(page, url, upload, mode)
    link = page.locator("#download a").first
    link.wait_for(timeout=120_000)
    with page.expect_download() as info:
        link.click()
    got = tmp_path / "downloaded.png"
    info.value.save_as(got)
    return got


@pytest.mark.browser
def test_upscale_in_the_browser_equals_the_cli(server, browser, model_dir, tmp_path):
    from glean_jax import upscale

    url, _ = server
    photo = _astronaut(tmp_path / "astronaut.png")
    assert run_cli(upscale.main, ["--checkpoint", str(model_dir), "--resize", str(photo), "--output",
                                  str(tmp_path / "cli.png")]) == 0
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    got = _run_and_download(page, url, photo, app.UPSCALE, tmp_path)
    assert "resized to 16x16 and upscaled to 64" in page.locator("#status").inner_text()
    assert got.read_bytes() == (tmp_path / "cli.png").read_bytes()   # the same PNG, byte for byte
    np.testing.assert_array_equal(np.asarray(Image.open(got)), np.asarray(Image.open(tmp_path / "cli.png")))
    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert Image.open(shot).size[0] == 1280
    page.close()


@pytest.mark.browser
@pytest.mark.slow   # the page's face mode; the faces CLI itself and the page's upscale flow are in the default run
def test_face_restoration_in_the_browser_equals_the_cli(server, browser, model_dir, tmp_path):
    """Restore faces: the astronaut's face found, restored by the (16 -> 64) model, pasted into the photo upscaled
    x4 (the model's factor; 512 x 4 is within --max-side): the PNG that python -m glean_jax.faces writes."""
    from glean_jax import faces

    url, _ = server
    photo = _astronaut(tmp_path / "astronaut.png")
    assert run_cli(faces.main, ["--checkpoint", str(model_dir), "--any-model", "--upscale", "4", str(photo),
                                "--output", str(tmp_path / "cli")]) == 0
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    got = _run_and_download(page, url, photo, app.FACES, tmp_path)
    assert "1 face restored, photo upscaled x4" in page.locator("#status").inner_text()
    assert got.read_bytes() == (tmp_path / "cli" / "astronaut.png").read_bytes()
    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("GLEAN_SCREENSHOT"):
        shutil.copy(shot, os.environ["GLEAN_SCREENSHOT"])
    page.close()


@pytest.mark.browser
def test_bad_uploads_show_one_line_and_the_page_keeps_serving(server, browser, tmp_path):
    url, _ = server
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a picture" * 10)
    page = browser.new_page()
    _run_page(page, url, corrupt, app.UPSCALE)
    page.get_by_text("broken.png: not an image we can read").first.wait_for(timeout=60_000)

    chelsea = tmp_path / "chelsea.png"   # a cat: no human face
    from skimage import data

    Image.fromarray(data.chelsea()).save(chelsea)
    page.goto(url)
    _run_page(page, url, chelsea, app.FACES)
    page.get_by_text("chelsea.png: no face found").first.wait_for(timeout=60_000)

    big = tmp_path / "big.bmp"   # 1.6 MB: over the page's --max-upload-mb 1
    Image.fromarray(np.zeros((740, 740, 3), np.uint8)).save(big)
    page.goto(url)
    page.locator("#upload input[type=file]").set_input_files(str(big))
    page.get_by_text("exceed", exact=False).first.wait_for(timeout=60_000)

    photo = _astronaut(tmp_path / "again.png")   # the server still serves
    _run_page(page, url, photo, app.UPSCALE)
    page.locator("#download a").first.wait_for(timeout=120_000)
    page.close()


def test_port_in_use_is_one_line(server, capsys):
    _, port = server
    assert run_cli(app.main, ["--checkpoint", "unused", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --port {port}: 127.0.0.1:{port} is already in use; expected a free port (--port N)"]


def test_upload_checks(tmp_path):
    Image.fromarray(np.zeros((30, 50, 3), np.uint8)).save(tmp_path / "wide.png")
    assert app.read_upload(tmp_path / "wide.png", 50).shape == (30, 50, 3)
    with pytest.raises(UserError, match=r"^wide.png: 50x30 pixels is larger than this page takes \(49 on a side\)"):
        app.read_upload(tmp_path / "wide.png", 49)
    (tmp_path / "x.png").write_text("hello")
    with pytest.raises(UserError, match=r"^x.png: not an image we can read"):
        app.read_upload(tmp_path / "x.png", 100)
    assert app.face_factor((512, 512, 3), 64, 1024, 4096) == 8
    assert app.face_factor((100, 200, 3), 64, 1024, 4096) == 16
    assert app.face_factor((5000, 100, 3), 64, 1024, 4096) == 1


def test_results_on_disk_are_bounded(tmp_path):
    made = []
    for i in range(7):
        made.append(app.result_path(tmp_path, f"r{i}.png", keep=3))
        made[-1].write_bytes(b"png")
        os.utime(made[-1].parent, (i, i))   # distinct ages, oldest first
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(m.parent.name for m in made[-3:])

"""``python -m glean_jax.benchmark``: the analytic FLOP count (against figures computed by hand from the layer shapes
and against the convolutions/dots actually traced), and the CLI end to end on a tiny config (JSON of the documented
shape), with and without the real mmagic. Nothing here asserts a speed."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glean_jax import benchmark as B
from glean_jax import flops as F
from glean_jax.arch import GleanArch
from glean_jax.errors import run_cli
from glean_jax.models.build import variable_shapes
from glean_jax.models.glean import GLEAN

RESULT_KEYS = {"config", "mode", "batch_size", "dtype", "ours_img_s", "mmagic_img_s", "ratio", "tflops_per_s",
               "fraction_of_peak", "compile_s", "ours_peak_mem_mb", "ours_xla_peak_mb", "ours_xla_temp_mb",
               "peak_mem_process", "remat"}


def arch(in_size, out_size, num_rrdbs=23):
    return dict(in_size=in_size, out_size=out_size, num_rrdbs=num_rrdbs, rrdb_channels=64, style_channels=512,
                channel_multiplier=2)


# GFLOPs per image computed by hand from mmagic's layer shapes (the bank agrees with StyleGAN2's published MAC counts)
@pytest.mark.parametrize("geom,g_fwd,bank,train", [((32, 256), 335, 90, 1770), ((16, 256), 321, 90, None),
                                                   ((64, 1024), 703, 149, 4940), ((128, 1024), 1103, 149, 6140)])
def test_flops_match_hand_computed_figures(geom, g_fwd, bank, train):
    f = F.model_flops(arch(*geom))
    assert f["g_forward"] / 1e9 == pytest.approx(g_fwd, rel=0.01)
    assert f["bank_forward"] / 1e9 == pytest.approx(bank, rel=0.01)
    if train is not None:
        assert f["train_step"] / 1e9 == pytest.approx(train, rel=0.01)
    assert sum(f["parts"].values()) == pytest.approx(f["g_forward"])


def test_vgg_and_discriminator_flops():
    # VGG16 up to conv4_3 at 256^2: 36.5 GFLOPs, at 1024^2: 583 GFLOPs (torchvision's layer shapes)
    assert 2 * F.vgg16_macs(256) / 1e9 == pytest.approx(36.5, rel=0.005)
    assert 2 * F.vgg16_macs(1024) / 1e9 == pytest.approx(583, rel=0.005)
    # D at 8x8, by hand: 1x1 3->512 at 8^2; ResBlock 8->4: 3x3 512->512 at 8^2, 3x3 s2 and 1x1 s2 512->512 at 4^2;
    # final 3x3 513->512 at 4^2; linears 8192->512, 512->1
    c = 512
    hand = 3 * c * 64 + c * c * 9 * 64 + c * c * 9 * 16 + c * c * 16 + (c + 1) * c * 9 * 16 + 16 * c * c + c
    assert F.discriminator_macs(8) == hand


def test_analytic_forward_equals_traced_convolutions():
    """The analytic count equals the FLOPs of the convs and dots our cat x8 forward traces to (phase-decomposed
    up-convs and the demodulation dots make the traced count slightly larger)."""
    g = GLEAN(GleanArch(32, 256))
    lq = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    traced = F.jaxpr_flops(jax.make_jaxpr(g.apply)(variable_shapes("glean", g), lq))
    analytic = F.model_flops(arch(32, 256))["g_forward"]
    assert analytic <= traced <= analytic * 1.01


def test_traced_flops_of_a_conv_gradient_count_one_backend_branch():
    """``conv.conv``'s backward is a ``lax.platform_dependent`` choice (CPU formulation / native): the traced count
    takes one branch, so forward + input gradient + weight gradient = 3x the forward."""
    from glean_jax.models import ops

    x = jax.ShapeDtypeStruct((2, 8, 8, 4), jnp.float32)
    w = jax.ShapeDtypeStruct((3, 3, 4, 5), jnp.float32)
    fwd = 2.0 * 2 * 8 * 8 * 5 * 9 * 4
    assert F.jaxpr_flops(jax.make_jaxpr(lambda x, w: ops.conv2d(x, w, 1, 1))(x, w)) == fwd
    grad = jax.make_jaxpr(jax.grad(lambda x, w: jnp.sum(ops.conv2d(x, w, 1, 1)), argnums=(0, 1)))(x, w)
    assert any(e.primitive.name == "cond" for e in F.iter_eqns(grad))
    assert F.jaxpr_flops(grad) == 3 * fwd


def write_tiny_config(tmp_path):
    p = tmp_path / "tiny.py"
    p.write_text(
        "from glean_jax.training.config import base_config\n\n\n"
        "def get_config():\n"
        "    c = base_config()\n"
        "    c.model.in_size = c.data.in_size = 4\n"
        "    c.model.out_size = c.data.out_size = 8\n"
        "    c.model.num_rrdbs, c.model.rrdb_channels = 1, 8\n"
        "    c.model.mbstd_shards = 1\n"
        "    return c\n")
    return p


def check_report(report, modes, batches, compared):
    m = report["machine"]
    assert m["platform"] == jax.default_backend()
    assert m["matmul_peak_tflops"]["float32"] > 0
    assert m["gflops_per_image"]["g_forward"] > 0
    assert [(r["mode"], r["batch_size"]) for r in report["results"]] == [(md, b) for md in modes for b in batches]
    for r in report["results"]:
        assert RESULT_KEYS <= set(r)
        assert r["config"] == "tiny" and r["dtype"] == "float32"
        assert r["ours_img_s"] > 0 and r["compile_s"] > 0 and r["ours_peak_mem_mb"] > 0 and "peak_mem_mb" not in r
        assert r["ours_xla_peak_mb"] >= r["ours_xla_temp_mb"] > 0 and r["remat"] is False
        assert r["peak_mem_process"] == ("both sides" if compared else "ours alone")
        per_img = m["gflops_per_image"]["g_forward" if r["mode"] == "infer" else "train_step"]
        assert r["tflops_per_s"] == pytest.approx(per_img * r["ours_img_s"] / 1e3, rel=0.01, abs=1e-4)
        assert r["fraction_of_peak"] == pytest.approx(r["tflops_per_s"] / m["matmul_peak_tflops"]["float32"],
                                                      rel=0.01, abs=1e-4)
        assert r["load_avg"] is None or r["load_avg"] >= 0
        if compared:
            assert r["mmagic_img_s"] > 0
            assert r["ratio"] == pytest.approx(r["ours_img_s"] / r["mmagic_img_s"], rel=0.01)
            assert r["mmagic_peak_mem_mb"] > 0
        else:
            assert r["mmagic_img_s"] is None and r["ratio"] is None


def test_cli_tiny_infer_writes_json(tmp_path, capsys):
    cfg = write_tiny_config(tmp_path)
    out = tmp_path / "bench.json"
    rc = run_cli(B.main, ["--config", str(cfg), "--mode", "infer", "--batch-size", "1", "2", "--repeats", "2",
                          "--warmup", "0", "--peak-size", "512", "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    check_report(report, ["infer"], [1, 2], compared=False)
    assert "| tiny | infer | 2 | float32 |" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []   # no temp files left


def test_cli_remat_override_recorded_and_summarize_reads_old_reports(tmp_path, capsys):
    """``--config.model.remat=True`` reaches the model config and the JSON; ``summarize`` shows our peak memory of
    reports written before ``peak_mem_mb`` became ``ours_peak_mem_mb``."""
    cfg = write_tiny_config(tmp_path)
    out = tmp_path / "bench.json"
    assert run_cli(B.main, ["--config", str(cfg), "--mode", "infer", "--batch-size", "1", "--repeats", "1",
                            "--warmup", "0", "--peak-size", "256", "--json", str(out),
                            "--config.model.remat=True"]) == 0
    (r,) = json.loads(out.read_text())["results"]
    assert r["remat"] is True and r["ours_peak_mem_mb"] > 0
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"machine": {}, "results": [{"config": "x", "mode": "train", "peak_mem_mb": 1234.5}]}))
    capsys.readouterr()
    assert run_cli(B.main, ["summarize", str(out), str(old)]) == 0
    table = capsys.readouterr().out
    assert "| x | train |" in table and "1234" in table and "| True |" in table


@pytest.mark.oracle
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["infer", "both"])
def test_cli_tiny_against_mmagic(tmp_path, mode):
    """Inference by default; both modes (the PyTorch train step too, ~2 min here) with ``-m slow``."""
    pytest.importorskip("mmagic")
    cfg = write_tiny_config(tmp_path)
    out = tmp_path / "bench.json"
    rc = run_cli(B.main, ["--config", str(cfg), "--mode", mode, "--batch-size", "2", "--repeats", "1",
                          "--warmup", "0", "--peak-size", "512", "--compare-mmagic", "--json", str(out), "--debug"])
    assert rc == 0
    report = json.loads(out.read_text())
    check_report(report, ["infer", "train"] if mode == "both" else ["infer"], [2], compared=True)
    assert report["machine"]["mmagic"]["mmagic"] == "1.2.0"


@pytest.mark.oracle
def test_cli_tiny_mmagic_only(tmp_path, capsys):
    """``--mmagic-only``: mmagic timed alone (the second of two runs for models whose sides do not fit together)."""
    pytest.importorskip("mmagic")
    cfg = write_tiny_config(tmp_path)
    out = tmp_path / "bench.json"
    rc = run_cli(B.main, ["--config", str(cfg), "--mode", "infer", "--batch-size", "2", "--repeats", "2",
                          "--warmup", "0", "--peak-size", "512", "--mmagic-only", "--json", str(out)])
    assert rc == 0
    (r,) = json.loads(out.read_text())["results"]
    assert r["mmagic_img_s"] > 0 and r["mmagic_tflops_per_s"] > 0 and r["mmagic_peak_mem_mb"] > 0
    assert r["ours_img_s"] is None and r["ratio"] is None and r["compile_s"] is None and "ours_s" not in r
    assert r["ours_peak_mem_mb"] is None and r["peak_mem_process"] == "mmagic alone"
    assert len(r["mmagic_s"]) == 2
    assert "| tiny | infer | 2 | float32 | - |" in capsys.readouterr().out


@pytest.mark.parametrize("args,needle", [
    (["--batch-size", "6"], "--batch-size 6"),
    (["--batch-size", "0"], "--batch-size"),
    (["--json", "/nonexistent_dir/x.json"], "--json"),
    (["--config.model.nope=1"], "config.model.nope"),
    (["--mode", "fast"], "--mode fast"),
    (["--peak-size", "8"], "--peak-size 8"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys, args, needle):
    cfg = write_tiny_config(tmp_path)
    assert run_cli(B.main, ["--config", str(cfg), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and needle in err


def test_cli_missing_config(capsys):
    assert run_cli(B.main, ["--config", "/nonexistent/cfg.py"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_psnr_helper():
    a = np.zeros((2, 4, 4, 3))
    assert math.isinf(B.psnr(a, a))
    # an error of 1/127.5 everywhere is 1 grey level: 20 log10(255) dB
    assert B.psnr(a, a + 1 / 127.5) == pytest.approx(20 * math.log10(255), abs=1e-4)


@pytest.mark.slow
@pytest.mark.oracle
def test_gpu_script_on_cpu(tmp_path):
    """benchmarks/gpu.sh end to end with a tiny config on CPU (its shell logic, JSON per run and summary table)."""
    pytest.importorskip("mmagic")
    cfg = write_tiny_config(tmp_path)
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "out"
    env = dict(os.environ, RUNS=f"tiny:{cfg}:2:float32:float32", MODE="train,infer", REPEATS="1", OUT=str(out),
               PYTHON=sys.executable, RUN_TIMEOUT="300")
    proc = subprocess.run(["bash", str(root / "benchmarks" / "gpu.sh")], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((out / "tiny.json").read_text())
    assert [r["mode"] for r in report["results"]] == ["train", "infer"]
    assert all(r["ratio"] > 0 for r in report["results"])
    summary = (out / "summary.md").read_text()
    assert "| tiny | train | 2 | float32 |" in summary and "| tiny | infer | 2 | float32 |" in summary

"""data.source='tfds': make_tfds writes array_record TFDS datasets (no TensorFlow), the reader equals the folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets  # noqa: F401  (the test extra installs it: missing is an error, not a skip)
from PIL import Image

from glean_jax.data import default_data_config, make_eval_dataset, make_train_iterator
from glean_jax.data.datasets import GTImageFolder, PairedImageFolder
from glean_jax.data.make_tfds import main as make_tfds
from glean_jax.data.tfds_data import TFDSPairs, write_dataset
from glean_jax.errors import UserError, run_cli

pytestmark = pytest.mark.filterwarnings("ignore:.*alpha channel dropped")

TRAIN = ["a.png", "b.png", "c.png", "d.png", "e.png"]
TEST = ["t1.png", "t2.png"]


def _layout(root: Path, names: list[str], seed: int, lq: int = 4, gt: int = 16) -> Path:
    """Paired folders of random RGB PNGs, plus a grayscale GT and an RGBA LQ (converted on reading)."""
    rng = np.random.default_rng(seed)
    (root / "BIx4_down").mkdir(parents=True)
    (root / "GT").mkdir()
    for i, n in enumerate(names):
        g = rng.integers(0, 256, (gt, gt, 3), dtype=np.uint8)
        q = rng.integers(0, 256, (lq, lq, 3), dtype=np.uint8)
        Image.fromarray(g[..., 0] if i == 1 else g).save(root / "GT" / n)
        Image.fromarray(np.dstack([q, np.full((lq, lq), 200, np.uint8)]) if i == 2 else q).save(root / "BIx4_down" / n)
    return root


@pytest.fixture(scope="module")
def folders(module_tmp) -> Path:
    base = module_tmp("tfds_src")
    _layout(base / "train", TRAIN, 0)
    _layout(base / "test", TEST, 1)
    return base


@pytest.fixture(scope="module")
def tfds_dir(folders, module_tmp) -> Path:
    out = module_tmp("tfds_out")
    rc = run_cli(make_tfds, ["--name", "toy_x4", "--out-dir", str(out), "--split", f"train={folders / 'train'}",
                             "--split", f"test={folders / 'test'}", "--lq-dir", "BIx4_down", "--gt-dir", "GT",
                             "--in-size", "4", "--out-size", "16"])
    assert rc == 0
    return out


def _cfg(tfds_dir: Path, **kw):
    c = default_data_config()
    c.source, c.tfds_name, c.tfds_data_dir = "tfds", "toy_x4", str(tfds_dir)
    c.in_size, c.out_size, c.num_threads, c.prefetch = 4, 16, 2, 2
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def test_make_tfds_writes_array_record_equal_to_the_folders(folders, tfds_dir, capsys):
    version = tfds_dir / "toy_x4" / "1.0.0"
    assert (version / "dataset_info.json").is_file() and (version / "features.json").is_file()
    assert any(p.name.startswith("toy_x4-train.array_record") for p in version.iterdir())
    for split, names in (("train", TRAIN), ("test", TEST)):
        ds = TFDSPairs("toy_x4", split, tfds_dir, in_size=4, out_size=16)
        ref = PairedImageFolder(folders / split, "BIx4_down", "GT", in_size=4, out_size=16)
        assert len(ds) == len(names)
        got = {ds[i]["name"]: ds[i] for i in range(len(ds))}
        assert sorted(got) == sorted(names)
        for i in range(len(ref)):  # pixel for pixel what the folder source gives (gray -> RGB, RGBA -> RGB too)
            want = ref[i]
            for key in ("lq", "gt"):
                assert got[want["name"]][key].dtype == np.uint8
                np.testing.assert_array_equal(got[want["name"]][key], want[key])
    # the version folder itself works as tfds_name
    assert len(TFDSPairs(str(version), "test", None, in_size=4, out_size=16)) == 2


def test_train_and_eval_iterators_over_tfds(folders, tfds_dir):
    """One epoch of the tfds train iterator holds the same images as the folder one; eval is in record order."""
    cfg = _cfg(tfds_dir, flip=False)
    it = make_train_iterator(cfg, global_batch_size=5, seed=3)
    batch = next(it)
    assert batch["lq"].shape == (5, 4, 4, 3) and batch["gt"].shape == (5, 16, 16, 3)
    fcfg = _cfg(tfds_dir, flip=False, source="folder", root=str(folders / "train"), lq_dir="BIx4_down")
    fbatch = next(make_train_iterator(fcfg, global_batch_size=5, seed=3))

    def rows(b):
        return sorted(b["gt"][i].tobytes() for i in range(len(b["gt"])))

    assert rows(batch) == rows(fbatch)
    assert float(batch["gt"].min()) >= -1.0 and float(batch["gt"].max()) <= 1.0
    # deterministic: the same seed gives the same stream
    again = next(make_train_iterator(cfg, global_batch_size=5, seed=3))
    np.testing.assert_array_equal(batch["gt"], again["gt"])
    ev = make_eval_dataset(cfg)
    assert sorted(ev[i]["name"] for i in range(len(ev))) == TEST


def test_gt_only_dataset_feeds_the_blind_pipeline(folders, tmp_path):
    src = GTImageFolder(folders / "train", "GT", out_size=16)
    write_dataset("toy_gt", tmp_path, {"train": src}, out_size=16)
    ds = TFDSPairs("toy_gt", "train", tmp_path, in_size=4, out_size=16, gt_only=True)
    assert len(ds) == 5 and set(ds[0]) == {"gt", "name"}
    cfg = _cfg(tmp_path, tfds_name="toy_gt", degradation="blind")
    b = next(make_train_iterator(cfg, global_batch_size=2, seed=0))
    assert b["lq"].shape == (2, 4, 4, 3) and b["gt"].shape == (2, 16, 16, 3)
    with pytest.raises(UserError, match=r"no LQ feature 'lq' \(features: gt, name\)"):
        TFDSPairs("toy_gt", "train", tmp_path, in_size=4, out_size=16)


def test_open_errors_name_what_is_wrong(tfds_dir, tmp_path):
    with pytest.raises(UserError, match=r"TFDS dataset 'nope' not found in .*datasets there: toy_x4"):
        TFDSPairs("nope", "train", tfds_dir, in_size=4, out_size=16)
    with pytest.raises(UserError, match=r"no split 'validation'; it has test, train"):
        TFDSPairs("toy_x4", "validation", tfds_dir, in_size=4, out_size=16)
    with pytest.raises(UserError, match=r"GT feature 'gt' is declared 16x16; expected 32x32"):
        TFDSPairs("toy_x4", "train", tfds_dir, in_size=8, out_size=32)
    with pytest.raises(UserError, match=r"no GT feature 'image'"):
        TFDSPairs("toy_x4", "train", tfds_dir, in_size=4, out_size=16, gt_key="image")
    with pytest.raises(UserError, match=r"tfds_data_dir='.*missing': folder not found"):
        TFDSPairs("toy_x4", "train", tmp_path / "missing", in_size=4, out_size=16)
    with pytest.raises(UserError, match=r"data.tfds_name is empty"):
        TFDSPairs("", "train", tfds_dir, in_size=4, out_size=16)


def test_unsized_dataset_checks_each_record(folders, tmp_path):
    """Without declared sizes the reader checks every decoded record, naming dataset, split, record and file."""
    src = PairedImageFolder(folders / "train", "BIx4_down", "GT")
    write_dataset("toy_any", tmp_path, {"train": src})
    ds = TFDSPairs("toy_any", "train", tmp_path, in_size=None, out_size=None)
    assert ds[0]["gt"].shape == (16, 16, 3)
    wrong = TFDSPairs("toy_any", "train", tmp_path, in_size=8, out_size=32)
    with pytest.raises(UserError, match=r"toy_any/1\.0\.0.*split 'train', record 0 \(.\.png\): GT is 16x16; "
                                        r"expected 32x32"):
        wrong[0]


def test_corrupt_record_file_is_a_clear_error(folders, tmp_path):
    src = PairedImageFolder(folders / "test", "BIx4_down", "GT")
    version = write_dataset("toy_bad", tmp_path, {"train": src})
    shard = next(p for p in version.iterdir() if ".array_record" in p.name)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 3])
    with pytest.raises(UserError, match=r"toy_bad/1\.0\.0 .*split 'train', record \d+: cannot read"):
        ds = TFDSPairs("toy_bad", "train", tmp_path, in_size=None, out_size=None)
        [ds[i] for i in range(len(ds))]


def test_make_tfds_argument_errors(folders, tfds_dir, tmp_path, capsys):
    def err(*args):
        assert run_cli(make_tfds, list(args)) == 2
        return capsys.readouterr().err.strip()

    base = ["--out-dir", str(tmp_path), "--lq-dir", "BIx4_down"]
    assert "--name 'Toy-X4': expected lower-case" in err("--name", "Toy-X4", "--split", "train=x", *base)
    assert "--split 'train': expected SPLIT=PATH" in err("--name", "t", "--split", "train", *base)
    assert "given twice" in err("--name", "t", "--split", f"train={folders}", "--split", f"train={folders}", *base)
    assert "--meta-info for split(s) val that no --split names" in err(
        "--name", "t", "--split", f"train={folders / 'train'}", "--meta-info", "val=m.txt", *base)
    assert "--version '1.0': expected X.Y.Z" in err("--name", "t", "--split", "train=x", "--version", "1.0", *base)
    msg = err("--name", "toy_x4", "--out-dir", str(tfds_dir), "--split", f"train={folders / 'train'}",
              "--lq-dir", "BIx4_down")
    assert "1.0.0: already exists; remove it or choose another --version" in msg
    # every wrong size is listed before anything is written
    msg = err("--name", "t", "--split", f"train={folders / 'train'}", "--in-size", "8", *base)
    assert "5 problem(s)" in msg and "a.png: LQ is 4x4; expected 8x8" in msg
    assert not (tmp_path / "t").exists()


def test_training_config_validation_opens_the_dataset(tfds_dir):
    import importlib.util

    from glean_jax.training.config import validate_config

    spec = importlib.util.spec_from_file_location("demo_cfg", Path(__file__).parents[1] / "configs" / "demo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = mod.get_config()
    cfg.data.source, cfg.data.tfds_name, cfg.data.tfds_data_dir = "tfds", "toy_x4", str(tfds_dir)
    validate_config(cfg)
    cfg.data.tfds_name = "toy_x8"
    with pytest.raises(UserError, match="TFDS dataset 'toy_x8' not found"):
        validate_config(cfg)
    validate_config(cfg, check_files=False)
    cfg.data.tfds_split = ""
    with pytest.raises(UserError, match=r"config.data.tfds_split='': expected a non-empty string"):
        validate_config(cfg, check_files=False)


def test_data_check_reads_every_record_of_a_tfds_dataset(folders, tfds_dir, tmp_path, capsys):
    """``python -m glean_jax.data.check --tfds``: every record of each split read as training reads it."""
    from glean_jax.data.check import main as check

    args = ["--tfds", "toy_x4", "--tfds-data-dir", str(tfds_dir), "--in-size", "4", "--out-size", "16"]
    assert run_cli(check, [*args, "--split", "train", "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "split 'train': 5 records read" in out and "split 'test': 2 records read" in out
    assert out.strip().endswith("toy_x4: 7 records listed, 0 problem(s), 2 note(s): OK")
    # wrong sizes against the declared shapes, and a split that does not exist: all reported, exit 2
    assert run_cli(check, ["--tfds", "toy_x4", "--tfds-data-dir", str(tfds_dir), "--in-size", "8", "--out-size",
                           "32", "--split", "train", "--split", "val"]) == 2
    out = capsys.readouterr().out
    assert "GT feature 'gt' is declared 16x16; expected 32x32" in out
    assert "no split 'val'; it has test, train" in out and "NOT OK" in out
    # a truncated shard: the unreadable records are problems, the rest still read
    src = PairedImageFolder(folders / "train", "BIx4_down", "GT")
    version = write_dataset("toy_cut", tmp_path, {"train": src})
    shard = next(p for p in version.iterdir() if ".array_record" in p.name)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 3])
    assert run_cli(check, ["--tfds", "toy_cut", "--tfds-data-dir", str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert "problem: " in out and "split 'train', record" in out and ": cannot read" in out
    # folder-only options are refused with --tfds, and --tfds options without it
    assert run_cli(check, ["--tfds", "toy_x4", "--lq-dir", "X"]) == 2
    assert run_cli(check, [str(folders / "train"), "--lq-dir", "BIx4_down", "--split", "train"]) == 2
    err = capsys.readouterr().err
    assert "expected no ROOT/--root, --lq-dir or --meta-info" in err and "apply to --tfds only" in err

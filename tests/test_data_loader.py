"""The grain training pipeline: batches, determinism, resume, per-process sharding, flip, blind LQ, mesh batches."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from glean_jax.data import default_data_config, make_eval_dataset, make_train_iterator, to_global_batch
from glean_jax.data.degradations import blind_degrade
from glean_jax.data.loader import build_train_dataset, hflip
from glean_jax.errors import UserError
from glean_jax.images import normalize


def synthetic_cfg(**kw):
    c = default_data_config()
    c.source = "synthetic"
    c.in_size, c.out_size, c.synthetic_size, c.num_threads, c.prefetch = 4, 16, 10, 2, 4
    for k, v in kw.items():
        setattr(c, k, v)
    return c


class IndexSource:
    """Item i is a 1x1 LQ / 2x2 GT image of value i (recoverable after normalisation); left/right halves of the
    GT differ so that a flip is visible."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        gt = np.array([[[i, i, i], [255 - i, 0, 0]]] * 2, np.uint8)
        return {"lq": np.full((1, 1, 3), i, np.uint8), "gt": gt, "name": f"{i}"}


def _ids(batch) -> list[int]:
    return [int(v) for v in np.round(batch["lq"][:, 0, 0, 0] * 127.5 + 127.5)]


def _take(it, n):
    return [next(it) for _ in range(n)]


def _same(a, b) -> bool:
    return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in ("lq", "gt"))


def test_batches_shapes_dtypes_and_range():
    it = make_train_iterator(synthetic_cfg(), global_batch_size=4, seed=0)
    b = next(it)
    assert set(b) == {"lq", "gt"}
    assert b["lq"].shape == (4, 4, 4, 3) and b["gt"].shape == (4, 16, 16, 3)
    assert b["lq"].dtype == b["gt"].dtype == np.float32
    assert b["gt"].min() >= -1 and b["gt"].max() <= 1 and b["gt"].min() < -0.9 and b["gt"].max() > 0.9
    # per process: global batch / process count
    it = make_train_iterator(synthetic_cfg(), global_batch_size=4, seed=0, process_index=1, process_count=2)
    assert next(it)["gt"].shape == (2, 16, 16, 3)


def test_normalisation_is_mmagic_data_preprocessor():
    it = build_train_dataset(IndexSource(4), local_batch_size=4, seed=0, flip=False).__iter__()
    b = next(it)
    ids = _ids(b)
    want = np.stack([(np.asarray(IndexSource(4)[i]["gt"], np.float32) - 127.5) / 127.5 for i in ids])
    np.testing.assert_array_equal(b["gt"], want)


def test_deterministic_and_seed_dependent():
    a = _take(make_train_iterator(synthetic_cfg(), global_batch_size=4, seed=5), 4)
    b = _take(make_train_iterator(synthetic_cfg(num_threads=0), global_batch_size=4, seed=5), 4)
    c = _take(make_train_iterator(synthetic_cfg(), global_batch_size=4, seed=6), 4)
    assert _same(a, b)  # independent of the number of reader threads
    assert not _same(a, c)


def test_resume_from_state_gives_the_same_next_batch():
    it = make_train_iterator(synthetic_cfg(), global_batch_size=4, seed=1)
    _take(it, 3)  # crosses the epoch boundary (10 images, 4 per batch)
    state = it.get_state()
    want = _take(it, 2)
    fresh = make_train_iterator(synthetic_cfg(), global_batch_size=4, seed=1)
    fresh.set_state(state)
    assert _same(_take(fresh, 2), want)


def test_resume_through_an_orbax_checkpoint(tmp_path):
    import grain
    import orbax.checkpoint as ocp

    it = make_train_iterator(synthetic_cfg(), global_batch_size=2, seed=2)
    _take(it, 3)
    with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",)) as mngr:
        mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
    want = _take(it, 2)
    fresh = make_train_iterator(synthetic_cfg(), global_batch_size=2, seed=2)
    with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",)) as mngr:
        mngr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    assert _same(_take(fresh, 2), want)


@pytest.mark.parametrize("n", [10, 11])
def test_two_processes_read_disjoint_shares_covering_the_epoch(n):
    shares = []
    for p in range(2):
        it = build_train_dataset(IndexSource(n), local_batch_size=1, seed=3, process_index=p, process_count=2,
                                 flip=False).__iter__()
        ids = [i for b in _take(it, 3 * (n // 2)) for i in _ids(b)]
        epochs = [ids[k:k + n // 2] for k in range(0, len(ids), n // 2)]
        assert all(sorted(e) == sorted(epochs[0]) for e in epochs)  # every epoch: the same share, all of it
        assert len({tuple(e) for e in epochs}) > 1  # ... in a new order each epoch
        shares.append(set(epochs[0]))
    assert not shares[0] & shares[1]
    assert shares[0] | shares[1] == set(range(2 * (n // 2)))  # with n = 11, index 10 is left out


def test_in_order_without_shuffle_repeats_the_dataset_order():
    it = build_train_dataset(IndexSource(5), local_batch_size=2, seed=0, flip=False, shuffle=False).__iter__()
    assert [_ids(b) for b in _take(it, 5)] == [[0, 1], [2, 3], [4, 0], [1, 2], [3, 4]]
    state = it.get_state()
    want = _take(it, 2)
    fresh = build_train_dataset(IndexSource(5), local_batch_size=2, seed=0, flip=False, shuffle=False).__iter__()
    fresh.set_state(state)
    assert _same(_take(fresh, 2), want)


@pytest.mark.parametrize("n, processes", [(5, 2), (12, 4), (3, 4)])
def test_in_order_global_batches_do_not_depend_on_the_process_count(n, processes):
    """shuffle=False: each process holds its consecutive slice of the global batch, so the concatenated local batches
    (images and their per-(seed, epoch, index) flips) equal the single-process stream; no image is left out, also
    with fewer images than processes."""
    steps, batch = 7, 4
    whole = _take(build_train_dataset(IndexSource(n), local_batch_size=batch, seed=7, flip=True,
                                       shuffle=False).__iter__(), steps)
    assert [i for b in whole for i in _ids(b)] == [g % n for g in range(steps * batch)]
    assert any(not np.array_equal(b["gt"], np.flip(b["gt"], axis=2)) for b in whole)
    parts = [_take(build_train_dataset(IndexSource(n), local_batch_size=batch // processes, seed=7, flip=True,
                                       process_index=p, process_count=processes, shuffle=False).__iter__(), steps)
             for p in range(processes)]
    for k in range(steps):
        for key in ("lq", "gt"):
            np.testing.assert_array_equal(np.concatenate([part[k][key] for part in parts]), whole[k][key])


def test_joint_flip_with_probability_one_half():
    it = build_train_dataset(IndexSource(50), local_batch_size=10, seed=4, flip=True).__iter__()
    flips = 0
    total = 0
    for b in _take(it, 20):
        for k, i in enumerate(_ids(b)):
            gt = np.round(b["gt"][k] * 127.5 + 127.5).astype(np.uint8)
            orig = IndexSource(50)[i]["gt"]
            assert np.array_equal(gt, orig) or np.array_equal(gt, hflip(orig))
            flips += int(not np.array_equal(gt, orig))
            total += 1
    assert stats.binomtest(flips, total, 0.5).pvalue > 1e-3
    no_flip = build_train_dataset(IndexSource(50), local_batch_size=10, seed=4, flip=False).__iter__()
    for b in _take(no_flip, 5):
        for k, i in enumerate(_ids(b)):
            np.testing.assert_array_equal(np.round(b["gt"][k] * 127.5 + 127.5), IndexSource(50)[i]["gt"])


def _gt_folder(root: Path, n: int = 6, size: int = 32) -> Path:
    (root / "GT").mkdir(parents=True)
    for i in range(n):
        img = np.random.default_rng(i).integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / "GT" / f"{i:03d}.png")
    return root


def test_blind_lq_is_a_function_of_seed_epoch_and_index(tmp_path):
    root = _gt_folder(tmp_path / "d")
    cfg = default_data_config()
    cfg.update(dict(root=str(root), gt_dir="GT", degradation="blind", in_size=4, out_size=32, flip=False,
                    num_threads=2))
    it = make_train_iterator(cfg, global_batch_size=3, seed=9)
    batches = _take(it, 4)  # two epochs of 6 images
    gts = {f"{i:03d}": np.asarray(Image.open(root / "GT" / f"{i:03d}.png")) for i in range(6)}
    for step, b in enumerate(batches):
        assert b["lq"].shape == (3, 4, 4, 3) and b["gt"].shape == (3, 32, 32, 3)
        for k in range(3):
            gt = np.round(b["gt"][k] * 127.5 + 127.5).astype(np.uint8)
            index = next(i for i in range(6) if np.array_equal(gts[f"{i:03d}"], gt))
            epoch = (step * 3 + k) // 6
            want = blind_degrade(gt, np.random.default_rng([9, epoch, index]), 4)
            np.testing.assert_array_equal(b["lq"][k], normalize(want))


def test_unreadable_image_raises_with_its_name_or_is_skipped(tmp_path, caplog):
    root = _gt_folder(tmp_path / "d", n=4)
    (root / "BIx8_down").mkdir()
    for i in range(4):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "BIx8_down" / f"{i:03d}.png")
    bad = root / "GT" / "002.png"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # header fine, pixels truncated
    cfg = default_data_config()
    cfg.update(dict(root=str(root), lq_dir="BIx8_down", gt_dir="GT", in_size=4, out_size=32, num_threads=1))
    it = make_train_iterator(cfg, global_batch_size=4, seed=0)
    with pytest.raises(UserError, match=r"002\.png: cannot decode image"):
        next(it)
    cfg.on_error = "skip"
    it = make_train_iterator(cfg, global_batch_size=4, seed=0)
    with caplog.at_level(logging.WARNING, logger="glean_jax.data.loader"):
        b = _take(it, 2)
    assert b[0]["gt"].shape == (4, 32, 32, 3)
    assert any("002.png" in r.getMessage() and "skipped" in r.getMessage() for r in caplog.records)


def test_config_errors():
    with pytest.raises(UserError, match="data.tfds_name is empty"):
        make_train_iterator(synthetic_cfg(source="tfds"), global_batch_size=2, seed=0)
    with pytest.raises(UserError, match="expected one of folder, synthetic, tfds"):
        make_train_iterator(synthetic_cfg(source="lmdb"), global_batch_size=2, seed=0)
    with pytest.raises(UserError, match="multiple of the process count 2"):
        make_train_iterator(synthetic_cfg(), global_batch_size=3, seed=0, process_count=2)
    with pytest.raises(UserError, match="on_error"):
        make_train_iterator(synthetic_cfg(on_error="ignore"), global_batch_size=2, seed=0)
    with pytest.raises(UserError, match="not a multiple of data.in_size"):
        make_train_iterator(synthetic_cfg(in_size=5), global_batch_size=2, seed=0)
    with pytest.raises(UserError, match="fewer than the 4 processes"):
        build_train_dataset(IndexSource(3), local_batch_size=1, seed=0, process_index=0, process_count=4)
    with pytest.raises(UserError, match="dataset root folder not found"):
        make_train_iterator(default_data_config(), global_batch_size=2, seed=0)  # data/cat_train is not here


def test_eval_dataset_is_the_test_split_in_order(tmp_path):
    root = tmp_path / "test"
    (root / "LQ").mkdir(parents=True)
    (root / "GT").mkdir()
    names = ["b.png", "a.png", "c.png"]
    for i, n in enumerate(names):
        Image.fromarray(np.full((16, 16, 3), i, np.uint8)).save(root / "GT" / n)
        Image.fromarray(np.full((4, 4, 3), i, np.uint8)).save(root / "LQ" / n)
    (root / "meta.txt").write_text("\n".join(names))
    cfg = default_data_config()
    cfg.update(dict(test_root=str(root), test_lq_dir="LQ", test_gt_dir="GT", test_meta_info="meta.txt",
                    in_size=4, out_size=16))
    ds = make_eval_dataset(cfg)
    items = [ds[i] for i in range(len(ds))]
    assert [it["name"] for it in items] == names
    assert [int(it["gt"][0, 0, 0]) for it in items] == [0, 1, 2] and items[0]["lq"].dtype == np.uint8
    syn = make_eval_dataset(synthetic_cfg(synthetic_test_size=3))
    assert len(syn) == 3 and syn[0]["gt"].shape == (16, 16, 3)


@pytest.mark.parametrize("shuffle", [True, False])
def test_multiprocess_prefetch_gives_the_same_stream(shuffle):
    want = _take(make_train_iterator(synthetic_cfg(shuffle=shuffle), global_batch_size=2, seed=8), 4)
    it = make_train_iterator(synthetic_cfg(num_workers=2, shuffle=shuffle), global_batch_size=2, seed=8)
    try:
        got = _take(it, 2)
        state = it.get_state()
        got += _take(it, 2)
    finally:
        it.close()
    assert _same(got, want)
    fresh = make_train_iterator(synthetic_cfg(num_workers=2, shuffle=shuffle), global_batch_size=2, seed=8)
    try:
        fresh.set_state(state)
        assert _same(_take(fresh, 2), want[2:])
    finally:
        fresh.close()


def test_to_global_batch_shards_the_batch_axis():
    import jax
    from jax.sharding import AxisType, PartitionSpec

    assert jax.device_count() == 8
    batch = next(make_train_iterator(synthetic_cfg(), global_batch_size=8, seed=0))
    for shape, names in (((8,), ("data",)), ((4, 2), ("data", "model"))):
        mesh = jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(names))
        out = to_global_batch(batch, mesh)
        for k in ("lq", "gt"):
            assert out[k].shape == batch[k].shape
            assert out[k].sharding.spec == PartitionSpec("data")
            np.testing.assert_array_equal(np.asarray(out[k]), batch[k])
            shard_rows = {s.data.shape[0] for s in out[k].addressable_shards}
            assert shard_rows == {8 // shape[0]}
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    with pytest.raises(UserError, match="multiple of the mesh's 'data' axis size 8"):
        to_global_batch({"lq": np.zeros((4, 2, 2, 3), np.float32)}, mesh)
    with pytest.raises(UserError, match="mesh has no axis 'batch'"):
        to_global_batch(batch, mesh, data_axis="batch")

"""The grain input pipeline: sharded, shuffled, augmented, batched, prefetched, resumable.

Equal in content to mmagic's training data flow for GLEAN (the configs' ``train_pipeline`` and ``train_dataloader``):
whole images (no crop), a joint horizontal flip with p = 0.5, the blind degradation chain for ``degradation='blind'``,
and ``DataPreprocessor(mean=std=127.5)``: uint8 RGB -> ``(x - 127.5) / 127.5`` float32, NHWC. mmagic samples with an
``InfiniteSampler(shuffle=True)``; here each epoch is a fresh permutation (grain ``shuffle`` with the seed folded with
the epoch) and the stream repeats forever.

Pipeline, per process::

    MapDataset.range(N)[process_index : n_local * process_count : process_count]   # this process's share
      .shuffle(seed).repeat()                      # new permutation every epoch
      .map_with_index(load + blind LQ + flip)      # randomness from default_rng([seed, epoch, image index])
      .batch(global_batch_size // process_count, drop_remainder=True)   # -> float32 in [-1, 1]
      .to_iter_dataset(ReadOptions(num_threads, prefetch))  [.mp_prefetch(num_workers)]

Batches are made before the reader threads/processes, so the stream of batches does not depend on
``num_threads`` or ``num_workers``. Every process reads only its own share (n_local = N // process_count
images; the last N mod process_count indices are not used). The iterator's ``get_state()/set_state()``
(or ``grain.checkpoint.CheckpointSave/Restore`` inside an orbax checkpoint) resumes at the same next batch.

``shuffle=False`` (``data.shuffle``; mmengine ``InfiniteSampler(shuffle=False)``, which yields
``torch.arange(size)`` again and again) feeds the images in dataset order (file-name order, or the order of
``meta_info``), repeating, with no image left out: global batch k holds the positions ``k*B .. k*B+B-1`` of that
stream (modulo N, B = global batch size) and process p its ``p``-th consecutive slice of ``B / process_count``
(:class:`OrderedPositions`), so the global batches are the same for any process count, and equal to mmagic's
single-process batches (mmengine's sampler would instead give DDP rank r the positions r, r + W, ...). The element
at stream position g is image ``g mod N`` of epoch ``g // N``, with the same per-index randomness as above.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
from ml_collections import ConfigDict

from glean_jax.data.datasets import GTImageFolder, PairedImageFolder, SyntheticPairs
from glean_jax.data.degradations import blind_degrade
from glean_jax.errors import UserError

log = logging.getLogger(__name__)

SOURCES = ("folder", "synthetic", "tfds")
SYNTHETIC_TRAIN_SEED = 0
SYNTHETIC_TEST_SEED = 1
MAX_SKIPS_IN_A_ROW = 100
ORDERED_STREAM_LENGTH = 2**62   # shuffle=False: the (lazy) length of the repeated in-order stream


def _get(cfg: ConfigDict, key: str, default: Any = None) -> Any:
    return cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)


def _check_cfg(cfg: ConfigDict) -> None:
    source = _get(cfg, "source", "folder")
    if source not in SOURCES:
        raise UserError(f"data.source={source!r}: expected one of {', '.join(SOURCES)}")
    deg = _get(cfg, "degradation")
    if deg not in (None, "", "blind"):
        raise UserError(f"data.degradation={deg!r}: expected None or 'blind'")
    for key in ("in_size", "out_size"):
        v = _get(cfg, key)
        if not isinstance(v, int) or v < 1:
            raise UserError(f"data.{key}={v!r}: expected a positive integer")
    if cfg.out_size % cfg.in_size:
        raise UserError(f"data.out_size={cfg.out_size} is not a multiple of data.in_size={cfg.in_size}; "
                        "expected an integer scale")
    on_error = _get(cfg, "on_error", "raise")
    if on_error not in ("raise", "skip"):
        raise UserError(f"data.on_error={on_error!r}: expected 'raise' or 'skip'")
    for key in ("num_threads", "prefetch", "num_workers"):
        v = _get(cfg, key, 0)
        if not isinstance(v, int) or v < 0:
            raise UserError(f"data.{key}={v!r}: expected a non-negative integer")


def make_train_source(cfg: ConfigDict) -> Any:
    """The random-access training source named by ``cfg`` (before sharding / shuffling)."""
    _check_cfg(cfg)
    check = bool(_get(cfg, "check_headers", True))
    if cfg.source == "synthetic":
        return SyntheticPairs(_get(cfg, "synthetic_size", 64), cfg.in_size, cfg.out_size, SYNTHETIC_TRAIN_SEED)
    if cfg.source == "tfds":
        return _tfds(cfg, _get(cfg, "tfds_split", "train"), gt_only=_get(cfg, "degradation") == "blind")
    if _get(cfg, "degradation") == "blind":
        return GTImageFolder(cfg.root, cfg.gt_dir, _get(cfg, "meta_info"), out_size=cfg.out_size,
                             check_headers=check)
    return PairedImageFolder(cfg.root, cfg.lq_dir, cfg.gt_dir, _get(cfg, "meta_info"), in_size=cfg.in_size,
                             out_size=cfg.out_size, check_headers=check)


def _tfds(cfg: ConfigDict, split: str, gt_only: bool) -> Any:
    from glean_jax.data.tfds_data import TFDSPairs

    return TFDSPairs(_get(cfg, "tfds_name", ""), split, _get(cfg, "tfds_data_dir"), in_size=cfg.in_size,
                     out_size=cfg.out_size, gt_only=gt_only, gt_key=_get(cfg, "tfds_gt_key", "gt"),
                     lq_key=_get(cfg, "tfds_lq_key", "lq"))


def hflip(img: np.ndarray) -> np.ndarray:
    """Horizontal flip (mmagic ``Flip(direction='horizontal')``, i.e. ``mmcv.imflip_``)."""
    return img[:, ::-1]


class TrainElement:
    """``map_with_index`` transform: the k-th element of the repeated, shuffled share -> augmented uint8 pair.

    Its randomness (blind degradation parameters and noise, flip) comes from
    ``np.random.default_rng([seed, epoch, image_index])``, so it depends on nothing else.
    """

    def __init__(self, source: Any, *, seed: int, n_local: int, flip: bool, blind: bool, in_size: int,
                 on_error: str) -> None:
        self.source, self.seed, self.n_local = source, int(seed), int(n_local)
        self.flip, self.blind, self.in_size, self.on_error = bool(flip), bool(blind), int(in_size), on_error
        self.skipped = 0

    def read(self, index: int) -> tuple[int, dict[str, Any]]:
        """(index actually read, item); with on_error='skip' an unreadable image is replaced by the next one."""
        n = len(self.source)
        for attempt in range(min(n, MAX_SKIPS_IN_A_ROW)):
            i = (index + attempt) % n
            try:
                return i, self.source[i]
            except UserError as e:
                if self.on_error != "skip":
                    raise
                self.skipped += 1
                log.warning("skipped unreadable training image (%d skipped so far in this process): %s",
                            self.skipped, e)
        raise UserError(f"{MAX_SKIPS_IN_A_ROW} training images in a row could not be read (from index {index}); "
                        "see the warnings above")

    def __call__(self, k: int, index: int) -> dict[str, np.ndarray]:
        """The ``k``-th element of this process's shuffled, repeated share (epoch ``k // n_local``): image
        ``index``."""
        return self.load(k // self.n_local, index)

    def at(self, position: tuple[int, int]) -> dict[str, np.ndarray]:
        """``(epoch, index)`` of :class:`OrderedPositions` -> the augmented pair (``shuffle=False``)."""
        return self.load(*position)

    def load(self, epoch: int, index: int) -> dict[str, np.ndarray]:
        """Image ``index`` (or the next readable one) of epoch ``epoch``, degraded/flipped with its own RNG."""
        index, item = self.read(int(index))
        rng = np.random.default_rng([self.seed, epoch, index])
        gt = item["gt"]
        lq = blind_degrade(gt, rng, self.in_size) if self.blind else item["lq"]
        if self.flip and rng.random() < 0.5:
            lq, gt = hflip(lq), hflip(gt)
        return {"lq": lq, "gt": gt}


class OrderedPositions:
    """``shuffle=False``: local element ``j`` of process ``process_index`` -> ``(epoch, image index)``.

    The global stream is ``0, 1, ..., N-1, 0, 1, ...`` (position g is image ``g mod N`` of epoch ``g // N``);
    global batch ``k`` is positions ``k*B .. k*B+B-1`` and this process holds its slice
    ``[process_index * b, (process_index + 1) * b)`` with ``b = B / process_count``.
    """

    def __init__(self, n: int, local_batch_size: int, process_index: int, process_count: int) -> None:
        self.n, self.b, self.p, self.count = int(n), int(local_batch_size), int(process_index), int(process_count)

    def __call__(self, j: int) -> tuple[int, int]:
        j = int(j)
        g = (j // self.b) * self.b * self.count + self.p * self.b + j % self.b
        return g // self.n, g % self.n


def collate(items: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stacks uint8 pairs and normalises them as mmagic's DataPreprocessor: float32 (x - 127.5) / 127.5.

    Same values as :func:`glean_jax.images.normalize` of the stack, computed in place (no temporaries).
    """
    out = {}
    for key in ("lq", "gt"):
        first = items[0][key]
        buf = np.empty((len(items), *first.shape), np.float32)
        for i, it in enumerate(items):
            np.subtract(it[key], np.float32(127.5), out=buf[i], dtype=np.float32)
        np.divide(buf, np.float32(127.5), out=buf)
        out[key] = buf
    return out


def build_train_dataset(source: Any, *, local_batch_size: int, seed: int, process_index: int = 0,
                        process_count: int = 1, flip: bool = True, blind: bool = False, in_size: int = 0,
                        on_error: str = "raise", num_threads: int = 4, prefetch: int = 8,
                        num_workers: int = 0, shuffle: bool = True) -> grain.IterDataset:
    """The grain pipeline (see the module docstring) over any random-access ``source`` of
    ``{'lq', 'gt'}`` (or ``{'gt'}`` with ``blind=True``) uint8 items; ``shuffle=False`` feeds them in order."""
    if process_count < 1 or not 0 <= process_index < process_count:
        raise UserError(f"process_index={process_index}, process_count={process_count}: expected "
                        "0 <= process_index < process_count")
    n = len(source)
    n_local = n // process_count
    if n_local < 1 and (shuffle or n < 1):
        raise UserError(f"training set has {n} images, fewer than the {process_count} processes; expected at "
                        "least one image per process")
    element = TrainElement(source, seed=seed, n_local=max(n_local, 1), flip=flip, blind=blind, in_size=in_size,
                           on_error=on_error)
    if shuffle:
        ds = grain.MapDataset.range(n)[process_index:n_local * process_count:process_count]
        ds = ds.shuffle(seed=int(seed) % 2**32).repeat(None).map_with_index(element)
    else:
        ds = grain.MapDataset.range(ORDERED_STREAM_LENGTH).map(
            OrderedPositions(n, local_batch_size, process_index, process_count)).map(element.at)
    ds = ds.batch(local_batch_size, drop_remainder=True, batch_fn=collate)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch))
    if num_workers:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's worker processes read absl flags (defaults are fine)
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
        it = it.map(_own_memory)  # release grain's shared-memory blocks right away
    return it


def _own_memory(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.array(v, copy=True) for k, v in batch.items()}


def make_train_dataset(data_cfg: ConfigDict, *, global_batch_size: int, seed: int, process_index: int = 0,
                       process_count: int = 1) -> grain.IterDataset:
    """The grain ``IterDataset`` behind :func:`make_train_iterator`."""
    if process_count < 1 or global_batch_size < 1 or global_batch_size % process_count:
        raise UserError(f"global batch size {global_batch_size}: expected a positive multiple of the process "
                        f"count {process_count}")
    source = make_train_source(data_cfg)
    return build_train_dataset(
        source, local_batch_size=global_batch_size // process_count, seed=seed, process_index=process_index,
        process_count=process_count, flip=bool(_get(data_cfg, "flip", True)),
        blind=_get(data_cfg, "degradation") == "blind", in_size=data_cfg.in_size,
        on_error=_get(data_cfg, "on_error", "raise"), num_threads=_get(data_cfg, "num_threads", 4),
        prefetch=_get(data_cfg, "prefetch", 8), num_workers=_get(data_cfg, "num_workers", 0),
        shuffle=bool(_get(data_cfg, "shuffle", True)))


def make_train_iterator(data_cfg: ConfigDict, *, global_batch_size: int, seed: int, process_index: int = 0,
                        process_count: int = 1) -> grain.DatasetIterator:
    """Infinite iterator of training batches for this process.

    Yields ``{'lq': float32 (b, h, w, 3), 'gt': float32 (b, H, W, 3)}`` in [-1, 1] with
    ``b = global_batch_size // process_count``. Pass ``jax.process_index()`` / ``jax.process_count()``.
    Checkpoint it with ``grain.checkpoint.CheckpointSave(it)`` (or ``it.get_state()``).
    """
    return iter(make_train_dataset(data_cfg, global_batch_size=global_batch_size, seed=seed,
                                   process_index=process_index, process_count=process_count))


def make_eval_dataset(data_cfg: ConfigDict) -> Any:
    """The test split, in order, no flip: a sequence of ``{'lq': uint8, 'gt': uint8, 'name': str}``.

    mmagic's val/test datasets are always pre-made pairs (``BIx8_down``/``BIx16_down`` + GT), also for the blind
    in128out1024 config.
    """
    _check_cfg(data_cfg)
    if data_cfg.source == "synthetic":
        return SyntheticPairs(_get(data_cfg, "synthetic_test_size", 8), data_cfg.in_size, data_cfg.out_size,
                              SYNTHETIC_TEST_SEED)
    if data_cfg.source == "tfds":
        return _tfds(data_cfg, _get(data_cfg, "tfds_test_split", "test"), gt_only=False)
    return PairedImageFolder(data_cfg.test_root, data_cfg.test_lq_dir, data_cfg.test_gt_dir,
                             _get(data_cfg, "test_meta_info"), in_size=data_cfg.in_size,
                             out_size=data_cfg.out_size, check_headers=bool(_get(data_cfg, "check_headers", True)))


def to_global_batch(batch: dict, mesh: Any, data_axis: str = "data") -> dict:
    """Process-local batch -> global ``jax.Array``s sharded ``P(data_axis)`` (batch dim) over ``mesh``.

    Uses ``jax.make_array_from_process_local_data``: each process contributes its own
    ``global_batch_size // process_count`` rows; other mesh axes hold replicas.
    """
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    if data_axis not in mesh.shape:
        raise UserError(f"mesh has no axis {data_axis!r} (axes: {', '.join(mesh.shape)})")
    sharding = NamedSharding(mesh, PartitionSpec(data_axis))
    n_shards = mesh.shape[data_axis]
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        global_rows = value.shape[0] * jax.process_count()
        if global_rows % n_shards:
            raise UserError(f"batch '{key}' has {global_rows} rows in all; expected a multiple of the mesh's "
                            f"{data_axis!r} axis size {n_shards}")
        out[key] = jax.make_array_from_process_local_data(sharding, value)
    return out

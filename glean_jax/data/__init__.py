"""Data: mmagic dataset layouts, MATLAB-exact LR generation, blind degradations and the grain input pipeline.

The public entry points (used by training and evaluation) are :func:`default_data_config`,
:func:`glean_jax.data.loader.make_train_iterator`, :func:`glean_jax.data.loader.make_eval_dataset` and
:func:`glean_jax.data.loader.to_global_batch` (re-exported here).
"""

from __future__ import annotations

from typing import Any

from ml_collections import ConfigDict, config_dict


def default_data_config() -> ConfigDict:
    """Defaults for ``config.data`` (the cat x8 layout of mmagic's ``glean_x8_2xb8_cat``).

    Fields:
      source: 'folder' (mmagic image folders), 'synthetic' (random textures + MATLAB-bicubic LQ, no files) or
        'tfds' (an array_record TFDS dataset, e.g. made by ``python -m glean_jax.data.make_tfds``; needs
        ``pip install 'glean-jax[tfds]'``, not TensorFlow).
      root, lq_dir, gt_dir, meta_info: the training set, ``root/lq_dir/<name>`` and ``root/gt_dir/<name>``;
        meta_info (relative to root) lists the names, else the LQ folder (GT folder when blind) is listed.
      degradation: None (pre-made LQ) or 'blind' (in128out1024: LQ made online from the GT; lq_dir unused).
      in_size, out_size: square LQ and GT sizes, checked on every image.
      flip: joint horizontal flip with p = 0.5 (mmagic ``Flip``).
      shuffle: a new random order every epoch (mmagic ``InfiniteSampler(shuffle=True)``); False feeds the pairs
        in dataset order (file-name order, or meta_info's), repeating, the global batches in that order whatever
        the process count (see :mod:`glean_jax.data.loader`).
      test_root, test_lq_dir, test_gt_dir, test_meta_info: the evaluation set (always pre-made LQ).
      num_threads, prefetch: grain reader threads and prefetch buffer (elements) per process.
      num_workers: grain multiprocess prefetch workers (0 = off).
      on_error: 'raise' (stop with the file's name) or 'skip' (log it, count it, use the next image) when an
        image cannot be read during training.
      check_headers: read every image header when the dataset is built (sizes, decodability).
      synthetic_size, synthetic_test_size: number of images of the synthetic train / test sets.
      tfds_name, tfds_data_dir: for source='tfds', the dataset name and its TFDS data dir (or tfds_name = the
        path of a prepared dataset's version folder); tfds_split, tfds_test_split: the training and evaluation
        splits; tfds_gt_key, tfds_lq_key: the image features (degradation='blind' reads only the GT).
    """
    c = ConfigDict()
    c.source = "folder"
    c.root = "data/cat_train"
    c.lq_dir = "BIx8_down"
    c.gt_dir = "GT"
    c.meta_info = config_dict.placeholder(str)
    c.degradation = config_dict.placeholder(str)
    c.in_size = 32
    c.out_size = 256
    c.flip = True
    c.shuffle = True
    c.test_root = "data/cat_test"
    c.test_lq_dir = "BIx8_down"
    c.test_gt_dir = "GT"
    c.test_meta_info = config_dict.placeholder(str)
    c.num_threads = 4
    c.prefetch = 8
    c.num_workers = 0
    c.on_error = "raise"
    c.check_headers = True
    c.synthetic_size = 64
    c.synthetic_test_size = 8
    c.tfds_name = ""
    c.tfds_data_dir = config_dict.placeholder(str)
    c.tfds_split = "train"
    c.tfds_test_split = "test"
    c.tfds_gt_key = "gt"
    c.tfds_lq_key = "lq"
    return c


def __getattr__(name: str) -> Any:  # lazy: importing the config must not import grain/jax
    if name in ("make_train_iterator", "make_eval_dataset", "to_global_batch"):
        from glean_jax.data import loader

        return getattr(loader, name)
    raise AttributeError(name)


__all__ = ["default_data_config", "make_train_iterator", "make_eval_dataset", "to_global_batch"]

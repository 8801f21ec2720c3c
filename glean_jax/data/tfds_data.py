"""TFDS datasets stored as array_record: read with ``data.source='tfds'``, written by ``make_tfds``.

Reading goes through ``tfds.data_source`` (random access over array_record files), which needs the
``tensorflow-datasets`` and ``array_record`` packages but no TensorFlow (``pip install 'glean-jax[tfds]'``).
Writing (:func:`write_dataset`, ``python -m glean_jax.data.make_tfds``) uses a ``GeneratorBasedBuilder`` with
``file_format='array_record'`` and images handed over as PNG bytes, so it needs no TensorFlow either.

Feature layout (what ``make_tfds`` writes and the reader expects; other feature names can be mapped with
``data.tfds_gt_key`` / ``data.tfds_lq_key``):

* ``gt``: ``tfds.features.Image`` uint8 RGB, the ground truth;
* ``lq``: ``tfds.features.Image`` uint8 RGB, the pre-made low-quality input (absent in a GT-only set for the blind
  in128out1024 set-up, whose LQ is made online from the GT);
* ``name``: ``tfds.features.Text``, the source file name (used to name evaluation outputs).

Images are stored PNG-encoded (lossless), so a pair read back is equal, pixel for pixel, to what the folder
source (:class:`glean_jax.data.datasets.PairedImageFolder`) gives for the same files. As for the folder source,
problems are found when the dataset is opened (missing dataset, split or feature, wrong declared sizes or
channels, a TFRecord-only dataset); a record that cannot be decoded, or whose size is wrong where the features
do not fix it, raises a :class:`~glean_jax.errors.UserError` naming the dataset, split and record when it is read
(so ``data.on_error='skip'`` can skip it).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from glean_jax.errors import UserError

INSTALL_HINT = "pip install 'glean-jax[tfds]' (tensorflow-datasets + array_record; TensorFlow is not needed)"
GT_KEY, LQ_KEY, NAME_KEY = "gt", "lq", "name"


def import_tfds() -> Any:
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise UserError(f"data.source='tfds' needs the tensorflow-datasets package ({e}); {INSTALL_HINT}") from e
    try:
        import array_record  # noqa: F401  (tfds imports it lazily; fail here with the hint instead)
    except ImportError as e:
        raise UserError(f"data.source='tfds' needs the array_record package ({e}); {INSTALL_HINT}") from e
    return tfds


def _available(data_dir: Path | None) -> str:
    if data_dir is None or not data_dir.is_dir():
        return "none"
    names = sorted(p.name for p in data_dir.iterdir() if p.is_dir() and p.name != "downloads")
    return ", ".join(names) or "none"


def open_builder(name: str, data_dir: str | os.PathLike | None) -> Any:
    """The prepared TFDS builder for ``name`` (a dataset name under ``data_dir``, ``name/version``, or a path to a
    prepared dataset's version folder)."""
    tfds = import_tfds()
    if not name:
        raise UserError("data.tfds_name is empty; expected the name of a prepared TFDS dataset (or the path of "
                        "its version folder, the one holding dataset_info.json)")
    path = Path(name)
    if (path / "dataset_info.json").is_file():
        try:
            return tfds.builder_from_directory(str(path))
        except Exception as e:  # noqa: BLE001  (tfds raises many kinds; the message names the folder)
            raise UserError(f"{path}: cannot open the TFDS dataset ({type(e).__name__}: {e})") from e
    root = Path(data_dir).expanduser() if data_dir else None
    if root is not None and not root.is_dir():
        raise UserError(f"data.tfds_data_dir={str(data_dir)!r}: folder not found")
    try:
        builder = tfds.builder(name, data_dir=str(root) if root else None)
    except Exception as e:  # noqa: BLE001  (DatasetNotFoundError, registration and parsing errors)
        where = f"in {root}" if root else "(no data.tfds_data_dir given: TFDS looked in its default data dir)"
        raise UserError(f"TFDS dataset {name!r} not found {where} ({type(e).__name__}); datasets there: "
                        f"{_available(root)}") from e
    if not builder.is_prepared():
        raise UserError(f"TFDS dataset {name!r} in {builder.data_dir} is not prepared (no dataset_info.json); make "
                        "it with `python -m glean_jax.data.make_tfds` or `tfds build --file_format=array_record`")
    return builder


class TFDSPairs:
    """Random-access ``{'lq', 'gt', 'name'}`` uint8 items (``{'gt', 'name'}`` with ``gt_only``) from one split.

    ``in_size`` / ``out_size`` (square) are checked against the declared image shapes when the dataset is opened
    and against every decoded image whose shape the features leave open.
    """

    def __init__(self, name: str, split: str, data_dir: str | os.PathLike | None = None, *, in_size: int | None,
                 out_size: int | None, gt_only: bool = False, gt_key: str = GT_KEY, lq_key: str = LQ_KEY) -> None:
        builder = open_builder(name, data_dir)
        self.label = f"TFDS dataset {builder.info.full_name} ({builder.data_dir})"
        self.split, self.gt_only, self.gt_key, self.lq_key = split, bool(gt_only), gt_key, lq_key
        self.gt_hw = None if out_size is None else (int(out_size), int(out_size))
        self.lq_hw = None if in_size is None or gt_only else (int(in_size), int(in_size))
        splits = sorted(builder.info.splits.keys())
        if split not in builder.info.splits:
            raise UserError(f"{self.label}: no split {split!r}; it has {', '.join(splits) or 'none'}")
        fmt = getattr(builder.info, "file_format", None)
        fmt = getattr(fmt, "value", fmt)
        if fmt != "array_record":
            raise UserError(f"{self.label}: stored as {fmt}; random access needs array_record (re-create it with "
                            "`python -m glean_jax.data.make_tfds` or `tfds build --file_format=array_record`)")
        features = builder.info.features
        wanted = [(gt_key, self.gt_hw, "GT")] + ([] if gt_only else [(lq_key, self.lq_hw, "LQ")])
        problems = []
        for key, hw, kind in wanted:
            problems += self._feature_problems(features, key, hw, kind)
        if problems:
            raise UserError(f"{self.label}: " + "; ".join(problems))
        self.has_name = NAME_KEY in features.keys()
        try:
            self.source = builder.as_data_source(split=split)
        except Exception as e:  # noqa: BLE001
            raise UserError(f"{self.label}: cannot open split {split!r} for random access "
                            f"({type(e).__name__}: {e})") from e
        if len(self.source) == 0:
            raise UserError(f"{self.label}: split {split!r} holds no records")

    @staticmethod
    def _feature_problems(features: Any, key: str, hw: tuple[int, int] | None, kind: str) -> list[str]:
        import tensorflow_datasets as tfds

        if key not in features.keys():
            return [f"no {kind} feature {key!r} (features: {', '.join(sorted(features.keys()))})"]
        feat = features[key]
        if not isinstance(feat, tfds.features.Image):
            return [f"{kind} feature {key!r} is a {type(feat).__name__}; expected tfds.features.Image"]
        out = []
        shape, dtype = tuple(feat.shape), np.dtype(feat.np_dtype)
        if dtype != np.uint8:
            out.append(f"{kind} feature {key!r} has dtype {dtype}; expected uint8")
        if shape[-1] != 3:
            out.append(f"{kind} feature {key!r} has {shape[-1]} channel(s); expected 3 (RGB)")
        if hw is not None and None not in shape[:2] and tuple(shape[:2]) != hw:
            out.append(f"{kind} feature {key!r} is declared {shape[1]}x{shape[0]}; expected {hw[1]}x{hw[0]} (W x H)")
        return out

    def __len__(self) -> int:
        return len(self.source)

    def _where(self, index: int, name: str | None = None) -> str:
        return f"{self.label}, split {self.split!r}, record {index}" + (f" ({name})" if name else "")

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            record = self.source[int(index)]
        except Exception as e:  # noqa: BLE001  (array_record / PIL decode errors)
            raise UserError(f"{self._where(index)}: cannot read ({type(e).__name__}: {e})") from e
        name = record.get(NAME_KEY) if self.has_name else None
        name = name.decode("utf-8", "replace") if isinstance(name, bytes) else (name or f"{index:08d}.png")
        item: dict[str, Any] = {"name": name}
        keys = [("gt", self.gt_key, self.gt_hw, "GT")]
        if not self.gt_only:
            keys.append(("lq", self.lq_key, self.lq_hw, "LQ"))
        for out_key, key, hw, kind in keys:
            img = np.asarray(record[key])
            if hw is not None and img.shape[:2] != hw:
                raise UserError(f"{self._where(index, name)}: {kind} is {img.shape[1]}x{img.shape[0]}; expected "
                                f"{hw[1]}x{hw[0]} (W x H)")
            item[out_key] = img
        if not self.gt_only and self.lq_hw is None:
            (h, w), (gh, gw) = item["lq"].shape[:2], item["gt"].shape[:2]
            if gh % h or gw % w or gh // h != gw // w:
                raise UserError(f"{self._where(index, name)}: GT {gw}x{gh} is not an integer multiple of LQ {w}x{h}")
        return item

    def __repr__(self) -> str:
        return f"TFDSPairs({self.label}, split {self.split!r}, {len(self)} records)"


def _png(img: np.ndarray) -> io.BytesIO:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format="PNG", compress_level=1)
    buf.seek(0)
    return buf


def write_dataset(name: str, out_dir: str | os.PathLike, splits: Mapping[str, Any], *, version: str = "1.0.0",
                  in_size: int | None = None, out_size: int | None = None, description: str = "") -> Path:
    """Writes ``splits`` ({split name: random-access source of ``{'gt', ['lq'], 'name'}`` uint8 items}) as the
    array_record TFDS dataset ``out_dir/name/version`` and returns that folder.

    All splits must be paired, or all GT-only. Fixed ``in_size`` / ``out_size`` become the declared image shapes.
    """
    tfds = import_tfds()
    if not splits:
        raise UserError("no splits to write; expected at least one")
    target = Path(out_dir) / name / version
    if target.exists():
        raise UserError(f"{target}: already exists; remove it or choose another --version")
    kinds = {split: "lq" in src[0] for split, src in splits.items() if len(src)}
    if len(set(kinds.values())) > 1:
        raise UserError(f"splits {kinds}: mix paired (LQ + GT) and GT-only sources; expected one kind")
    paired = next(iter(kinds.values()), True)
    gt_shape = (out_size, out_size, 3) if out_size else (None, None, 3)
    lq_shape = (in_size, in_size, 3) if in_size else (None, None, 3)
    spec: dict[str, Any] = {GT_KEY: tfds.features.Image(shape=gt_shape), NAME_KEY: tfds.features.Text()}
    if paired:
        spec[LQ_KEY] = tfds.features.Image(shape=lq_shape)

    def examples(source: Any) -> Iterator[tuple[int, dict[str, Any]]]:
        for i in range(len(source)):
            item = source[i]
            ex = {GT_KEY: _png(item["gt"]), NAME_KEY: str(item.get("name", f"{i:08d}.png"))}
            if paired:
                ex[LQ_KEY] = _png(item["lq"])
            yield i, ex

    class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version(version)

        def _info(self) -> Any:
            return tfds.core.DatasetInfo(builder=self, description=description or f"glean-jax dataset {name}",
                                         features=tfds.features.FeaturesDict(spec))

        def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
            return {split: self._generate_examples(src) for split, src in splits.items()}

        def _generate_examples(self, source: Any) -> Iterator[tuple[int, dict[str, Any]]]:
            return examples(source)

    _Builder.name = name
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        _Builder(data_dir=str(out_dir), file_format="array_record").download_and_prepare()
    except UserError:
        raise
    except OSError as e:
        raise UserError(f"{target}: cannot write the dataset ({e})") from e
    return target

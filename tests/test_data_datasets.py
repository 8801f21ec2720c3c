"""Folder datasets in mmagic's BasicImageDataset layout: listing, meta-info, validation and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glean_jax.data.datasets import GTImageFolder, PairedImageFolder, SyntheticPairs, read_meta_info
from glean_jax.data.resize import imresize_uint8
from glean_jax.errors import UserError

NAMES = ["0003.png", "0001.png", "0002.png"]


def _img(seed: int, size: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def make_layout(root: Path, names=NAMES, lq_size: int = 8, gt_size: int = 32, meta: bool = True) -> Path:
    (root / "BIx4_down").mkdir(parents=True)
    (root / "GT").mkdir()
    for i, n in enumerate(names):
        Image.fromarray(_img(i, gt_size)).save(root / "GT" / n)
        Image.fromarray(_img(100 + i, lq_size)).save(root / "BIx4_down" / n)
    if meta:
        lines = [f"{n} ({gt_size},{gt_size},3)" for n in names]
        (root / "meta_info.txt").write_text("\n".join(lines[:1] + [""] + lines[1:]) + "\n")
    return root


def test_meta_info_first_token_per_line(tmp_path):
    p = tmp_path / "m.txt"
    p.write_text("a.png (1,2,3)\n\n   \nb.png\tfoo\nc.png\n")
    assert read_meta_info(p) == [(1, "a.png"), (4, "b.png"), (5, "c.png")]
    p.write_text("\n \n")
    with pytest.raises(UserError, match="lists no images"):
        read_meta_info(p)
    with pytest.raises(UserError, match="meta-info file not found"):
        read_meta_info(tmp_path / "nope.txt")


def test_paired_with_meta_info_keeps_its_order(tmp_path):
    root = make_layout(tmp_path / "d")
    ds = PairedImageFolder(root, "BIx4_down", "GT", "meta_info.txt", in_size=8, out_size=32)
    assert len(ds) == 3 and ds.names == NAMES
    item = ds[0]
    assert item["name"] == "0003.png"
    np.testing.assert_array_equal(item["gt"], _img(0, 32))
    np.testing.assert_array_equal(item["lq"], _img(100, 8))
    assert item["lq"].dtype == np.uint8 and item["gt"].shape == (32, 32, 3)


def test_paired_without_meta_lists_the_lq_folder_sorted(tmp_path):
    root = make_layout(tmp_path / "d", meta=False)
    (root / "GT" / "extra_gt_only.png").write_bytes((root / "GT" / "0001.png").read_bytes())
    ds = PairedImageFolder(root, "BIx4_down", "GT")  # sizes unspecified: the x4 ratio is checked instead
    assert ds.names == sorted(NAMES)


def test_missing_folder_and_empty_folder(tmp_path):
    with pytest.raises(UserError, match="dataset root folder not found"):
        PairedImageFolder(tmp_path / "nothing", "BIx4_down", "GT")
    root = make_layout(tmp_path / "d")
    with pytest.raises(UserError, match=r"BIx8_down: LQ folder not found"):
        PairedImageFolder(root, "BIx8_down", "GT")
    (root / "empty").mkdir()
    with pytest.raises(UserError, match="folder holds no images"):
        GTImageFolder(root, "empty")


def test_meta_line_naming_a_missing_file(tmp_path):
    root = make_layout(tmp_path / "d")
    (root / "GT" / "0002.png").unlink()
    with open(root / "meta_info.txt", "a") as f:
        f.write("0009.png (32,32,3)\n")
    with pytest.raises(UserError) as e:
        PairedImageFolder(root, "BIx4_down", "GT", "meta_info.txt")
    msg = str(e.value)
    assert "3 problem(s)" in msg
    assert f"meta_info.txt line 4: GT file {root / 'GT' / '0002.png'} not found" in msg
    assert f"meta_info.txt line 5: LQ file {root / 'BIx4_down' / '0009.png'} not found" in msg


def test_corrupt_image_is_found_at_construction(tmp_path):
    root = make_layout(tmp_path / "d")
    (root / "GT" / "0001.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(UserError, match=r"0001\.png: cannot read image header"):
        PairedImageFolder(root, "BIx4_down", "GT", "meta_info.txt")


def test_truncated_image_is_found_when_read_naming_the_file(tmp_path):
    root = make_layout(tmp_path / "d", gt_size=64, lq_size=16)
    path = root / "GT" / "0002.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # valid header, truncated pixel data
    ds = PairedImageFolder(root, "BIx4_down", "GT", "meta_info.txt", in_size=16, out_size=64)
    ds[0]
    with pytest.raises(UserError, match=r"0002\.png: cannot decode image"):
        ds[2]


def test_wrong_sizes_are_named(tmp_path):
    root = make_layout(tmp_path / "d")
    Image.fromarray(_img(5, 40)).save(root / "GT" / "0002.png")
    with pytest.raises(UserError) as e:
        PairedImageFolder(root, "BIx4_down", "GT", "meta_info.txt", in_size=8, out_size=32)
    assert f"{root / 'GT' / '0002.png'}: GT is 40x40; expected 32x32" in str(e.value)
    with pytest.raises(UserError, match=r"0002\.png: GT/LQ scale is x5; expected x4 like most pairs"):
        PairedImageFolder(root, "BIx4_down", "GT", "meta_info.txt")
    Image.fromarray(_img(5, 41)).save(root / "GT" / "0002.png")
    with pytest.raises(UserError, match=r"0002\.png: GT 41x41 is not an integer multiple of LQ 8x8"):
        PairedImageFolder(root, "BIx4_down", "GT", "meta_info.txt")
    # a size problem behind check_headers=False is still caught when the pair is read
    ds = PairedImageFolder(root, "BIx4_down", "GT", "meta_info.txt", in_size=8, out_size=32, check_headers=False)
    with pytest.raises(UserError, match="GT is 41x41; expected 32x32"):
        ds[2]


def test_gt_only_folder(tmp_path):
    root = make_layout(tmp_path / "d")
    ds = GTImageFolder(root, "GT", out_size=32)
    assert ds.names == sorted(NAMES) and set(ds[0]) == {"gt", "name"}
    with pytest.raises(UserError, match="GT is 32x32; expected 64x64"):
        GTImageFolder(root, "GT", out_size=64)
    ds = GTImageFolder(root, "GT", "meta_info.txt")
    assert ds.names == NAMES
    (root / "GT" / "0001.png").unlink()
    with pytest.raises(UserError, match=r"meta_info.txt line 3: GT file .*0001\.png not found"):
        GTImageFolder(root, "GT", "meta_info.txt")


def test_grayscale_and_rgba_files_are_read_as_rgb(tmp_path):
    root = make_layout(tmp_path / "d")
    Image.fromarray(_img(0, 32)[:, :, 0]).save(root / "GT" / "0003.png")  # grayscale
    rgba = np.concatenate([_img(1, 32), np.full((32, 32, 1), 255, np.uint8)], axis=2)
    Image.fromarray(rgba).save(root / "GT" / "0001.png")
    ds = PairedImageFolder(root, "BIx4_down", "GT", "meta_info.txt", in_size=8, out_size=32)
    gray = ds[0]["gt"]
    assert gray.shape == (32, 32, 3) and (gray[..., 0] == gray[..., 2]).all()
    with pytest.warns(UserWarning, match="alpha"):
        np.testing.assert_array_equal(ds[1]["gt"], _img(1, 32))


def test_synthetic_pairs_are_deterministic_textures_with_matlab_lq():
    ds = SyntheticPairs(4, 8, 64, seed=3)
    a, b = ds[1], SyntheticPairs(4, 8, 64, seed=3)[1]
    np.testing.assert_array_equal(a["gt"], b["gt"])
    assert not np.array_equal(a["gt"], ds[2]["gt"])
    assert a["gt"].shape == (64, 64, 3) and a["lq"].shape == (8, 8, 3)
    np.testing.assert_array_equal(a["lq"], imresize_uint8(a["gt"], scale=1 / 8))
    assert a["gt"].std() > 20  # a texture, not a flat image
    with pytest.raises(IndexError):
        ds[4]
    with pytest.raises(UserError, match="expected 1 <= in_size <= out_size"):
        SyntheticPairs(2, 64, 8)

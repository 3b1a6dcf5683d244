"""The synthetic VOC-layout sample: layout, determinism, idempotence, VOC-like properties."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from seg.data.sample import SAMPLE_CLASSES, ensure_sample, is_complete, make_sample
from seg.data.voc import VOCSegmentation, read_ids
from seg.errors import DatasetError

LABELS = {cls for cls, _, _ in SAMPLE_CLASSES}


def test_layout_and_lists(sample_root):
    voc = sample_root / "VOC2012"
    train, val = (read_ids(voc / f"ImageSets/Segmentation/{s}.txt") for s in ("train", "val"))
    assert (len(train), len(val)) == (48, 16) and not set(train) & set(val)
    assert read_ids(voc / "ImageSets/Segmentation/trainval.txt") == train + val
    assert read_ids(voc / "ImageSets/Main/val.txt") == val
    for i in train + val:
        for sub, ext in (
            ("JPEGImages", "jpg"),
            ("SegmentationClass", "png"),
            ("Annotations", "xml"),
        ):
            assert (voc / sub / f"{i}.{ext}").is_file()
    assert not list(sample_root.glob(".VOC2012.tmp-*"))  # no half-written leftovers


def test_masks_are_voc_like(sample_root):
    ds = VOCSegmentation(sample_root, "trainval")
    sizes = set()
    for i in range(0, len(ds), 4):
        item = ds[i]
        mask = item["mask"]
        sizes.add(mask.shape)
        assert Image.open(ds.mask_path(item["id"])).mode == "P"
        assert set(np.unique(mask).tolist()) <= LABELS | {0, 255}
        objects = (mask != 0) & (mask != 255)
        assert objects.mean() > 0.08  # objects are large
        # void pixels form a thin band along borders: almost all lie within 2 px of a label
        void = mask == 255
        assert 0 < void.mean() < 0.15
        depth = ndimage.distance_transform_cdt(void, metric="taxicab")  # (H, W)
        assert (depth[void] <= 2).mean() > 0.95
    assert any(h != w for h, w in sizes)  # not all square
    assert all(h % 32 and w % 32 and min(h, w) >= 150 and max(h, w) <= 261 for h, w in sizes)


def test_classes_are_separable_by_hue(sample_root):
    ds = VOCSegmentation(sample_root, "train")
    hues: dict[int, list[float]] = {c: [] for c in LABELS}
    for i in range(len(ds)):
        item = ds[i]
        for c in np.unique(item["mask"]):
            if c in hues:
                rgb = item["image"][item["mask"] == c].mean(0) / 255
                hues[int(c)].append((colorsys.rgb_to_hsv(*rgb)[0] + 0.1) % 1)  # red away from 0/1
    assert all(len(v) >= 3 for v in hues.values())  # every class occurs
    ranges = sorted((min(v), max(v)) for v in hues.values())
    for (_, hi), (lo, _) in zip(ranges, ranges[1:], strict=False):
        assert hi < lo  # hue intervals of different classes do not overlap


def test_deterministic_and_seeded(tmp_path):
    a = make_sample(tmp_path / "a", n_train=3, n_val=1, seed=5)
    b = make_sample(tmp_path / "b", n_train=3, n_val=1, seed=5)
    c = make_sample(tmp_path / "c", n_train=3, n_val=1, seed=6)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 4 * 3 + 6 + 1
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    png = "VOC2012/SegmentationClass/sample_00000.png"
    assert (a / png).read_bytes() != (c / png).read_bytes()


def test_ensure_sample_is_idempotent(tmp_path):
    root = ensure_sample(tmp_path, n_train=2, n_val=1)
    assert is_complete(root, n_train=2, n_val=1) and not is_complete(root, n_train=3, n_val=1)
    jpg = root / "VOC2012/JPEGImages/sample_00000.jpg"
    stamp = jpg.stat().st_mtime_ns
    ensure_sample(tmp_path, n_train=2, n_val=1)
    assert jpg.stat().st_mtime_ns == stamp  # not regenerated
    ensure_sample(tmp_path, n_train=3, n_val=1)  # different parameters: regenerated
    assert len(read_ids(root / "VOC2012/ImageSets/Segmentation/train.txt")) == 3
    (root / "VOC2012/.complete").unlink()  # not (or no longer) ours: never replaced
    assert not is_complete(root, n_train=3, n_val=1)
    with pytest.raises(DatasetError, match="holds a VOC2012/ that is not the generated sample"):
        ensure_sample(tmp_path, n_train=3, n_val=1)
    assert len(list((root / "VOC2012/JPEGImages").iterdir())) == 4

"""VOC readers and datasets: real masks from ../shared, XML parsing, bad inputs, SBD trainaug."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import scipy.io
from PIL import Image

from seg.constants import VOC_CLASSES, VOC_PALETTE
from seg.data.sbd import SBDSegmentation, build_trainaug_ids, check_no_leak, read_sbd_mat
from seg.data.voc import (
    VOCLocalization,
    VOCSegmentation,
    parse_annotation,
    read_ids,
    read_image,
    read_mask,
)
from seg.errors import BadSampleError, DatasetNotFoundError

# Classes of the real masks, computed once from the PNGs and checked against the photos
# (e.g. 2007_000063 is a dog asleep on a chair, 2007_001185 a person with a cat at a table).
REAL_CLASSES = {
    "2007_000039": {0, 20, 255},  # tvmonitor
    "2007_000063": {0, 9, 12, 255},  # chair, dog
    "2007_000648": {0, 1, 6, 7, 15, 255},  # aeroplane, bus, car, person
    "2007_000713": {0, 4, 255},  # boat
    "2007_000733": {0, 14, 15, 255},  # motorbike, person
    "2007_000738": {0, 1, 255},  # aeroplane
    "2007_001185": {0, 5, 8, 11, 15, 255},  # bottle, cat, diningtable, person
}
COUNTS_000648 = {0: 110364, 1: 3182, 6: 44482, 7: 190, 15: 323, 255: 7959}


def mini_voc(dst: Path, src: Path, ids: list[str], split: str = "train") -> Path:
    """Copy ``ids`` of the VOC-layout folder ``src`` into ``dst`` with a one-list split."""
    for sub, ext in (("JPEGImages", "jpg"), ("SegmentationClass", "png"), ("Annotations", "xml")):
        (dst / "VOC2012" / sub).mkdir(parents=True, exist_ok=True)
        for i in ids:
            if (src / "VOC2012" / sub / f"{i}.{ext}").exists():
                shutil.copy(src / "VOC2012" / sub / f"{i}.{ext}", dst / "VOC2012" / sub)
    for lst in ("Segmentation", "Main"):
        (dst / "VOC2012" / "ImageSets" / lst).mkdir(parents=True, exist_ok=True)
        (dst / "VOC2012" / "ImageSets" / lst / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return dst


# ---------------------------------------------------------------- real VOC files (../shared)


def test_real_masks_class_sets(voc_sample_root):
    ds = VOCSegmentation(voc_sample_root, split="train")
    assert sorted(ds.ids) == sorted(REAL_CLASSES)
    for item in ds:
        assert item["image"].dtype == np.uint8 and item["image"].shape[2] == 3
        assert item["mask"].dtype == np.int64 and item["mask"].shape == item["image"].shape[:2]
        assert set(np.unique(item["mask"]).tolist()) == REAL_CLASSES[item["id"]], item["id"]


def test_real_mask_read_as_indices_not_colours(voc_sample_root):
    path = voc_sample_root / "VOC2012/SegmentationClass/2007_000648.png"
    mask = read_mask(path)
    assert mask.shape == (333, 500)
    values, counts = np.unique(mask, return_counts=True)
    assert dict(zip(values.tolist(), counts.tolist(), strict=True)) == COUNTS_000648
    # The same mask saved as VOC colours reads back to the same indices.
    colours = np.asarray(Image.open(path).convert("RGB"))
    assert colours.max() > 20  # colours are not labels: reading them would be wrong
    assert (colours[mask == 15] == VOC_PALETTE[45:48]).all()  # person = (192, 128, 128)


def test_rgb_and_16bit_masks(voc_sample_root, tmp_path):
    mask = read_mask(voc_sample_root / "VOC2012/SegmentationClass/2007_001185.png")
    rgb = Image.open(voc_sample_root / "VOC2012/SegmentationClass/2007_001185.png").convert("RGB")
    rgb.save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "rgb.png"), mask)
    Image.fromarray(mask.astype(np.uint16)).save(tmp_path / "m16.png")
    assert Image.open(tmp_path / "m16.png").mode.startswith("I")
    np.testing.assert_array_equal(read_mask(tmp_path / "m16.png"), mask)
    arr = np.asarray(rgb).copy()
    arr[0, 0] = (1, 2, 3)  # not a VOC colour
    Image.fromarray(arr).save(tmp_path / "bad.png")
    with pytest.raises(
        BadSampleError, match=r"bad\.png: RGB mask has colours .* not the dataset's"
    ):
        read_mask(tmp_path / "bad.png")


def test_segmentation_class_aug_layout_same_values(voc_sample_root):
    a = VOCSegmentation(voc_sample_root, "train")
    b = VOCSegmentation(voc_sample_root, "train", mask_dir="SegmentationClassAug")
    for i in range(len(a)):
        np.testing.assert_array_equal(a[i]["mask"], b[i]["mask"])


# ---------------------------------------------------------------- image reading


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "RGB"])
def test_read_image_modes(tmp_path, mode):
    src = Image.fromarray(np.random.default_rng(0).integers(0, 255, (13, 17, 3), np.uint8))
    img = src.convert("L").convert("I;16") if mode == "I;16" else src.convert(mode)
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    img.save(path)
    out = read_image(path)
    assert out.shape == (13, 17, 3) and out.dtype == np.uint8


def test_read_image_applies_exif_orientation(tmp_path):
    arr = np.zeros((20, 30, 3), np.uint8)
    arr[0, 0] = 255  # marker in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(arr).save(tmp_path / "o.png", exif=exif)
    out = read_image(tmp_path / "o.png")
    assert out.shape == (30, 20, 3)  # upright: width and height swap
    assert out[0, -1].min() == 255  # the stored top-left ends up top-right


# ---------------------------------------------------------------- XML

XML = """<annotation><size><width>100</width><height>80</height><depth>3</depth></size>
<object><name>dog</name><truncated>1</truncated><difficult>0</difficult>
<bndbox><xmin>1</xmin><ymin>2</ymin><xmax>50</xmax><ymax>40</ymax></bndbox></object>
<object><name>person</name><difficult>1</difficult>
<bndbox><xmin>10</xmin><ymin>10</ymin><xmax>100</xmax><ymax>80</ymax></bndbox></object>
<object><name>cat</name>
<bndbox><xmin>61</xmin><ymin>41</ymin><xmax>90</xmax><ymax>70</ymax></bndbox></object>
</annotation>"""


def test_parse_annotation(tmp_path):
    (tmp_path / "a.xml").write_text(XML)
    ann = parse_annotation(tmp_path / "a.xml")
    np.testing.assert_array_equal(
        ann["boxes"], [[0, 1, 49, 39], [9, 9, 99, 79], [60, 40, 89, 69]]
    )  # 1-based -> 0-based
    assert ann["boxes"].dtype == np.float32
    assert ann["labels"].tolist() == [12, 15, 8]
    assert ann["difficult"].tolist() == [False, True, False]
    assert ann["truncated"].tolist() == [True, False, False]
    assert (ann["width"], ann["height"]) == (100, 80)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("<annotation><size><width>5</width><height>5</height></size></annotation>", "no <object>"),
        ('<!DOCTYPE a [<!ENTITY x "y">]><annotation/>', "DOCTYPE"),
        (XML.replace("dog", "unicorn"), "unknown class 'unicorn'"),
        (XML.replace("<xmax>50</xmax>", "<xmax>oops</xmax>"), "bndbox"),
        ("<annotation><object>", "malformed"),
    ],
)
def test_parse_annotation_rejects(tmp_path, text, problem):
    (tmp_path / "bad.xml").write_text(text)
    with pytest.raises(BadSampleError, match="bad.xml") as err:
        parse_annotation(tmp_path / "bad.xml")
    assert problem in str(err.value)


def test_sample_xml_matches_masks(sample_root):
    ds = VOCSegmentation(sample_root, "train")
    counts = []
    for image_id in ds.ids:
        ann = parse_annotation(sample_root / "VOC2012/Annotations" / f"{image_id}.xml")
        mask = read_mask(sample_root / "VOC2012/SegmentationClass" / f"{image_id}.png")
        assert (ann["height"], ann["width"]) == mask.shape
        assert set(ann["labels"].tolist()) == set(np.unique(mask).tolist()) - {0, 255}
        for (x1, y1, x2, y2), label in zip(ann["boxes"].astype(int), ann["labels"], strict=True):
            assert (mask[y1 : y2 + 1, x1 : x2 + 1] == label).any()
        counts.append(len(ann["labels"]))
    assert min(counts) >= 1 and max(counts) <= 3 and len(set(counts)) > 1


# ---------------------------------------------------------------- localization


def _loc_root(tmp_path: Path, xml: str) -> Path:
    voc = tmp_path / "VOC2012"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    Image.new("RGB", (100, 80), (9, 9, 9)).save(voc / "JPEGImages/x.jpg")
    (voc / "Annotations/x.xml").write_text(xml)
    (voc / "ImageSets/Main/train.txt").write_text("x\n")
    return tmp_path


def test_localization_selects_largest_non_difficult(tmp_path):
    root = _loc_root(tmp_path, XML)
    item = VOCLocalization(root, "train")[0]  # person is larger but difficult
    assert item["label"] == VOC_CLASSES.index("dog")
    np.testing.assert_allclose(item["box"], [0, 1 / 80, 50 / 100, 39 / 80], atol=1e-6)
    first = VOCLocalization(root, "train", select="first")[0]
    assert first["label"] == VOC_CLASSES.index("dog")
    (root / "VOC2012/Annotations/x.xml").write_text(XML.replace("<name>dog", "<name>cow").replace(
        "<xmax>50</xmax><ymax>40</ymax>", "<xmax>20</xmax><ymax>20</ymax>"))  # fmt: skip
    assert VOCLocalization(root, "train")[0]["label"] == VOC_CLASSES.index("cat")
    assert VOCLocalization(root, "train", select="first")[0]["label"] == VOC_CLASSES.index("cow")


def test_localization_box_follows_flip(tmp_path):
    root = _loc_root(tmp_path, XML)
    flip = A.Compose(
        [A.HorizontalFlip(p=1.0)],
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"]),
    )
    x, y, w, h = VOCLocalization(root, "train")[0]["box"]
    fx, fy, fw, fh = VOCLocalization(root, "train", transform=flip)[0]["box"]
    np.testing.assert_allclose([fx, fy, fw, fh], [1 - x - w, y, w, h], atol=1e-6)


# ---------------------------------------------------------------- bad input


def _corrupt(voc: Path, problem: str) -> tuple[Path, str]:
    """Break sample ``b`` in one way; return the file that must be named and the message."""
    jpg, png = voc / "JPEGImages/b.jpg", voc / "SegmentationClass/b.png"
    if problem == "truncated":
        jpg.write_bytes(jpg.read_bytes()[:600])
        return jpg, "cannot decode"
    if problem == "size":
        mask = Image.open(png)
        mask.crop((0, 0, mask.width - 3, mask.height)).save(png)
        return png, "mask size"
    if problem == "value":
        arr = np.array(Image.open(png))
        arr[5, 5] = 42
        mask = Image.fromarray(arr, mode="P")
        mask.putpalette(VOC_PALETTE)
        mask.save(png)
        return png, "[42]"
    jpg.unlink()
    return jpg, "not found"


@pytest.mark.parametrize("problem", ["truncated", "size", "value", "missing"])
def test_bad_samples_raise_or_skip(sample_root, tmp_path, problem, caplog):
    src = sample_root / "VOC2012"
    root = tmp_path / "r"
    for new, old in zip("abc", read_ids(src / "ImageSets/Segmentation/train.txt"), strict=False):
        for sub, ext in (("JPEGImages", "jpg"), ("SegmentationClass", "png")):
            (root / "VOC2012" / sub).mkdir(parents=True, exist_ok=True)
            shutil.copy(src / sub / f"{old}.{ext}", root / "VOC2012" / sub / f"{new}.{ext}")
    (root / "VOC2012/ImageSets/Segmentation").mkdir(parents=True)
    (root / "VOC2012/ImageSets/Segmentation/train.txt").write_text("a\nb\nc\n")
    path, message = _corrupt(root / "VOC2012", problem)
    with pytest.raises(BadSampleError) as err:
        VOCSegmentation(root, "train")[1]
    assert str(path) in str(err.value) and message in str(err.value)
    ds = VOCSegmentation(root, "train", skip_bad=True)
    with caplog.at_level(logging.WARNING):
        assert ds[1]["id"] == "c"  # the next valid sample
    assert "skipping bad sample b" in caplog.text
    assert [ds[i]["id"] for i in range(3)] == ["a", "c", "c"]


def test_localization_xml_without_objects(sample_root, tmp_path):
    ids = read_ids(sample_root / "VOC2012/ImageSets/Main/train.txt")[:2]
    root = mini_voc(tmp_path, sample_root, ids)
    xml = root / "VOC2012/Annotations" / f"{ids[0]}.xml"
    xml.write_text("<annotation><size><width>9</width><height>9</height></size></annotation>")
    with pytest.raises(BadSampleError, match=f"{xml}.*no <object>"):
        VOCLocalization(root, "train")[0]
    assert VOCLocalization(root, "train", skip_bad=True)[0]["id"] == ids[1]


def test_missing_dataset(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="VOC2012"):
        VOCSegmentation(tmp_path / "nowhere", "train")
    (tmp_path / "VOC2012/JPEGImages").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="train.txt"):
        VOCSegmentation(tmp_path, "train")


# ---------------------------------------------------------------- SBD trainaug


def test_real_trainaug_never_contains_val(shared_dir):
    splits = shared_dir / "voc-sample/splits"
    aug, val, train = (read_ids(splits / f"{n}.txt") for n in ("train_aug", "val", "train"))
    assert len(aug) == 10582 and len(val) == 1449
    check_no_leak(aug, val)
    with pytest.raises(ValueError, match="leak"):
        check_no_leak([*aug, val[7]], val)
    # SBD's lists overlap VOC val; the construction must drop those ids again.
    sbd_like = [*aug[::2], *val[:300]]
    built = build_trainaug_ids(sbd_like, aug[1::2], train, val)
    assert built == sorted(aug) and not set(built) & set(val)


def test_sbd_aug_layout_and_leak_check(voc_sample_root, tmp_path):
    src = voc_sample_root / "VOC2012"
    voc = tmp_path / "VOC2012"
    (voc / "ImageSets/Segmentation").mkdir(parents=True)
    for sub in ("JPEGImages", "SegmentationClassAug"):
        (voc / sub).symlink_to(src / sub)
    ids = read_ids(src / "ImageSets/Segmentation/train.txt")
    (voc / "ImageSets/Segmentation/train_aug.txt").write_text("\n".join(ids))
    (voc / "ImageSets/Segmentation/val.txt").write_text("2007_000033\n")
    ds = SBDSegmentation(tmp_path)
    assert ds.ids == ids and set(np.unique(ds[2]["mask"]).tolist()) == REAL_CLASSES[ids[2]]
    (voc / "ImageSets/Segmentation/val.txt").write_text(f"{ids[3]}\n")
    with pytest.raises(ValueError, match=ids[3]):
        SBDSegmentation(tmp_path)


def test_sbd_mat_route(sample_root, tmp_path):
    ids = read_ids(sample_root / "VOC2012/ImageSets/Segmentation/trainval.txt")[:6]
    root = mini_voc(tmp_path / "voc", sample_root, ids[:2], split="train")
    lists = root / "VOC2012/ImageSets/Segmentation"
    (lists / "val.txt").write_text(f"{ids[5]}\n")
    for i in ids[2:]:
        shutil.copy(sample_root / f"VOC2012/JPEGImages/{i}.jpg", root / "VOC2012/JPEGImages")
    cls = tmp_path / "benchmark_RELEASE/dataset/cls"
    cls.mkdir(parents=True)
    for i in ids[1:]:
        m = read_mask(sample_root / f"VOC2012/SegmentationClass/{i}.png")
        scipy.io.savemat(cls / f"{i}.mat", {"GTcls": {"Segmentation": np.where(m == 255, 0, m)}})
    (cls.parent / "train.txt").write_text("\n".join(ids[1:4]))
    (cls.parent / "val.txt").write_text("\n".join(ids[4:]))  # includes the VOC val id
    ds = SBDSegmentation(root, sbd_root=tmp_path / "benchmark_RELEASE")
    assert ds.ids == sorted(ids[:5])  # VOC train + SBD train/val - VOC val
    assert ds.mask_path(ids[0]).suffix == ds.mask_path(ids[1]).suffix == ".png"  # VOC mask wins
    assert ds.mask_path(ids[2]).suffix == ".mat"
    assert 255 not in np.unique(ds[2]["mask"]) and ds[2]["mask"].dtype == np.int64
    assert read_sbd_mat(cls / f"{ids[3]}.mat").shape == ds[3]["image"].shape[:2]


def test_truncated_images_are_never_silently_accepted(sample_root, tmp_path, monkeypatch):
    jpg = next((sample_root / "VOC2012/JPEGImages").glob("*.jpg"))
    (tmp_path / "t.jpg").write_bytes(jpg.read_bytes()[:-200])
    with pytest.raises(BadSampleError, match="t.jpg"):
        read_image(tmp_path / "t.jpg")
    monkeypatch.setattr("PIL.ImageFile.LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        read_image(tmp_path / "t.jpg")

"""Your own dataset with your own classes: a 3-class VOC-layout folder (no VOC2012/ inside, its
classes in classes.txt and colours in palette.txt) goes through train -> evaluate -> predict ->
export as a user runs them, and the class names, colours and counts follow it everywhere; the
same folder with VOC XML boxes trains and predicts a localizer; and the Python API gives the
masks predict.py writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import compose, run_entry
from PIL import Image, ImageDraw

import seg
from seg.data.classes import dataset_classes, dataset_palette
from seg.errors import ConfigError

CLASSES = ["background", "square", "disk"]
PALETTE = [[0, 0, 0], [250, 200, 0], [0, 120, 255]]


def write_xml(path: Path, w: int, h: int, objects: list[tuple[str, list[int]]]) -> None:
    parts = [f"<annotation><size><width>{w}</width><height>{h}</height></size>"]
    for name, (x1, y1, x2, y2) in objects:
        box = f"<xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax>"
        parts.append(f"<object><name>{name}</name><bndbox>{box}</bndbox></object>")
    path.write_text("".join(parts) + "</annotation>")


def make_dataset(root: Path, n: int = 14, seed: int = 0) -> Path:
    """Images with a yellow square and a blue disk on grey noise; masks 0 / 1 / 2 (255 on the
    disk's rim); 10 train and 4 val ids; Annotations for localization."""
    rng = np.random.default_rng(seed)
    for folder in ("JPEGImages", "SegmentationClass", "Annotations"):
        (root / folder).mkdir(parents=True)
    ids = [f"img{i:02d}" for i in range(n)]
    for image_id in ids:
        h, w = 56, 72
        image = Image.fromarray(rng.integers(90, 140, (h, w, 3), dtype=np.uint8))
        mask = Image.new("L", (w, h), 0)
        x, y, s = int(rng.integers(2, 26)), int(rng.integers(2, 24)), int(rng.integers(14, 22))
        cx, cy, r = int(rng.integers(44, 62)), int(rng.integers(12, 44)), int(rng.integers(6, 10))
        for draw, value in ((ImageDraw.Draw(image), None), (ImageDraw.Draw(mask), 1)):
            draw.rectangle((x, y, x + s, y + s), fill=value or tuple(PALETTE[1]))
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255 if value else tuple(PALETTE[2]))
            if value:  # the disk's inside is class 2, its 1-pixel rim void
                draw.ellipse((cx - r + 1, cy - r + 1, cx + r - 1, cy + r - 1), fill=2)
        image.save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        mask.save(root / "SegmentationClass" / f"{image_id}.png")
        objects = [("square", [x, y, x + s + 1, y + s + 1]), ("disk", [cx - r, cy - r, cx + r + 1, cy + r + 1])]  # fmt: skip
        write_xml(root / "Annotations" / f"{image_id}.xml", w, h, objects)
    for list_dir in ("Segmentation", "Main"):
        (root / "ImageSets" / list_dir).mkdir(parents=True)
        (root / "ImageSets" / list_dir / "train.txt").write_text("\n".join(ids[:10]) + "\n")
        (root / "ImageSets" / list_dir / "val.txt").write_text("\n".join(ids[10:]) + "\n")
    (root / "classes.txt").write_text("\ufeff" + "\n".join(CLASSES) + "\n")  # with a BOM
    (root / "palette.txt").write_text("\n".join(" ".join(map(str, c)) for c in PALETTE) + "\n")
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("custom") / "shapes")


def test_classes_and_palette_come_from_the_dataset_files(dataset: Path, tmp_path: Path) -> None:
    assert dataset_classes(dataset) == CLASSES and dataset_palette(dataset) == PALETTE
    cfg = compose("train", "data=custom", f"data.root={dataset}", "model=unet_mobilenetv2")
    assert cfg.data.classes == CLASSES and cfg.model.num_classes == cfg.model.net.num_classes == 3
    loc = compose("train", "data=custom_loc", f"data.root={dataset}", "model=localizer")
    assert loc.model.num_classes == loc.model.net.num_classes == 2 and loc.model.label_offset == 1
    (tmp_path / "classes.txt").write_text("a\nb\na\n")
    with pytest.raises(ConfigError, match="classes named twice: \\['a'\\]"):
        dataset_classes(tmp_path)


def train_on(dataset: Path, run: Path, *overrides: str) -> Path:
    """``python train.py data.root=<dataset> ...`` (batch 4, CSV log) into ``run``."""
    run_entry("train.py", f"data.root={dataset}", "data.batch_size=4", "data.num_workers=0",
              "logger=csv", f"hydra.run.dir={run}", *overrides)  # fmt: skip
    return run


def test_train_evaluate_predict_export_follow_the_dataset(dataset: Path, tmp_path: Path) -> None:
    run = train_on(dataset, tmp_path / "run", "data=custom", "model=unet_mobilenetv2",
                   "augment=sample", "augment.crop_size=48", "trainer.max_epochs=2")  # fmt: skip
    ckpt = run / "checkpoints" / "last.ckpt"
    metrics = json.loads((run / "metrics.json").read_text())
    assert list(metrics["per_class_IoU"]) == CLASSES

    run_entry("evaluate.py", f"ckpt={ckpt}", f"hydra.run.dir={tmp_path / 'eval'}")
    record = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert record["num_images"] == 4 and list(record["per_class_accuracy"]) == CLASSES

    out = tmp_path / "pred"
    run_entry("predict.py", f"ckpt={ckpt}", f"input={dataset / 'JPEGImages'}", f"output={out}")
    png = Image.open(out / "img10.png")
    assert png.mode == "P" and png.size == (72, 56)
    assert np.array(png.getpalette()[:9]).reshape(3, 3).tolist() == PALETTE
    assert set(np.unique(np.array(png)).tolist()) <= {0, 1, 2}

    onnx_path = tmp_path / "model.onnx"
    run_entry(
        "-m seg.export", f"ckpt={ckpt}", "format=onnx", f"output={onnx_path}",
        "example_size=[48,64]", "parity.sizes=[[1,45,67]]", f"hydra.run.dir={tmp_path / 'x'}",
    )  # fmt: skip
    import onnx

    props = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert json.loads(props["classes"]) == CLASSES and json.loads(props["palette"]) == PALETTE

    model = seg.load(ckpt)  # the Python API: the same mask as predict.py's PNG
    assert model.classes == tuple(CLASSES)
    image = dataset / "JPEGImages" / "img10.jpg"
    np.testing.assert_array_equal(model.predict(image), np.array(png))
    np.testing.assert_array_equal(model.predict(Image.open(image)), np.array(png))
    probs = model.predict_probs(np.array(Image.open(image)))
    assert probs.shape == (3, 56, 72)
    np.testing.assert_array_equal(probs.argmax(0), np.array(png))


def test_a_label_outside_the_classes_names_the_file(dataset: Path, tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "bad", n=14, seed=1)
    mask = np.array(Image.open(root / "SegmentationClass" / "img03.png"))
    mask[0, 0] = 3  # a fourth class
    Image.fromarray(mask).save(root / "SegmentationClass" / "img03.png")
    proc = run_entry(
        "train.py", "data=custom", f"data.root={root}", "model=unet_mobilenetv2",
        "augment=sample", "augment.crop_size=48", "data.batch_size=10", "data.num_workers=0",
        "trainer.max_epochs=1", "logger=none", f"hydra.run.dir={tmp_path / 'run'}", check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {root / 'SegmentationClass' / 'img03.png'}: mask values [3]")
    assert "{0..2, 255}" in line


def test_localization_on_a_custom_xml_dataset(dataset: Path, tmp_path: Path) -> None:
    run = train_on(dataset, tmp_path / "run", "data=custom_loc", "model=localizer_mobilenetv2",
                   "augment=loc", "augment.crop_size=64", "trainer.max_epochs=1")  # fmt: skip
    ckpt = run / "checkpoints" / "last.ckpt"
    out = tmp_path / "pred"
    run_entry("predict.py", f"ckpt={ckpt}", f"input={dataset / 'JPEGImages'}", f"output={out}")
    boxes = json.loads((out / "boxes.json").read_text())
    assert len(boxes) == 14 and {b["class"] for b in boxes.values()} <= {"square", "disk"}
    run_entry("evaluate.py", f"ckpt={ckpt}", f"hydra.run.dir={tmp_path / 'eval'}")
    record = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert list(record["per_class"]) == ["square", "disk"] and record["num_images"] == 4

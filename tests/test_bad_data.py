"""Bad masks and bad samples in training and evaluation data (issue #6).

A wrong-size mask names the file and both sizes; values outside {0..20, 255} are named; RGB masks
in VOC colours are converted, other colours refused; 16-bit masks are read when their values are
valid. ``skip_bad`` skips each of these the same way. Through ``train.py`` / ``evaluate.py`` a bad
sample ends the run with one line naming the file (exit 1), also from a DataLoader worker.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose
from PIL import Image
from torch.utils.data import DataLoader

from seg.cli import error_line, run
from seg.constants import VOC_PALETTE
from seg.data.io import read_mask
from seg.data.voc import VOCLocalization, VOCSegmentation
from seg.errors import BadSampleError
from seg.evaluate import evaluate
from seg.train import train

H, W = 24, 32


def labels() -> np.ndarray:
    """(H, W) uint8 labels: background, aeroplane, person, tvmonitor and a void border."""
    m = np.zeros((H, W), np.uint8)
    m[2:10, 2:12], m[12:20, 4:16], m[5:15, 20:28] = 1, 15, 20
    m[0], m[-1] = 255, 255
    return m


def palette_png(m: np.ndarray) -> Image.Image:
    img = Image.fromarray(m, mode="P")
    img.putpalette(VOC_PALETTE)
    return img


def voc_colours(m: np.ndarray) -> np.ndarray:
    return np.asarray(VOC_PALETTE, np.uint8).reshape(256, 3)[m]  # (H, W, 3)


def voc_root(base: Path, masks: dict[str, Image.Image | bytes], val: str = "") -> Path:
    """A VOC-layout root: one W x H image per id (with an XML box). The ``train`` list holds
    every id but ``val``; the ``val`` list holds ``val`` (or every id when empty)."""
    voc = base / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    xml = "<annotation><size><width>32</width><height>24</height></size><object><name>dog"
    xml += "</name><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>9</xmax><ymax>9</ymax></bndbox>"
    for i, mask in masks.items():
        Image.fromarray(voc_colours(labels())).save(voc / f"JPEGImages/{i}.jpg", quality=95)
        png = voc / f"SegmentationClass/{i}.png"
        png.write_bytes(mask) if isinstance(mask, bytes) else mask.save(png)
        (voc / f"Annotations/{i}.xml").write_text(f"{xml}</object></annotation>")
    lists = voc / "ImageSets/Segmentation"
    (lists / "train.txt").write_text("".join(f"{i}\n" for i in masks if i != val))
    (lists / "val.txt").write_text(f"{val}\n" if val else "".join(f"{i}\n" for i in masks))
    return base


def bad_mask(problem: str) -> tuple[Image.Image | bytes, str]:
    """A broken mask and the text its error must contain."""
    m = labels()
    if problem == "size":
        return palette_png(m[:, :30]), "mask size 30x24 != image size 32x24"
    if problem == "values":
        m[3, 3], m[4, 4] = 21, 100
        return Image.fromarray(m, mode="L"), "mask values [21, 100] outside {0..20, 255}"
    if problem == "colours":
        rgb = voc_colours(m)
        rgb[3, 3] = (1, 2, 3)
        return Image.fromarray(rgb), "RGB mask has colours ['#010203'] that are not the dataset's"
    if problem == "16-bit values":
        wide = m.astype(np.uint16)
        wide[3, 3], wide[4, 4] = 300, 1000
        return Image.fromarray(wide), "mask values [300, 1000]"
    if problem == "mode":
        return palette_png(m).convert("LA"), "unsupported mask mode 'LA'"
    return b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "cannot decode"  # corrupt


PROBLEMS = ["size", "values", "colours", "16-bit values", "mode", "corrupt"]


@pytest.mark.parametrize("problem", PROBLEMS)
def test_bad_mask_names_the_file_and_is_skipped_alike(tmp_path, problem, caplog):
    mask, message = bad_mask(problem)
    root = voc_root(tmp_path, {"a": mask, "b": palette_png(labels())})
    png = root / "VOC2012/SegmentationClass/a.png"
    with pytest.raises(BadSampleError) as err:
        VOCSegmentation(root, "train")[0]
    assert str(err.value).startswith(f"{png}: ") and message in str(err.value)
    assert "\n" not in str(err.value)
    with caplog.at_level(logging.WARNING):
        assert VOCSegmentation(root, "train", skip_bad=True)[0]["id"] == "b"
    assert "skipping bad sample a" in caplog.text


def test_localization_mask_of_wrong_size_names_both_sizes(tmp_path):
    root = voc_root(tmp_path, {"a": bad_mask("size")[0]})
    ds = VOCLocalization(root, "train", list_dir="Segmentation", with_mask=True)
    with pytest.raises(BadSampleError, match=r"a\.png: mask size 30x24 != image size 32x24"):
        ds[0]


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_voc_coloured_mask_is_converted_to_labels(tmp_path, mode):
    Image.fromarray(voc_colours(labels())).convert(mode).save(tmp_path / "c.png")
    mask = read_mask(tmp_path / "c.png")
    assert mask.dtype == np.int64
    np.testing.assert_array_equal(mask, labels())


def test_16bit_mask_with_valid_values_is_accepted(tmp_path):
    Image.fromarray(labels().astype(np.uint16)).save(tmp_path / "m16.png")
    assert Image.open(tmp_path / "m16.png").mode == "I;16"
    np.testing.assert_array_equal(read_mask(tmp_path / "m16.png"), labels())


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-400])


def test_worker_error_reduces_to_one_line_naming_the_file(tmp_path):
    root = voc_root(tmp_path, {"a": palette_png(labels())})
    jpg = root / "VOC2012/JPEGImages/a.jpg"
    _truncate(jpg)
    loader = DataLoader(VOCSegmentation(root, "train"), num_workers=1, collate_fn=list)
    with pytest.raises(BadSampleError) as err:
        next(iter(loader))
    assert "Traceback" in str(err.value)  # the worker wraps the original message
    line = error_line(err.value)
    assert line.startswith(f"{jpg}: cannot decode image") and "\n" not in line


def test_train_stops_on_a_corrupt_image_with_one_line(tmp_path, capsys):
    good = palette_png(labels())
    root = voc_root(tmp_path / "data", {"a": good, "b": good, "v": good}, val="v")
    _truncate(root / "VOC2012/JPEGImages/b.jpg")
    cfg = compose(
        "train",
        "model=unet_mobilenetv2",
        "augment=sample",
        "augment.crop_size=32",
        f"data.root={root}",
        "data.num_workers=0",
        "data.batch_size=2",
        "trainer.fast_dev_run=true",
        "trainer.accelerator=cpu",
        "logger=none",
        "callbacks=none",
        f"paths.output_dir={tmp_path / 'run'}",
    )
    with pytest.raises(SystemExit) as exit_:
        run(train, cfg)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 1 and len(err) == 1
    assert err[0].startswith(f"error: {root / 'VOC2012/JPEGImages/b.jpg'}: cannot decode image")


def test_evaluate_stops_on_a_bad_mask_with_one_line(tmp_path, capsys):
    net = {"_target_": "torch.nn.Conv2d", "in_channels": 3, "out_channels": 21, "kernel_size": 1}
    model = {"_target_": "seg.modules.segmentation.SegmentationModule", "net": net}
    steps = [{"_target_": f"albumentations.{t}"} for t in ("Normalize", "pytorch.ToTensorV2")]
    augment = {"eval": {"_target_": "albumentations.Compose", "transforms": steps}}
    config = {"model": model, "augment": augment}
    state = {f"net.{k}": v for k, v in torch.nn.Conv2d(3, 21, 1).state_dict().items()}
    torch.save({"seg_config": config, "state_dict": state}, tmp_path / "c.ckpt")
    root = voc_root(tmp_path / "data", {"a": palette_png(labels()), "b": bad_mask("values")[0]})
    cfg = compose(
        "evaluate",
        f"ckpt={tmp_path / 'c.ckpt'}",
        "data=voc",  # the checkpoint holds no data config
        f"data.root={root}",
        "data.num_workers=0",
        "trainer.accelerator=cpu",
        f"paths.output_dir={tmp_path / 'eval'}",
    )
    with pytest.raises(SystemExit) as exit_:
        run(evaluate, cfg)
    err = capsys.readouterr().err.strip().splitlines()
    png = root / "VOC2012/SegmentationClass/b.png"
    assert exit_.value.code == 1 and len(err) == 1
    assert err[0].startswith(f"error: {png}: mask values [21, 100]")

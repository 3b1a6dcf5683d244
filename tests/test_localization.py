"""Localization end to end: per-class regression trains the target class's box, the paper's L2
loss, ILSVRC / CorLoc scores against hand-computed cases, devkit XML with parts, and predict.py's
boxes (pixels of the displayed image, atomic, one per readable image, kept on SIGTERM).

Predictions come from a checkpoint whose localizer ignores the image: zero weights before its
heads, so it always answers "person" with the box (0.25, 0.5, 0.5, 0.25) of the image, and every
expected box is known exactly.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONF, REPO, compose, run_entry, signal_when
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from seg.data.voc import parse_annotation
from seg.metrics import LocalizationMetrics
from seg.models.encoders import MobileNetV2Encoder
from seg.models.localization import Localizer
from seg.modules.localization import LocalizationModule

PERSON = 15  # VOC label; logit 14 of a 20-way head
BOX = (0.25, 0.5, 0.5, 0.25)  # x, y, w, h of the image


def tiny_localizer(per_class_box: bool = False) -> Localizer:
    encoder = MobileNetV2Encoder(width_mult=0.35, depth=2)
    net = Localizer(encoder, 20, hidden_channels=16, dropout=0.0, per_class_box=per_class_box)
    return net.eval()  # BatchNorm statistics of init: the hidden features are not all zero


def test_per_class_regression_trains_only_the_target_class_box() -> None:
    torch.manual_seed(0)
    net = tiny_localizer(per_class_box=True)
    module = LocalizationModule(net, l2_weight=1.0, smooth_l1_weight=1.0, giou_weight=1.0)
    batch = {"label": torch.tensor([PERSON]), "box": torch.tensor([[0.1, 0.2, 0.3, 0.4]])}
    out = net(torch.randn(1, 3, 32, 32))
    for name, loss in module.loss(out, batch).items():
        if name in ("cls", "loss"):
            continue
        net.zero_grad()
        loss.backward(retain_graph=True)
        grad = net.box_head.weight.grad.view(20, 4, -1)  # (K, 4, hidden): rows of class k
        moved = (grad.abs().sum(dim=(1, 2)) > 0).nonzero().flatten().tolist()
        assert moved == [PERSON - 1], (name, moved)  # the target's box, not the predicted one


def test_l2_loss_is_the_euclidean_loss_of_the_centre_form_box() -> None:
    module = LocalizationModule(tiny_localizer(), l2_weight=1.0, smooth_l1_weight=0.0)
    box, target = torch.tensor([[0.1, 0.2, 0.4, 0.2]]), torch.tensor([[0.2, 0.2, 0.2, 0.4]])
    out = {"cls": torch.zeros(1, 20), "box": box}
    terms = module.loss(out, {"label": torch.tensor([1]), "box": target})
    # centres (0.3, 0.3) vs (0.3, 0.4); sizes (0.4, 0.2) vs (0.2, 0.4)
    assert terms["l2"].item() == pytest.approx((0 + 0.1**2 + 0.2**2 + 0.2**2) / 4)


def test_localization_scores_against_hand_computed_cases() -> None:
    """Three images, target class 0 at box (0, 0, 0.5, 0.5); K = 6."""
    metric = LocalizationMetrics(num_classes=6)
    logits = torch.tensor(
        [
            [9.0, 1, 0, 0, 0, 0],  # 1: right class, right box
            [1.0, 9, 0, 0, 0, 0],  # 2: second guess right, its own box right, top-1 box wrong
            [0.0, 1, 2, 3, 4, 9],  # 3: class 0 outside the top 5; its box is right
        ]
    )
    good, bad = [0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5]
    box_all = torch.tensor([[good] * 6, [good, *[bad] * 5], [good, *[bad] * 5]])  # (3, 6, 4)
    box = box_all[torch.arange(3), logits.argmax(1)]  # the top-1 class's box
    target, target_box = torch.zeros(3, dtype=torch.long), torch.tensor([good] * 3)
    metric.update(logits, box, target, target_box, box_all)
    scores = metric.compute()
    expected = {
        "cls_acc": 1 / 3,  # image 1
        "cls_acc_top5": 2 / 3,  # images 1, 2
        "loc_acc": 1 / 3,  # image 1
        "loc_acc_top5": 2 / 3,  # image 2: class 0 is guess 2 and its box is right
        "CorLoc": 1 / 3,  # only image 1's top-1 box overlaps
        "gt_known_loc": 1.0,  # the target class's box is right in all three
        "mean_IoU": (1 + 0 + 0) / 3,  # bad overlaps good in one point: IoU 0
    }
    for key, value in expected.items():
        assert scores[key].item() == pytest.approx(value), key
    assert scores["count"].tolist() == [3, 0, 0, 0, 0, 0] and scores["num_images"] == 3
    assert math.isnan(scores["per_class"]["cls_acc"][1].item())
    assert scores["iou_hist"].sum() == 3 and scores["iou_hist"][-1] == 1


DEVKIT_XML = """<annotation>
	<folder>VOC2012</folder>
	<filename>2007_000129.jpg</filename>
	<source>
		<database>The VOC2007 Database</database>
		<annotation>PASCAL VOC2007</annotation>
		<image>flickr</image>
	</source>
	<size><width>334</width><height>500</height><depth>3</depth></size>
	<segmented>1</segmented>
	<object>
		<name>bicycle</name>
		<pose>Right</pose>
		<truncated>0</truncated>
		<occluded>1</occluded>
		<difficult>0</difficult>
		<bndbox><xmin>70</xmin><ymin>202</ymin><xmax>255</xmax><ymax>500</ymax></bndbox>
	</object>
	<object>
		<name>person</name>
		<pose>Unspecified</pose>
		<truncated>1</truncated>
		<difficult>0</difficult>
		<bndbox><xmin>2</xmin><ymin>1</ymin><xmax>334</xmax><ymax>500</ymax></bndbox>
		<part><name>head</name><bndbox><xmin>81</xmin><ymin>2</ymin><xmax>210</xmax><ymax>168</ymax></bndbox></part>
		<part><name>hand</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>334</xmax><ymax>500</ymax></bndbox></part>
		<actions><jumping>0</jumping><other>1</other></actions>
		<point><x>160</x><y>250</y></point>
	</object>
</annotation>
"""


def test_devkit_xml_parts_never_become_objects(tmp_path: Path) -> None:
    (tmp_path / "a.xml").write_text(DEVKIT_XML)
    ann = parse_annotation(tmp_path / "a.xml")
    assert ann["labels"].tolist() == [2, 15]  # bicycle, person; no "head" or "hand"
    np.testing.assert_array_equal(ann["boxes"], [[69, 201, 254, 499], [1, 0, 333, 499]])
    assert ann["truncated"].tolist() == [False, True]
    assert ann["occluded"].tolist() == [True, False] and ann["pose"] == ["Right", "Unspecified"]
    assert (ann["width"], ann["height"]) == (334, 500)


@pytest.fixture(scope="module")
def fixed_box_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A train.py-style checkpoint of a localizer that always answers PERSON at BOX."""
    cfg = compose("train", "model=localizer_mobilenetv2", "augment=loc", "augment.crop_size=64")
    net = instantiate(cfg.model.net)
    with torch.no_grad():
        for head in (net.cls_head, net.box_head):
            head.weight.zero_()
        net.cls_head.bias.zero_()
        net.cls_head.bias[PERSON - 1] = 8.0  # softmax: e^8 / (e^8 + 19) = 0.994
        net.box_head.bias.copy_(torch.logit(torch.tensor(BOX)).repeat(20))
    config = OmegaConf.to_container(cfg, resolve=True)
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    path = tmp_path_factory.mktemp("loc") / "fixed.ckpt"
    torch.save({"seg_config": config, "state_dict": state}, path)
    return path


def expected_box(w: int, h: int) -> list[float]:
    x, y, bw, bh = BOX
    return [x * w, y * h, (x + bw) * w, (y + bh) * h]


def test_predict_writes_one_box_per_readable_image_in_displayed_pixels(
    fixed_box_ckpt: Path, tmp_path: Path
) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.new("RGB", (200, 120), (30, 60, 90)).save(src / "wide.png")
    Image.new("RGB", (33, 77), (30, 60, 90)).save(src / "odd.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 200 x 120, displayed rotated: 120 x 200
    Image.new("RGB", (200, 120), (30, 60, 90)).save(src / "rotated.jpg", exif=exif.tobytes())
    (src / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    proc = run_entry(
        "predict.py", f"ckpt={fixed_box_ckpt}", f"input={src}", f"output={out}",
        "save.overlay=true", check=False,
    )  # fmt: skip
    assert proc.returncode == 1 and "3 written" in proc.stdout and "broken.jpg" in proc.stderr
    boxes = json.loads((out / "boxes.json").read_text())
    lines = [json.loads(line) for line in (out / "boxes.jsonl").read_text().splitlines()]
    assert sorted(boxes) == sorted(r["stem"] for r in lines) == ["odd", "rotated", "wide"]
    for stem, (w, h) in {"wide": (200, 120), "odd": (33, 77), "rotated": (120, 200)}.items():
        record = boxes[stem]
        assert record["class"] == "person" and record["score"] > 0.9
        assert record["box_xyxy"] == pytest.approx(expected_box(w, h), abs=1.0)  # bf16: < 1 px
        x, y, bw, bh = record["box_xywh"]
        assert 0 <= x <= x + bw <= w and 0 <= y <= y + bh <= h
        assert Image.open(out / f"{stem}_overlay.jpg").size == (w, h)
    assert not list(out.glob("*.png"))  # no mask decoder: no masks


def test_sigterm_keeps_every_finished_box(fixed_box_ckpt: Path, tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(400):
        Image.new("RGB", (48, 40), (i % 256, 0, 0)).save(src / f"im{i:03d}.png")
    cmd = [sys.executable, "predict.py", f"ckpt={fixed_box_ckpt}", f"input={src}"]
    cmd += [f"output={out}", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.DEVNULL)
    jsonl = out / "boxes.jsonl"
    signal_when(proc, lambda: jsonl.exists() and jsonl.read_text().count("\n") >= 5)
    assert proc.wait(timeout=120) == 143
    done = [json.loads(line)["stem"] for line in (out / "boxes.jsonl").read_text().splitlines()]
    assert 5 <= len(done) < 400
    assert sorted(json.loads((out / "boxes.json").read_text())) == sorted(done)
    lines = (out / "predict_manifest.jsonl").read_text().splitlines()
    recorded = {r["done"] for r in map(json.loads, lines) if "done" in r}
    assert recorded <= set(done) and len(done) - len(recorded) <= 1  # the one being recorded


def test_localization_experiments_use_the_per_class_boxes_of_the_paper() -> None:
    for name in ("localization_quickstart", "localization_voc"):
        cfg = compose("train", f"experiment={name}", "++frontend_ckpt=x")
        assert cfg.model.net.per_class_box and cfg.model.l2_weight > 0, name
    assert (CONF / "experiment" / "localization_quickstart.yaml").is_file()

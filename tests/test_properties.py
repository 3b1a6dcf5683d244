"""Property-based tests (hypothesis, issue #6): the training augmentations built from
``conf/augment/*.yaml`` and the confusion-matrix metrics, on random sizes and contents.

Every example seeds the albumentations pipeline, so failures shrink and replay.
"""

from __future__ import annotations

import copy

import albumentations as A
import numpy as np
import torch
from conftest import load_preset
from hypothesis import given, settings
from hypothesis import strategies as st

from seg.constants import IGNORE_INDEX, NUM_CLASSES
from seg.metrics import SegmentationMetrics

CROP = 48
LABELS = (*range(NUM_CLASSES), IGNORE_INDEX)
SETTINGS = settings(max_examples=40, deadline=None)
PIPELINES = {name: load_preset(name, "train", crop_size=CROP) for name in ("voc", "sample", "loc")}

# Sides from 2 px (1-px sides crash RandomScale, see the report of issue #6) to 300 px: aspect
# ratios from 1:150 to 150:1, images smaller and larger than the crop.
sides = st.integers(2, 300)
seeds = st.integers(0, 2**32 - 1)


def random_image(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@st.composite
def masks(draw, h: int, w: int) -> np.ndarray:
    """A uint8 (h, w) mask drawn from a few VOC labels (255 = ignore)."""
    present = draw(st.lists(st.sampled_from(LABELS), min_size=1, max_size=4, unique=True))
    seed = draw(seeds)
    return np.random.default_rng(seed).choice(np.array(present, np.uint8), (h, w))


@st.composite
def segmentation_samples(draw) -> tuple[np.ndarray, np.ndarray, int]:
    h, w, seed = draw(sides), draw(sides), draw(seeds)
    return random_image(h, w, seed), draw(masks(h, w)), seed


@st.composite
def box_samples(draw) -> tuple[np.ndarray, np.ndarray, list[int], int]:
    """An image with 1-3 boxes (pixel xyxy, at least 1 px wide and high) and their classes."""
    h, w, seed = draw(sides), draw(sides), draw(seeds)
    boxes = []
    for _ in range(draw(st.integers(1, 3))):
        x1, y1 = draw(st.integers(0, w - 1)), draw(st.integers(0, h - 1))
        boxes.append([x1, y1, draw(st.integers(x1 + 1, w)), draw(st.integers(y1 + 1, h))])
    labels = draw(
        st.lists(st.integers(0, NUM_CLASSES - 2), min_size=len(boxes), max_size=len(boxes))
    )
    return random_image(h, w, seed), np.array(boxes, np.float32), labels, seed


@SETTINGS
@given(sample=segmentation_samples(), preset=st.sampled_from(["voc", "sample"]))
def test_train_transform_keeps_mask_labels(sample, preset: str) -> None:
    image, mask, seed = sample
    transform = PIPELINES[preset]
    transform.set_random_seed(seed)
    out = transform(image=image, mask=mask)
    assert tuple(out["image"].shape) == (3, CROP, CROP)
    assert torch.isfinite(out["image"]).all()
    values = set(np.unique(np.asarray(out["mask"])).tolist())
    assert tuple(out["mask"].shape) == (CROP, CROP)
    assert values <= set(LABELS)
    assert values <= set(np.unique(mask).tolist()) | {IGNORE_INDEX}  # no label is invented


@SETTINGS
@given(sample=box_samples())
def test_train_transform_keeps_boxes_inside_and_their_classes(sample) -> None:
    image, boxes, labels, seed = sample
    transform = PIPELINES["loc"]
    transform.set_random_seed(seed)
    out = transform(image=image, bboxes=boxes, labels=labels)
    assert tuple(out["image"].shape) == (3, CROP, CROP)
    assert list(out["labels"]) == labels
    got = np.asarray(out["bboxes"], np.float64).reshape(-1, 4)
    assert len(got) == len(boxes)
    assert (got >= 0).all() and (got[:, [0, 2]] <= CROP).all() and (got[:, [1, 3]] <= CROP).all()
    assert (got[:, 2] > got[:, 0]).all() and (got[:, 3] > got[:, 1]).all()


def configured_flip(preset: str) -> A.Compose:
    """The preset's own ``HorizontalFlip``, made certain (p=1), with the preset's box handling."""
    pipeline = PIPELINES[preset]
    flips = [t for t in pipeline.transforms if isinstance(t, A.HorizontalFlip)]
    assert len(flips) == 1, f"{preset}: expected one HorizontalFlip"
    flip = copy.deepcopy(flips[0])
    flip.p = 1.0
    params = pipeline.processors.get("bboxes")
    return A.Compose([flip], bbox_params=params.params if params else None)


@SETTINGS
@given(sample=box_samples(), preset=st.sampled_from(["voc", "sample", "loc"]))
def test_flip_twice_is_the_identity(sample, preset: str) -> None:
    image, boxes, labels, _ = sample
    mask = (image[..., 0] % NUM_CLASSES).astype(np.uint8)
    flip = configured_flip(preset)
    data = {"image": image, "mask": mask}
    if preset == "loc":
        data |= {"bboxes": boxes, "labels": labels}
    once = flip(**data)
    twice = flip(**{**data, **{k: once[k] for k in data}})
    assert not np.array_equal(once["image"], image) or np.array_equal(image, image[:, ::-1])
    assert np.array_equal(twice["image"], image) and np.array_equal(twice["mask"], mask)
    if preset == "loc":
        assert np.allclose(np.asarray(twice["bboxes"]).reshape(-1, 4), boxes, atol=1e-4)
        assert list(twice["labels"]) == labels


@st.composite
def label_maps(draw) -> tuple[torch.Tensor, torch.Tensor]:
    """(target, preds) of shape (B, H, W): targets with ignored pixels, preds without."""
    b, h, w, seed = (
        draw(st.integers(1, 3)),
        draw(st.integers(1, 16)),
        draw(st.integers(1, 16)),
        draw(seeds),
    )
    classes = draw(st.lists(st.sampled_from(LABELS), min_size=1, max_size=6, unique=True))
    rng = np.random.default_rng(seed)
    target = rng.choice(np.array(classes), (b, h, w))
    preds = rng.integers(0, NUM_CLASSES, (b, h, w))
    return torch.from_numpy(target).long(), torch.from_numpy(preds).long()


@SETTINGS
@given(maps=label_maps())
def test_confusion_matrix_counts_every_non_ignored_pixel_once(maps) -> None:
    target, preds = maps
    metric = SegmentationMetrics(NUM_CLASSES)
    metric.update(preds, target)
    confmat = metric.compute()["confmat"]
    keep = target != IGNORE_INDEX
    assert int(confmat.sum()) == int(keep.sum())
    assert torch.equal(confmat.sum(1), torch.bincount(target[keep], minlength=NUM_CLASSES))
    assert torch.equal(confmat.sum(0), torch.bincount(preds[keep], minlength=NUM_CLASSES))
    split = SegmentationMetrics(NUM_CLASSES)  # accumulating image by image changes nothing
    for i in range(target.shape[0]):
        split.update(preds[i : i + 1], target[i : i + 1])
    assert torch.equal(split.compute()["confmat"], confmat)


@SETTINGS
@given(maps=label_maps())
def test_perfect_prediction_scores_one_for_present_classes(maps) -> None:
    target, noise = maps
    keep = target != IGNORE_INDEX
    preds = torch.where(keep, target, noise)  # ignored pixels may be predicted as anything
    metric = SegmentationMetrics(NUM_CLASSES)
    metric.update(preds, target)
    scores = metric.compute()
    present = torch.bincount(target[keep], minlength=NUM_CLASSES) > 0
    iou = scores["per_class_IoU"]
    assert torch.equal(iou[present], torch.ones(int(present.sum())))
    assert torch.isnan(iou[~present]).all()
    if present.any():
        assert scores["mIoU"] == 1 and scores["pixel_accuracy"] == 1

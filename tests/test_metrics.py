"""Segmentation and localization metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from seg.constants import IGNORE_INDEX
from seg.metrics import LocalizationMetrics, SegmentationMetrics, metrics_from_confmat
from seg.metrics.localization import paired_iou

# 3 classes, one 3x4 image; the 255 pixel (predicted 0) must not count.
TARGET = torch.tensor([[0, 0, 0, 1], [0, 1, 1, 1], [2, 2, 255, 2]])
PRED = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 2], [2, 0, 0, 2]])
# (t, p) pairs: row 0 -> (0,0) (0,0) (0,1) (1,1); row 1 -> (0,0) (1,1) (1,1) (1,2);
# row 2 -> (2,2) (2,0) ignored (2,2). Rows = target, columns = prediction:
CONFMAT = torch.tensor([[3, 1, 0], [0, 3, 1], [1, 0, 2]])
# gt = (4, 4, 3), pred = (4, 4, 3), tp = (3, 3, 2), 11 pixels.
# IoU = tp / (gt + pred - tp) = (3/5, 3/5, 2/4); mIoU = 1.7 / 3
# pixel acc = 8/11; recall = (3/4, 3/4, 2/3), mean acc = 13/18
# fwIoU = (4 * 0.6 + 4 * 0.6 + 3 * 0.5) / 11 = 6.3 / 11
EXPECTED = {"mIoU": 1.7 / 3, "pixel_accuracy": 8 / 11, "mean_accuracy": 13 / 18, "fw_IoU": 6.3 / 11}


def seg_scores(pred: torch.Tensor, target: torch.Tensor, num_classes: int = 3) -> dict:
    metric = SegmentationMetrics(num_classes=num_classes)
    metric.update(pred[None], target[None])
    return metric.compute()


def test_hand_computed_confmat_and_scores() -> None:
    scores = seg_scores(PRED, TARGET)
    assert torch.equal(scores["confmat"], CONFMAT)
    for key, value in EXPECTED.items():
        assert scores[key].item() == pytest.approx(value, abs=1e-6), key
    assert scores["per_class_IoU"].tolist() == pytest.approx([0.6, 0.6, 0.5])


def test_metrics_from_confmat_matches_compute() -> None:
    scores = metrics_from_confmat(CONFMAT)
    for key, value in EXPECTED.items():
        assert scores[key].item() == pytest.approx(value, abs=1e-6), key


def test_ignored_pixels_do_not_count() -> None:
    base = seg_scores(PRED, TARGET)["confmat"]
    pred = PRED.clone()
    pred[TARGET == IGNORE_INDEX] = 2  # change only the prediction under the ignored pixel
    assert torch.equal(seg_scores(pred, TARGET)["confmat"], base)
    assert base.sum() == (TARGET != IGNORE_INDEX).sum() == 11


def test_class_absent_from_target_and_prediction_is_nan_and_excluded() -> None:
    # confmat [[1, 1, 0], [0, 2, 0], [0, 0, 0]]: IoU = (1/2, 2/3, NaN)
    scores = seg_scores(torch.tensor([[0, 1, 1, 1]]), torch.tensor([[0, 0, 1, 1]]))
    iou = scores["per_class_IoU"]
    assert iou[:2].tolist() == pytest.approx([1 / 2, 2 / 3]) and math.isnan(iou[2])
    assert scores["mIoU"].item() == pytest.approx(7 / 12)  # not (1/2 + 2/3 + 0) / 3
    assert scores["mean_accuracy"].item() == pytest.approx((1 / 2 + 1) / 2)


def test_class_only_predicted_has_iou_zero_and_counts_in_miou() -> None:
    # confmat [[1, 0, 1], [0, 2, 0], [0, 0, 0]]: IoU = (1/2, 1, 0/1)
    scores = seg_scores(torch.tensor([[0, 2, 1, 1]]), torch.tensor([[0, 0, 1, 1]]))
    assert scores["per_class_IoU"].tolist() == pytest.approx([1 / 2, 1.0, 0.0])
    assert scores["mIoU"].item() == pytest.approx(1 / 2)
    assert scores["mean_accuracy"].item() == pytest.approx(
        3 / 4
    )  # class 2 absent from gt: excluded
    # fwIoU = 2/4 * 1/2 + 2/4 * 1
    assert scores["fw_IoU"].item() == pytest.approx(3 / 4)


def test_accumulates_one_confmat_not_mean_of_batches() -> None:
    # batch A: t = 0000, p = 0001 -> IoU (3/4, 0), mIoU 3/8
    # batch B: t = 1111, p = 1111 -> IoU (NaN, 1), mIoU 1; mean of batches 11/16
    # together: confmat [[3, 1], [0, 4]] -> IoU (3/4, 4/5), mIoU 31/40
    ta, pa = torch.tensor([[[0, 0, 0, 0]]]), torch.tensor([[[0, 0, 0, 1]]])
    tb, pb = torch.tensor([[[1, 1, 1, 1]]]), torch.tensor([[[1, 1, 1, 1]]])
    per_batch = []
    for p, t in ((pa, ta), (pb, tb)):
        m = SegmentationMetrics(num_classes=2)
        m.update(p, t)
        per_batch.append(m.compute()["mIoU"].item())
    assert per_batch == pytest.approx([3 / 8, 1.0])
    accumulated = SegmentationMetrics(num_classes=2)
    accumulated.update(pa, ta)
    accumulated.update(pb, tb)
    one_batch = SegmentationMetrics(num_classes=2)
    one_batch.update(torch.cat([pa, pb]), torch.cat([ta, tb]))
    assert torch.equal(accumulated.compute()["confmat"], torch.tensor([[3, 1], [0, 4]]))
    assert torch.equal(accumulated.compute()["confmat"], one_batch.compute()["confmat"])
    assert accumulated.compute()["mIoU"].item() == pytest.approx(31 / 40)
    assert sum(per_batch) / 2 != pytest.approx(31 / 40)


def test_merge_state_sums_like_ddp() -> None:
    # merge_state applies the same dist_reduce_fx as the DDP sync.
    a, b = SegmentationMetrics(3), SegmentationMetrics(3)
    a.update(PRED[None, :2], TARGET[None, :2])
    b.update(PRED[None, 2:], TARGET[None, 2:])
    a.merge_state(b)
    assert torch.equal(a.compute()["confmat"], CONFMAT)


def test_logits_equal_labels_and_match_torchmetrics() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, 9, generator=gen)  # odd sizes
    target = torch.randint(0, 5, (2, 7, 9), generator=gen)
    target[:, :2] = IGNORE_INDEX
    from_logits, from_labels = SegmentationMetrics(5), SegmentationMetrics(5)
    from_logits.update(logits, target)
    from_labels.update(logits.argmax(1), target)
    reference = MulticlassConfusionMatrix(5, ignore_index=IGNORE_INDEX)
    reference.update(logits.argmax(1), target)
    assert torch.equal(from_logits.compute()["confmat"], from_labels.compute()["confmat"])
    assert torch.equal(from_logits.compute()["confmat"], reference.compute())


def test_reset_clears_state() -> None:
    metric = SegmentationMetrics(3)
    metric.update(PRED[None], TARGET[None])
    metric.reset()
    assert metric.confmat.sum() == 0


@pytest.mark.parametrize(
    ("pred", "target", "match"),
    [
        (torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 3), "target has labels"),
        (torch.full((1, 2, 2), -1), torch.zeros(1, 2, 2, dtype=torch.long), "preds has labels"),
        (torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), "channels"),
        (torch.zeros(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), "integer"),
        (torch.zeros(1, 2, 3, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long), "differ"),
    ],
)
def test_bad_inputs_raise(pred: torch.Tensor, target: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SegmentationMetrics(3).update(pred, target)


def test_metrics_from_confmat_rejects_non_square() -> None:
    with pytest.raises(ValueError, match="square"):
        metrics_from_confmat(torch.zeros(2, 3))


# Localization: boxes are xywh, normalised.
BOX = torch.tensor([0.0, 0.0, 0.5, 0.5])
HALF = torch.tensor([0.25, 0.0, 0.5, 0.5])  # overlap 0.125, union 0.375 -> IoU 1/3
FAR = torch.tensor([0.6, 0.6, 0.4, 0.4])  # disjoint -> IoU 0


def onehot(labels: list[int], k: int = 20) -> torch.Tensor:
    """Logits (B, k) whose top-1 class is ``labels`` (the other ranks follow the index)."""
    return torch.nn.functional.one_hot(torch.tensor(labels), k).float()


def test_box_iou_hand_values() -> None:
    pred = torch.stack([BOX, HALF, FAR, torch.tensor([0.0, 0.0, 0.5, 0.25])])
    iou = paired_iou(pred, BOX.expand(4, 4))
    assert iou.tolist() == pytest.approx([1.0, 1 / 3, 0.0, 0.5])


def test_localization_scores() -> None:
    # 1: same box, right class   2: same box, wrong class
    # 3: IoU 1/3, right class    4: IoU 0, wrong class
    pred_box = torch.stack([BOX, BOX, HALF, FAR])
    target_box = BOX.expand(4, 4)
    target = torch.tensor([3, 5, 7, 1])
    metric = LocalizationMetrics(num_classes=20)
    metric.update(onehot([3, 4, 7, 2]), pred_box, target, target_box)
    scores = metric.compute()
    assert scores["mean_IoU"].item() == pytest.approx((1 + 1 + 1 / 3 + 0) / 4)
    assert scores["CorLoc"].item() == pytest.approx(2 / 4)
    assert scores["loc_acc"].item() == pytest.approx(1 / 4)
    assert scores["cls_acc"].item() == pytest.approx(2 / 4)
    assert scores["per_class"]["loc_acc"][3].item() == 1.0 and scores["count"][5] == 1


def test_localization_threshold_is_inclusive_and_accumulates() -> None:
    metric = LocalizationMetrics(num_classes=20)
    half_height = torch.tensor([[0.0, 0.0, 0.5, 0.25]])  # IoU exactly 0.5 with BOX
    metric.update(onehot([1]), half_height, torch.tensor([1]), BOX[None])
    metric.update(onehot([1]), FAR[None], torch.tensor([1]), BOX[None])
    scores = metric.compute()
    assert scores["CorLoc"].item() == pytest.approx(1 / 2)
    assert scores["mean_IoU"].item() == pytest.approx(1 / 4)


def test_empty_boxes_give_zero_not_nan() -> None:
    empty = torch.zeros(1, 4)
    assert paired_iou(empty, empty).tolist() == [0.0]


def test_localization_bad_shapes_raise() -> None:
    with pytest.raises(ValueError, match="expected"):
        LocalizationMetrics(20).update(onehot([1, 2]), BOX[None], torch.tensor([1]), BOX[None])

"""Segmentation scores with the PASCAL VOC devkit's semantics, from one confusion matrix.

A single confusion matrix is accumulated over the whole evaluation set (rows = ground truth,
columns = prediction) and every score is derived from it at the end. Averaging per-batch or
per-image mIoU instead gives a different, biased number. Definitions: Long et al., "Fully
Convolutional Networks for Semantic Segmentation", sec. 5 (https://arxiv.org/abs/1411.4038).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from seg.constants import IGNORE_INDEX, NUM_CLASSES


def metrics_from_confmat(confmat: Tensor) -> dict[str, Tensor]:
    """Derive the VOC segmentation scores from a confusion matrix.

    A class absent from both ground truth and prediction has IoU 0/0 = NaN and is left out of
    the means (it is not counted as 0). A class that is only predicted has IoU 0. With no pixel
    counted at all (all-void ground truth) every score is NaN (``null`` in ``metrics.json``).

    Args:
        confmat: (C, C) counts, rows = ground truth, columns = prediction.

    Returns:
        Float32 tensors: "mIoU", "pixel_accuracy", "mean_accuracy" (mean per-class recall over
        classes present in the ground truth), "fw_IoU" (IoU weighted by ground-truth frequency),
        "per_class_IoU" (C,), "per_class_accuracy" (C,) (recall, NaN for a class absent from
        the ground truth) and "confmat" (C, C), the input unchanged.
    """
    if confmat.ndim != 2 or confmat.shape[0] != confmat.shape[1]:
        raise ValueError(f"confmat must be square (C, C), got shape {tuple(confmat.shape)}")
    cm = confmat.double()
    tp = cm.diag()  # (C,)
    gt = cm.sum(dim=1)  # (C,) pixels of each true class
    pred = cm.sum(dim=0)  # (C,) pixels predicted as each class
    iou = tp / (gt + pred - tp)  # (C,) NaN where the class is absent from both
    recall = tp / gt  # (C,) NaN where the class is absent from the ground truth
    freq = gt / cm.sum()  # (C,)
    present = gt > 0
    fw_iou = (freq[present] * iou[present]).sum() if present.any() else cm.new_tensor(torch.nan)
    return {
        "mIoU": iou.nanmean().float(),
        "pixel_accuracy": (tp.sum() / cm.sum()).float(),
        "mean_accuracy": recall.nanmean().float(),
        "fw_IoU": fw_iou.float(),  # NaN, like every score, when no pixel was counted
        "per_class_IoU": iou.float(),
        "per_class_accuracy": recall.float(),
        "confmat": confmat,
    }


class SegmentationMetrics(Metric):
    """Dataset-level confusion matrix and the VOC scores derived from it.

    The state is one (C, C) int64 matrix, summed across processes under DDP. It is filled with
    ``torch.bincount`` rather than ``torchmetrics.classification.MulticlassConfusionMatrix``:
    under ``torch.use_deterministic_algorithms(True)`` torchmetrics falls back to an (N, C^2)
    comparison table, about 14 GB for a batch of 16 VOC-sized images, while ``bincount``
    without weights is deterministic already.

    Args:
        num_classes: C.
        ignore_index: Target label excluded from every count.
        validate_args: Check label ranges in ``update`` (costs one device sync per call).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    #: The scalar scores of ``compute()``, headline first.
    SCORES = ("mIoU", "pixel_accuracy", "mean_accuracy", "fw_IoU")

    confmat: Tensor

    def __init__(
        self,
        num_classes: int = NUM_CLASSES,
        ignore_index: int = IGNORE_INDEX,
        validate_args: bool = True,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.validate_args = validate_args
        zeros = torch.zeros(num_classes, num_classes, dtype=torch.long)
        self.add_state("confmat", default=zeros, dist_reduce_fx="sum")
        self.add_state(
            "num_images", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum"
        )

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add one batch to the confusion matrix.

        Args:
            preds: Class indices (B, H, W), integer dtype, or logits/scores (B, C, H, W).
            target: Ground truth (B, H, W) int64; ``ignore_index`` pixels are skipped.
        """
        if preds.ndim == target.ndim + 1:
            if preds.shape[1] != self.num_classes:
                raise ValueError(
                    f"logits have {preds.shape[1]} channels, expected {self.num_classes}"
                )
            preds = preds.argmax(dim=1)  # (B, H, W)
        elif preds.is_floating_point():
            raise ValueError("preds with the shape of target must be integer class indices")
        if preds.shape != target.shape:
            raise ValueError(f"preds {tuple(preds.shape)} and target {tuple(target.shape)} differ")
        keep = target != self.ignore_index
        t, p = target[keep].long(), preds[keep].long()  # (N,)
        if self.validate_args:
            self._check_range(t, "target")
            self._check_range(p, "preds")
        bins = torch.bincount(t * self.num_classes + p, minlength=self.num_classes**2)
        self.confmat += bins.reshape(self.num_classes, self.num_classes)
        self.num_images += target.shape[0]

    def _check_range(self, labels: Tensor, name: str) -> None:
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"{name} has labels outside [0, {self.num_classes}) other than "
                f"ignore_index={self.ignore_index}: min {int(labels.min())}, max {int(labels.max())}"
            )

    def compute(self) -> dict[str, Tensor]:
        """Scores of everything seen since the last reset (:func:`metrics_from_confmat`), and
        "num_images", the number of images scored."""
        return {**metrics_from_confmat(self.confmat), "num_images": self.num_images.clone()}

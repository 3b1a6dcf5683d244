"""Single-object localization scores: classification, ILSVRC localization, CorLoc, box IoU.

One image has one target object (class and box) and gets one predicted class distribution and
box, or one box per class (per-class regression, PCR, Simonyan & Zisserman 2015, Appendix A,
https://arxiv.org/abs/1409.1556). The scores:

- ``cls_acc`` / ``cls_acc_top5``: the target class is the top-1 / among the top-5 classes.
- ``loc_acc`` / ``loc_acc_top5``: ILSVRC localization (Russakovsky et al. 2015,
  https://arxiv.org/abs/1409.0575, sec. 4.1): among the top-1 / top-5 (class, box) guesses, one
  has the target class **and** IoU >= 0.5 with the target box. With per-class regression each
  guess uses its class's box; with one box per image every guess uses that box.
- ``CorLoc``: IoU >= 0.5 of the predicted (top-1) box, whatever the class (Deselaers et al.
  2012, https://doi.org/10.1007/s11263-012-0538-3).
- ``gt_known_loc``: IoU >= 0.5 of the box predicted for the target class, the protocol the
  paper's Appendix A uses to compare localization nets "to factor out the classification
  errors".
- ``mean_IoU``: mean IoU of the predicted (top-1) box.

All counts are kept per target class, so ``compute`` also gives the per-class table, and an IoU
histogram for the plot of ``evaluate.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchvision.ops import box_convert, box_iou

#: Per-class counters: every score is one of them divided by the class's image count.
COUNTS = ("cls_acc", "cls_acc_top5", "loc_acc", "loc_acc_top5", "CorLoc", "gt_known_loc")


def paired_iou(box_a: Tensor, box_b: Tensor) -> Tensor:
    """IoU of row i of ``box_a`` with row i of ``box_b``, (N, 4) xywh each -> (N,).

    Two empty boxes give 0.
    """
    a = box_convert(box_a.float(), in_fmt="xywh", out_fmt="xyxy")
    b = box_convert(box_b.float(), in_fmt="xywh", out_fmt="xyxy")
    return box_iou(a, b).diagonal().nan_to_num(0.0)  # (N,)


class LocalizationMetrics(Metric):
    """Classification + localization scores over a dataset, with a per-class breakdown.

    Class indices of predictions and targets use the same numbering (logit indices 0..K-1).
    Boxes are (x, y, w, h), top-left corner, in any common unit (normalised to [0, 1] here).

    Args:
        num_classes: K, number of class logits.
        iou_threshold: IoU needed for a correct localization.
        top: The "top-5" of the top-5 scores (fewer when K is smaller).
        bins: Bins of the IoU histogram over [0, 1].
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    #: The scalar scores of ``compute()``, headline first.
    SCORES = ("loc_acc", "loc_acc_top5", "cls_acc", "cls_acc_top5", "CorLoc", "gt_known_loc")
    SCORES += ("mean_IoU",)

    def __init__(
        self, num_classes: int = 20, iou_threshold: float = 0.5, top: int = 5, bins: int = 10
    ) -> None:
        super().__init__()
        self.num_classes, self.iou_threshold = num_classes, iou_threshold
        self.top, self.bins = min(top, num_classes), bins
        for name in (*COUNTS, "count"):
            zeros = torch.zeros(num_classes, dtype=torch.long)
            self.add_state(name, default=zeros, dist_reduce_fx="sum")
        iou = torch.zeros(num_classes, dtype=torch.float64)
        self.add_state("iou_sum", default=iou, dist_reduce_fx="sum")
        self.add_state(
            "iou_hist", default=torch.zeros(bins, dtype=torch.long), dist_reduce_fx="sum"
        )

    def update(
        self,
        logits: Tensor,
        box: Tensor,
        target: Tensor,
        target_box: Tensor,
        box_all: Tensor | None = None,
    ) -> None:
        """Add one batch.

        Args:
            logits: Class logits (B, K).
            box: (B, 4) the predicted box (that of the top-1 class with per-class regression).
            target: (B,) target class indices in 0..K-1.
            target_box: (B, 4) target boxes.
            box_all: (B, K, 4) one box per class (per-class regression), or None.
        """
        n, k = target.shape[0], self.top
        shapes = (tuple(logits.shape), tuple(box.shape), tuple(target_box.shape))
        if shapes != ((n, self.num_classes), (n, 4), (n, 4)):
            raise ValueError(
                f"expected logits (B, {self.num_classes}) and boxes (B, 4) with B={n}, got {shapes}"
            )
        rows = torch.arange(n, device=target.device)
        guesses = logits.topk(k, dim=1).indices  # (B, k) classes, best first
        boxes = box_all[rows[:, None], guesses] if box_all is not None else box[:, None]
        boxes = boxes.expand(n, k, 4)  # (B, k, 4): each guess's box
        iou_k = paired_iou(boxes.reshape(-1, 4), target_box.repeat_interleave(k, 0)).view(n, k)
        hit = guesses == target[:, None]  # (B, k)
        found_k = iou_k >= self.iou_threshold
        gt_box = box_all[rows, target] if box_all is not None else box
        iou = paired_iou(box, target_box)  # (B,) of the top-1 box
        per_image = {
            "cls_acc": hit[:, 0],
            "cls_acc_top5": hit.any(1),
            "loc_acc": hit[:, 0] & found_k[:, 0],
            "loc_acc_top5": (hit & found_k).any(1),
            "CorLoc": iou >= self.iou_threshold,
            "gt_known_loc": paired_iou(gt_box, target_box) >= self.iou_threshold,
        }
        for name, value in per_image.items():
            getattr(self, name).index_add_(0, target, value.long())
        self.count += torch.bincount(target, minlength=self.num_classes)
        self.iou_sum.index_add_(0, target, iou.double())
        self.iou_hist += torch.histc(iou, bins=self.bins, min=0.0, max=1.0).long()

    def compute(self) -> dict[str, Tensor]:
        """Float32 scores (:attr:`SCORES`), ``"per_class"`` (score name -> (K,) values, NaN for a
        class with no image), ``"count"`` (K,), ``"iou_hist"`` (bins,) and ``"num_images"``."""
        count = self.count.double()
        total = count.sum()
        sums = {name: getattr(self, name).double() for name in COUNTS}
        sums["mean_IoU"] = self.iou_sum
        scores = {name: (value.sum() / total).float() for name, value in sums.items()}
        per_class = {name: (value / count).float() for name, value in sums.items()}
        return {
            **scores,
            "per_class": per_class,
            "count": self.count.clone(),
            "iou_hist": self.iou_hist.clone(),
            "num_images": self.count.sum(),
        }

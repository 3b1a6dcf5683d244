"""LightningModule for single-object localization: one class and one box per image.

The net follows the output contract of :mod:`seg.models`: ``{"cls": (B, K), "box": (B, 4)}``
with boxes (x, y, w, h) normalised to [0, 1] (x, y = top-left), ``"box_all"`` (B, K, 4) for
per-class regression, and ``"out"`` (B, 21, H, W) when it has a segmentation decoder
(multi-task training, ``seg_weight``). Everything else (optimizer, schedule, freezing, logging,
the stage loop) is :class:`seg.modules.base.BaseModule`.

Batch labels are the dataset's class indices (VOC: 1..20, 0 being the background). Logit k is
label k + ``label_offset``: 1 when label 0 is the background (the net predicts the objects only,
``conf/module/localization.yaml`` derives it from the data's classes), 0 for a net with a
background logit that is never a target.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou_loss

from seg.constants import IGNORE_INDEX
from seg.errors import ConfigError
from seg.metrics import LocalizationMetrics
from seg.models import BOX, BOX_ALL, CLS, has_seg_logits, seg_logits
from seg.models.localization import select_box
from seg.modules.base import BaseModule


class LocalizationModule(BaseModule):
    """Train and evaluate a classification + box regression net.

    Loss = ``cls_weight`` * cross-entropy
    + ``l2_weight`` * the paper's Euclidean loss: the mean squared error of the box as (centre x,
    centre y, width, height) (Simonyan & Zisserman 2015, Appendix A)
    + ``smooth_l1_weight`` * smooth-L1 on (x, y, w, h) (Fast R-CNN, https://arxiv.org/abs/1504.08083)
    + ``giou_weight`` * (1 - GIoU) (Rezatofighi et al., https://arxiv.org/abs/1902.09630)
    + ``seg_weight`` * pixel cross-entropy on the net's ``"out"`` logits.

    With per-class regression (the net returns ``"box_all"``, (B, K, 4)) every box term is
    computed on the box of the **target** class, as the paper trains PCR: the other classes'
    boxes get no gradient from that image.

    Args:
        net: Network returning {"cls", "box"[, "box_all", "out"]}.
        num_classes: K, the number of class logits.
        label_offset: Logit k is label k + label_offset; see the module doc.
        cls_weight: Weight of the classification loss.
        l2_weight: Weight of the Euclidean (squared L2, centre form) box loss.
        smooth_l1_weight: Weight of the smooth-L1 box loss.
        giou_weight: Weight of the generalized-IoU box loss.
        seg_weight: Weight of the segmentation loss; needs "out" in the output and "mask" in
            the batch.
        **kwargs: Optimizer, scheduler, encoder and memory-format options of
            :class:`~seg.modules.base.BaseModule`.
    """

    def __init__(
        self,
        net: nn.Module,
        num_classes: int = 20,
        label_offset: int = 1,
        cls_weight: float = 1.0,
        l2_weight: float = 0.0,
        smooth_l1_weight: float = 1.0,
        giou_weight: float = 0.0,
        seg_weight: float = 0.0,
        **kwargs: Any,
    ) -> None:
        self.num_classes, self.label_offset = num_classes, label_offset
        super().__init__(net, **kwargs)

    def make_metric(self) -> LocalizationMetrics:
        return LocalizationMetrics(self.num_classes)

    def trained_box(self, out: dict[str, Tensor], target: Tensor) -> Tensor:
        """The box the box losses see: the target class's with per-class regression, (B, 4)."""
        return select_box(out[BOX_ALL], target) if BOX_ALL in out else out[BOX]

    def loss(self, out: dict[str, Tensor], batch: dict[str, Any]) -> dict[str, Tensor]:
        """Loss terms of one batch: "cls", "smooth_l1", "giou", "seg" (when weighted) and
        their weighted sum "loss"."""
        hp = self.hparams
        target = batch["label"] - self.label_offset  # (B,)
        box = self.trained_box(out, target).float()  # (B, 4) xywh
        target_box = batch["box"].float()
        terms = {"cls": F.cross_entropy(out[CLS], target)}
        weights = {"cls": hp.cls_weight}
        if hp.l2_weight:
            centre = partial(box_convert, in_fmt="xywh", out_fmt="cxcywh")
            terms["l2"] = F.mse_loss(centre(box), centre(target_box))
            weights["l2"] = hp.l2_weight
        if hp.smooth_l1_weight:
            terms["smooth_l1"] = F.smooth_l1_loss(box, target_box)
            weights["smooth_l1"] = hp.smooth_l1_weight
        if hp.giou_weight:
            xyxy = partial(box_convert, in_fmt="xywh", out_fmt="xyxy")
            terms["giou"] = generalized_box_iou_loss(xyxy(box), xyxy(target_box), reduction="mean")
            weights["giou"] = hp.giou_weight
        if hp.seg_weight:
            if not has_seg_logits(out) or "mask" not in batch:
                raise ConfigError(
                    f"model.seg_weight={hp.seg_weight} needs a net with a mask decoder "
                    "(model.net.seg_decoder=true) and masks in the data (data.dataset.with_mask)"
                )
            mask_logits = seg_logits(out)  # (B, 21, H, W)
            terms["seg"] = F.cross_entropy(mask_logits, batch["mask"], ignore_index=IGNORE_INDEX)
            weights["seg"] = hp.seg_weight
        terms["loss"] = sum(weights[k] * v for k, v in terms.items())
        return terms

    def eval_step(self, batch: dict[str, Any], stage: str) -> dict[str, Tensor]:
        out = self(batch["image"])
        self.log_terms(self.loss(out, batch), stage, batch["image"].shape[0])
        target = batch["label"] - self.label_offset  # (B,)
        self.metrics[stage].update(out[CLS], out[BOX], target, batch["box"], out.get(BOX_ALL))
        return {"box": out[BOX], "label": out[CLS].argmax(dim=1) + self.label_offset}

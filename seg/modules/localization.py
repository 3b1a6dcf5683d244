"""LightningModule for single-object localization: one class and one box per image.

The net maps (B, 3, H, W) to ``{"logits": (B, K), "box": (B, 4)}`` with boxes (x, y, w, h)
normalised to [0, 1] (x, y = top-left), and optionally ``"mask": (B, 21, H, W)`` when it has a
segmentation decoder (multi-task training, ``seg_weight``).

Batch labels are VOC class indices 1..20. With ``num_classes=20`` (no background logit) the
module subtracts 1, so logit k is VOC class k + 1; with ``num_classes=21`` labels are used
as they are and logit 0 (background) is never a target.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou_loss

from seg.constants import IGNORE_INDEX
from seg.metrics import LocalizationMetrics
from seg.modules.optim import build_optimization, check_encoder_options, freeze, get_encoder

#: Scores logged at the end of each validation / test epoch.
LOGGED_SCORES = ("mean_IoU", "CorLoc", "loc_acc", "cls_acc")


class LocalizationModule(L.LightningModule):
    """Train and evaluate a classification + box regression net.

    Loss = ``cls_weight`` * cross-entropy + ``smooth_l1_weight`` * smooth-L1 on xywh
    (Fast R-CNN, https://arxiv.org/abs/1504.08083) + ``giou_weight`` * (1 - GIoU)
    (Rezatofighi et al., https://arxiv.org/abs/1902.09630) + ``seg_weight`` * pixel
    cross-entropy on the net's "mask" output. Encoder options and checkpoints work as in
    :class:`seg.modules.segmentation.SegmentationModule`.

    Args:
        net: Network returning {"logits", "box"[, "mask"]}.
        optimizer: Optimizer partial (Hydra ``_partial_: true``).
        scheduler: Scheduler partial or None / {}; its length defaults to the run's length.
        num_classes: K, 20 (object classes) or 21 (with background); see the module doc.
        cls_weight: Weight of the classification loss.
        smooth_l1_weight: Weight of the smooth-L1 box loss.
        giou_weight: Weight of the generalized-IoU box loss.
        seg_weight: Weight of the segmentation loss; needs "mask" in output and batch.
        freeze_encoder: Freeze ``net.encoder`` (no gradients, eval mode).
        encoder_lr_mult: Encoder learning rate = base lr * this.
        channels_last: Run the net in channels-last memory format.
        scheduler_interval: Step the scheduler every "step" or every "epoch".
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: partial | None = None,
        scheduler: partial | None = None,
        num_classes: int = 20,
        cls_weight: float = 1.0,
        smooth_l1_weight: float = 1.0,
        giou_weight: float = 0.0,
        seg_weight: float = 0.0,
        freeze_encoder: bool = False,
        encoder_lr_mult: float = 1.0,
        channels_last: bool = True,
        scheduler_interval: str = "step",
    ) -> None:
        super().__init__()
        if num_classes not in (20, 21):
            raise ValueError(f"num_classes must be 20 or 21 (VOC), got {num_classes}")
        if scheduler_interval not in ("step", "epoch"):
            raise ValueError(
                f"scheduler_interval must be 'step' or 'epoch', got {scheduler_interval!r}"
            )
        check_encoder_options(net, freeze_encoder, encoder_lr_mult)
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
        self.net = net
        self.optimizer = optimizer
        self.scheduler = scheduler
        if freeze_encoder:
            freeze(get_encoder(net))
        self.label_offset = 1 if num_classes == 20 else 0
        self.val_metrics = LocalizationMetrics()
        self.test_metrics = LocalizationMetrics()
        self.last_val_metrics: dict[str, Tensor] = {}
        self.last_test_metrics: dict[str, Tensor] = {}

    def setup(self, stage: str) -> None:
        if self.hparams.channels_last:
            self.net.to(memory_format=torch.channels_last)

    def train(self, mode: bool = True) -> LocalizationModule:
        super().train(mode)
        if self.hparams.freeze_encoder:
            get_encoder(self.net).eval()
        return self

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """(B, 3, H, W) -> {"logits": (B, K), "box": (B, 4) xywh[, "mask": (B, 21, H, W)]}."""
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def loss(self, out: dict[str, Tensor], batch: dict[str, Any]) -> dict[str, Tensor]:
        """Loss terms of one batch: "cls", "smooth_l1", "giou", "seg" (when weighted) and
        their weighted sum "loss"."""
        hp = self.hparams
        target = batch["label"] - self.label_offset  # (B,)
        box, target_box = out["box"].float(), batch["box"].float()  # (B, 4) xywh
        terms = {"cls": F.cross_entropy(out["logits"], target)}
        weights = {"cls": hp.cls_weight}
        if hp.smooth_l1_weight:
            terms["smooth_l1"] = F.smooth_l1_loss(box, target_box)
            weights["smooth_l1"] = hp.smooth_l1_weight
        if hp.giou_weight:
            xyxy = partial(box_convert, in_fmt="xywh", out_fmt="xyxy")
            terms["giou"] = generalized_box_iou_loss(xyxy(box), xyxy(target_box), reduction="mean")
            weights["giou"] = hp.giou_weight
        if hp.seg_weight:
            if "mask" not in out or "mask" not in batch:
                raise ValueError("seg_weight > 0 needs 'mask' in both the net output and the batch")
            terms["seg"] = F.cross_entropy(out["mask"], batch["mask"], ignore_index=IGNORE_INDEX)
            weights["seg"] = hp.seg_weight
        terms["loss"] = sum(weights[k] * v for k, v in terms.items())
        return terms

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        terms = self.loss(self(batch["image"]), batch)
        self._log_terms(terms, "train", batch["image"].shape[0])
        return terms["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_metrics)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_metrics)

    def _eval_step(self, batch: dict[str, Any], stage: str, metrics: LocalizationMetrics) -> None:
        out = self(batch["image"])
        self._log_terms(self.loss(out, batch), stage, batch["image"].shape[0])
        target = batch["label"] - self.label_offset  # (B,)
        metrics.update(out["logits"], out["box"], target, batch["box"])

    def _log_terms(self, terms: dict[str, Tensor], stage: str, batch_size: int) -> None:
        train = stage == "train"
        log = partial(self.log, on_epoch=True, batch_size=batch_size, sync_dist=not train)
        log(f"{stage}/loss", terms["loss"], on_step=train, prog_bar=True)
        for key, value in terms.items():
            if key != "loss":
                log(f"{stage}/loss_{key}", value, on_step=False)

    def on_validation_epoch_end(self) -> None:
        self.last_val_metrics = self._log_scores("val", self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self.last_test_metrics = self._log_scores("test", self.test_metrics)

    def _log_scores(self, stage: str, metrics: LocalizationMetrics) -> dict[str, Tensor]:
        if not metrics.update_called:
            return {}
        scores = metrics.compute()  # already summed over DDP processes
        metrics.reset()
        for key in LOGGED_SCORES:  # identical on every rank; sync_dist silences the DDP warning
            self.log(f"{stage}/{key}", scores[key], prog_bar=key == "loc_acc", sync_dist=True)
        return {k: v.detach().cpu() for k, v in scores.items()}

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Returns "label": (B,) VOC class indices (1..20; 0 = background only if K = 21),
        "box": (B, 4) xywh in [0, 1], and the batch's "id"s."""
        out = self(batch["image"])
        label = out["logits"].argmax(dim=1) + self.label_offset  # (B,)
        return {"label": label, "box": out["box"], "id": batch.get("id")}

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        return build_optimization(
            self.net,
            self.optimizer,
            self.scheduler,
            hp.encoder_lr_mult,
            self._length,
            hp.scheduler_interval,
        )

    def _length(self) -> float:
        """Scheduler length: total optimizer steps, or epochs if stepped per epoch."""
        if self.hparams.scheduler_interval == "epoch":
            return self.trainer.max_epochs
        return self.trainer.estimated_stepping_batches

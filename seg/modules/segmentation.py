"""LightningModule for semantic segmentation: loss, VOC metrics, optimizer and schedule.

The net is a plain ``nn.Module`` mapping (B, 3, H, W) to logits (B, C, H, W), or to
``{"out": logits, "aux": aux_logits}`` when it has an auxiliary head (PSPNet,
https://arxiv.org/abs/1612.01105, "deep supervision"; torchvision's segmentation models).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import lightning as L
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seg.constants import IGNORE_INDEX, NUM_CLASSES
from seg.metrics import SegmentationMetrics
from seg.modules.optim import build_optimization, check_encoder_options, freeze, get_encoder

#: Scalar scores logged at the end of each validation / test epoch.
LOGGED_SCORES = ("mIoU", "pixel_acc", "mean_acc", "fw_IoU")


def main_logits(out: Tensor | dict[str, Tensor]) -> Tensor:
    """The main (B, C, H, W) logits of a net output: the tensor itself or ``out["out"]``."""
    return out["out"] if isinstance(out, dict) else out


class SegmentationModule(L.LightningModule):
    """Train and evaluate a segmentation net.

    Loss = cross-entropy (ignoring ``IGNORE_INDEX``, optionally class-weighted)
    + ``dice_weight`` * Dice (Milletari et al., https://arxiv.org/abs/1606.04797)
    + ``lovasz_weight`` * Lovasz-softmax (Berman et al., https://arxiv.org/abs/1705.08790)
    + ``aux_weight`` * cross-entropy of the auxiliary output.

    ``freeze_encoder`` stops the gradients of ``net.encoder`` and keeps it in eval mode for the
    whole run, so its BatchNorm statistics stay those of pre-training too (small segmentation
    batches would otherwise drift them; this is the usual frozen-backbone recipe).

    Only plain Python arguments go to ``self.hparams`` (checkpoints load with
    ``torch.load(weights_only=True)``); rebuild ``net`` from the Hydra config and pass it to
    ``load_from_checkpoint(path, net=net)``.

    Args:
        net: Network, exposing ``encoder`` if encoder options are used.
        optimizer: Optimizer partial (Hydra ``_partial_: true``), called with parameter groups.
        scheduler: Scheduler partial called with the optimizer; its length (``total_iters``,
            ``T_max``, ``total_steps``) defaults to the trainer's total optimizer steps, or
            to ``max_epochs`` when ``scheduler_interval="epoch"``. None or {} for no schedule.
        num_classes: C, including background.
        class_weights: Optional C cross-entropy weights.
        dice_weight: Weight of the multiclass Dice loss.
        lovasz_weight: Weight of the Lovasz-softmax loss.
        aux_weight: Weight of the auxiliary cross-entropy; needs ``net`` to return a dict.
        freeze_encoder: Freeze ``net.encoder`` (no gradients, eval mode).
        encoder_lr_mult: Encoder learning rate = base lr * this.
        channels_last: Run the net in channels-last memory format (faster convs with AMP).
        scheduler_interval: Step the scheduler every "step" or every "epoch".
        context: Name of the context-module variant (``model=dilation_context`` selects it
            with ``model.context=basic|large``); only recorded in the hyper-parameters.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: partial | None = None,
        scheduler: partial | None = None,
        num_classes: int = NUM_CLASSES,
        class_weights: list[float] | None = None,
        dice_weight: float = 0.0,
        lovasz_weight: float = 0.0,
        aux_weight: float = 0.0,
        freeze_encoder: bool = False,
        encoder_lr_mult: float = 1.0,
        channels_last: bool = True,
        scheduler_interval: str = "step",
        context: str | None = None,
    ) -> None:
        super().__init__()
        if class_weights is not None:  # may be a Hydra ListConfig: store plain floats
            class_weights = [float(w) for w in class_weights]
            if len(class_weights) != num_classes:
                raise ValueError(f"{len(class_weights)} class_weights for {num_classes} classes")
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
        weight = None if class_weights is None else torch.tensor(class_weights)
        self.register_buffer("class_weights", weight, persistent=False)
        self.dice = (
            smp.losses.DiceLoss("multiclass", ignore_index=IGNORE_INDEX) if dice_weight else None
        )
        self.lovasz = (
            smp.losses.LovaszLoss("multiclass", ignore_index=IGNORE_INDEX)
            if lovasz_weight
            else None
        )
        self.val_metrics = SegmentationMetrics(num_classes)
        self.test_metrics = SegmentationMetrics(num_classes)
        self.last_val_metrics: dict[str, Tensor] = {}
        self.last_test_metrics: dict[str, Tensor] = {}

    def setup(self, stage: str) -> None:
        if self.hparams.channels_last:
            self.net.to(memory_format=torch.channels_last)

    def train(self, mode: bool = True) -> SegmentationModule:
        super().train(mode)
        if self.hparams.freeze_encoder:
            get_encoder(self.net).eval()
        return self

    def forward(self, x: Tensor) -> Tensor | dict[str, Tensor]:
        """(B, 3, H, W) -> logits (B, C, H, W), or the net's dict with "out" and "aux"."""
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def loss(self, out: Tensor | dict[str, Tensor], mask: Tensor) -> dict[str, Tensor]:
        """Loss terms of one batch.

        Args:
            out: Net output: logits (B, C, H, W) or a dict with "out" (and "aux").
            mask: (B, H, W) int64 labels, ``IGNORE_INDEX`` excluded.

        Returns:
            "loss" (the weighted total) and each active term ("ce", "dice", "lovasz", "aux").
        """
        logits = main_logits(out)  # (B, C, H, W)
        ce = partial(F.cross_entropy, weight=self.class_weights, ignore_index=IGNORE_INDEX)
        terms = {"ce": ce(logits, mask)}
        if self.dice is not None:
            terms["dice"] = self.dice(logits, mask)
        if self.lovasz is not None:
            terms["lovasz"] = self.lovasz(logits, mask)
        if self.hparams.aux_weight:
            if not isinstance(out, dict) or "aux" not in out:
                raise ValueError("aux_weight > 0 needs the net to return {'out': ..., 'aux': ...}")
            aux = F.interpolate(
                out["aux"], size=mask.shape[-2:], mode="bilinear", align_corners=False
            )
            terms["aux"] = ce(aux, mask)  # aux: (B, C, H, W)
        hp = self.hparams
        weights = {
            "ce": 1.0,
            "dice": hp.dice_weight,
            "lovasz": hp.lovasz_weight,
            "aux": hp.aux_weight,
        }
        terms["loss"] = sum(weights[k] * v for k, v in terms.items())
        return terms

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        out = self(batch["image"])
        terms = self.loss(out, batch["mask"])
        self._log_terms(terms, "train", batch["image"].shape[0])
        return terms["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_metrics)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_metrics)

    def _eval_step(self, batch: dict[str, Any], stage: str, metrics: SegmentationMetrics) -> None:
        out = self(batch["image"])
        terms = self.loss(out, batch["mask"])
        self._log_terms(terms, stage, batch["image"].shape[0])
        metrics.update(main_logits(out).argmax(dim=1), batch["mask"])  # (B, H, W)

    def _log_terms(self, terms: dict[str, Tensor], stage: str, batch_size: int) -> None:
        train = stage == "train"
        self.log(
            f"{stage}/loss",
            terms["loss"],
            on_step=train,
            on_epoch=True,
            prog_bar=True,
            batch_size=batch_size,
            sync_dist=not train,
        )
        if len(terms) > 2:  # more than "ce" + "loss": log the parts too
            parts = {f"{stage}/loss_{k}": v for k, v in terms.items() if k != "loss"}
            self.log_dict(parts, on_epoch=True, batch_size=batch_size, sync_dist=not train)

    def on_validation_epoch_end(self) -> None:
        self.last_val_metrics = self._log_scores("val", self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self.last_test_metrics = self._log_scores("test", self.test_metrics)

    def _log_scores(self, stage: str, metrics: SegmentationMetrics) -> dict[str, Tensor]:
        if not metrics.update_called:  # e.g. limit_val_batches=0
            return {}
        scores = metrics.compute()  # already summed over DDP processes
        metrics.reset()
        # Identical on every rank already; sync_dist only silences Lightning's DDP warning.
        for key in LOGGED_SCORES:
            self.log(f"{stage}/{key}", scores[key], prog_bar=key == "mIoU", sync_dist=True)
        return {k: v.detach().cpu() for k, v in scores.items()}

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Returns "mask": (B, H, W) int64 argmax labels and the batch's "id"s."""
        out = self(batch["image"])
        return {"mask": main_logits(out).argmax(dim=1), "id": batch.get("id")}

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

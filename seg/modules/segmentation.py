"""LightningModule for semantic segmentation: the loss and the VOC metrics.

Everything else (optimizer, schedule, freezing, logging, the stage loop) is
:class:`seg.modules.base.BaseModule`. Validation and testing predict through
:func:`seg.inference.predict_probs`, the same path as ``evaluate.py`` and ``predict.py``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seg.constants import IGNORE_INDEX, NUM_CLASSES
from seg.errors import ConfigError
from seg.inference import InferenceConfig, predict_probs, prepare_net, scores_to_mask
from seg.metrics import SegmentationMetrics
from seg.models import AUX, seg_logits
from seg.modules.base import BaseModule

#: Reductions of the training cross-entropy over pixels (``model.loss_reduction``).
LOSS_REDUCTIONS = ("mean", "sum")


class SegmentationModule(BaseModule):
    """Train and evaluate a segmentation net.

    Loss = cross-entropy (ignoring ``IGNORE_INDEX``, optionally class-weighted)
    + ``dice_weight`` * Dice (Milletari et al., https://arxiv.org/abs/1606.04797)
    + ``lovasz_weight`` * Lovasz-softmax (Berman et al., https://arxiv.org/abs/1705.08790)
    + ``aux_weight`` * cross-entropy of the auxiliary output (``"aux"``; PSPNet,
    https://arxiv.org/abs/1612.01105, "deep supervision"; torchvision's segmentation models).

    ``val/loss`` and ``test/loss`` are the cross-entropy of the probabilities that are scored
    (the output of the inference path), so they stay comparable whatever the training terms.

    ``loss_reduction`` sets how the training cross-entropy terms ("ce", "aux") reduce over
    pixels. ``"mean"``: the mean over the batch's labelled pixels. ``"sum"``: the sum over each
    image's labelled pixels, averaged over the images (Caffe's ``SoftmaxWithLoss`` with
    ``normalize: false``, the loss of the FCN reference solvers, whose learning rates are "for
    unnormalized softmax"). For a batch of B images with N labelled pixels in all, one SGD step on
    the summed loss at lr η is the step on the mean loss at lr η·N/B (without weight decay).
    Under DDP and gradient accumulation, "sum" gives exactly the step of one process on the
    global batch; "mean" does when every micro-batch has the same number of labelled pixels.

    Args:
        net: Network following the output contract of :mod:`seg.models`.
        num_classes: C, including background.
        class_weights: Optional C cross-entropy weights.
        dice_weight: Weight of the multiclass Dice loss.
        lovasz_weight: Weight of the Lovasz-softmax loss.
        aux_weight: Weight of the auxiliary cross-entropy; needs ``"aux"`` in the net output.
        inference: How validation and test run the net (whole image, no TTA by default;
            ``evaluate.py`` passes its ``inference`` / ``tta`` options).
        context: Name of the context-module variant (``model=dilation_context`` selects it
            with ``model.context=basic|large``); only recorded in the hyper-parameters.
        loss_reduction: ``"mean"`` or ``"sum"`` (see above).
        **kwargs: Optimizer, scheduler, encoder and memory-format options of
            :class:`~seg.modules.base.BaseModule`.
    """

    def __init__(
        self,
        net: nn.Module,
        num_classes: int = NUM_CLASSES,
        class_weights: list[float] | None = None,
        dice_weight: float = 0.0,
        lovasz_weight: float = 0.0,
        aux_weight: float = 0.0,
        inference: InferenceConfig | None = None,
        context: str | None = None,
        loss_reduction: str = "mean",
        **kwargs: Any,
    ) -> None:
        if loss_reduction not in LOSS_REDUCTIONS:
            raise ConfigError(
                f"model.loss_reduction={loss_reduction!r} must be one of {LOSS_REDUCTIONS}"
            )
        if class_weights is not None:  # may be a Hydra ListConfig: hparams keep plain floats
            class_weights = [float(w) for w in class_weights]
            if len(class_weights) != num_classes:
                raise ConfigError(
                    f"model.class_weights has {len(class_weights)} entries for {num_classes} classes"
                )
        self.num_classes = num_classes
        super().__init__(net, **kwargs)
        self.inference = inference or InferenceConfig(channels_last=self.hparams.channels_last)
        weight = None if class_weights is None else torch.tensor(class_weights)
        self.register_buffer("class_weights", weight, persistent=False)
        multiclass = partial(smp.losses.DiceLoss, "multiclass", ignore_index=IGNORE_INDEX)
        self.dice = multiclass() if dice_weight else None
        self.lovasz = (
            smp.losses.LovaszLoss("multiclass", ignore_index=IGNORE_INDEX)
            if lovasz_weight
            else None
        )

    def make_metric(self) -> SegmentationMetrics:
        return SegmentationMetrics(self.num_classes)

    def loss(self, out: Any, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Loss terms of one batch.

        Args:
            out: Net output: logits (B, C, H, W) or a dict with "out" (and "aux").
            batch: ``"mask"`` (B, H, W) int64 labels, ``IGNORE_INDEX`` excluded.

        Returns:
            "loss" (the weighted total) and each active term ("ce", "dice", "lovasz", "aux").
        """
        mask = batch["mask"]
        logits = seg_logits(out)  # (B, C, H, W)
        hp = self.hparams
        ce = partial(self.cross_entropy, summed=hp.loss_reduction == "sum")
        terms, weights = {"ce": ce(logits, mask)}, {"ce": 1.0}
        for name, loss_fn in (("dice", self.dice), ("lovasz", self.lovasz)):
            if loss_fn is not None:
                # fp32: smp's Lovasz takes a dot of bf16 errors and fp32 gradients under autocast
                with torch.autocast(logits.device.type, enabled=False):
                    terms[name] = loss_fn(logits.float(), mask)
                weights[name] = hp[f"{name}_weight"]
        if hp.aux_weight:
            if not isinstance(out, dict) or AUX not in out:
                raise ConfigError(
                    f"model.aux_weight={hp.aux_weight} needs a net that returns {AUX!r}"
                )
            aux = out[AUX]
            if aux.shape[-2:] != mask.shape[-2:]:  # torchvision's nets return it at input size:
                # a same-size bilinear resize would still cost a pass forward and backward
                aux = F.interpolate(aux, size=mask.shape[-2:], mode="bilinear", align_corners=False)
            terms["aux"], weights["aux"] = ce(aux, mask), hp.aux_weight  # aux: (B, C, H, W)
        terms["loss"] = sum(weights[k] * v for k, v in terms.items())
        return terms

    def cross_entropy(self, logits: Tensor, mask: Tensor, summed: bool = False) -> Tensor:
        """Cross-entropy of (B, C, H, W) logits against (B, H, W) labels, ``IGNORE_INDEX`` left out.

        Returns:
            The mean over labelled pixels, or with ``summed`` the sum over each image's labelled
            pixels averaged over the B images.
        """
        loss = F.cross_entropy(
            logits,
            mask,
            weight=self.class_weights,
            ignore_index=IGNORE_INDEX,
            reduction="sum" if summed else "mean",
        )
        return loss / mask.shape[0] if summed else loss

    def on_test_start(self) -> None:
        """Compile the net for the test pass when the split is long enough to repay it
        (``inference.compile``; :func:`seg.inference.prepare_net`). Only here: validation
        during training must see the weights as they change, which freezing would bake in."""
        loaders = self.trainer.test_dataloaders
        loaders = loaders if isinstance(loaders, list | tuple) else [loaders]
        images = sum(len(dl.dataset) for dl in loaders if hasattr(dl, "dataset"))
        # Not a submodule: it shares the net's parameters and must stay out of the state dict.
        object.__setattr__(self, "_test_net", prepare_net(self.net, self.inference, images))

    def on_test_end(self) -> None:
        object.__setattr__(self, "_test_net", None)

    def eval_step(self, batch: dict[str, Any], stage: str) -> dict[str, Tensor]:
        image, mask = batch["image"], batch["mask"]  # (B, 3, H, W), (B, H, W)
        net = getattr(self, "_test_net", None) if stage == "test" else None
        probs = predict_probs(net or self.net, image, self.inference)  # (B, C, H, W)
        pred = scores_to_mask(probs, mask.shape[-2:])  # (B, H, W)
        self.metrics[stage].update(pred, mask)
        log_probs = probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
        nll = F.nll_loss(log_probs, mask, weight=self.class_weights, ignore_index=IGNORE_INDEX)
        self.log_terms({"loss": nll}, stage, image.shape[0])
        return {"mask": pred}

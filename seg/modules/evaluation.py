"""The LightningModule behind ``evaluate.py``: a trained net, an inference recipe, VOC metrics.

Running evaluation through ``Trainer.test`` gives DDP for free; the metric state is one
confusion matrix that torchmetrics sums across processes, and the datamodule's unpadded
sampler sees every image exactly once, so the DDP score equals the single-process score.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from seg.constants import NUM_CLASSES
from seg.inference import InferenceConfig, predict_probs, scores_to_mask
from seg.metrics import SegmentationMetrics


class EvaluationModule(L.LightningModule):
    """Evaluate a segmentation net on full-size images.

    Args:
        net: Trained net mapping (B, 3, H, W) -> logits (B, C, H, W).
        inference: Whole-image / sliding-window and TTA options.
        num_classes: C.
    """

    def __init__(
        self,
        net: nn.Module,
        inference: InferenceConfig | None = None,
        num_classes: int = NUM_CLASSES,
    ) -> None:
        super().__init__()
        self.net = net
        self.inference = inference or InferenceConfig()
        self.metrics = SegmentationMetrics(num_classes=num_classes)
        self.results: dict[str, Any] = {}
        self.num_images = 0

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        image, mask = batch["image"], batch["mask"]  # (B, 3, H, W), (B, H, W)
        probs = predict_probs(self.net, image, self.inference)  # (B, C, H, W)
        self.metrics.update(scores_to_mask(probs, mask.shape[-2:]), mask)
        self.num_images += image.shape[0]

    def on_test_epoch_end(self) -> None:
        self.results = {k: v.detach().cpu() for k, v in self.metrics.compute().items()}
        count = torch.tensor(self.num_images, device=self.device)
        self.results["num_images"] = int(self.trainer.strategy.reduce(count, reduce_op="sum"))
        for key in ("mIoU", "pixel_acc", "mean_acc", "fw_IoU"):
            self.log(f"test/{key}", self.results[key].float(), sync_dist=False)
        self.metrics.reset()

    def forward(self, x: Tensor) -> Tensor:
        return predict_probs(self.net, x, self.inference)

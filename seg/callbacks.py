"""Lightning callbacks owned by seg."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from seg.data.classes import flat_palette


class StoreConfig(L.Callback):
    """Stores the run's resolved config in every checkpoint, under ``"seg_config"``.

    ``evaluate.py``, ``predict.py`` and ``seg.export`` rebuild the network from it, so a
    checkpoint is self-contained. The config is a plain ``dict`` of builtins, so the checkpoint
    stays loadable with ``torch.load(..., weights_only=True)``.

    Args:
        config: The resolved config as plain containers (``OmegaConf.to_container(cfg,
            resolve=True)``).
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["seg_config"] = self.config


class LoadWeights(L.Callback):
    """Initialise part of the model from another run's checkpoint before training starts.

    Used for staged recipes, e.g. the dilation network: train the front end
    (``experiment=dilation_frontend_voc``), then the context module on top of it
    (``experiment=dilation_voc frontend_ckpt=...``), loading ``net.*`` of the first run into
    ``net.frontend.*`` of the second. Skipped when resuming (the resumed checkpoint wins). The
    file is read with :func:`seg.checkpoint.load_checkpoint` (``weights_only=True``).

    Args:
        path: Checkpoint written by ``train.py``; None disables the callback.
        source_prefix: Keys of the source state dict to take (prefix stripped).
        target_prefix: Prefix they get in this model's state dict.
    """

    def __init__(
        self, path: str | None, source_prefix: str = "net.", target_prefix: str = "net."
    ) -> None:
        self.path = path
        self.source_prefix = source_prefix
        self.target_prefix = target_prefix

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.path is None or trainer.ckpt_path:
            return
        from seg.checkpoint import load_checkpoint  # weights_only=True, one-line errors

        state = load_checkpoint(self.path)["state_dict"]
        n = len(self.source_prefix)
        mapped = {
            self.target_prefix + k[n:]: v
            for k, v in state.items()
            if k.startswith(self.source_prefix)
        }
        own = pl_module.state_dict()
        unknown = sorted(set(mapped) - set(own))
        if not mapped or unknown:
            raise ValueError(
                f"{self.path}: {len(mapped)} weights under {self.source_prefix!r}; "
                f"{len(unknown)} have no place under {self.target_prefix!r} (e.g. {unknown[:3]})"
            )
        pl_module.load_state_dict(mapped, strict=False)


class LogPredictions(L.Callback):
    """Logs the first ``num_images`` validation images to TensorBoard at every validation: the
    image, its ground truth and the prediction side by side (masks in the dataset's colours;
    for localization, the target box in green and the predicted one in red).

    The same images every time (the validation loader is not shuffled), so the panels show how
    the predictions evolve. Without a TensorBoard logger the callback does nothing.

    Args:
        num_images: How many validation images to show.
        mean: The per-channel mean of the input normalisation (``augment.mean``).
        std: Its standard deviation (``augment.std``).
    """

    def __init__(
        self,
        num_images: int = 4,
        mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
        std: tuple[float, float, float] = (0.229, 0.224, 0.225),
    ) -> None:
        self.num_images = num_images
        self.mean = torch.tensor([float(v) for v in mean]).view(3, 1, 1)
        self.std = torch.tensor([float(v) for v in std]).view(3, 1, 1)
        self._seen = 0

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._seen = 0

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        board = next((x for x in trainer.loggers if isinstance(x, TensorBoardLogger)), None)
        if board is None or not isinstance(outputs, dict) or trainer.sanity_checking:
            return
        palette = torch.tensor(flat_palette(getattr(trainer.datamodule, "palette", None) or []))
        palette = palette.view(256, 3).to(torch.uint8)
        for i in range(batch["image"].shape[0]):
            if self._seen >= self.num_images or not trainer.is_global_zero:
                return
            image = self._to_uint8(batch["image"][i])  # (3, H, W)
            if "mask" in outputs:
                panels = [image, *(palette[m[i].long().cpu()].permute(2, 0, 1) for m in
                                   (batch["mask"].clamp(max=255), outputs["mask"]))]  # fmt: skip
            else:
                panels = [self._boxes(image, batch["box"][i], outputs["box"][i])]
            board.experiment.add_image(
                f"val_predictions/{self._seen}", torch.cat(panels, dim=2), trainer.global_step
            )
            self._seen += 1

    def _to_uint8(self, image: torch.Tensor) -> torch.Tensor:
        """A normalised image (3, H, W) back to uint8 (3, H, W)."""
        x = image.detach().float().cpu() * self.std + self.mean
        return (x.clamp(0, 1) * 255).round().to(torch.uint8)

    @staticmethod
    def _boxes(image: torch.Tensor, target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """``image`` (3, H, W) uint8 with the target (green) and predicted (red) xywh boxes."""
        from torchvision.ops import box_convert
        from torchvision.utils import draw_bounding_boxes

        h, w = image.shape[-2:]
        boxes = torch.stack([target.float().cpu(), pred.float().cpu()]) * torch.tensor([w, h] * 2)
        xyxy = box_convert(boxes, in_fmt="xywh", out_fmt="xyxy")
        return draw_bounding_boxes(image, xyxy, colors=["lime", "red"], width=2)

"""Lightning callbacks owned by seg."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn

from seg.data.classes import flat_palette
from seg.errors import CheckpointError

log = logging.getLogger(__name__)


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
    """Initialise the model from another run's checkpoint before training starts.

    Staged recipes use it: FCN-16s starts from FCN-32s and FCN-8s from FCN-16s (``init_ckpt``,
    Long et al. 2015, Sec. 4.2), and the dilation network's context stage starts from the front
    end (``net.*`` of stage 1 into ``net.frontend.*``, ``frontend_ckpt``). Skipped when resuming
    (the resumed checkpoint wins). The file is read with
    :func:`seg.checkpoint.load_checkpoint` (``weights_only=True``).

    Every tensor of the checkpoint under ``source_prefix`` must find its place under
    ``target_prefix``, and is loaded when its shape matches. Only two kinds of mismatch are
    accepted, and both are logged, with what was loaded:

    - a tensor whose target is fixed by construction, never learned (``requires_grad=False``
      in the net itself, not frozen for this run by ``model.freeze``), e.g. FCN's bilinear final
      upsampler, whose kernel grows with the output stride (64x64 in FCN-32s, 32x32 in
      FCN-16s): the target keeps its own value;
    - a target tensor under one of ``allow_new`` (FCN's new skip score layers and 2x
      upsamplers) that the source lacks: it keeps its initialisation, which for score layers
      is zero, so the finer net starts with the coarser net's predictions (Sec. 4.2).

    Anything else (a tensor with no place, a trained tensor of another shape, a target tensor
    the source lacks outside ``allow_new``) raises a one-line :class:`CheckpointError`.

    Args:
        path: Checkpoint written by ``train.py``; None disables the callback.
        source_prefix: Keys of the source state dict to take (prefix stripped).
        target_prefix: Prefix they get in this model's state dict.
        allow_new: Key prefixes, relative to ``target_prefix``, of tensors that may be absent
            from the source (new layers of the finer stage).
    """

    def __init__(
        self,
        path: str | None,
        source_prefix: str = "net.",
        target_prefix: str = "net.",
        allow_new: Sequence[str] = (),
    ) -> None:
        self.path = path
        self.source_prefix = source_prefix
        self.target_prefix = target_prefix
        self.allow_new = tuple(target_prefix + str(p) for p in allow_new)

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
        load, fixed, new = self.plan(mapped, pl_module)
        pl_module.load_state_dict(load, strict=False)
        log.info(
            "%s: loaded %d tensors (%.1fM values) into %s; kept fixed: %s; new, at their "
            "initialisation: %s",
            self.path,
            len(load),
            sum(v.numel() for v in load.values()) / 1e6,
            type(getattr(pl_module, "net", pl_module)).__name__,
            fixed or "none",
            new or "none",
        )

    def plan(
        self, mapped: dict[str, Tensor], module: nn.Module
    ) -> tuple[dict[str, Tensor], list[str], list[str]]:
        """Split the source tensors into loaded and fixed ones, and list the new targets.

        Returns:
            (tensors to load, "key (source shape -> target shape)" of skipped fixed tensors,
            "key (zero|initialised)" of the new target tensors).

        Raises:
            CheckpointError: See the class docstring.
        """
        own = module.state_dict()
        # Fixed by construction: parameters that never learn, unlike those frozen for this run.
        net = getattr(module, "net", module)
        frozen = {
            id(p)
            for name in getattr(module, "frozen", ())
            for p in net.get_submodule(name).parameters()
        }
        fixed_keys = {
            k for k, p in module.named_parameters() if not p.requires_grad and id(p) not in frozen
        }
        where = f"{self.path}: {self.source_prefix!r} -> {self.target_prefix!r}"
        if not mapped:
            raise CheckpointError(f"{where}: the checkpoint has no weights under the source prefix")
        unknown = sorted(set(mapped) - set(own))
        if unknown:
            raise CheckpointError(
                f"{where}: {len(unknown)} weights have no place, e.g. {unknown[:3]}"
            )
        load, fixed = {}, []
        for key, value in mapped.items():
            if value.shape == own[key].shape:
                load[key] = value
            elif key in fixed_keys:
                fixed.append(f"{key} {tuple(value.shape)} -> {tuple(own[key].shape)}")
            else:
                raise CheckpointError(
                    f"{where}: {key} is {tuple(value.shape)} in the checkpoint and "
                    f"{tuple(own[key].shape)} here; only fixed tensors (e.g. the bilinear "
                    "upsampler) may differ"
                )
        missing = sorted(k for k in own if k.startswith(self.target_prefix) and k not in mapped)
        unexpected = [k for k in missing if not k.startswith(self.allow_new)]
        if unexpected:
            raise CheckpointError(
                f"{where}: {len(unexpected)} weights of this model are not in the checkpoint "
                f"and are not new layers (allow_new={list(self.allow_new)}), e.g. {unexpected[:3]}"
            )
        new = [f"{k} ({'zero' if not own[k].any() else 'initialised'})" for k in missing]
        return load, fixed, new


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

"""Lightning callbacks owned by seg."""

from __future__ import annotations

from typing import Any

import lightning as L


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

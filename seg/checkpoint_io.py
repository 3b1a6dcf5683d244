"""Lightning checkpoint I/O that writes atomically and reads data only (its own module so that
``seg.checkpoint``, which ``predict.py`` and the Python API read checkpoints with, does not import
Lightning: 2 s of every start-up)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO

from seg.models.weights import torch_load
from seg.utils import atomic_open


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O that writes atomically and reads data only.

    Lightning's ``TorchCheckpointIO`` serialises into memory and moves a temporary file from the
    system temp folder into place (a copy, not a rename, when that folder is on another file
    system) without fsync. This plugin streams ``torch.save`` into a temporary file in the target
    folder and renames it over the target (see :func:`seg.utils.atomic_open`), so ``last.ckpt`` is always
    a complete checkpoint. Loads, including ``Trainer.fit(ckpt_path=...)``, always use
    ``weights_only=True``. Remote paths (``s3://`` ...) keep Lightning's behaviour for saving.

    Configured in ``conf/trainer/default.yaml`` under ``plugins``.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        with atomic_open(path) as f:
            torch.save(checkpoint, f)

    def load_checkpoint(
        self,
        path: str | Path,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        if weights_only is False:
            raise ValueError(f"{path}: refusing to load a checkpoint with weights_only=False")
        if "://" in str(path):
            return super().load_checkpoint(path, map_location, weights_only=True)
        return torch_load(path)

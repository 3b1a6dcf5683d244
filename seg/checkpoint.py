"""Loading trained checkpoints safely and rebuilding their network.

Every load uses ``torch.load(..., weights_only=True)``: a checkpoint is data, never code.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class, instantiate
from torch import nn

#: Config keys that ask for pretrained weights; cleared when rebuilding from a checkpoint,
#: whose own state dict already holds every weight.
PRETRAINED_KEYS = ("encoder_weights", "weights")


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or was not written by ``train.py``."""


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``.

    Raises:
        CheckpointError: The file is missing, holds pickled code, or lacks ``seg_config``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling refusals come as several exception types
        raise CheckpointError(f"{path}: not a loadable weights-only checkpoint ({err})") from err
    if not isinstance(ckpt, dict) or "seg_config" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a seg checkpoint (no 'seg_config' / 'state_dict')")
    return ckpt


def _without_pretrained(node: Any) -> Any:
    """A copy of a config tree with every pretrained-weights key set to None."""
    if isinstance(node, dict):
        return {
            k: (None if k in PRETRAINED_KEYS else _without_pretrained(v)) for k, v in node.items()
        }
    if isinstance(node, list):
        return [_without_pretrained(v) for v in node]
    return copy.copy(node)


def build_net(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild the trained network of a checkpoint, in eval mode, on CPU.

    The network is built from the ``model.net`` node of the stored config (with pretrained
    downloads disabled) and loaded strictly from the ``net.*`` entries of the state dict.
    """
    net_cfg = _without_pretrained(ckpt["seg_config"]["model"]["net"])
    net: nn.Module = instantiate(net_cfg)
    prefix = "net."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    net.load_state_dict(state, strict=True)
    return net.eval()


def is_localization(ckpt: dict[str, Any]) -> bool:
    """Whether the checkpoint holds a classification + localization model."""
    from seg.modules.localization import LocalizationModule

    return issubclass(get_class(ckpt["seg_config"]["model"]["_target_"]), LocalizationModule)

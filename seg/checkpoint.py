"""Reading and writing checkpoints safely, and rebuilding their network.

Every load uses ``torch.load(..., weights_only=True)``: a checkpoint is data, never code. Files
that would unpickle anything else (a crafted ``__reduce__``, a pickled class) are refused before
any of it runs. Writes go through :class:`seg.checkpoint_io.AtomicCheckpointIO`: a kill during a save leaves the
previous file in place, never a truncated one.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn

from seg.errors import CheckpointError
from seg.models.weights import load_strict, torch_load

#: Config keys that ask for pretrained weights; cleared when rebuilding from a checkpoint,
#: whose own state dict already holds every weight.
PRETRAINED_KEYS = ("encoder_weights", "weights")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``.

    Raises:
        CheckpointError: The file is missing, holds pickled code, or lacks ``seg_config``.
    """
    ckpt = torch_load(path)
    if not isinstance(ckpt, dict) or "seg_config" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a seg checkpoint (no 'seg_config' / 'state_dict')")
    return ckpt


def check_resume(path: str | Path, module: nn.Module) -> None:
    """Check that ``train.py ckpt_path=`` can resume ``module`` before anything is written.

    Raises:
        CheckpointError: The file is missing, a folder, truncated, refused, a plain state dict
            or a bare-weights file rather than a training checkpoint, or the weights of another
            model.
    """
    if str(path) in ("last", "best", "hpc", "registry") or "://" in str(path):
        return  # Lightning's own names and remote files: Lightning finds and reads them
    ckpt = torch_load(path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "loops" not in ckpt:
        raise CheckpointError(
            f"ckpt_path={path}: not a training checkpoint (a plain state dict or a weights-only "
            "file has no optimizer or loop state to resume); resume from a run's "
            "checkpoints/last.ckpt"
        )
    load_strict(module, ckpt["state_dict"], source=f"ckpt_path={path}", ignore=())


def __getattr__(name: str) -> Any:
    """``seg.checkpoint.AtomicCheckpointIO``, the name older configs use, imported on demand:
    it pulls in Lightning, which ``predict.py`` and the Python API do not need."""
    if name == "AtomicCheckpointIO":
        from seg.checkpoint_io import AtomicCheckpointIO

        return AtomicCheckpointIO
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _without_pretrained(node: Any) -> Any:
    """A copy of a config tree with every pretrained-weights key set to None."""
    if isinstance(node, dict):
        return {
            k: (None if k in PRETRAINED_KEYS else _without_pretrained(v)) for k, v in node.items()
        }
    if isinstance(node, list):
        return [_without_pretrained(v) for v in node]
    return copy.copy(node)


def build_net(
    ckpt: dict[str, Any],
    source: str | Path = "checkpoint",
    memory_format: torch.memory_format = torch.contiguous_format,
) -> nn.Module:
    """Rebuild the trained network of a checkpoint, in eval mode, on CPU.

    The network is built from the ``model.net`` node of the stored config (with pretrained
    downloads disabled) and loaded strictly from the ``net.*`` entries of the state dict.

    Args:
        ckpt: A checkpoint from :func:`load_checkpoint`.
        source: Its path, for error messages.
        memory_format: Layout of the 4-d weights: contiguous, as the net's constructor lays
            them out (what exporters trace), or channels_last for a caller that runs the net in
            it. A conv net trained channels_last saves its weights so; each weight in another
            layout than asked is copied once.

    Raises:
        CheckpointError: The config cannot build a network, or the weights do not fit it.
    """
    node = _without_pretrained(ckpt["seg_config"]["model"]["net"])
    try:
        meta = _uninitialised(node)
        net = meta if meta is not None else instantiate(node)
    except Exception as err:  # Hydra wraps the constructor's error in several lines
        text = " ".join(str(err).split())[:300]
        raise CheckpointError(f"{source}: its config cannot build the network ({text})") from err
    prefix = "net."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    # On the meta device the loaded tensors become the net's own: no second copy of the weights.
    load_strict(net, state, source=str(source), ignore=(), assign=meta is not None)
    return net.to(memory_format=memory_format).eval()


def _uninitialised(node: Any) -> nn.Module | None:
    """The net of ``node`` on the meta device (no memory, no weights), or None when that is not
    safe.

    The strict load that follows replaces every parameter and buffer, so the random
    initialisation of a normal build is wasted: 0.14 s of a ResNet-34 U-Net (5% of a short
    ``predict.py`` run), seconds of a VGG-16 FCN; so is allocating the weights only to copy the
    loaded ones into them (22 ms of that U-Net's 124 ms load). None (build it normally) when a
    constructor cannot run on the meta device, or when the net holds tensors that the state dict
    does not restore: non-persistent buffers, or plain tensor attributes.
    """
    try:
        with torch.device("meta"):
            net: nn.Module = instantiate(node)
    except Exception:  # noqa: BLE001  (the normal build runs, and reports any error)
        return None
    for module in net.modules():
        extra = [v for k, v in vars(module).items() if isinstance(v, torch.Tensor)]
        if module._non_persistent_buffers_set or extra:
            return None
    return net


def build_module(ckpt: dict[str, Any], source: str | Path = "checkpoint", **kwargs: Any) -> Any:
    """Rebuild the trained LightningModule of a checkpoint (for testing), in eval mode.

    Args:
        ckpt: A checkpoint from :func:`load_checkpoint`.
        source: Its path, for error messages.
        **kwargs: Extra module arguments, e.g. ``inference=`` for a segmentation module.
    """
    model_cfg = {k: v for k, v in ckpt["seg_config"]["model"].items() if k != "net"}
    factory = instantiate(_without_pretrained(model_cfg), _partial_=True)
    return factory(net=build_net(ckpt, source), **kwargs).eval()


def is_localization_target(target: str) -> bool:
    """Whether a model config's ``_target_`` names a classification + localization module (by
    name: importing the class would pull in Lightning and torchmetrics, seconds of start-up
    that ``predict.py`` does not need)."""
    return str(target).rsplit(".", 1)[-1] == "LocalizationModule"


def is_localization(ckpt: dict[str, Any]) -> bool:
    """Whether the checkpoint holds a classification + localization model."""
    return is_localization_target(ckpt["seg_config"]["model"]["_target_"])

"""The one reader of weight and checkpoint files: data only, never code.

Every ``.pth`` / ``.pt`` / ``.ckpt`` file seg reads (pretrained encoders, VGG16 ImageNet weights,
training checkpoints, Lightning resumes) goes through :func:`torch_load`, i.e.
``torch.load(..., weights_only=True)``. A file that would unpickle anything else (a crafted
``__reduce__``, a pickled class) is refused in one line before any of it runs.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seg.errors import CheckpointError, PretrainedWeightsNotFoundError

# Keys of ImageNet classifier heads: dropped from weight files, never expected by an encoder.
HEAD_PREFIXES = ("fc.", "classifier.", "last_linear.", "head.")


def describe_load_error(err: Exception) -> str:
    """One line saying why ``torch.load(..., weights_only=True)`` failed.

    torch's own message spans several lines and suggests ``weights_only=False``, which is exactly
    what must not be done with a file from elsewhere.
    """
    text = str(err)
    if "Weights only load failed" in text:
        found = re.search(r"Unsupported global: GLOBAL (\S+)|(Unsupported operand \d+)", text)
        what = (found.group(1) or found.group(2)) if found else "non-tensor objects"
        if found and found.group(1):
            what = f"it asks to call or build {what}"
        return (
            f"refused: not a weights-only checkpoint ({what}); a checkpoint is never unpickled "
            "as code, so this file cannot be used"
        )
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return f"not a readable checkpoint ({first})"


def torch_load(path: str | Path) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with one-line errors.

    Raises:
        CheckpointError: The file is missing, not a torch file, or holds pickled code.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "not found"
        raise CheckpointError(f"{path}: {what}")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise on stderr
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling refusals come as several exception types
        raise CheckpointError(f"{path}: {describe_load_error(err)}") from err


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a ``torch.save`` file (:func:`torch_load`).

    Raises:
        PretrainedWeightsNotFoundError: ``path`` is not a file.
        CheckpointError: The file is unreadable or holds pickled code.
        CheckpointError: The file does not hold a mapping of tensors.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise PretrainedWeightsNotFoundError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    state = torch_load(path)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, expected a state dict")
    return dict(state)


def load_strict(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str,
    ignore: tuple[str, ...] = HEAD_PREFIXES,
    assign: bool = False,
) -> None:
    """Load ``state`` into ``module`` strictly, ignoring only keys under ``ignore``.

    Args:
        module: Target module.
        state: Name -> tensor mapping (keys relative to ``module``).
        source: Where ``state`` came from, for the error message.
        ignore: Key prefixes dropped from ``state`` first: ImageNet classifier heads by default
            (pretrained encoders); ``()`` for a whole trained net.
        assign: Make ``state``'s tensors the module's own (each in the dtype of the tensor it
            replaces) instead of copying them into it: for a module built on the meta device,
            which has no memory to copy into.

    Raises:
        CheckpointError: Keys are missing or unexpected, or a tensor shape differs.
    """
    state = {k: v for k, v in state.items() if not (ignore and k.startswith(ignore))}
    own = module.state_dict()
    expected = set(own)
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: weights do not match {type(module).__name__}: "
            f"{len(missing)} missing keys {missing[:5]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:5]}"
        )
    try:
        if assign:  # as a copy would: a bf16 checkpoint still gives the net's fp32
            state = {
                k: v.to(own[k].dtype) if v.shape == own[k].shape else v for k, v in state.items()
            }
        nn.Module.load_state_dict(module, state, strict=True, assign=assign)
    except RuntimeError as err:  # shape mismatch
        first = str(err).strip().splitlines()[-1].strip()
        raise CheckpointError(
            f"{source}: weights do not fit {type(module).__name__}: {first}"
        ) from err

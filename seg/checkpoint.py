"""Reading and writing checkpoints safely, and rebuilding their network.

Every load uses ``torch.load(..., weights_only=True)``: a checkpoint is data, never code. Files
that would unpickle anything else (a crafted ``__reduce__``, a pickled class) are refused before
any of it runs. Writes go through :class:`AtomicCheckpointIO`: a kill during a save leaves the
previous file in place, never a truncated one.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import torch
from hydra.utils import get_class, instantiate
from lightning.fabric.plugins import TorchCheckpointIO
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
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise on stderr
            warnings.simplefilter("ignore", UserWarning)
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling refusals come as several exception types
        raise CheckpointError(f"{path}: {describe_load_error(err)}") from err
    if not isinstance(ckpt, dict) or "seg_config" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a seg checkpoint (no 'seg_config' / 'state_dict')")
    return ckpt


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


@contextlib.contextmanager
def atomic_open(path: str | Path) -> Iterator[IO[bytes]]:
    """Open a temporary file next to ``path`` for writing; on success it replaces ``path``.

    The data is flushed and fsynced before ``os.replace`` (atomic on POSIX and Windows), and the
    folder is fsynced after it, so after a crash or kill ``path`` holds either its old or its new
    content, never a mix. On any error (or ``KeyboardInterrupt``) the temporary file is removed
    and ``path`` is untouched; only a ``SIGKILL`` can leave a ``.<name>.*.tmp`` file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # folders cannot be opened on every platform
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O that writes atomically and reads data only.

    Lightning's ``TorchCheckpointIO`` serialises into memory and moves a temporary file from the
    system temp folder into place (a copy, not a rename, when that folder is on another file
    system) without fsync. This plugin streams ``torch.save`` into a temporary file in the target
    folder and renames it over the target (see :func:`atomic_open`), so ``last.ckpt`` is always
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
        try:
            return super().load_checkpoint(path, map_location, weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as err:
            if "Weights only load failed" not in str(err):
                raise
            raise CheckpointError(f"{path}: {describe_load_error(err)}") from err


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

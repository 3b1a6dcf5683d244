"""Small helpers shared by every stage: the run folder, building objects from configs, and the one
atomic writer (checkpoints, masks, overlays and JSON reports all go through :func:`atomic_open`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from omegaconf import DictConfig

from seg.errors import DISK_FULL


def output_dir(cfg: DictConfig) -> Path:
    """The run folder: Hydra's, or ``cfg.paths.output_dir`` outside a Hydra app."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.paths.output_dir)


def instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` node of a config group (callbacks, loggers).

    Args:
        group: A mapping of name -> node, or None / empty.

    Returns:
        The instantiated objects, in config order. Nodes without ``_target_`` are skipped.
    """
    from hydra.utils import instantiate

    if not group:
        return []
    return [
        instantiate(node)
        for node in group.values()
        if isinstance(node, DictConfig) and "_target_" in node
    ]


@contextlib.contextmanager
def atomic_open(path: str | Path) -> Iterator[IO[bytes]]:
    """Open a temporary file next to ``path`` for writing; on success it replaces ``path``.

    The data is flushed and fsynced before ``os.replace`` (atomic on POSIX and Windows), and the
    folder is fsynced after it, so after a crash or kill ``path`` holds either its old or its new
    content, never a mix. The file gets the user's umask like any other new file. On any error
    (or ``KeyboardInterrupt``) the temporary file is removed and ``path`` is untouched; only a
    ``SIGKILL`` can leave a ``.<name>.*.tmp`` file behind. A full disk is reported naming ``path``.
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
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in DISK_FULL and not err.filename:
            raise OSError(err.errno, err.strerror, str(path)) from err  # name the file
        raise
    with contextlib.suppress(OSError):  # folders cannot be opened on every platform
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a reader never sees a half-written file (:func:`atomic_open`)."""
    with atomic_open(path) as f:
        f.write(data)


def nan_to_none(obj: Any) -> Any:
    """``obj`` with every float NaN replaced by None, recursively (JSON has no NaN)."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [nan_to_none(v) for v in obj]
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (NaN is written as null)."""
    atomic_write_bytes(path, json.dumps(nan_to_none(obj), indent=2).encode() + b"\n")


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    """Turn SIGTERM into ``SystemExit(143)`` inside the block, so ``finally`` clauses still run.

    For tasks without Lightning (which handles SIGTERM itself during ``fit``). The previous
    handler is restored afterwards.
    """

    def exit_(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

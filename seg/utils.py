"""Small helpers shared by every stage: the run folder, building objects from configs, and the one
atomic writer (checkpoints, masks, overlays and JSON reports all go through :func:`atomic_open`),
and the one appender of JSON-lines records (``boxes.jsonl``, ``predict_manifest.jsonl``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from omegaconf import DictConfig

from seg.errors import DISK_FULL

log = logging.getLogger(__name__)


def output_dir(cfg: DictConfig) -> Path:
    """The run folder, ``cfg.paths.output_dir``: Hydra's run folder unless it is overridden, so
    that ``metrics.json`` and the config files land beside the checkpoints and logs."""
    return Path(cfg.paths.output_dir)


def write_run_config(cfg: DictConfig, out: Path) -> None:
    """Write the run folder's config files: ``config_resolved.yaml`` and, in a Hydra app, the
    ``.hydra/{config,hydra,overrides}.yaml`` that Hydra itself would have written at start.

    ``train.py`` turns Hydra's own writing off (``hydra.output_subdir: null``) and calls this
    once a resumed checkpoint is known to load, so a failed resume never overwrites the config
    files of the run folder it was pointed at.
    """
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    resolved = OmegaConf.to_yaml(OmegaConf.to_container(cfg, resolve=True))
    atomic_write_bytes(out / "config_resolved.yaml", resolved.encode())
    if not HydraConfig.initialized():
        return
    hydra = HydraConfig.get()
    files = {
        "config.yaml": cfg,
        "hydra.yaml": {"hydra": hydra},
        "overrides.yaml": hydra.overrides.task,
    }
    for name, node in files.items():
        atomic_write_bytes(out / ".hydra" / name, OmegaConf.to_yaml(node).encode())


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
def atomic_path(path: str | Path, sync_folder: bool = True) -> Iterator[Path]:
    """A temporary path next to ``path`` to write to; on success it replaces ``path``.

    The file is fsynced before ``os.replace`` (atomic on POSIX and Windows), and the folder is
    fsynced after it, so after a crash or kill ``path`` holds either its old or its new content,
    never a mix. On any error (or ``KeyboardInterrupt``) the temporary file is removed and
    ``path`` is untouched; only a ``SIGKILL`` can leave a ``.<name>.*.tmp`` file behind. A full
    disk is reported naming ``path``. For writers that take a path (exporters); see
    :func:`atomic_open` for a file object.

    Args:
        path: The file to replace.
        sync_folder: Fsync the folder after the rename, so that the rename itself survives a
            power cut. A caller that writes several files into one folder passes False and
            calls :func:`fsync_folder` once after the last, before anything that relies on
            them (a record naming them) is written: the file's own fsync, before the rename,
            is what guarantees that ``path`` is never seen half-written, and it always runs.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in DISK_FULL and not err.filename:
            raise OSError(err.errno, err.strerror, str(path)) from err  # name the file
        raise
    if sync_folder:
        fsync_folder(path.parent)


def fsync_path(path: str | Path) -> None:
    """Flush a file's content (or a folder's entries) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: str | Path) -> None:
    """Flush a folder's entries (renames, new files) to the disk, where the platform can."""
    with contextlib.suppress(OSError):  # folders cannot be opened on every platform
        fsync_path(folder)


@contextlib.contextmanager
def atomic_open(path: str | Path, sync_folder: bool = True) -> Iterator[IO[bytes]]:
    """Open a temporary file next to ``path`` for writing; on success it replaces ``path``
    (:func:`atomic_path`: fsynced, renamed, never half-written). The file gets the user's umask
    like any other new file."""
    with atomic_path(path, sync_folder) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()


def atomic_write_bytes(path: str | Path, data: bytes, sync_folder: bool = True) -> None:
    """Write ``data`` to ``path`` so a reader never sees a half-written file (:func:`atomic_open`)."""
    with atomic_open(path, sync_folder) as f:
        f.write(data)


def append_lines(path: Path, records: list[dict[str, Any]], sync: bool = True) -> None:
    """Append ``records`` as JSON lines with one ``write`` on an ``O_APPEND`` file: lines of
    concurrent writers never interleave, and a kill never loses a line once written. A line
    left torn by an earlier kill is ended first, so it cannot swallow the next record.

    Args:
        path: The JSON-lines file (created if missing).
        records: JSON-serialisable objects, one line each.
        sync: Fsync the file after the write, so the lines also survive a power cut. Without
            it a power cut may lose the last lines (a kill never does): for records whose loss
            only costs redoing work (:meth:`seg.manifest.Manifest.done`).
    """
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def read_lines(path: Path, key: str) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSON-lines file that carry ``key``; a torn or foreign line is
    skipped with a warning (a SIGKILL can cut the last line short)."""
    if not path.is_file():
        return
    with path.open(encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict) and key in record:
                yield record
            elif line.strip():
                log.warning("%s:%d: unreadable line skipped", path, number)


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

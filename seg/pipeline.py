"""How ``predict.py`` moves each image through its three stages, overlapping them.

- Read (:func:`load_one`, in a few threads): the manifest's skip check, then the decoded image,
  run ahead of the net by :func:`read_ahead`, up to :data:`READ_AHEAD` images, in input order.
  PIL's decoders release the GIL, so the next images decode while the net runs.
- Infer (:func:`infer_one`, in the calling thread): the net, on one image at a time.
- Write (:func:`save_one`, in one background thread): PNG encoding, the atomic writes and
  their fsyncs, then the manifest record, run behind the net by :class:`WriteBehind`, in
  input order, at most :data:`WRITE_DEPTH` images waiting. One thread keeps the manifest's
  records in input order, and each record still comes after its files.

Every failure of one image (unreadable file, inference error, write error, from whichever
thread) is one line in :class:`Summary` naming the file, and the batch goes on. Leaving
:func:`predict_all` (at the end, on ``KeyboardInterrupt`` or SIGTERM's ``SystemExit``) waits
until every image that went through the net is written and recorded.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
from rich.progress import track

from seg.api import Model
from seg.data.io import read_image
from seg.errors import failure_line
from seg.manifest import Source
from seg.outputs import PredictionWriter

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

_STOP = object()  # the end of a WriteBehind's queue

#: Images decoded ahead of the net. Two keep the net fed even when one image decodes slowly
#: (a large PNG), and bound the memory of decoded images that wait.
READ_AHEAD = 2
#: Finished images waiting for the writer (besides the one being written): enough to absorb
#: a slow fsync; more would only hold more masks in memory.
WRITE_DEPTH = 2


def read_ahead(items: Iterable[T], load: Callable[[T], R], ahead: int = 2) -> Iterator[R]:
    """``load(item)`` for every item, in input order, computed up to ``ahead`` items ahead.

    Close the generator (``contextlib.closing``) when the consumer may stop early: the loads not
    yet started are cancelled, and the running ones are waited for.

    Args:
        items: What to load.
        load: Runs in a pool thread; it should catch its own errors.
        ahead: How many loads may run or wait, done, before the consumer takes them (also the
            number of threads). Bounds the memory of decoded images that wait.
    """
    source = iter(items)
    pending: deque[Future[R]] = deque()
    with ThreadPoolExecutor(max(1, ahead), thread_name_prefix="seg-read") as pool:
        try:
            for item in source:
                pending.append(pool.submit(load, item))
                if len(pending) > ahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


class WriteBehind(Generic[T]):
    """Run ``write(job)`` for every submitted job in one background thread, in order.

    Use it as a context manager, or call :meth:`close`: leaving waits until every submitted job
    is done, also when the block is left by an exception, ``KeyboardInterrupt`` or SIGTERM's
    ``SystemExit``, so that everything that was handed over is written.

    Args:
        write: Runs in the writer thread; it should catch and report its own errors.
        depth: How many jobs may wait (besides the one being written) before :meth:`submit`
            blocks: the bound on the memory of finished images not yet written.
    """

    def __init__(self, write: Callable[[T], None], depth: int = 2) -> None:
        self._write = write
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        # A daemon thread: should the caller never close it (a second Ctrl+C while it drains),
        # the process still ends; each write is atomic, so nothing half-written is left.
        self._thread = threading.Thread(target=self._loop, name="seg-write", daemon=True)
        self._thread.start()

    def submit(self, job: T) -> None:
        """Queue ``job``; blocks while ``depth`` jobs wait.

        Raises:
            BaseException: Whatever escaped ``write`` and stopped the writer thread.
        """
        self._put(job)

    def close(self) -> None:
        """Wait until every submitted job is written, then stop the thread.

        Raises:
            BaseException: Whatever escaped ``write`` and stopped the writer thread.
        """
        if self._thread.is_alive():
            self._put(_STOP)
            self._thread.join()
        if self._error is not None:
            raise self._error

    def __enter__(self) -> WriteBehind[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _put(self, item: object) -> None:
        while True:  # a stopped writer never empties the queue: check it instead of blocking
            if self._error is not None:
                raise self._error
            if not self._thread.is_alive():
                raise RuntimeError("the writer thread has stopped")
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _loop(self) -> None:
        try:
            while (job := self._queue.get()) is not _STOP:
                self._write(job)  # type: ignore[arg-type]
        except BaseException as err:  # noqa: BLE001  (raised in the caller: submit, close)
            self._error = err


@dataclass
class Summary:
    """What a predict run did, for the closing line and the exit status.

    :func:`predict_all` counts ``skipped`` in the calling thread and :func:`save_one`
    ``written`` in the writer thread, each in one thread only; failures come from either
    (``list.append`` is atomic).
    """

    written: int = 0
    skipped: int = 0
    failures: list[tuple[int, str]] = field(default_factory=list)  # (input index, line)
    ignored: list[str] = field(default_factory=list)
    left_out: int = 0  # predict's own outputs, or files under the output folder
    renamed: int = 0  # inputs whose output name was taken, so they got another one

    @property
    def failed(self) -> list[str]:
        """One line per failed input, in input order (a write fails later than a read)."""
        return [line for _, line in sorted(self.failures, key=lambda f: f[0])]

    def fail(self, item: Item, err: BaseException) -> None:
        """Record, and log, one line naming the input and the problem."""
        line = failure_line(item.path, err)
        self.failures.append((item.index, line))
        log.error("%s", line)


@dataclass
class Predictor:
    """What the stages need, built once per run."""

    model: Model
    writer: PredictionWriter
    overwrite: bool = False


@dataclass
class Item:
    """One input on its way through the stages."""

    index: int  # its place in the input order
    path: Path
    stem: str  # its output stem (:func:`seg.predict.assign_stems`)
    source: Source | None = None  # size and mtime as read: what the manifest records
    skipped: bool = False  # recorded as done already
    error: Exception | None = None  # why it could not be read
    image: np.ndarray | None = None  # (H, W, 3) uint8, upright
    mask: np.ndarray | None = None  # (H, W) uint8 class indices
    box: dict[str, Any] | None = None  # a localizer's box record


def load_one(item: Item, run: Predictor) -> Item:
    """Read stage: skip ``item`` when the manifest records it done, else decode it. Any error
    is kept in ``item.error``, never raised."""
    try:
        item.source = Source.of(item.path)  # before reading: a file changed later is redone
        if not run.overwrite and run.writer.done(item.source, item.stem):
            item.skipped = True
        else:
            item.image = read_image(item.path)
    except Exception as err:  # noqa: BLE001  (reported in input order by predict_all)
        item.error = err
    return item


def infer_one(item: Item, run: Predictor) -> None:
    """Infer stage: the mask, or the box record (and mask), of a decoded ``item``."""
    result = run.model.predict(item.image)  # mask (H, W), or a box record (+ "mask")
    if isinstance(result, dict):
        item.mask = result.pop("mask", None)
        item.box = {"file": str(item.path), **result}
    else:
        item.mask = result
    if not run.writer.needs_image:
        item.image = None  # not kept while the item waits for the writer


def save_one(item: Item, run: Predictor, summary: Summary) -> None:
    """Write stage (the writer thread): the outputs, then the manifest record. Never raises."""
    try:
        run.writer.write(item.stem, item.image, item.mask, item.box, source=item.source)
    except Exception as err:  # noqa: BLE001  (one bad file never stops the batch)
        summary.fail(item, err)
        return
    summary.written += 1


def predict_all(items: list[Item], run: Predictor, summary: Summary) -> None:
    """Predict every item, the three stages overlapping (see the module docstring).

    Returns only once every item that went through the net is written, also when it is left by
    ``KeyboardInterrupt`` or ``SystemExit``.
    """
    save = partial(save_one, run=run, summary=summary)
    reads = read_ahead(items, partial(load_one, run=run), READ_AHEAD)
    with WriteBehind(save, WRITE_DEPTH) as writes, contextlib.closing(reads):
        progress = track(reads, "Predicting", total=len(items), disable=not sys.stderr.isatty())
        for item in progress:
            if item.skipped:
                summary.skipped += 1
            elif item.error is not None:
                summary.fail(item, item.error)
            elif _inferred(item, run, summary):
                writes.submit(item)


def _inferred(item: Item, run: Predictor, summary: Summary) -> bool:
    try:
        infer_one(item, run)
    except Exception as err:  # noqa: BLE001  (one bad file never stops the batch)
        item.image = None
        summary.fail(item, err)
        return False
    return True

"""Training that loses nothing to a kill and resumes to the same result; non-finite loss guard.

:class:`ResumableTraining` builds on Lightning's own signal handling. Lightning turns SIGTERM into
``SIGTERMException`` at the end of the current batch and Ctrl+C (SIGINT) into
``KeyboardInterrupt`` wherever it lands, then calls every callback's ``on_exception``. What it
does not do is keep a checkpoint from which the run continues exactly: a mid-epoch checkpoint
restarts its epoch on a fresh data loader, and RNG states are not saved. So:

- The randomness of epoch ``e`` (shuffling, augmentation, dropout) is drawn from generators
  seeded from ``(seed, e, rank)`` just before the epoch's data loader is iterated, so an epoch
  only depends on the state at its start.
- At the start of every epoch that state (weights, optimizer, scheduler, loops, callbacks) is
  saved atomically to ``<checkpoints>/epoch_start.ckpt``; it survives even SIGKILL.
- On SIGINT or SIGTERM it becomes ``<checkpoints>/interrupted.ckpt`` (a rename) and the command
  that resumes the run in the same folder is printed. A resumed run repeats the interrupted
  epoch from its start and, in deterministic mode, ends with exactly the metrics of an
  uninterrupted run. After a normal end ``epoch_start.ckpt`` is removed.
- A full disk or a dead DataLoader worker keeps it the same way; the one-line error
  (:func:`resumable_failures`) ends with the command that resumes the run.

:func:`seg.cli.run` gives the process the conventional exit status 130 / 143 afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities.exceptions import SIGTERMException

from seg.errors import DiskFullError, NonFiniteLossError, WorkerDiedError, as_seg_error

log = logging.getLogger(__name__)

#: Failures after which the run can go on from the start of its epoch.
RESUMABLE = (DiskFullError, WorkerDiedError)


def epoch_seeds(seed: int, epoch: int, rank: int) -> tuple[int, int]:
    """Two independent 32-bit seeds for ``(seed, epoch, rank)``: global RNGs, augmentation."""
    state = np.random.SeedSequence([seed, epoch, rank]).generate_state(2)
    return int(state[0]), int(state[1])


def seed_epoch(seed: int, epoch: int, rank: int, transform: Any = None) -> None:
    """Seed torch (CPU and CUDA), numpy, ``random`` and an albumentations pipeline for an epoch.

    Albumentations 2 transforms keep their own generators (``set_random_seed``), untouched by
    global seeding, so ``transform`` is seeded explicitly.
    """
    global_seed, augment_seed = epoch_seeds(seed, epoch, rank)
    torch.manual_seed(global_seed)
    np.random.seed(global_seed)
    random.seed(global_seed)
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(augment_seed)


def restart_train_iterator(trainer: L.Trainer) -> None:
    """Make the training data iterator again (workers, sampler order, base seed).

    Uses the fit loop's ``_data_fetcher`` (Lightning 2.x), the object whose ``iter()`` Lightning
    itself calls at the start of each epoch; a no-op when it is not there.
    """
    fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
    if fetcher is not None:
        iter(fetcher)


def resume_command(ckpt: Path) -> str:
    """The command line that resumes this Hydra run from ``ckpt``, in the same run folder."""
    if not HydraConfig.initialized():
        return f"ckpt_path={ckpt} (with the same config)"
    hydra_cfg = HydraConfig.get()
    keep = [o for o in hydra_cfg.overrides.task if not re.match(r"\+*ckpt_path=", o)]
    extra = [
        f"hydra.run.dir={hydra_value(hydra_cfg.runtime.output_dir)}",
        f"ckpt_path={hydra_value(ckpt)}",
    ]
    return shlex.join(["python", sys.argv[0], *keep, *extra])


def hydra_value(value: str | Path) -> str:
    """``value`` as a Hydra override value (a string): quoted unless it is a plain path."""
    text = str(value)
    if "/" in text and re.fullmatch(r"[A-Za-z0-9_./~+@-]+", text):  # never a number or bool
        return text
    # Hydra unescapes backslashes only before a quote or at the end of a quoted value.
    text = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, text).replace("'", "\\'")
    return f"'{text}'"


class ResumableTraining(L.Callback):
    """Exact resume at epoch boundaries, and a resumable checkpoint on SIGINT / SIGTERM.

    See the module docstring. Exactness also needs ``trainer.deterministic=true`` and the same
    hardware and ``data.num_workers``; under DDP every rank is seeded from its own rank.

    Args:
        seed: Base seed (the run's ``seed``).
        dirpath: Folder of ``epoch_start.ckpt`` / ``interrupted.ckpt``.
    """

    EPOCH_START = "epoch_start.ckpt"
    INTERRUPTED = "interrupted.ckpt"

    def __init__(self, seed: int, dirpath: str | Path) -> None:
        self.seed = seed
        self.dirpath = Path(dirpath)
        self._first_epoch = True
        self._saving = False
        self._saved_epoch: int | None = None  # epoch whose start is in EPOCH_START
        self.resume: str | None = None  # the resume command, after a failure it outlives

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._first_epoch = True

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        transform = getattr(trainer.datamodule, "train_transform", None)
        seed_epoch(self.seed, epoch, trainer.global_rank, transform)
        if self._first_epoch:
            # Lightning made this epoch's iterator before the hook (later ones come after it):
            # make it again so that it draws from the generators just seeded, as they will.
            restart_train_iterator(trainer)
            self._first_epoch = False
        if trainer.fast_dev_run:  # writes no checkpoints
            return
        self._saving = True
        try:
            trainer.save_checkpoint(self.dirpath / self.EPOCH_START, weights_only=False)
        finally:
            self._saving = False
        self._saved_epoch = epoch

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self._saving:
            as_epoch_boundary(checkpoint)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.strategy.remove_checkpoint(self.dirpath / self.EPOCH_START)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not trainer.is_global_zero:
            return
        if isinstance(exception, KeyboardInterrupt | SIGTERMException):
            name = "SIGINT" if isinstance(exception, KeyboardInterrupt) else "SIGTERM"
            print(self._report(trainer, name), file=sys.stderr, flush=True)
        elif isinstance(as_seg_error(exception), RESUMABLE) and self._keep() is not None:
            self.resume = resume_command(self.dirpath / self.INTERRUPTED)

    def _keep(self) -> Path | None:
        """Move ``epoch_start.ckpt`` to ``interrupted.ckpt``; None when there is none."""
        start = self.dirpath / self.EPOCH_START
        if self._saved_epoch is None or not start.is_file():
            return None
        target = self.dirpath / self.INTERRUPTED
        os.replace(start, target)
        return target

    def _report(self, trainer: L.Trainer, name: str) -> str:
        """Keep the epoch's start as ``interrupted.ckpt``; say how to resume."""
        where = f"epoch {trainer.current_epoch}, step {trainer.global_step}"
        target = self._keep()
        if target is None:
            return f"Interrupted by {name} ({where}) before the first epoch started: no checkpoint."
        return (
            f"Interrupted by {name} ({where}). Saved {target}: the state at the start of epoch "
            f"{self._saved_epoch}, which a resumed run repeats. Resume with:\n"
            f"  {resume_command(target)}"
        )


@contextlib.contextmanager
def resumable_failures(callbacks: list[Any]) -> Iterator[None]:
    """Turn a full disk or a dead DataLoader worker during ``fit`` into its one-line error,
    with the command that resumes the run from ``interrupted.ckpt`` (kept by
    :class:`ResumableTraining`) as its hint."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        failure = as_seg_error(err)
        keeper = [c for c in callbacks if isinstance(c, ResumableTraining) and c.resume]
        if not isinstance(failure, RESUMABLE) or not keeper:
            raise
        failure.hint = f"{failure.hint}; then resume with: {keeper[0].resume}"
        raise failure from err


def as_epoch_boundary(checkpoint: dict[str, Any]) -> None:
    """Make a checkpoint dumped in ``on_train_epoch_start`` resume at the start of that epoch.

    Lightning counts the epoch as "ready" just before that hook; a checkpoint carrying that count
    is restored as an epoch in progress whose batches are all done (the batch counters still
    hold the previous epoch's), and the epoch would be skipped. With the count taken back, it is
    the checkpoint of a completed previous epoch, whose epoch-end scheduler step is already
    taken (unlike in one written by ``ModelCheckpoint`` at validation or epoch end).
    """
    progress = checkpoint["loops"]["fit_loop"]["epoch_progress"]
    for counts in (progress["total"], progress["current"]):
        if counts["ready"] == counts["started"] + 1:
            counts["ready"] -= 1


class FiniteLossGuard(L.Callback):
    """Stop training at the first non-finite loss, before its backward pass and optimizer step.

    The weights therefore never become NaN, and no checkpoint (``last.ckpt``, ``best.ckpt``,
    ``epoch_start.ckpt``) is written with them. The error names the step, the epoch, the batch
    index and the batch's files (from its ``"id"`` entries and the training dataset's folder).
    """

    def __init__(self) -> None:
        self._ids: list[str] | None = None
        self._batch_idx = -1

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._ids = batch.get("id") if isinstance(batch, dict) else None
        self._batch_idx = batch_idx

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor
    ) -> None:
        if bool(torch.isfinite(loss.detach()).all()):
            return
        files = batch_files(getattr(trainer.datamodule, "data_train", None), self._ids)
        raise NonFiniteLossError(
            f"non-finite training loss ({loss.detach().float().flatten()[0].item()}) at "
            f"step {trainer.global_step} (epoch {trainer.current_epoch}, batch "
            f"{self._batch_idx}); stopped before the optimizer step, so the weights and every "
            f"checkpoint are from before it. Files in this batch: {'; '.join(files)}"
        )


def batch_files(dataset: Any, ids: list[str] | None) -> list[str]:
    """Describe a batch's samples: image (and mask) paths for VOC-layout datasets, else ids."""
    if not ids:
        return ["unknown (the batch carries no 'id' entries)"]
    folder = getattr(dataset, "voc", None)
    if folder is None:
        return [str(i) for i in ids]
    files = []
    for i in ids:
        image = Path(folder) / "JPEGImages" / f"{i}.jpg"
        mask = dataset.mask_path(i) if hasattr(dataset, "mask_path") else None
        files.append(f"{image} (mask {mask})" if mask is not None else str(image))
    return files

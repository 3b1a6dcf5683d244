"""Fault-injection callbacks for the subprocess tests, added with a Hydra override such as
``+callbacks.pause._target_=tests.faults.PauseAt`` (``python train.py`` runs from the repo root,
so ``tests`` is importable there)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import lightning as L


class PauseAt(L.Callback):
    """In a fresh (not resumed) run, stop before global step ``step`` and wait for a signal.

    Writes ``flag`` (the process id) when it starts waiting, so that a test knows when to send
    SIGINT or SIGTERM: the signal then lands at a known point in the middle of an epoch.

    Args:
        step: Global step (optimizer steps done) to wait before.
        flag: File written when waiting starts.
        timeout: Seconds to wait before failing the run instead of hanging.
    """

    def __init__(self, step: int, flag: str, timeout: float = 120.0) -> None:
        self.step, self.flag, self.timeout = step, Path(flag), timeout

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.ckpt_path or trainer.global_step != self.step:
            return
        self.flag.write_text(str(os.getpid()))
        deadline = time.monotonic() + self.timeout
        while not trainer.received_sigterm:  # SIGINT raises KeyboardInterrupt out of sleep
            if time.monotonic() > deadline:
                raise TimeoutError(f"PauseAt: no signal within {self.timeout} s")
            time.sleep(0.05)


class FailOnRank(L.Callback):
    """Raise ``RuntimeError`` on one rank before global step ``step`` (the others carry on).

    Args:
        rank: Global rank that fails.
        step: Global step before which it fails.
    """

    def __init__(self, rank: int = 1, step: int = 1) -> None:
        self.rank, self.step = rank, step

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            raise RuntimeError(f"injected failure on rank {self.rank} at step {self.step}")


class HangOnRank(L.Callback):
    """Block one rank forever before global step ``step``, writing its pid to ``flag`` first.

    Args:
        rank: Global rank that hangs.
        step: Global step before which it hangs.
        flag: File that receives the hanging process's id.
    """

    def __init__(self, flag: str, rank: int = 1, step: int = 1) -> None:
        self.flag, self.rank, self.step = Path(flag), rank, step

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            self.flag.write_text(str(os.getpid()))
            while True:
                time.sleep(1)

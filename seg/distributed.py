"""Lightning's DDP strategy, made to fail as a whole and to run on CPUs.

Configured by ``conf/trainer/ddp.yaml``. One failing rank ends the whole job, non-zero, in
bounded time:

- A child rank that dies is noticed by Lightning's process observer in rank 0 (every 5 s), and
  with ``gloo`` by the others' next collective ("Connection closed by peer").
- A rank that hangs, or a backend that does not notice a dead peer, is bounded by ``timeout_s``:
  every collective and barrier raises after that many seconds (Lightning's default: 30 min).
  ``prepare_data`` (downloads) is not affected: Lightning runs it behind a barrier without one.
- When rank 0 (the launcher of the other local ranks) fails, it kills them, so that none is
  left behind waiting or running on (Lightning does this only after Ctrl+C).
"""

from __future__ import annotations

import logging
import signal
from datetime import timedelta
from typing import Any

import lightning as L
from lightning.pytorch.strategies import DDPStrategy as LightningDDPStrategy
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class DDPStrategy(LightningDDPStrategy):
    """``DDPStrategy`` with ``timeout_s`` in seconds, fail-fast, and SyncBatchNorm only on GPUs.

    ``Trainer(sync_batchnorm=True)`` (what ``conf/trainer/ddp.yaml`` sets for multi-device jobs)
    makes torch's ``DistributedDataParallel`` raise "SyncBatchNorm layers only work with GPU
    modules" on CPU; there every process keeps plain BatchNorm instead.

    Args:
        timeout_s: Seconds any collective may wait for the other ranks.
        **kwargs: Passed to Lightning's ``DDPStrategy``.
    """

    def __init__(self, timeout_s: float = 600.0, **kwargs: Any) -> None:
        super().__init__(timeout=timedelta(seconds=timeout_s), **kwargs)

    def setup(self, trainer: L.Trainer) -> None:
        if self._layer_sync is not None and self.root_device.type != "cuda":
            log.info("SyncBatchNorm needs GPUs; training on %s with BatchNorm", self.root_device)
            self._layer_sync = None
        super().setup(trainer)

    def on_exception(self, exception: BaseException) -> None:
        super().on_exception(exception)
        if isinstance(exception, KeyboardInterrupt | SIGTERMException):
            return  # Lightning forwards these signals to the other ranks itself
        launcher = self.launcher
        if isinstance(launcher, _SubprocessScriptLauncher) and launcher.procs:
            log.error("Rank %d failed (%r); stopping the other ranks", self.global_rank, exception)
            launcher.kill(getattr(signal, "SIGKILL", signal.SIGTERM))

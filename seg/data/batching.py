"""One global batch: ``data.batch_size`` is the batch of one optimizer step, on any hardware.

A recipe states the batch of its optimizer step (FCN: 1 image, the dilation front end: 14,
Yu & Koltun 2016 Sec. 4). With ``P`` processes (devices x nodes) each process takes
``batch_size / P`` images of every step, optionally in micro-batches of
``data.micro_batch_size`` whose gradients are accumulated, so that the step is the same update
on 1 CPU or 16 GPUs: DDP averages the processes' gradients and Lightning divides each
micro-batch loss by the number accumulated, i.e. the gradient is the mean over the P x A
micro-batches of equal size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from torch.utils.data import Sampler

from seg.errors import ConfigError


@dataclass(frozen=True)
class BatchPlan:
    """How one optimizer step's batch is split.

    Attributes:
        global_batch: Images per optimizer step, all processes together (``data.batch_size``).
        world_size: Number of processes P.
        per_process: Images per step in each process, ``global_batch / P``.
        micro_batch: Images per forward/backward pass (the data loader's batch size).
        accumulate: Micro-batches accumulated per step, ``per_process / micro_batch``.
    """

    global_batch: int
    world_size: int
    per_process: int
    micro_batch: int
    accumulate: int


def plan_batches(
    batch_size: int, world_size: int = 1, micro_batch_size: int | None = None
) -> BatchPlan:
    """Split a global batch over ``world_size`` processes and micro-batches.

    Args:
        batch_size: The global batch of one optimizer step.
        world_size: Number of training processes (``trainer.devices x trainer.num_nodes``).
        micro_batch_size: Images per forward pass in a process; None = the whole share.

    Returns:
        The plan.

    Raises:
        ConfigError: The global batch does not divide over the processes, or a process's share
            does not divide into micro-batches (one line naming both numbers).
    """
    if batch_size % world_size:
        raise ConfigError(
            f"data.batch_size={batch_size} (the global batch of one optimizer step) does not "
            f"divide over {world_size} processes (trainer.devices x trainer.num_nodes)"
        )
    per_process = batch_size // world_size
    micro = per_process if micro_batch_size is None else micro_batch_size
    if micro < 1 or per_process % micro:
        raise ConfigError(
            f"data.micro_batch_size={micro_batch_size} does not divide the {per_process} images "
            f"each of the {world_size} processes takes of data.batch_size={batch_size}"
        )
    return BatchPlan(batch_size, world_size, per_process, micro, per_process // micro)


class WholeSteps(Sampler[int]):
    """The first ``len(sampler) - len(sampler) % step`` indices of ``sampler``.

    Every epoch then ends on a full optimizer step: Lightning would otherwise step on the
    micro-batches left over at the end of an epoch, a smaller batch than the recipe's.

    Args:
        sampler: The process's sampler (``RandomSampler`` or ``DistributedSampler``).
        step: Images per optimizer step in this process (``BatchPlan.per_process``).
    """

    def __init__(self, sampler: Sampler[int], step: int) -> None:
        self.sampler = sampler
        self.length = len(sampler) - len(sampler) % step  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        for i, index in enumerate(self.sampler):
            if i == self.length:
                return
            yield index

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        """Forwarded to a ``DistributedSampler`` (Lightning calls it every epoch)."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

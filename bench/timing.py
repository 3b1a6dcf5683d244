"""Timing primitives of ``bench/run.py``: matmul roofline, FLOPs, and training/inference step times.

Every time is measured with ``time.perf_counter`` (after ``torch.cuda.synchronize`` on a GPU);
callers take medians over several timed steps after warm-up ones.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from common import CONF  # noqa: I001  (bench/ sibling)
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from seg.constants import IGNORE_INDEX, NUM_CLASSES
from seg.models import seg_logits
from seg.train import build_module


def sync(device: str) -> None:
    """Wait for queued GPU work so that wall-clock times are honest."""
    if device == "cuda":
        torch.cuda.synchronize()


def compose_train(overrides: list[str]) -> DictConfig:
    """The ``train`` config composed from ``conf/`` with ``overrides``."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def matmul_tflops(dtype: torch.dtype, device: str, n: int, repeats: int = 7) -> float:
    """Achieved dense matmul rate (TFLOP/s) of an (n, n) @ (n, n) product, median of ``repeats``."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = []
    for i in range(repeats + 2):
        sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e12


def forward_flops(net: nn.Module, shape: tuple[int, ...]) -> float:
    """FLOPs (2 x MACs, convolutions and matmuls) of one forward pass at input ``shape``."""
    x = torch.randn(*shape, device=next(net.parameters()).device)
    was_training = net.training
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net.eval()(x)
    net.train(was_training)
    return float(counter.get_total_flops())


def autocast(device: str, bf16: bool) -> Any:
    """bf16 autocast on ``device`` when ``bf16``, else a no-op context."""
    return torch.autocast(device, dtype=torch.bfloat16) if bf16 else nullcontext()


def plain_stepper(
    net: nn.Module, x: Tensor, y: Tensor, bf16: bool, lr: float = 1e-3
) -> Callable[[], float]:
    """One step of a hand-written loop per call: forward, cross-entropy, backward, SGD step.

    Args:
        net: Model in train mode, already on the device and in its memory format.
        x: Images (B, 3, H, W), already in the net's memory format.
        y: Labels (B, H, W) int64.
        bf16: Forward under bf16 autocast.

    Returns:
        A function that trains one step and returns its seconds.
    """
    # fused, as conf/optimizer/sgd.yaml: the loop differs from seg only in the framework around it
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, fused=True)
    device = x.device.type

    def step() -> float:
        sync(device)
        start = time.perf_counter()
        with autocast(device, bf16):
            logits = seg_logits(net(x))  # (B, C, H, W)
        loss = F.cross_entropy(logits.float(), y, ignore_index=IGNORE_INDEX)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        return time.perf_counter() - start

    return step


class StepTimer(L.Callback):
    """Records the wall-clock time and the loss of every training batch.

    A step runs from the end of the previous one (or the start of training) to the end of its
    ``on_train_batch_end``, so data fetching and every hook count. ``between``, when given, runs
    after each step outside the timed span: another arm's step, so that two arms alternate step
    by step and see the same load of a shared machine.
    """

    def __init__(self, device: str, between: Callable[[], Any] | None = None) -> None:
        self.device, self.between = device, between
        self.starts, self.ends, self.losses = [], [], []

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        sync(self.device)
        self.starts.append(time.perf_counter())

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        sync(self.device)
        self.ends.append(time.perf_counter())
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))
        if self.between is not None:
            self.between()
        self.starts.append(time.perf_counter())

    @property
    def step_times(self) -> list[float]:
        """Seconds per step, data fetching and every hook included, ``between`` left out."""
        return [end - start for start, end in zip(self.starts, self.ends, strict=False)]


class TensorBatches(Dataset):
    """The same in-memory batch ``n`` times, as the dicts seg's modules read."""

    def __init__(self, x: Tensor, y: Tensor, n: int) -> None:
        self.x, self.y, self.n = x, y, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"image": self.x, "mask": self.y}


def seg_trainer(cfg: DictConfig, timer: StepTimer, steps: int, root: str) -> L.Trainer:
    """seg's Trainer from ``cfg.trainer`` with a CSV logger, no checkpoints and no validation."""
    with open_dict(cfg):
        cfg.trainer.max_steps, cfg.trainer.max_epochs = steps, -1
        cfg.trainer.limit_val_batches, cfg.trainer.log_every_n_steps = 0, 10
    return instantiate(
        cfg.trainer,
        callbacks=[timer],
        logger=L.pytorch.loggers.CSVLogger(root),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def seg_step_times(
    cfg: DictConfig, x: Tensor, y: Tensor, steps: int, between: Callable[[], Any] | None = None
) -> list[float]:
    """Seconds per step of seg's ``Trainer.fit`` on in-memory batches (``x``, ``y`` on CPU);
    ``between`` runs after each step, untimed (see :class:`StepTimer`)."""
    module = build_module(cfg)
    loader = DataLoader(TensorBatches(x, y, steps), batch_size=None)
    timer = StepTimer("cuda" if cfg.trainer.accelerator == "gpu" else "cpu", between)
    with tempfile.TemporaryDirectory() as root:
        seg_trainer(cfg, timer, steps, root).fit(module, train_dataloaders=loader)
    return timer.step_times


def compiled_train_times(
    cfg: DictConfig, net: nn.Module, x: Tensor, y: Tensor, bf16: bool, steps: int
) -> tuple[list[float], list[float]]:
    """seg's fit with ``model.compile=true``, alternating step by step with an eager plain loop.

    Args:
        cfg: The ``train`` config of the model (its ``model.compile`` is set to true here).
        net: An eager copy of the net (train mode, device, memory format) for the plain arm.
        x: Images (B, 3, H, W) in the net's memory format; y: labels (B, H, W) int64.
        bf16: Whether seg trains under bf16 autocast (the plain arm follows).
        steps: Steps of each arm; the first ones of the compiled arm include the compilation.

    Returns:
        (seconds per compiled seg step, seconds per eager plain step).
    """
    eager = plain_stepper(net, x, y, bf16)
    eager_times: list[float] = []
    with open_dict(cfg):
        cfg.model.compile = True
    torch.manual_seed(0)
    # A fresh inductor cache: a warm one (an earlier run's kernels) hides most of the compile time
    with tempfile.TemporaryDirectory() as cache, _environ(TORCHINDUCTOR_CACHE_DIR=cache):
        torch._dynamo.reset()
        compiled = seg_step_times(cfg, x.cpu(), y.cpu(), steps, lambda: eager_times.append(eager()))
    return compiled, eager_times


@contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Set environment variables for the duration of the block."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def inference_times(
    net: nn.Module,
    x: Tensor,
    bf16: bool,
    channels_last: bool,
    steps: int,
    compile: bool = False,
    bucket: int = 32,
) -> list[float]:
    """Seconds per batch of seg's inference as the entry points run it: the module
    :func:`seg.inference.prepare_net` returns (eager: the net with bf16 weights under bf16;
    ``compile``: inductor with freezing, the first step compiling), through ``predict_probs``.
    ``bucket`` 32 (the nets' own padding) keeps the bench's crops unpadded, so the FLOPs
    counted are the FLOPs run."""
    from seg.inference import InferenceConfig, predict_probs, prepare_net

    cfg = InferenceConfig(
        autocast=bf16, channels_last=channels_last, compile=compile, bucket=bucket
    )
    runner = prepare_net(net.eval(), cfg)
    times = []
    for _ in range(steps):
        sync(x.device.type)
        start = time.perf_counter()
        predict_probs(runner, x, cfg)
        sync(x.device.type)
        times.append(time.perf_counter() - start)
    return times


def random_batch(batch: int, crop: int, device: str) -> tuple[Tensor, Tensor]:
    """A seeded batch: images (B, 3, crop, crop) float32 and labels (B, crop, crop) int64."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, crop, crop, generator=gen)
    y = torch.randint(0, NUM_CLASSES, (batch, crop, crop), generator=gen)
    return x.to(device), y.to(device)

"""What every seg LightningModule shares: the one place to change optimisation, logging, freezing
and the train / validate / test loop for both tasks.

A subclass brings only what is specific to its task: ``loss`` (the training objective),
``eval_step`` (how a validation / test batch updates its metric) and ``make_metric``. Nets stay
plain ``nn.Module``s following the output contract of :mod:`seg.models`.

Optimizers and schedulers arrive as ``functools.partial`` objects built by Hydra from
``conf/optimizer/*.yaml`` and ``conf/scheduler/*.yaml`` (``_partial_: true``); the schedule
length is filled in from the trainer (:mod:`seg.modules.optim`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from functools import partial
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import Metric

from seg.modules.compile import check_compile_option, compile_net, wants_compile
from seg.modules.optim import (
    build_optimization,
    check_encoder_options,
    frozen_names,
    with_length,
)
from seg.modules.optim import freeze as freeze_module  # `freeze` names what to freeze

log = logging.getLogger(__name__)

#: Checkpoint entry holding the schedule length a run was started with.
SCHEDULE_LENGTH_KEY = "seg_schedule_length"


class BaseModule(L.LightningModule):
    """A net, its optimizer and schedule, encoder freezing, and the stage loop.

    Only plain Python arguments go to ``self.hparams`` (checkpoints load with
    ``torch.load(weights_only=True)``); the net is rebuilt from the stored Hydra config
    (:func:`seg.checkpoint.build_module`).

    Args:
        net: The network.
        optimizer: Optimizer partial, called with the parameter groups.
        scheduler: Scheduler partial called with the optimizer; its length (``total_iters``,
            ``T_max``, ``total_steps``) defaults to the run's total optimizer steps, or to
            ``max_epochs`` when ``scheduler_interval="epoch"``. None or {} for no schedule.
        freeze_encoder: Freeze ``net.encoder`` for the whole run: no gradients, and eval mode, so
            its BatchNorm statistics stay those of pre-training too (small segmentation batches
            would otherwise drift them; the usual frozen-backbone recipe).
        freeze: More submodules of ``net`` (dotted names) frozen the same way, e.g.
            ``["frontend"]``: the dilation network's stage 2 trains only its context module.
        encoder_lr_mult: Encoder learning rate = base lr * this.
        bias_lr_mult: Bias learning rate = its group's learning rate * this (Caffe recipes: 2).
        bias_weight_decay: Weight decay of the biases; None keeps the optimizer's (Caffe: 0).
        channels_last: Run the net in channels-last memory format (faster convs with AMP).
        scheduler_interval: Step the scheduler every "step" or every "epoch".
        scheduler_monitor: The logged score a ``ReduceLROnPlateau`` scheduler watches (e.g.
            ``val/loc_acc``; its ``mode`` says whether higher is better).
        score: The validation score that says which model is best (higher is better);
            ``callbacks.model_checkpoint.monitor`` follows it.
        compile: Train through ``torch.compile(net)`` (inductor): True, False, or ``"auto"``
            (nets with normalisation layers, in runs with enough batches left to repay the
            compilation; see :mod:`seg.modules.compile`). Evaluation and checkpoints use the
            eager net.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: partial | None = None,
        scheduler: partial | None = None,
        freeze_encoder: bool = False,
        freeze: Sequence[str] = (),
        encoder_lr_mult: float = 1.0,
        bias_lr_mult: float = 1.0,
        bias_weight_decay: float | None = None,
        channels_last: bool = True,
        scheduler_interval: str = "step",
        scheduler_monitor: str | None = None,
        score: str = "val/mIoU",
        compile: bool | str = False,
    ) -> None:
        super().__init__()
        compile = check_compile_option(compile)
        if scheduler_interval not in ("step", "epoch"):
            raise ValueError(
                f"scheduler_interval must be 'step' or 'epoch', got {scheduler_interval!r}"
            )
        check_encoder_options(net, freeze_encoder, encoder_lr_mult)
        frozen = frozen_names(net, freeze, freeze_encoder)
        # Collects the subclass's arguments too (Lightning walks the __init__ frames).
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler", "inference"])
        self.hparams.freeze = [str(name) for name in freeze]  # a Hydra ListConfig: plain strs
        self.net = net
        self.optimizer = optimizer
        self.scheduler = scheduler
        #: Dotted names of the frozen submodules of ``net`` (``freeze`` and ``encoder``).
        self.frozen = frozen
        for name in frozen:
            freeze_module(net.get_submodule(name))
        self.metrics = nn.ModuleDict({"val": self.make_metric(), "test": self.make_metric()})
        #: The scores of the last validation / test epoch, by stage ("val", "test").
        self.scores: dict[str, dict[str, Tensor]] = {}
        self._resumed_length: float | None = None
        #: ``torch.compile(net)`` while fitting, else None (see :meth:`_compile_for_training`).
        self._compiled_net: Any = None

    # -- what a subclass provides -------------------------------------------------------------

    def make_metric(self) -> Metric:
        """A fresh metric for one stage; its ``SCORES`` are logged, the first in the progress bar."""
        raise NotImplementedError

    def loss(self, out: Any, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Loss terms of one batch: ``"loss"`` (the weighted total) and each active term."""
        raise NotImplementedError

    def eval_step(self, batch: dict[str, Any], stage: str) -> dict[str, Tensor]:
        """Update ``self.metrics[stage]`` (and log the loss) for one validation / test batch.

        Returns:
            The batch's predictions (``"mask"`` (B, H, W) or ``"box"`` (B, 4) and ``"label"``
            (B,)), which callbacks receive as the step's ``outputs``.
        """
        raise NotImplementedError

    # -- the shared loop ----------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        if self.hparams.channels_last:
            self.net.to(memory_format=torch.channels_last)

    def train(self, mode: bool = True) -> BaseModule:
        super().train(mode)
        for name in self.frozen:  # frozen parts stay in eval mode: no dropout, fixed BN stats
            self.net.get_submodule(name).eval()
        return self

    def forward(self, x: Tensor) -> Any:
        """(B, 3, H, W) -> the net's output (see the contract in :mod:`seg.models`)."""
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.training and self._compiled_net is not None:
            return self._compiled_net(x)
        return self.net(x)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        terms = self.loss(self(batch["image"]), batch)
        self.log_terms(terms, "train", batch["image"].shape[0])
        return terms["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor] | None:
        if batch.get("id") != []:  # []: every sample was bad and dropped (skip_bad)
            return self.eval_step(batch, "val")
        return None

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor] | None:
        if batch.get("id") != []:
            return self.eval_step(batch, "test")
        return None

    def on_validation_epoch_end(self) -> None:
        self.log_scores("val")

    def on_test_epoch_end(self) -> None:
        self.log_scores("test")

    def log_terms(self, terms: dict[str, Tensor], stage: str, batch_size: int) -> None:
        """Log the total loss (progress bar) and, when there are several, each term."""
        train = stage == "train"
        log_ = partial(self.log, on_epoch=True, batch_size=batch_size, sync_dist=not train)
        log_(f"{stage}/loss", terms["loss"], on_step=train, prog_bar=True)
        if len(terms) > 2:  # more than one term besides the total: log the parts too
            for key, value in terms.items():
                if key != "loss":
                    log_(f"{stage}/loss_{key}", value, on_step=False)

    def log_scores(self, stage: str) -> None:
        """Compute, log and keep (``self.scores[stage]``) the stage's metric, then reset it."""
        metric = self.metrics[stage]
        if not metric.update_called:  # e.g. limit_val_batches=0
            return
        scores = metric.compute()  # already summed over DDP processes
        metric.reset()
        for key in metric.SCORES:  # identical on every rank; sync_dist silences a warning
            self.log(
                f"{stage}/{key}",
                scores[key].float(),
                prog_bar=key == metric.SCORES[0],
                sync_dist=True,
            )
        self.scores[stage] = _detached(scores)

    # -- optimisation -------------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        return build_optimization(
            self.net,
            self.optimizer,
            self.scheduler,
            hp.encoder_lr_mult,
            self.schedule_length,
            hp.scheduler_interval,
            hp.bias_lr_mult,
            hp.bias_weight_decay,
            hp.scheduler_monitor,
        )

    def schedule_length(self) -> float:
        """Scheduler length: the run's total optimizer steps, or epochs if stepped per epoch."""
        if self.hparams.scheduler_interval == "epoch":
            return self.trainer.max_epochs
        return self.trainer.estimated_stepping_batches

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.scheduler and self._trainer is not None:
            checkpoint[SCHEDULE_LENGTH_KEY] = float(self.schedule_length())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._resumed_length = checkpoint.get(SCHEDULE_LENGTH_KEY)

    def on_train_start(self) -> None:
        self._compile_for_training()
        self._resume_schedule()

    def on_train_end(self) -> None:
        # Drop the compiled graphs: later validation runs eagerly anyway, and a module holding
        # them cannot be deep-copied or pickled.
        object.__setattr__(self, "_compiled_net", None)

    def _compile_for_training(self) -> None:
        """Compile the net when ``compile`` asks for it, for the batches left in this fit."""
        trainer = self.trainer
        steps = min(trainer.estimated_stepping_batches, 2**31)  # inf: no step or epoch limit
        left = int(steps - trainer.global_step) * max(trainer.accumulate_grad_batches, 1)
        if wants_compile(self.hparams.compile, left, self.device.type, self.net):
            log.info("Training through torch.compile (model.compile=%s)", self.hparams.compile)
            # Not registered as a submodule: the state dict keeps the net's plain keys (no
            # `_orig_mod.`), and evaluation, checkpoints and exports see the eager net.
            object.__setattr__(self, "_compiled_net", compile_net(self.net))

    def _resume_schedule(self) -> None:
        """On resume with another run length (``trainer.max_epochs`` / ``max_steps``), rebuild
        the schedule for the new length: the checkpoint's scheduler state would keep the old
        one, and the added epochs would train at its final learning rate (0 for poly)."""
        old, self._resumed_length = self._resumed_length, None
        if old is None or not self.scheduler or not self.trainer.lr_scheduler_configs:
            return
        new = float(self.schedule_length())
        if new != old:
            self._rebuild_schedule(new)
            log.warning(
                "Resumed a run of %d scheduler steps as one of %d: the learning-rate schedule "
                "was rebuilt for the new length and advanced to the current step.",
                old,
                new,
            )

    def _rebuild_schedule(self, length: float) -> None:
        config = self.trainer.lr_scheduler_configs[0]
        optimizer = config.scheduler.optimizer
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        done = self.trainer.global_step if config.interval == "step" else self.current_epoch
        with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()"
            warnings.simplefilter("ignore", UserWarning)
            scheduler = with_length(self.scheduler, length)(optimizer)
            for _ in range(done):
                scheduler.step()
        config.scheduler = scheduler


def _detached(obj: Any) -> Any:
    """``obj`` with every tensor detached and moved to the CPU, through dicts."""
    if isinstance(obj, dict):
        return {k: _detached(v) for k, v in obj.items()}
    return obj.detach().cpu() if isinstance(obj, Tensor) else obj

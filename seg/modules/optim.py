"""Optimizer plumbing of :class:`seg.modules.base.BaseModule`: encoder freezing, parameter
groups, and the schedule length that Hydra configs cannot know in advance.

Optimizers and schedulers arrive as ``functools.partial`` objects built by Hydra from
``conf/optimizer/*.yaml`` and ``conf/scheduler/*.yaml`` (``_partial_: true``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LinearLR, LRScheduler, PolynomialLR, SequentialLR

from seg.errors import ConfigError

#: Names under which torch schedulers take their length (PolynomialLR / LinearLR,
#: CosineAnnealingLR, OneCycleLR). The first one the scheduler accepts is filled in.
LENGTH_ARGS = ("total_iters", "T_max", "total_steps")


def get_encoder(net: nn.Module) -> nn.Module | None:
    """The net's ``encoder`` attribute if it is a module, else None."""
    encoder = getattr(net, "encoder", None)
    return encoder if isinstance(encoder, nn.Module) else None


def check_encoder_options(net: nn.Module, freeze_encoder: bool, encoder_lr_mult: float) -> None:
    """Raise ConfigError if encoder options are set for a net without ``encoder``."""
    if get_encoder(net) is None and (freeze_encoder or encoder_lr_mult != 1.0):
        raise ConfigError(
            f"model.freeze_encoder={freeze_encoder} / model.encoder_lr_mult={encoder_lr_mult}: "
            f"{type(net).__name__} has no `encoder` submodule, so they cannot apply"
        )
    if encoder_lr_mult < 0:
        raise ConfigError(f"model.encoder_lr_mult={encoder_lr_mult} must be >= 0")


def frozen_names(net: nn.Module, freeze: Sequence[str], freeze_encoder: bool) -> list[str]:
    """The submodules of ``net`` to freeze: ``freeze`` plus ``encoder`` if ``freeze_encoder``.

    Args:
        net: The network.
        freeze: Dotted submodule names, e.g. ``["frontend"]`` or ``["encoder", "decoder.blocks.0"]``.
        freeze_encoder: Also freeze ``encoder`` (the historical option, kept).

    Returns:
        The names, as plain strings (they go into the checkpoint's hyper-parameters).

    Raises:
        ConfigError: A name is not a submodule of ``net``.
    """
    names = [str(name) for name in freeze]
    if freeze_encoder and "encoder" not in names:
        names.append("encoder")
    for name in names:
        try:
            net.get_submodule(name)
        except AttributeError:
            children = [n for n, _ in net.named_children()]
            raise ConfigError(
                f"model.freeze: {type(net).__name__} has no submodule {name!r} "
                f"(its children: {children})"
            ) from None
    return names


def freeze(module: nn.Module) -> None:
    """Stop gradients for all parameters of ``module`` and put it in eval mode."""
    module.requires_grad_(False)
    module.eval()


def param_groups(
    net: nn.Module,
    lr: float,
    encoder_lr_mult: float = 1.0,
    bias_lr_mult: float = 1.0,
    bias_weight_decay: float | None = None,
) -> list[dict[str, Any]]:
    """Split the trainable parameters into an encoder group and a head group, and optionally
    their biases into groups of their own.

    Frozen parameters (``requires_grad=False``) are left out. A net without ``encoder`` gives
    one group ("net"). Groups carry a "name" that ``LearningRateMonitor`` uses in its log keys.
    Biases (parameters named ``*bias``) get their own groups ("encoder_bias", "head_bias") only
    when ``bias_lr_mult != 1`` or ``bias_weight_decay`` is set: the Caffe recipes of FCN and the
    dilation network give biases twice the learning rate and no weight decay
    (``param=[dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)]``).

    Args:
        net: The network.
        lr: Base learning rate, used by the head (decoder, classifier).
        encoder_lr_mult: Encoder learning rate = ``lr * encoder_lr_mult``.
        bias_lr_mult: Bias learning rate = the group's learning rate * this.
        bias_weight_decay: Weight decay of the biases; None keeps the optimizer's.

    Returns:
        Non-empty groups for ``torch.optim.Optimizer``.
    """
    encoder = get_encoder(net)
    encoder_ids = {id(p) for p in encoder.parameters()} if encoder is not None else set()
    split_bias = bias_lr_mult != 1.0 or bias_weight_decay is not None
    groups: dict[str, dict[str, Any]] = {}
    for name, p in net.named_parameters():
        if not p.requires_grad:
            continue
        part = "net" if encoder is None else "encoder" if id(p) in encoder_ids else "head"
        part_lr = lr * encoder_lr_mult if part == "encoder" else lr
        if split_bias and name.endswith("bias"):
            group = groups.setdefault(
                f"{part}_bias", {"params": [], "lr": part_lr * bias_lr_mult, "name": f"{part}_bias"}
            )
            if bias_weight_decay is not None:
                group["weight_decay"] = bias_weight_decay
        else:
            group = groups.setdefault(part, {"params": [], "lr": part_lr, "name": part})
        group["params"].append(p)
    order = ("net", "encoder", "head", "net_bias", "encoder_bias", "head_bias")
    return [groups[k] for k in order if k in groups]


def base_lr(optimizer: partial) -> float:
    """The ``lr`` of an optimizer partial, or the optimizer's default ``lr``."""
    if "lr" in optimizer.keywords:
        return float(optimizer.keywords["lr"])
    default = inspect.signature(optimizer.func).parameters["lr"].default
    if default is inspect.Parameter.empty:
        raise ConfigError(f"optimizer.lr: {optimizer.func.__name__} needs an explicit lr")
    return float(default)


def with_length(scheduler: partial, length: float) -> partial:
    """Give a scheduler partial its schedule length if the config left it out.

    Args:
        scheduler: e.g. ``partial(PolynomialLR, power=0.9)``.
        length: Total scheduler steps (optimizer steps or epochs).

    Returns:
        ``scheduler`` with the first of :data:`LENGTH_ARGS` it accepts set to ``length``,
        unchanged if it already has one or takes none.
    """
    accepted = [a for a in LENGTH_ARGS if a in inspect.signature(scheduler.func).parameters]
    if not accepted or any(a in scheduler.keywords for a in accepted):
        return scheduler
    if not math.isfinite(length) or length < 1:
        raise ConfigError(
            f"scheduler: cannot size the {scheduler.func.__name__} schedule ({length} steps); "
            "set trainer.max_steps or trainer.max_epochs"
        )
    return partial(scheduler, **{accepted[0]: int(length)})


def build_optimization(
    net: nn.Module,
    optimizer: partial | None,
    scheduler: partial | None,
    encoder_lr_mult: float,
    length: Callable[[], float],
    interval: str,
    bias_lr_mult: float = 1.0,
    bias_weight_decay: float | None = None,
    monitor: str | None = None,
) -> dict[str, Any]:
    """Everything ``LightningModule.configure_optimizers`` returns.

    Args:
        net: The network; its trainable parameters are optimized.
        optimizer: Optimizer partial, called with the parameter groups.
        scheduler: Scheduler partial called with the optimizer, or None / empty config.
        encoder_lr_mult: Encoder learning-rate multiplier.
        length: Returns the schedule length in ``interval`` units; called only when the
            scheduler config omits it (it needs a trainer).
        interval: "step" or "epoch".
        bias_lr_mult: Bias learning-rate multiplier (see :func:`param_groups`).
        bias_weight_decay: Weight decay of the biases; None keeps the optimizer's.
        monitor: The logged score a ``ReduceLROnPlateau`` scheduler watches.

    Returns:
        ``{"optimizer": ...}`` plus ``"lr_scheduler": {"scheduler", "interval"[, "monitor"]}``.
    """
    if optimizer is None:
        raise ConfigError("optimizer: none configured (choose one, e.g. optimizer=sgd)")
    groups = param_groups(net, base_lr(optimizer), encoder_lr_mult, bias_lr_mult, bias_weight_decay)
    opt = optimizer(groups)
    if not scheduler:  # None, or an empty Hydra config group such as conf/scheduler/none.yaml
        return {"optimizer": opt}
    sched = with_length(scheduler, length())(opt)
    lr_scheduler = {"scheduler": sched, "interval": interval}
    return {
        "optimizer": opt,
        "lr_scheduler": lr_scheduler | ({"monitor": monitor} if monitor else {}),
    }


def warmup_poly(
    optimizer: Optimizer,
    total_iters: int,
    warmup_fraction: float = 0.05,
    start_factor: float = 0.1,
    power: float = 0.9,
) -> LRScheduler:
    """Linear warm-up followed by the "poly" decay, stepped once per optimizer step.

    Warm-up: Goyal et al. 2017, https://arxiv.org/abs/1706.02677. Poly: DeepLab v2,
    https://arxiv.org/abs/1606.00915.

    Args:
        optimizer: The optimizer.
        total_iters: Total steps, warm-up included.
        warmup_fraction: Share of ``total_iters`` spent warming up (at least one step, and at
            least one step is left for the decay; a 1-step run has no warm-up).
        start_factor: The first step's lr as a fraction of the base lr.
        power: Poly exponent; lr = base * (1 - t / T) ** power after the warm-up.

    Returns:
        ``SequentialLR(LinearLR, PolynomialLR)``.
    """
    warmup = min(max(1, round(warmup_fraction * total_iters)), total_iters - 1)
    if warmup < 1:  # a 1-step run (fast_dev_run): nothing to warm up
        return PolynomialLR(optimizer, total_iters=total_iters, power=power)
    return SequentialLR(
        optimizer,
        [
            LinearLR(optimizer, start_factor=start_factor, total_iters=warmup),
            PolynomialLR(optimizer, total_iters=total_iters - warmup, power=power),
        ],
        milestones=[warmup],
    )

"""``model.compile``: whether and how the net is compiled with ``torch.compile`` for training.

Compiling (inductor) fuses the memory-bound layers around the convolutions (BatchNorm, ReLU,
residual adds) into generated kernels; the convolutions themselves stay library calls. The first
training step pays for compiling the forward and backward graphs. ``"auto"`` compiles only where
that was measured to pay (``bench/README.md``): a net with normalisation layers (nets without
them gained nothing) and a run long enough to repay the compilation.

Only the training forward goes through the compiled net: validation, test, prediction and export
keep the eager one (their images vary in size, which would recompile), and checkpoints hold the
eager net's plain state-dict keys.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from seg.errors import ConfigError
from seg.inference.compiled import inductor_available, quiet_cuda_notice
from seg.inference.masks import device_of

log = logging.getLogger(__name__)

#: Accepted values of ``model.compile``.
COMPILE_OPTIONS = (False, True, "auto")
#: ``"auto"`` compiles when at least this many training batches remain in the run. On the 2-core
#: development CPU (bf16-mixed), compiling took 15-90 s at a fixed crop (about 3.5 min for whole
#: images of varying size, which compile once more with dynamic shapes). U-Net/ResNet-34 steps
#: became 1.05-1.10x faster, repaying the compilation after 1,700-2,000 steps; the VGG nets
#: without BatchNorm (FCN-8s, the dilation net) gained nothing (0.94-1.02x). From 10,000 steps on,
#: compiling costs a few percent of the run at worst: the U-Net VOC recipes (30,000 and 132,000
#: steps) compile, the quickstarts (180 and 2,400 steps) and the few-photo fine-tuning (240) stay
#: eager, and so do the VGG recipes, whatever their length (no normalisation layers).
AUTO_MIN_BATCHES = 10_000


def check_compile_option(value: Any) -> bool | str:
    """``value`` as one of :data:`COMPILE_OPTIONS`.

    Raises:
        ConfigError: Anything else.
    """
    if isinstance(value, str) and value.lower() in ("true", "false"):
        value = value.lower() == "true"
    if value not in COMPILE_OPTIONS or isinstance(value, int) and not isinstance(value, bool):
        raise ConfigError(f"model.compile={value!r} must be one of true, false, auto")
    return value


def has_normalization(net: nn.Module) -> bool:
    """Whether ``net`` has BatchNorm / GroupNorm / LayerNorm / InstanceNorm layers to fuse."""
    norms = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    return any(isinstance(m, norms) for m in net.modules())


def wants_compile(option: bool | str, batches_left: int, device_type: str, net: nn.Module) -> bool:
    """Whether to compile ``net`` for a run with ``batches_left`` training batches to go.

    Args:
        option: ``model.compile``: True, False or ``"auto"``.
        batches_left: Forward passes left in the run (optimizer steps x accumulation).
        device_type: ``"cpu"`` or ``"cuda"``.
        net: The network (``"auto"`` compiles only nets with normalisation layers).
    """
    if option != "auto":
        return bool(option)
    if batches_left < AUTO_MIN_BATCHES or not has_normalization(net):
        return False
    if not inductor_available(device_type):
        log.info("model.compile=auto: inductor cannot compile on %s here; eager", device_type)
        return False
    return True


def compile_net(net: nn.Module) -> Callable[..., Any]:
    """``torch.compile(net)`` with inductor; the result shares ``net``'s parameters."""
    quiet_cuda_notice(device_of(net).type)
    return torch.compile(net, backend="inductor")

"""Empirical receptive field of a network, measured by back-propagation.

The receptive field of an output location is the set of input pixels its value depends on. It is
measured as the bounding box of the non-zero input gradient of the centre output (summed over
channels), see e.g. Luo et al., "Understanding the Effective Receptive Field in Deep
Convolutional Neural Networks", https://arxiv.org/abs/1701.04128.

Caveats of measuring with the real weights (``geometric=False``): ReLUs that are off, zero or
identity-like weights (e.g. FCN's zero-initialised score layers, the identity-initialised context
module) and max pooling (gradient only reaches the arg-max) hide pixels that the architecture
connects, so the box can be smaller than the theoretical field. ``geometric=True`` (default)
therefore measures a float64 copy in which every weight is a positive average (1/fan-in), biases
and BatchNorm statistics are neutral and max pooling is average pooling: all activations are
positive, so every connected pixel gets a strictly positive gradient (bounded activations such as
ReLU6 lose their upper bound, which residual sums would otherwise reach). Layers that subtract a
spatial or channel mean (GroupNorm, LayerNorm, InstanceNorm) can still zero some gradients. The
box is clipped by the input border; a warning is issued when it touches it (use a larger
``input_size``).
"""

from __future__ import annotations

import copy
import math
import warnings

import torch
from torch import nn

from seg.models import CLS, NetOutput, has_seg_logits, seg_logits


def _infer_in_channels(model: nn.Module) -> int:
    """Input channels of the first convolution / linear layer."""
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            return m.in_channels
        if isinstance(m, nn.Linear):
            return m.in_features
    raise ValueError("cannot infer the input channels of the model; pass in_channels")


def _neutralise_(model: nn.Module) -> None:
    """In place: positive averaging weights, neutral biases/norms, max pooling -> average."""
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.modules.conv._ConvNd):
            fan_in = m.weight[0].numel() if not m.transposed else m.weight[:, 0].numel()
            m.weight.data.fill_(1.0 / fan_in)
        elif isinstance(m, nn.Linear):
            m.weight.data.fill_(1.0 / m.in_features)
        elif isinstance(m, nn.modules.batchnorm._NormBase):  # BatchNorm: identity in eval
            m.reset_running_stats()
            if m.affine:
                m.weight.data.fill_(1.0)
        elif isinstance(m, nn.MaxPool2d):
            pool = nn.AvgPool2d(m.kernel_size, m.stride, m.padding, m.ceil_mode)
            _replace(model, name, pool)
        elif isinstance(m, nn.AdaptiveMaxPool2d):
            _replace(model, name, nn.AdaptiveAvgPool2d(m.output_size))
        elif isinstance(m, nn.Hardtanh):  # ReLU6: averages grow through residual sums
            m.max_val = math.inf  # and would saturate, cutting connected pixels off
        if isinstance(getattr(m, "bias", None), torch.Tensor):
            m.bias.data.zero_()


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted path ``name``."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, new)


def _measured_output(out: NetOutput) -> torch.Tensor:
    """The tensor to measure: the per-pixel logits, else the class logits (``"cls"``)."""
    return seg_logits(out) if has_seg_logits(out) or CLS not in out else out[CLS]


def receptive_field(
    model: nn.Module,
    input_size: int | tuple[int, int],
    in_channels: int | None = None,
    geometric: bool = True,
) -> tuple[int, int]:
    """Measure the receptive field (height, width) of the centre output location.

    The model is not modified: a float64 copy is measured in eval mode (BatchNorm uses running
    statistics, dropout is off). The copy costs twice the model's memory.

    Args:
        model: Network following the output contract of :mod:`seg.models`. Its per-pixel
            logits are measured; a net without them (a classifier) is measured on its class
            logits ``"cls"`` (1, K), every value of which is used, so the result is the extent
            of all connected input pixels.
        input_size: H or (H, W) of the probe input; make it larger than the field.
        in_channels: C_in; inferred from the first convolution or linear layer if ``None``.
        geometric: Measure the architecture (positive averaging weights, see the module
            docstring) rather than the current weights.

    Returns:
        (h, w): height and width of the bounding box of input pixels with non-zero gradient.

    Raises:
        ValueError: ``in_channels`` cannot be inferred, or no input pixel affects the output.
    """
    height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
    channels = in_channels if in_channels is not None else _infer_in_channels(model)
    probe = copy.deepcopy(model).double().eval()
    if geometric:
        _neutralise_(probe)
    device = next(probe.parameters(), torch.empty(0)).device
    x = torch.rand(1, channels, height, width, dtype=torch.float64, device=device) + 0.5
    x.requires_grad_(True)
    out = _measured_output(probe(x))
    if out.dim() >= 3:  # (1, K, h, w): centre location; (1, K, n): centre position
        centre = tuple(s // 2 for s in out.shape[2:])
        out = out[(slice(None), slice(None), *centre)]
    out.sum().backward()
    hit = x.grad.abs().sum(dim=(0, 1)) > 0  # (H, W)
    if not hit.any():
        raise ValueError("no input pixel affects the centre output (all gradients are zero)")
    rows, cols = hit.any(dim=1).nonzero().squeeze(1), hit.any(dim=0).nonzero().squeeze(1)
    top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
    if top == 0 or left == 0 or bottom == height - 1 or right == width - 1:
        warnings.warn(
            f"the receptive field touches the {height}x{width} input border and may be "
            "clipped; measure with a larger input_size",
            stacklevel=2,
        )
    return int(bottom - top + 1), int(right - left + 1)

"""Eager bf16 inference on a copy of the net made for it: BatchNorm folded, weights in bf16.

Under bf16 autocast each convolution and linear layer casts its fp32 weight and bias to bf16 on
every call: autocast keeps the casts only while autograd records, and inference runs the same
weights again and again. :class:`Bf16Weights` holds a copy of the net whose convolution, linear
and transposed-convolution parameters already are those bf16 values (the same rounding as
autocast's), in the memory format of the inputs inference feeds it (channels_last: a
checkpoint's net comes back NCHW, and oneDNN then reorders every weight on every call), and runs
it under the same autocast: the outputs of that copy under autocast bit for bit, without the
casts and reorders. Measured on the 2-core AVX512-BF16 CPU (``bench/README.md``): 1.13-1.25x
faster than autocast on the channels_last VGG16 nets (134M parameters), neutral for
U-Net / ResNet-34; 1.19-1.48x on one 384 x 384 image against the NCHW net.

First, each BatchNorm that directly follows a convolution is folded into it
(:func:`fold_batch_norm`, pairs found by torch.fx; every BatchNorm of the U-Nets, the ResNet
FCNs and the localizers): one convolution with a bias instead of a convolution, a bf16
rounding, a BatchNorm and another rounding. Eager inference got 1.10x (U-Net / ResNet-34), 1.20x
(U-Net / MobileNetV2), 1.07x (FCN-8s / ResNet-50) faster on a 384 x 512 image, and the compiled
path compiles this same copy (:mod:`seg.inference.compiled`), so the two run the same operations
and give the same masks (inductor computes an unfolded BatchNorm in another order than ATen's
kernel, which flipped 44 of 2.8M pixels of a trained U-Net). Precision: the folded weight
``w * gamma / sigma`` is rounded to bf16 once, where autocast rounds ``w`` and then the
convolution's output; against fp32 the ImageNet MobileNetV2 features were 7.6% off folded and
9.0% unfolded (16 voc-mini photos), the quickstart U-Net's masks 234 and 211 of 2.8M pixels off
(``bench/README.md``). Every other layer keeps its fp32 parameters, as under autocast.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from typing import Any

import torch
import torch.fx
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

log = logging.getLogger(__name__)

#: Layers whose operation autocast runs in bf16 on CPUs and GPUs (its "lower precision" list).
LOWER_PRECISION = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Linear,
)


def has_batch_norm(net: nn.Module) -> bool:
    """Whether ``net`` has BatchNorm layers."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def fold_batch_norm(net: nn.Module, inplace: bool = False) -> nn.Module:
    """A copy of ``net`` (eval mode) with each BatchNorm that is the only user of a
    convolution's output folded into that convolution and replaced by an identity; with
    ``inplace``, ``net`` itself, changed (no copy of its weights).

    torch.fx traces the copy to find the pairs (a convolution called once, whose output only
    the BatchNorm reads, and a BatchNorm called once); ``torch.nn.utils.fusion.
    fuse_conv_bn_weights`` computes the weight ``w * gamma / sqrt(var + eps)`` and bias
    ``beta + (b - mean) * gamma / sqrt(var + eps)``. The copy keeps the net's class, attributes
    and forward (torch.fx's own ``fuse`` returns a GraphModule without them, and took 0.12 s
    for U-Net / ResNet-34 where this takes 0.08 s, copy included, on every checkpoint load).
    A net torch.fx cannot trace (Python control flow on tensor values) is returned unfolded
    (copied, unless ``inplace``), with a log line.
    """
    copy_ = (net if inplace else copy.deepcopy(net)).eval()
    if not has_batch_norm(copy_):
        return copy_
    try:
        graph = torch.fx.symbolic_trace(copy_).graph
    except Exception as err:  # tracing runs the net's own Python: any error means "cannot"
        log.info("BatchNorm left unfolded: torch.fx cannot trace %s (%s)", type(net).__name__, err)
        return copy_
    modules = dict(copy_.named_modules())
    for conv_name, bn_name in conv_bn_pairs(graph, modules):
        conv, bn = modules[conv_name], modules[bn_name]
        conv.weight, conv.bias = fuse_conv_bn_weights(
            conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias,
            transpose=conv.transposed,
        )  # fmt: skip
        copy_.set_submodule(bn_name, nn.Identity())
    return copy_


def conv_bn_pairs(graph: torch.fx.Graph, modules: dict[str, nn.Module]) -> list[tuple[str, str]]:
    """(convolution, BatchNorm) module names of ``graph`` that fold: each called once, the
    BatchNorm with running statistics and the convolution's only user."""
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    pairs = []
    for node in graph.nodes:
        source = node.args[0] if node.op == "call_module" and node.args else None
        if not isinstance(source, torch.fx.Node) or source.op != "call_module":
            continue
        conv, bn = modules[source.target], modules[node.target]
        if (
            isinstance(bn, nn.modules.batchnorm._BatchNorm)
            and bn.running_mean is not None  # track_running_stats
            and isinstance(conv, nn.modules.conv._ConvNd)
            and len(source.users) == 1
            and calls[source.target] == calls[node.target] == 1
        ):
            pairs.append((source.target, node.target))
    return pairs


class Bf16Weights(nn.Module):
    """A copy of ``net`` with BatchNorm folded into the convolutions and bf16 convolution /
    linear parameters, always run under bf16 autocast (which those parameters are rounded for):
    the outputs of ``fold_batch_norm(net)`` under autocast, bit for bit.

    Args:
        net: Net in eval mode, on its device; it is copied, not changed (unless ``inplace``).
        channels_last: Put the copy in channels_last (the format of ``run_net``'s inputs when
            ``inference.channels_last``); else it keeps the net's.
        inplace: Change ``net`` itself instead of a copy, for a caller that will not use it
            again (:class:`seg.api.Model`: a second copy of the weights costs memory, and 50 ms
            of each checkpoint load for U-Net / ResNet-34).

    Shapes:
        ``forward``: as ``net``'s (e.g. (B, 3, H, W) -> logits (B, K, H, W)).
    """

    def __init__(self, net: nn.Module, channels_last: bool = False, inplace: bool = False) -> None:
        super().__init__()
        self.net = fold_batch_norm(net, inplace)
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        for module in self.net.modules():
            if isinstance(module, LOWER_PRECISION):
                module.to(torch.bfloat16)  # Tensor.to keeps each weight's memory format

    def forward(self, x: Tensor) -> Any:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return self.net(x)

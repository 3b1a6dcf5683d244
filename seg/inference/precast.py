"""Eager bf16 inference with the weights rounded to bf16 once, not on every call.

Under bf16 autocast each convolution and linear layer casts its fp32 weight and bias to bf16 on
every call: autocast keeps the casts only while autograd records, and inference runs the same
weights again and again. :class:`Bf16Weights` holds a copy of the net whose convolution, linear
and transposed-convolution parameters already are those bf16 values (the same rounding as
autocast's), in the memory format of the inputs inference feeds it (channels_last: a
checkpoint's net comes back NCHW, and oneDNN then reorders every weight on every call), and runs
it under the same autocast. Every layer computes on the same numbers, so the outputs equal the
autocast net's in that memory format bit for bit, without the casts and reorders. Measured on
the 2-core AVX512-BF16 CPU (``bench/README.md``): eager inference 1.13-1.25x faster than
autocast on the channels_last VGG16 nets (134M parameters; FCN-8s at 4 x 192, the dilation
network at 2 x 160), neutral for U-Net / ResNet-34; 1.48x (FCN-8s), 1.31x (U-Net / ResNet-34),
1.19x (dilation) on one 384 x 384 image against the NCHW net ``predict.py`` ran before.
BatchNorm and every other layer keep their fp32 parameters, as under autocast.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

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


class Bf16Weights(nn.Module):
    """A copy of ``net`` with bf16 convolution / linear parameters, always run under bf16
    autocast (which those parameters are rounded for).

    Args:
        net: Net in eval mode, on its device; it is copied, not changed.
        channels_last: Put the copy in channels_last (the format of ``run_net``'s inputs when
            ``inference.channels_last``); else it keeps the net's.

    Shapes:
        ``forward``: as ``net``'s (e.g. (B, 3, H, W) -> logits (B, K, H, W)).
    """

    def __init__(self, net: nn.Module, channels_last: bool = False) -> None:
        super().__init__()
        self.net = copy.deepcopy(net).eval()
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        for module in self.net.modules():
            if isinstance(module, LOWER_PRECISION):
                module.to(torch.bfloat16)  # Tensor.to keeps each weight's memory format

    def forward(self, x: Tensor) -> Any:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return self.net(x)

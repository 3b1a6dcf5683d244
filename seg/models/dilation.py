"""Dilated-convolution segmentation: VGG16 front end and multi-scale context module.

Yu & Koltun, "Multi-Scale Context Aggregation by Dilated Convolutions", ICLR 2016,
https://arxiv.org/abs/1511.07122. Reference implementation: https://github.com/fyu/dilation.

Front end: VGG16 without pool4/pool5, conv5 dilated by 2, fc6 a 7x7 convolution dilated by 4,
fc7 1x1, then a 1x1 "final" layer to class scores at output stride 8, bilinearly upsampled to the
input size. Context module (Table 1): 8 layers with dilations 1, 1, 2, 4, 8, 16, 1, 1; layers 1-7
are 3x3 convolutions followed by ReLU ("truncation"), layer 8 is 1x1 without ReLU; receptive
fields 3, 5, 9, 17, 33, 65, 67, 67. The basic module keeps C channels (64C^2 weights); the large
one widens to 2C, 2C, 4C, 8C, 16C, 32C, 32C and back to C.

Arbitrary sizes: the paper's front end uses unpadded convolutions on a reflection-padded input;
here convolutions are "same"-padded and the input is zero-padded at the bottom/right to a
multiple of 8, so the stride-8 scores align with the input; the upsampled scores are cropped to
H x W. Any size down to 1x1 works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seg.models.blocks import conv_bn_relu, pad_to_multiple
from seg.models.vgg import FC_CHANNELS, VGG16Encoder

FRONTEND_STRIDE = 8
# Context module, Table 1 of the paper: dilation per layer and output channels in units of C.
CONTEXT_DILATIONS = (1, 1, 2, 4, 8, 16, 1, 1)
BASIC_WIDTHS = (1, 1, 1, 1, 1, 1, 1, 1)
LARGE_WIDTHS = (2, 2, 4, 8, 16, 32, 32, 1)
LARGE_NOISE_STD = 1e-4  # sigma of eq. 5; << C / c_{i+1} >= 1/32


def upsample_scores(scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly upsample stride-8 scores of a bottom/right-padded input and crop to ``size``.

    Args:
        scores: (B, K, ceil(H/8), ceil(W/8)).
        size: (H, W) of the unpadded input.

    Returns:
        (B, K, H, W).
    """
    up = F.interpolate(scores, scale_factor=FRONTEND_STRIDE, mode="bilinear", align_corners=False)
    return up[:, :, : size[0], : size[1]]  # (B, K, H, W)


class DilationFrontEnd(nn.Module):
    """The dilated VGG16 front end (output stride 8).

    Args:
        num_classes: Number of classes K.
        encoder_weights: VGG16 weights: ``None``, ``"imagenet"`` or a path (see ``vgg.py``).
        dropout: Dropout after fc6 and fc7.

    Shapes:
        ``scores``: (B, 3, H, W) -> (B, K, ceil(H/8), ceil(W/8));
        ``forward``: (B, 3, H, W) -> logits (B, K, H, W).
    """

    output_stride = FRONTEND_STRIDE

    def __init__(
        self, num_classes: int = 21, encoder_weights: str | None = None, dropout: float = 0.5
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.encoder = VGG16Encoder(dilated=True, weights=encoder_weights, dropout=dropout)
        self.classifier = nn.Conv2d(FC_CHANNELS, num_classes, 1)  # paper: "final"
        nn.init.normal_(self.classifier.weight, 0.0, 1e-3)  # as the reference implementation
        nn.init.zeros_(self.classifier.bias)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores at stride 8: (B, 3, H, W) -> (B, K, ceil(H/8), ceil(W/8))."""
        x = pad_to_multiple(x, FRONTEND_STRIDE)  # (B, 3, H', W')
        features = self.encoder(x)[-1]  # (B, 4096, H'/8, W'/8)
        return self.classifier(features)  # (B, K, H'/8, W'/8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at the input resolution: (B, 3, H, W) -> (B, K, H, W)."""
        return upsample_scores(self.scores(x), x.shape[-2:])


def identity_init_(conv: nn.Conv2d, num_classes: int, noise_std: float = 0.0) -> None:
    """Identity initialisation of a context layer, eq. 4 (basic) and eq. 5 (large).

    With c_i input and c_{i+1} output channels, the centre tap (t = 0) from input a to output b
    is C / c_{i+1} when floor(a C / c_i) == floor(b C / c_{i+1}); every other weight is
    eps ~ N(0, noise_std^2). For c_i = c_{i+1} = C and noise_std = 0 this is eq. 4,
    1[t=0] 1[a=b]. Biases are zero. Each class's score is thus spread evenly over a group of
    c/C channels and summed back, so the module starts as the identity (on inputs >= 0).

    Args:
        conv: Layer with weight (c_{i+1}, c_i, k, k), k odd.
        num_classes: C.
        noise_std: sigma of eps; must be << C / c_{i+1} to keep the identity.
    """
    c_out, c_in, kh, kw = conv.weight.shape
    a = torch.arange(c_in)[None, :]  # (1, c_i)
    b = torch.arange(c_out)[:, None]  # (c_{i+1}, 1)
    same_group = a * num_classes // c_in == b * num_classes // c_out  # (c_{i+1}, c_i)
    with torch.no_grad():
        if noise_std > 0:
            conv.weight.normal_(0.0, noise_std)
        else:
            conv.weight.zero_()
        centre = conv.weight[:, :, kh // 2, kw // 2]  # (c_{i+1}, c_i), a view
        centre[same_group] = num_classes / c_out
        conv.bias.zero_()


class ContextModule(nn.Module):
    """Multi-scale context aggregation module (Table 1), identity-initialised.

    Args:
        num_classes: C, channels of the input and output (the front end's class scores).
        variant: ``"basic"`` (C channels in every layer) or ``"large"`` (2C ... 32C).
        noise_std: sigma of the eq. 5 noise; ``None`` means 0 for basic (exact eq. 4) and
            ``LARGE_NOISE_STD`` for large (breaks the symmetry between copies of a class).

    Shapes:
        ``forward``: (B, C, H, W) -> (B, C, H, W), any H, W.

    Note:
        As in the paper and the reference implementation, layer 1 is followed by ReLU, so at
        initialisation the module computes ``max(x, 0)``: the identity on non-negative input.
    """

    def __init__(
        self, num_classes: int = 21, variant: str = "basic", noise_std: float | None = None
    ) -> None:
        super().__init__()
        if variant not in ("basic", "large"):
            raise ValueError(f"variant must be 'basic' or 'large', got {variant!r}")
        large = variant == "large"
        widths = LARGE_WIDTHS if large else BASIC_WIDTHS
        if noise_std is None:
            noise_std = LARGE_NOISE_STD if large else 0.0
        self.num_classes, self.variant = num_classes, variant
        channels = [num_classes] + [w * num_classes for w in widths]  # c_1 .. c_9
        layers: list[nn.Module] = []
        for i, dilation in enumerate(CONTEXT_DILATIONS[:-1]):  # layers 1-7: 3x3 + ReLU
            block = conv_bn_relu(channels[i], channels[i + 1], 3, dilation, batch_norm=False)
            identity_init_(block[0], num_classes, noise_std)
            layers.append(block)
        final = nn.Conv2d(channels[-2], channels[-1], 1)  # layer 8: 1x1, no ReLU
        identity_init_(final, num_classes, noise_std)
        layers.append(final)
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Aggregate context: (B, C, H, W) -> (B, C, H, W)."""
        return self.layers(x)


class DilationNet(nn.Module):
    """Front end followed by an optional context module on its stride-8 class scores.

    Args:
        frontend: The dilated VGG16 front end.
        context: Module mapping (B, K, h, w) -> (B, K, h, w); ``None`` = front end only.

    Attributes:
        encoder: The front end's VGG16 (a property: parameters are registered once, under
            ``frontend.encoder``).

    Shapes:
        ``forward``: (B, 3, H, W) -> logits (B, K, H, W).
    """

    def __init__(self, frontend: DilationFrontEnd, context: nn.Module | None = None) -> None:
        super().__init__()
        context_classes = getattr(context, "num_classes", frontend.num_classes)
        if context_classes != frontend.num_classes:
            raise ValueError(
                f"context has {context_classes} channels, front end {frontend.num_classes}"
            )
        self.frontend = frontend
        self.context = context if context is not None else nn.Identity()

    @property
    def encoder(self) -> nn.Module:
        """The pretrained VGG16 part of the front end."""
        return self.frontend.encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predict per-pixel class logits: (B, 3, H, W) -> (B, K, H, W)."""
        scores = self.frontend.scores(x)  # (B, K, H/8, W/8)
        scores = self.context(scores)  # (B, K, H/8, W/8)
        return upsample_scores(scores, x.shape[-2:])  # (B, K, H, W)

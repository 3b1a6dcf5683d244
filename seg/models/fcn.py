"""Fully convolutional networks: FCN-32s, FCN-16s and FCN-8s.

Long, Shelhamer & Darrell, "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015,
https://arxiv.org/abs/1411.4038.

A 1x1 "score" convolution predicts class scores from the stride-32 features (fc7 for VGG16).
FCN-16s adds scores from the stride-16 features (pool4) and FCN-8s also from the stride-8 ones
(pool3): the coarser scores are upsampled 2x by a learnable ``ConvTranspose2d`` initialised to
bilinear interpolation and fused by summation. A final upsampling, fixed to bilinear as in the
paper, brings the scores back to the input resolution. Score layers are zero-initialised.

Training FCN-8s all at once from VGG16 (the reference ``voc-fcn8s-atonce``) scales the pool4 and
pool3 features by 0.01 and 1e-4 before their score layers (``skip_scales``; reference
``voc-fcn8s-atonce/net.py:64-66,77-79``, wkentaro/pytorch-fcn ``torchfcn/models/fcn8s.py:222,230``),
so that the finer, larger activations do not swamp fc7's scores at the start. The staged
recipe (32s -> 16s -> 8s) needs no scaling: new skips start at zero on a trained coarser net.

Arbitrary input sizes: instead of the paper's 100-pixel padding of conv1_1 plus crop offsets,
the input is zero-padded at the bottom/right to a multiple of 32, so every feature map is exactly
``1/stride`` of it and each upsampling is exactly 2x (or ``stride``x); the output is then cropped
to H x W at the top-left, which keeps pixel (i, j) of the output aligned with input pixel (i, j).
Any size down to 1x1 works.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from seg.models.blocks import bilinear_kernel, bilinear_upsample_layer, pad_to_multiple
from seg.models.vgg import VGG16Encoder

COARSEST_STRIDE = 32  # stride of the deepest encoder features


def fixed_bilinear_upsample(channels: int, stride: int) -> nn.ConvTranspose2d:
    """A frozen, channel-wise (``groups=C``) ``ConvTranspose2d`` doing bilinear upsampling.

    It computes exactly what ``blocks.bilinear_upsample_layer(C, s, trainable=False)`` computes
    (that kernel is diagonal over channels) with C instead of C^2 kernels: FCN's final
    upsampling is fixed to bilinear, so cross-channel weights would only be frozen zeros.

    Args:
        channels: C, input and output channels.
        stride: Upsampling factor s (even).

    Returns:
        A layer mapping (B, C, H, W) to (B, C, s*H, s*W).
    """
    kernel_size = 2 * stride
    layer = nn.ConvTranspose2d(
        channels, channels, kernel_size, stride, padding=stride // 2, groups=channels, bias=False
    )
    with torch.no_grad():
        layer.weight.copy_(bilinear_kernel(1, kernel_size).expand_as(layer.weight))
    layer.weight.requires_grad_(False)
    return layer


class FCN(nn.Module):
    """FCN with skip fusion down to ``output_stride`` (32, 16 or 8).

    Args:
        num_classes: Number of classes K.
        output_stride: Finest stride whose scores are fused: 32 (FCN-32s, no skips),
            16 (FCN-16s, + pool4) or 8 (FCN-8s, + pool4 + pool3).
        encoder: Backbone returning a list of features whose last three are at strides 8, 16 and
            32, with their channels in ``encoder.out_channels[-3:]`` (e.g. an smp encoder from
            ``segmentation_models_pytorch.encoders.get_encoder``). ``None`` builds VGG16.
        encoder_weights: VGG16 weights (``None``, ``"imagenet"`` or a path); only valid when
            ``encoder`` is ``None`` (a given encoder brings its own weights).
        dropout: Dropout after fc6 and fc7 of the VGG16 encoder.
        learn_final_upsample: Make the final upsampling a learnable full ``ConvTranspose2d``
            (bilinear-initialised) instead of the paper's fixed bilinear one.
        skip_scales: Factors applied to the skip features before their score layers, in order
            of use (pool4, then pool3); None = 1. The all-at-once recipe uses (0.01, 1e-4).

    Shapes:
        ``forward``: (B, 3, H, W) -> logits (B, K, H, W) for any H, W >= 1.
    """

    def __init__(
        self,
        num_classes: int = 21,
        output_stride: int = 8,
        encoder: nn.Module | None = None,
        encoder_weights: str | None = None,
        dropout: float = 0.5,
        learn_final_upsample: bool = False,
        skip_scales: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        if encoder is not None and encoder_weights is not None:
            raise ValueError("encoder_weights only applies to the default VGG16 encoder")
        self.output_stride = output_stride
        n_skips = (COARSEST_STRIDE // output_stride).bit_length() - 1  # 0, 1 or 2
        scales = (1.0,) * n_skips if skip_scales is None else tuple(map(float, skip_scales))
        if len(scales) != n_skips:
            raise ValueError(
                f"skip_scales needs {n_skips} factors (pool4, pool3)[:{n_skips}] for output "
                f"stride {output_stride}, got {list(scales)}"
            )
        self.skip_scales = scales
        if encoder is None:
            encoder = VGG16Encoder(weights=encoder_weights, dropout=dropout)
        self.encoder = encoder
        c8, c16, c32 = tuple(self.encoder.out_channels)[-3:]
        self.score = nn.Conv2d(c32, num_classes, 1)  # paper: score_fr
        # Skip scores in order of use: pool4 (stride 16), then pool3 (stride 8).
        self.score_skips = nn.ModuleList(nn.Conv2d(c, num_classes, 1) for c in (c16, c8)[:n_skips])
        self.upsample2 = nn.ModuleList(
            bilinear_upsample_layer(num_classes, 2) for _ in range(n_skips)
        )
        self.upsample_final = (
            bilinear_upsample_layer(num_classes, output_stride)
            if learn_final_upsample
            else fixed_bilinear_upsample(num_classes, output_stride)
        )
        for layer in (self.score, *self.score_skips):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predict per-pixel class logits.

        Args:
            x: Normalised images (B, 3, H, W).

        Returns:
            Logits (B, K, H, W).
        """
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, COARSEST_STRIDE)  # (B, 3, H', W'), 32 | H'
        features = self.encoder(x)  # [..., stride 8, stride 16, stride 32]
        score = self.score(features[-1])  # (B, K, H'/32, W'/32)
        skips = zip(
            self.upsample2, self.score_skips, self.skip_scales, features[-2:-4:-1], strict=False
        )
        for upsample, score_skip, scale, feature in skips:  # n_skips steps: pool4, then pool3
            score = upsample(score)  # (B, K, H'/16, W'/16), then (B, K, H'/8, W'/8)
            if scale != 1.0:
                feature = feature * scale  # at-once training: tame the finer activations
            score = score + score_skip(feature)  # fuse the finer scores
        score = self.upsample_final(score)  # (B, K, H', W')
        return score[:, :, :h, :w]  # (B, K, H, W)


class FCN32s(FCN):
    """FCN-32s: scores from the stride-32 features only. Keyword arguments as ``FCN``'s."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(output_stride=32, **kwargs)


class FCN16s(FCN):
    """FCN-16s: stride-32 scores fused with stride-16 (pool4) scores. See ``FCN``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(output_stride=16, **kwargs)


class FCN8s(FCN):
    """FCN-8s: stride-32, -16 (pool4) and -8 (pool3) scores fused. See ``FCN``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(output_stride=8, **kwargs)

"""U-Net: an encoder-decoder with concatenated skip connections and learned upsampling.

Ronneberger, Fischer and Brox, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015, https://arxiv.org/abs/1505.04597.

Two variants share one decoder (``UNetDecoder``): each decoder block upsamples with a
``ConvTranspose2d(kernel_size=2, stride=2)`` ("up-convolution"), concatenates the encoder feature
of the same resolution and applies two 3x3 convolutions. There is no interpolation anywhere.

- ``UNet``: the paper's network (64-128-256-512-1024 channels, 4 poolings), with "same" padding
  so the output has the input's size (the paper used valid convs and overlap-tile cropping).
- ``EncoderUNet``: the same decoder on any encoder that follows the contract in
  ``seg.models.encoders`` (smp ResNet-34, MobileNetV2), for transfer learning.

Inputs whose size is not a multiple of ``2**depth`` are padded inside the model (bottom and right)
and the logits are cropped back, so every H, W works.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from seg.constants import NUM_CLASSES
from seg.models.blocks import conv_bn_relu, he_normal_, pad_to_multiple


def double_conv(in_channels: int, out_channels: int, batch_norm: bool = True) -> nn.Sequential:
    """Two 3x3 ``conv -> [BN] -> ReLU`` layers, "same" padding: (B, C_in, H, W) -> (B, C_out, H, W)."""
    return nn.Sequential(
        conv_bn_relu(in_channels, out_channels, batch_norm=batch_norm),
        conv_bn_relu(out_channels, out_channels, batch_norm=batch_norm),
    )


class UNetEncoder(nn.Module):
    """The contracting path of the paper: double 3x3 conv blocks separated by 2x2 max pooling.

    Args:
        in_channels: Input channels.
        base_channels: Channels of the first block (64 in the paper); block i has
            ``base_channels * 2**i``.
        depth: Number of poolings (4 in the paper).
        batch_norm: Add BatchNorm after each conv (the paper has none).
        dropout: Dropout on the deepest feature, "at the end of the contracting path" (paper
            Sec. 3.1); 0 for none.
    """

    def __init__(
        self,
        in_channels: int = 3,
        base_channels: int = 64,
        depth: int = 4,
        batch_norm: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.out_channels = tuple(base_channels * 2**i for i in range(depth + 1))
        ins = (in_channels, *self.out_channels[:-1])
        self.blocks = nn.ModuleList(
            double_conv(c_in, c_out, batch_norm)
            for c_in, c_out in zip(ins, self.out_channels, strict=True)
        )
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Args: x (B, C_in, H, W), H and W multiples of ``2**depth``.

        Returns:
            ``depth + 1`` maps; map i is (B, base * 2**i, H / 2**i, W / 2**i).
        """
        features = [self.blocks[0](x)]  # (B, 64, H, W)
        for block in self.blocks[1:]:
            features.append(block(self.pool(features[-1])))  # (B, 2C, H/2, W/2)
        features[-1] = self.dropout(features[-1])  # (B, base * 2**depth, H / 2**depth, ...)
        return features


class UNetDecoderBlock(nn.Module):
    """Up-convolution, concatenation with the skip feature, two 3x3 convolutions.

    Args:
        in_channels: Channels of the coarse input.
        skip_channels: Channels of the skip feature (0: no skip connection).
        out_channels: Output channels (the up-convolution already maps to these).
        batch_norm: BatchNorm in the two convs.
    """

    def __init__(
        self, in_channels: int, skip_channels: int, out_channels: int, batch_norm: bool = True
    ) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.conv = double_conv(out_channels + skip_channels, out_channels, batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        """Args: x (B, C_in, H, W); skip (B, C_skip, 2H, 2W) or None.

        Returns:
            (B, C_out, 2H, 2W).
        """
        x = self.up(x)  # (B, C_out, 2H, 2W)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)  # (B, C_out + C_skip, 2H, 2W)
        return self.conv(x)  # (B, C_out, 2H, 2W)


class UNetDecoder(nn.Module):
    """The expanding path: one ``UNetDecoderBlock`` per entry of ``decoder_channels``.

    Block j upsamples by 2 and concatenates ``features[-(j + 2)]`` when that feature exists;
    later blocks (when there are more blocks than skips) have no skip connection.

    Args:
        encoder_channels: Channels of the features passed to ``forward``, finest first.
        decoder_channels: Output channels of each block, coarsest first.
        batch_norm: BatchNorm in the convs.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        decoder_channels: Sequence[int],
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        skips = list(encoder_channels[:-1])[::-1]  # coarsest skip first
        skips += [0] * (len(decoder_channels) - len(skips))
        ins = (encoder_channels[-1], *decoder_channels[:-1])
        self.blocks = nn.ModuleList(
            UNetDecoderBlock(c_in, c_skip, c_out, batch_norm)
            for c_in, c_skip, c_out in zip(ins, skips, decoder_channels, strict=True)
        )
        self.out_channels = decoder_channels[-1]

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Args: features, finest first; the last one (B, C, h, w) is the decoder input.

        Returns:
            (B, decoder_channels[-1], h * 2**n, w * 2**n) with n the number of blocks.
        """
        skips = list(features[:-1])[::-1]
        x = features[-1]  # (B, C_deep, h, w)
        for j, block in enumerate(self.blocks):
            x = block(x, skips[j] if j < len(skips) else None)  # (B, C_j, 2h, 2w)
        return x


class EncoderUNet(nn.Module):
    """U-Net decoder (transposed-conv upsampling, concatenated skips) on a given encoder.

    By default the encoder's stride-1 level (the input itself, in the smp contract) is not a
    skip, as in smp's Unet, so the last decoder block has no skip connection. With ``depth``
    encoder stages there are ``depth`` decoder blocks and the logits have the input's resolution.

    Args:
        encoder: Module following the encoder contract (``seg.models.encoders``): returns
            ``depth + 1`` maps at strides 1..2**depth and has ``out_channels``.
        decoder_channels: Output channels of the decoder blocks, coarsest first; one per stage.
        num_classes: Output channels.
        batch_norm: BatchNorm in the decoder convs.
        pad_mode: How inputs are padded to a multiple of ``2**depth``.
        first_skip: Index of the first encoder feature the decoder uses: 1 skips the stride-1
            input level of the smp contract; 0 uses it (the paper's U-Net, whose stride-1 level
            is a conv block).

    Raises:
        ValueError: ``len(decoder_channels)`` differs from the encoder depth.
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        num_classes: int = NUM_CLASSES,
        batch_norm: bool = True,
        pad_mode: str = "reflect",
        first_skip: int = 1,
    ) -> None:
        super().__init__()
        encoder_channels = tuple(encoder.out_channels)
        depth = len(encoder_channels) - 1
        if len(decoder_channels) != depth:
            raise ValueError(
                f"need one decoder channel count per encoder stage ({depth}), "
                f"got decoder_channels={tuple(decoder_channels)}"
            )
        self.encoder = encoder
        self.first_skip = first_skip
        self.decoder = UNetDecoder(
            encoder_channels[first_skip:], tuple(decoder_channels), batch_norm
        )
        self.head = nn.Conv2d(decoder_channels[-1], num_classes, kernel_size=1)
        self.multiple = 2**depth
        self.pad_mode = pad_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (B, 3, H, W), any H and W.

        Returns:
            Logits (B, num_classes, H, W).
        """
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, self.multiple, self.pad_mode)  # (B, 3, H', W')
        features = self.encoder(x)  # depth + 1 maps, strides 1..2**depth
        x = self.decoder(features[self.first_skip :])  # (B, C_last, H', W')
        return self.head(x)[..., :h, :w]  # (B, K, H, W)


class UNet(EncoderUNet):
    """The paper's U-Net (31.0M parameters at the default sizes, 21 classes).

    Args:
        num_classes: Output channels (21 for VOC).
        in_channels: Input channels.
        base_channels: Channels of the first level (64 in the paper).
        depth: Number of poolings / up-convolutions (4 in the paper); output stride ``2**depth``.
        batch_norm: BatchNorm after every 3x3 conv. The paper has none (it relies on a careful
            He-normal init); BN is the default here because it trains reliably from scratch with
            plain SGD/AdamW. ``False`` gives the paper's layers exactly.
        pad_mode: How inputs are padded to a multiple of ``2**depth`` (see ``pad_to_multiple``).
        he_init: Initialise every convolution as the paper does (Sec. 3), N(0, sqrt(2/N)) with
            N the inputs of one neuron (:func:`~seg.models.blocks.he_normal_`); False keeps
            PyTorch's default, about 2.45x smaller (kaiming_uniform with a=sqrt(5)).
        dropout: Dropout at the end of the contracting path (paper Sec. 3.1); 0 for none.
    """

    def __init__(
        self,
        num_classes: int = NUM_CLASSES,
        in_channels: int = 3,
        base_channels: int = 64,
        depth: int = 4,
        batch_norm: bool = True,
        pad_mode: str = "reflect",
        he_init: bool = True,
        dropout: float = 0.0,
    ) -> None:
        encoder = UNetEncoder(in_channels, base_channels, depth, batch_norm, dropout)
        decoder_channels = encoder.out_channels[-2::-1]  # (512, 256, 128, 64)
        super().__init__(encoder, decoder_channels, num_classes, batch_norm, pad_mode, first_skip=0)
        if he_init:
            he_normal_(self)

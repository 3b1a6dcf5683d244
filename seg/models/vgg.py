"""VGG16 backbone shared by FCN and the dilated front end, in torchvision's layer layout.

``VGG16Encoder.features`` has the same indices as ``torchvision.models.vgg16().features`` and
the fully connected layers fc6/fc7 are kept as convolutions ("convolutionalised", Long et al.,
https://arxiv.org/abs/1411.4038), so torchvision's ImageNet weights load by reshaping
``classifier.0`` / ``classifier.3``. The dilated variant removes pool4 and pool5 and dilates
conv5 by 2 and fc6 by 4 (Yu & Koltun, https://arxiv.org/abs/1511.07122).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from seg.errors import PretrainedWeightsNotFoundError
from seg.models.blocks import MatmulConv2d
from seg.models.weights import load_strict, read_state_dict

# torchvision's VGG16 ("D") configuration: conv widths, "M" = 2x2 max pooling.
VGG16_LAYOUT = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)
# Index in ``features`` of pool3, pool4 and pool5 (same as torchvision).
POOL3, POOL4, POOL5 = 16, 23, 30
# File name of torchvision's VGG16 ImageNet weights in the torch hub cache.
VGG16_IMAGENET_FILE = "vgg16-397923af.pth"
FC_CHANNELS = 4096


def _features(dilated: bool) -> nn.Sequential:
    """VGG16 conv1_1..pool5 with torchvision indices; ``dilated`` drops pool4/pool5."""
    layers: list[nn.Module] = []
    in_channels, n_pools = 3, 0
    for item in VGG16_LAYOUT:
        if item == "M":
            n_pools += 1
            drop = dilated and n_pools >= 4  # pool4 and pool5 become identities
            layers.append(nn.Identity() if drop else nn.MaxPool2d(2, 2))
            continue
        dilation = 2 if dilated and n_pools >= 4 else 1  # conv5 follows the dropped pool4
        layers.append(nn.Conv2d(in_channels, item, 3, padding=dilation, dilation=dilation))
        layers.append(nn.ReLU(inplace=True))
        in_channels = item
    return nn.Sequential(*layers)


class VGG16Encoder(nn.Module):
    """VGG16 conv layers plus fc6/fc7 as convolutions.

    Returns the features FCN fuses: pool3, pool4 and fc7. With ``dilated=False`` they sit at
    strides 8, 16 and 32; with ``dilated=True`` (Yu & Koltun front end) all three are at
    stride 8 because pool4/pool5 are identities, conv5 is dilated by 2 and fc6 by 4.

    Args:
        dilated: Build the dilated front-end variant.
        weights: ``None`` (random init), ``"imagenet"`` (torchvision weights from the torch hub
            cache) or a path to a ``.pth`` state dict (torchvision or this module's layout).
        dropout: Dropout probability after fc6 and fc7 (0.5 in both papers).

    Attributes:
        out_channels: Channels of the returned features, ``(256, 512, 4096)``.
        strides: Their strides relative to the input.
    """

    out_channels = (256, 512, FC_CHANNELS)

    def __init__(
        self, dilated: bool = False, weights: str | None = None, dropout: float = 0.5
    ) -> None:
        super().__init__()
        self.strides = (8, 8, 8) if dilated else (8, 16, 32)
        self.features = _features(dilated)
        fc6_dilation = 4 if dilated else 1
        # Padding is applied explicitly in forward: oneDNN's backward of a dilated 7x7 conv whose
        # implicit padding exceeds the feature map is ~100x slower on CPU (same result).
        self.fc6_padding = 3 * fc6_dilation
        # FCN's fc6 sees a few dozen positions per image: a matrix product beats the convolution
        fc6 = nn.Conv2d if dilated else MatmulConv2d
        self.fc6 = fc6(512, FC_CHANNELS, 7, dilation=fc6_dilation)
        self.fc7 = nn.Conv2d(FC_CHANNELS, FC_CHANNELS, 1)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self._init_weights()
        load_vgg16_weights(self, weights)

    def _init_weights(self) -> None:
        """torchvision's VGG initialisation (fc layers: N(0, 0.01), zero bias)."""
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        for m in (self.fc6, self.fc7):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Compute the pool3, pool4 and fc7 features.

        Args:
            x: Images (B, 3, H, W); H and W should be multiples of 32 (8 if dilated) for exact
                strides, otherwise pooling floors the sizes.

        Returns:
            ``[pool3 (B, 256, H/8, W/8), pool4 (B, 512, H/s4, W/s4), fc7 (B, 4096, H/s5, W/s5)]``
            with ``(s4, s5) = (16, 32)``, or ``(8, 8)`` when dilated.
        """
        x = self.features[: POOL3 + 1](x)  # (B, 256, H/8, W/8)
        pool3 = x
        x = self.features[POOL3 + 1 : POOL4 + 1](x)  # (B, 512, H/16, W/16)
        pool4 = x
        x = self.features[POOL4 + 1 : POOL5 + 1](x)  # (B, 512, H/32, W/32)
        x = F.pad(x, [self.fc6_padding] * 4)  # (B, 512, H/32 + 2p, W/32 + 2p)
        x = self.dropout(self.relu(self.fc6(x)))  # (B, 4096, H/32, W/32)
        x = self.dropout(self.relu(self.fc7(x)))  # (B, 4096, H/32, W/32)
        return [pool3, pool4, x]


def imagenet_cache_path() -> Path:
    """Where torchvision caches the VGG16 ImageNet weights (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_IMAGENET_FILE


def _download_imagenet_state_dict() -> dict[str, torch.Tensor]:
    """Download torchvision's VGG16 ImageNet weights into the torch hub cache."""
    weights = torchvision.models.VGG16_Weights.IMAGENET1K_V1
    return weights.get_state_dict(progress=True, check_hash=True, weights_only=True)


def _imagenet_state_dict() -> dict[str, torch.Tensor]:
    """Load the ImageNet weights from the hub cache, downloading them if possible."""
    path = imagenet_cache_path()
    if path.is_file():
        return read_state_dict(path)
    try:
        return _download_imagenet_state_dict()
    except (OSError, RuntimeError) as err:  # URLError is an OSError
        raise PretrainedWeightsNotFoundError(
            f"encoder_weights='imagenet' needs torchvision's VGG16 ImageNet weights, but "
            f"{path} does not exist and downloading it failed ({err}). Download "
            f"https://download.pytorch.org/models/{VGG16_IMAGENET_FILE} on a machine with "
            f"internet access and copy it to {path} (the torch hub cache; set TORCH_HOME to "
            f"move it), or pass encoder_weights=/path/to/{VGG16_IMAGENET_FILE}, or "
            f"encoder_weights=null to train from scratch."
        ) from err


def to_encoder_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a torchvision ``vgg16`` state dict to ``VGG16Encoder``'s keys and shapes.

    ``classifier.0`` (Linear 25088 -> 4096) becomes ``fc6`` (Conv 512 -> 4096, 7x7) and
    ``classifier.3`` becomes ``fc7`` (1x1); the ImageNet classifier ``classifier.6`` is dropped.
    A state dict already in the encoder layout is returned unchanged.
    """
    out = {k: v for k, v in state_dict.items() if not k.startswith("classifier.")}
    for src, dst, shape in (
        ("classifier.0", "fc6", (FC_CHANNELS, 512, 7, 7)),
        ("classifier.3", "fc7", (FC_CHANNELS, FC_CHANNELS, 1, 1)),
    ):
        if f"{src}.weight" in state_dict:
            out[f"{dst}.weight"] = state_dict[f"{src}.weight"].reshape(shape)
            out[f"{dst}.bias"] = state_dict[f"{src}.bias"]
    return out


def load_vgg16_weights(encoder: VGG16Encoder, weights: str | Path | None) -> None:
    """Load pretrained weights into ``encoder`` in place (strictly: every key must match).

    Args:
        encoder: The encoder to fill.
        weights: ``None`` (do nothing), ``"imagenet"`` or a path to a state dict file.

    Raises:
        PretrainedWeightsNotFoundError: The file is missing (for ``"imagenet"``: not in the hub
            cache and not downloadable); the message says which file to put where.
        CheckpointError: The file is unreadable or does not fit VGG16.
    """
    if weights is None:
        return
    imagenet = str(weights) == "imagenet"
    state_dict = _imagenet_state_dict() if imagenet else read_state_dict(weights)
    load_strict(encoder, to_encoder_layout(state_dict), source=str(weights))

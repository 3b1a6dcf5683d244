"""Pretrained encoders with one contract for the U-Net decoder and the localization heads.

Contract (the same as segmentation_models_pytorch encoders): ``encoder(x)`` maps
(B, 3, H, W) with H, W multiples of ``2**depth`` to a list of ``depth + 1`` feature maps,
``features[i]`` of shape (B, ``out_channels[i]``, H / 2**i, W / 2**i); ``features[0]`` is the
stride-1 input level. The deepest map has stride ``2**depth``.

Weights are given as ``weights=None`` (random init), a name of smp's pretrained table
(``"imagenet"``; read from the Hugging Face cache, downloaded when online) or a local file path
(``.pth``/``.pt`` read with ``torch.load(weights_only=True)``, or ``.safetensors``). Asked-for
weights that cannot be read raise; they never fall back silently to random init.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torchvision
from huggingface_hub import constants as hf_constants
from huggingface_hub import hf_hub_download
from segmentation_models_pytorch.encoders import encoders as smp_encoder_table
from segmentation_models_pytorch.encoders import get_encoder
from torch import nn

from seg.errors import PretrainedWeightsNotFoundError
from seg.models.weights import load_strict, read_state_dict


def hub_weights_path(name: str, weights: str) -> Path:
    """Local path of smp's pretrained ``model.safetensors`` for encoder ``name``.

    The Hugging Face cache is tried first (no network). Unless ``HF_HUB_OFFLINE`` is set, a
    download is tried next.

    Args:
        name: smp encoder name, e.g. ``"resnet34"``.
        weights: A key of smp's pretrained table for ``name``, e.g. ``"imagenet"``.

    Returns:
        Path of the cached ``model.safetensors``.

    Raises:
        PretrainedWeightsNotFoundError: Not cached and not downloadable; the message names the
            URL and the exact cache path where the file is expected.
    """
    settings = smp_encoder_table[name]["pretrained_settings"][weights]
    repo_id, revision = settings["repo_id"], settings["revision"]
    filename = "model.safetensors"
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, local_files_only=True))
    except FileNotFoundError:
        pass
    if not hf_constants.HF_HUB_OFFLINE:
        try:
            return Path(hf_hub_download(repo_id, filename, revision=revision))
        except (OSError, ValueError):  # connection errors, missing entries
            pass
    folder = "models--" + repo_id.replace("/", "--")
    cached = Path(hf_constants.HF_HUB_CACHE) / folder / "snapshots" / revision / filename
    raise PretrainedWeightsNotFoundError(
        f"Pretrained weights {weights!r} for encoder {name!r} are not available offline. "
        f"Download https://huggingface.co/{repo_id}/resolve/{revision}/{filename} and put it at "
        f"{cached} (the Hugging Face cache), or pass the file's path as the encoder weights, "
        f"e.g. model.net.encoder.weights=/path/to/{filename}."
    )


def smp_encoder(
    name: str = "resnet34",
    weights: str | None = None,
    depth: int = 5,
    in_channels: int = 3,
) -> nn.Module:
    """An encoder from segmentation_models_pytorch with strict, offline-aware weight loading.

    See https://github.com/qubvel-org/segmentation_models.pytorch. For ``resnet34``: He et al.,
    https://arxiv.org/abs/1512.03385.

    Args:
        name: smp encoder name (``"resnet34"``, ``"resnet50"``, ``"mobilenet_v2"``, ...).
        weights: None (random init), a pretrained name of smp's table (``"imagenet"``) or a path
            to a state dict file with the encoder's own keys (classifier-head keys are ignored).
        depth: Number of stride-2 stages, 1..5; the output stride is ``2**depth``.
        in_channels: Input channels; the first conv is adapted when it is not 3.

    Returns:
        An smp encoder: (B, in_channels, H, W) -> list of ``depth + 1`` maps, attribute
        ``out_channels``.

    Raises:
        PretrainedWeightsNotFoundError: ``weights`` cannot be found or fetched.
        ValueError: The weights do not match the encoder.
    """
    encoder = get_encoder(name, in_channels=3, depth=depth, weights=None)
    if weights is not None:
        weights = str(weights)
        known = smp_encoder_table[name]["pretrained_settings"]
        if Path(weights).expanduser().is_file() or weights not in known:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise PretrainedWeightsNotFoundError(
                    f"Encoder weights {weights!r} are neither a file nor one of {list(known)}"
                )
        else:
            path = hub_weights_path(name, weights)
        load_strict(encoder, read_state_dict(path), source=str(path))
    encoder.set_in_channels(in_channels, pretrained=weights is not None)
    return encoder


class MobileNetV2Encoder(nn.Module):
    """torchvision MobileNetV2 ``features`` as a multi-scale encoder (strides 1, 2, ..., 32).

    Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
    https://arxiv.org/abs/1801.04381. Stages end after ``features[1]`` (stride 2), ``[3]`` (4),
    ``[6]`` (8), ``[13]`` (16) and ``[18]`` (32, the 1x1 conv to 1280 channels). At width 0.35
    ``out_channels`` is (3, 8, 8, 16, 32, 1280) and the encoder has 0.41M parameters.

    BatchNorm eps defaults to 1e-3: the ImageNet weights in ``shared/weights`` come from Keras,
    trained with that eps; the random-init model uses the same eps so both are the same network.

    Args:
        width_mult: Channel multiplier of torchvision's ``mobilenet_v2``.
        weights: None (random init) or a path to a state dict of ``features.*`` keys, as
            ``mobilenet_v2_035_imagenet_features.pth`` (a full torchvision state dict also works:
            the ``classifier.*`` keys are ignored). Loaded strictly.
        depth: Number of stride-2 stages used, 1..5.
        bn_eps: BatchNorm epsilon.
    """

    STAGE_ENDS = (2, 4, 7, 14, 19)  # exclusive end index into `features` of each stage

    def __init__(
        self,
        width_mult: float = 0.35,
        weights: str | Path | None = None,
        depth: int = 5,
        bn_eps: float = 1e-3,
    ) -> None:
        super().__init__()
        if not 1 <= depth <= 5:
            raise ValueError(f"depth must be in 1..5, got {depth}")
        norm_layer = functools.partial(nn.BatchNorm2d, eps=bn_eps)
        net = torchvision.models.mobilenet_v2(width_mult=width_mult, norm_layer=norm_layer)
        self.features = net.features[: self.STAGE_ENDS[depth - 1]]
        if weights is not None:
            state = read_state_dict(weights)
            state = {
                k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")
            }
            # Layers beyond `depth` are not part of this encoder.
            keep = tuple(f"{i}." for i in range(len(self.features)))
            state = {k: v for k, v in state.items() if k.startswith(keep)}
            load_strict(self.features, state, source=str(weights))
        self.depth = depth
        # InvertedResidual and Conv2dNormActivation both record their `out_channels`.
        stage_channels = [self.features[end - 1].out_channels for end in self.STAGE_ENDS[:depth]]
        self.out_channels = (3, *stage_channels)

    @property
    def output_stride(self) -> int:
        """Stride of the deepest feature map."""
        return 2**self.depth

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Multi-scale features.

        Args:
            x: (B, 3, H, W), H and W multiples of ``2**depth``.

        Returns:
            ``depth + 1`` maps; map i is (B, out_channels[i], H / 2**i, W / 2**i).
        """
        features = [x]  # (B, 3, H, W)
        start = 0
        for end in self.STAGE_ENDS[: self.depth]:
            for layer in self.features[start:end]:
                x = layer(x)
            features.append(x)  # (B, C_i, H / 2**i, W / 2**i)
            start = end
        return features

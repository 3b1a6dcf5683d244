"""Inference: whole-image or sliding-window prediction, flip / multi-scale TTA, and the one
function that turns scores into a mask at the original image size.

Sliding-window inference follows the common practice of DeepLab/PSPNet evaluation (e.g.
mmsegmentation's ``slide_inference``): overlapping crops, scores summed and divided by the
per-pixel window count. Multi-scale + flip TTA averages softmax probabilities, as in
DeepLab (https://arxiv.org/abs/1606.00915).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class InferenceConfig:
    """How to run a segmentation net on full images.

    Attributes:
        mode: ``"whole"`` runs the net on the full image; ``"slide"`` on overlapping crops.
        crop: Sliding-window crop size (pixels), square.
        stride: Sliding-window stride (pixels); ``crop * 2 // 3`` when None.
        flip: Also run on the horizontally flipped image and average.
        scales: Image scales to average over (1.0 = original size).
        window_batch: How many sliding windows go through the net at once (bounds memory).
        autocast: Run under bf16 autocast (CPU with native bf16, or GPU).
        channels_last: Feed the net channels_last tensors.
    """

    mode: str = "whole"
    crop: int = 512
    stride: int | None = None
    flip: bool = False
    scales: Sequence[float] = field(default_factory=lambda: (1.0,))
    window_batch: int = 4
    autocast: bool = False
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ("whole", "slide"):
            raise ValueError(f"inference.mode must be 'whole' or 'slide', got {self.mode!r}")
        if self.crop <= 0 or (self.stride is not None and self.stride <= 0):
            raise ValueError(
                f"inference.crop and inference.stride must be positive, got {self.crop}, {self.stride}"
            )
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ValueError(f"inference.scales must be positive numbers, got {list(self.scales)}")


def _logits(net: nn.Module, x: Tensor, cfg: InferenceConfig) -> Tensor:
    """Net logits for (B, 3, H, W) -> (B, C, H, W) float32, under the configured autocast."""
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=cfg.autocast):
        out = net(x)
    if isinstance(out, dict):
        out = out["mask"]
    return out.float()


def slide_logits(net: nn.Module, x: Tensor, cfg: InferenceConfig) -> Tensor:
    """Sliding-window logits with bounded memory.

    Args:
        net: Segmentation net mapping (B, 3, h, w) -> (B, C, h, w).
        x: Images (B, 3, H, W).
        cfg: Crop, stride and window batch size.

    Returns:
        Logits (B, C, H, W): the mean over the windows covering each pixel.
    """
    crop = cfg.crop
    stride = cfg.stride or max(crop * 2 // 3, 1)
    b, _, h, w = x.shape
    ph, pw = max(crop - h, 0), max(crop - w, 0)
    x = F.pad(x, (0, pw, 0, ph))  # (B, 3, H', W'), H', W' >= crop
    hh, ww = x.shape[-2:]
    ys = _starts(hh, crop, stride)
    xs = _starts(ww, crop, stride)
    windows = [(y, x0) for y in ys for x0 in xs]
    total: Tensor | None = None
    count = torch.zeros(1, 1, hh, ww, device=x.device)
    for i in range(0, len(windows), cfg.window_batch):
        chunk = windows[i : i + cfg.window_batch]
        crops = torch.cat([x[:, :, y : y + crop, x0 : x0 + crop] for y, x0 in chunk])
        out = _logits(net, crops, cfg).view(len(chunk), b, -1, crop, crop)  # (n, B, C, crop, crop)
        if total is None:
            total = x.new_zeros(b, out.shape[2], hh, ww, dtype=torch.float32)
        for (y, x0), o in zip(chunk, out, strict=True):
            total[:, :, y : y + crop, x0 : x0 + crop] += o
            count[:, :, y : y + crop, x0 : x0 + crop] += 1
    assert total is not None
    return (total / count)[:, :, :h, :w]


def _starts(size: int, crop: int, stride: int) -> list[int]:
    """Window start offsets covering ``[0, size)``; the last window ends exactly at ``size``."""
    n = max(math.ceil((size - crop) / stride), 0) + 1
    return sorted({min(i * stride, size - crop) for i in range(n)})


@torch.inference_mode()
def predict_probs(net: nn.Module, x: Tensor, cfg: InferenceConfig | None = None) -> Tensor:
    """Class probabilities at the input size, averaged over scales and flips.

    Args:
        net: Segmentation net in eval mode.
        x: Normalised images (B, 3, H, W).
        cfg: Inference options; whole image, no TTA when None.

    Returns:
        Probabilities (B, C, H, W), float32.
    """
    cfg = cfg or InferenceConfig()
    h, w = x.shape[-2:]
    total: Tensor | None = None
    for scale in cfg.scales:
        xs = (
            x
            if scale == 1.0
            else F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
        )
        for flip in (False, True) if cfg.flip else (False,):
            xi = xs.flip(-1) if flip else xs
            logits = slide_logits(net, xi, cfg) if cfg.mode == "slide" else _logits(net, xi, cfg)
            logits = logits.flip(-1) if flip else logits
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            probs = logits.softmax(dim=1)
            total = probs if total is None else total + probs
    assert total is not None
    return total / (len(cfg.scales) * (2 if cfg.flip else 1))


def scores_to_mask(scores: Tensor, size: tuple[int, int] | None = None) -> Tensor:
    """The one place scores become a mask: resize to the original size, then argmax.

    Args:
        scores: Logits or probabilities (B, C, h, w).
        size: Original (H, W); no resizing when None or equal to (h, w). The ground truth is
            never resized: predictions are brought to its resolution.

    Returns:
        Class indices (B, H, W), int64.
    """
    if size is not None and tuple(scores.shape[-2:]) != tuple(size):
        scores = F.interpolate(
            scores.float(), size=tuple(size), mode="bilinear", align_corners=False
        )
    return scores.argmax(dim=1)

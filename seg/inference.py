"""Inference: whole-image or sliding-window prediction, flip / multi-scale TTA, and the one
function that turns scores into a mask at the original image size.

Sliding-window inference follows the common practice of DeepLab/PSPNet evaluation (e.g.
mmsegmentation's ``slide_inference``): overlapping crops, scores summed and divided by the
per-pixel window count. Multi-scale + flip TTA averages softmax probabilities, as in
DeepLab (https://arxiv.org/abs/1606.00915).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
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


def _window_logits(net: nn.Module, crops: Tensor, cfg: InferenceConfig) -> Tensor:
    """Logits of windows (n, 3, c, c) -> (n, C, c, c), averaged over the TTA scales and flips."""
    size = crops.shape[-2:]
    total = None
    for scale in cfg.scales:
        xs = (
            crops
            if scale == 1.0
            else F.interpolate(crops, scale_factor=scale, mode="bilinear", align_corners=False)
        )
        for flip in (False, True) if cfg.flip else (False,):
            out = _logits(net, xs.flip(-1) if flip else xs, cfg)
            out = out.flip(-1) if flip else out
            if out.shape[-2:] != size:
                out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
            total = out if total is None else total + out
    n = len(cfg.scales) * (2 if cfg.flip else 1)
    return total if n == 1 else total / n


@torch.inference_mode()
def slide_mask(
    net: nn.Module,
    rows: Callable[[int, int], Tensor],
    size: tuple[int, int],
    cfg: InferenceConfig,
) -> Tensor:
    """Sliding-window class mask of one (huge) image with memory bounded by its width.

    The windows and the per-pixel mean of their logits are those of :func:`slide_logits`, so
    without TTA the mask equals ``scores_to_mask(slide_logits(net, x, cfg))``. But the image is
    normalised, and its logits kept, one band of ``crop`` rows at a time: memory is
    O(C * crop * W) floats plus the (H, W) uint8 mask, instead of O(C * H * W) floats
    (6.7 GB for 21 classes at 10000 x 8000). TTA (``scales``, ``flip``) is applied per window,
    averaging logits.

    Args:
        net: Segmentation net mapping (n, 3, h, w) -> (n, C, h, w), C <= 256.
        rows: ``rows(y0, y1)`` -> normalised image rows ``y0:y1``, (1, 3, y1 - y0, W).
        size: Image size (H, W).
        cfg: Crop, stride, window batch, TTA, autocast and memory-format options.

    Returns:
        Class indices (H, W), uint8.
    """
    h, w = size
    crop, stride = cfg.crop, cfg.stride or max(cfg.crop * 2 // 3, 1)
    hh, ww = max(h, crop), max(w, crop)
    ys, xs = _starts(hh, crop, stride), _starts(ww, crop, stride)
    mask = torch.empty(h, w, dtype=torch.uint8)
    band: Tensor | None = None  # (crop, W', C) summed logits of rows [y, y + crop)
    for i, y in enumerate(ys):
        strip = rows(y, min(y + crop, h))  # (1, 3, <= crop, W)
        strip = F.pad(strip, (0, ww - strip.shape[-1], 0, crop - strip.shape[-2]))
        band = _add_band(net, strip, xs, cfg, band)
        end = ys[i + 1] if i + 1 < len(ys) else hh  # rows above `end` are final
        mask[y : min(end, h)] = band[: min(end, h) - y, :w].argmax(-1).to(torch.uint8)
        keep = max(crop - (end - y), 0)
        band[:keep] = band[crop - keep :].clone()
        band[keep:] = 0
    return mask


def _add_band(
    net: nn.Module, strip: Tensor, xs: list[int], cfg: InferenceConfig, band: Tensor | None
) -> Tensor:
    """Add the logits of the windows of one strip (1, 3, crop, W') to ``band`` (crop, W', C).

    Classes are the band's last dimension: channels-last logits add to it, and the per-pixel
    argmax reads it, contiguously.
    """
    crop = strip.shape[-2]
    for i in range(0, len(xs), cfg.window_batch):
        chunk = xs[i : i + cfg.window_batch]
        crops = torch.cat([strip[..., x0 : x0 + crop] for x0 in chunk])  # (n, 3, crop, crop)
        out = _window_logits(net, crops, cfg)  # (n, C, crop, crop)
        if band is None:
            band = strip.new_zeros(crop, strip.shape[-1], out.shape[1], dtype=torch.float32)
        for x0, o in zip(chunk, out, strict=True):
            band[:, x0 : x0 + crop] += o.permute(1, 2, 0)
    assert band is not None
    return band


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

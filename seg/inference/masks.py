"""The segmentation path: windows, TTA, overlap averaging, the band path and the one argmax."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seg.inference.config import InferenceConfig
from seg.models import seg_logits


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Window offsets along one side: windows of ``min(crop, size)`` that cover ``[0, size)``,
    the last one ending exactly at ``size``."""
    crop = min(crop, size)
    n = max(math.ceil((size - crop) / stride), 0) + 1
    return sorted({min(i * stride, size - crop) for i in range(n)})


def windows(size: tuple[int, int], cfg: InferenceConfig) -> tuple[list[int], list[int], int, int]:
    """The one window enumerator: row starts, column starts and window (height, width).

    ``mode="whole"`` gives one window, the image itself.
    """
    h, w = size
    if cfg.mode == "whole":
        return [0], [0], h, w
    stride = cfg.window_stride
    return (
        window_starts(h, cfg.crop, stride),
        window_starts(w, cfg.crop, stride),
        *(min(cfg.crop, s) for s in size),
    )


def device_of(net: nn.Module) -> torch.device:
    param = next(net.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def run_net(net: nn.Module, x: Tensor, cfg: InferenceConfig) -> Any:
    """The net's output for images (B, 3, H, W), run as the config says (memory format, bf16)."""
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = (
        torch.autocast(x.device.type, dtype=torch.bfloat16)
        if cfg.autocast
        else contextlib.nullcontext()
    )
    with autocast:
        return net(x)


def _logits(net: nn.Module, x: Tensor, cfg: InferenceConfig) -> Tensor:
    """Per-pixel logits (B, C, H, W) float32 of images (B, 3, H, W)."""
    return seg_logits(run_net(net, x, cfg)).float()


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def class_probs(logits: Tensor) -> Tensor:
    """Softmax over the classes of logits (B, C, H, W), in their memory format.

    A channels_last net's logits hold the classes innermost; softmax over dim 1 first copies
    them to NCHW (7.7 against 3.3 ms for 21 x 375 x 500 on 2 cores), so it runs over the last
    dimension of their NHWC view instead (the same values up to the last bit of the sums).
    """
    nhwc = logits.dim() == 4 and logits.is_contiguous(memory_format=torch.channels_last)
    if nhwc and not logits.is_contiguous():  # (not both, as when C == 1 or H == W == 1)
        return logits.movedim(1, -1).softmax(-1).movedim(-1, 1)
    return logits.softmax(dim=1)


def tta_probs(net: nn.Module, x: Tensor, cfg: InferenceConfig) -> Tensor:
    """Class probabilities of whole inputs, averaged over the TTA scales and flips.

    Args:
        net: Segmentation net in eval mode.
        x: Normalised images or windows (B, 3, h, w).
        cfg: ``scales``, ``flip`` and how to run the net.

    Returns:
        Probabilities (B, C, h, w), float32.
    """
    h, w = x.shape[-2:]
    total: Tensor | None = None
    for scale in cfg.scales:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))  # 1x1 images stay 1x1
        xs = x if size == (h, w) else _resize(x, size)
        for flip in (False, True) if cfg.flip else (False,):
            logits = _logits(net, xs.flip(-1) if flip else xs, cfg)
            logits = logits.flip(-1) if flip else logits
            if logits.shape[-2:] != (h, w):
                logits = _resize(logits, (h, w))
            probs = class_probs(logits)
            total = probs if total is None else total + probs
    assert total is not None
    n = len(cfg.scales) * (2 if cfg.flip else 1)
    return total if n == 1 else total / n


@torch.inference_mode()
def predict_probs(net: nn.Module, x: Tensor, cfg: InferenceConfig | None = None) -> Tensor:
    """Class probabilities at the input size: TTA per window, windows averaged where they overlap.

    Args:
        net: Segmentation net in eval mode, on ``x``'s device.
        x: Normalised images (B, 3, H, W).
        cfg: Inference options; whole image, no TTA when None.

    Returns:
        Probabilities (B, C, H, W), float32.
    """
    cfg = cfg or InferenceConfig()
    ys, xs, ch, cw = windows(tuple(x.shape[-2:]), cfg)
    if len(ys) == len(xs) == 1:
        return tta_probs(net, x, cfg)
    b = x.shape[0]
    total: Tensor | None = None
    count = torch.zeros(1, 1, *x.shape[-2:], device=x.device)
    starts = [(y, x0) for y in ys for x0 in xs]
    for i in range(0, len(starts), cfg.window_batch):
        chunk = starts[i : i + cfg.window_batch]
        crops = torch.cat([x[..., y : y + ch, x0 : x0 + cw] for y, x0 in chunk])  # (n*B, 3, ch, cw)
        probs = tta_probs(net, crops, cfg)
        probs = probs.view(len(chunk), b, -1, ch, cw)  # (n, B, C, ch, cw)
        if total is None:
            total = x.new_zeros(b, probs.shape[2], *x.shape[-2:], dtype=torch.float32)
        for (y, x0), p in zip(chunk, probs, strict=True):
            total[..., y : y + ch, x0 : x0 + cw] += p
            count[..., y : y + ch, x0 : x0 + cw] += 1
    assert total is not None
    return total / count


@torch.inference_mode()
def predict_mask_banded(
    net: nn.Module,
    rows: Callable[[int, int], Tensor],
    size: tuple[int, int],
    cfg: InferenceConfig,
) -> Tensor:
    """Class mask of one (huge) image from sliding windows, one band of rows at a time.

    The windows, their TTA and the per-pixel average are those of :func:`predict_probs` in
    ``"slide"`` mode (always: a huge image is never run whole), added in the same order, so the
    mask equals ``scores_to_mask(predict_probs(net, x, cfg))``. But the image is normalised, and
    its probabilities kept, one band of ``crop`` rows at a time: memory is O(C * crop * W)
    floats plus the (H, W) uint8 mask, instead of O(C * H * W) floats (6.7 GB for 21 classes
    at 10000 x 8000).

    Args:
        net: Segmentation net mapping (n, 3, h, w) to logits (n, C, h, w), C <= 256.
        rows: ``rows(y0, y1)`` -> normalised image rows ``y0:y1``, (1, 3, y1 - y0, W).
        size: Image size (H, W).
        cfg: Crop, stride, window batch, TTA and how to run the net.

    Returns:
        Class indices (H, W), uint8, on the CPU.
    """
    cfg = dataclasses.replace(cfg, mode="slide")
    h, w = size
    ys, xs, ch, cw = windows(size, cfg)
    mask = torch.empty(h, w, dtype=torch.uint8)
    band: Tensor | None = None  # (ch, W, C) summed probabilities of rows [y, y + ch)
    for i, y in enumerate(ys):
        band = _add_band(net, rows(y, y + ch), xs, cw, cfg, band)
        end = ys[i + 1] if i + 1 < len(ys) else h  # rows above `end` are final
        mask[y:end] = band[: end - y].argmax(-1).to(torch.uint8)
        keep = ch - (end - y)  # rows [end, y + ch) overlap the next band
        band[:keep] = band[end - y :].clone()
        band[keep:] = 0
    return mask


def _add_band(
    net: nn.Module, strip: Tensor, xs: list[int], cw: int, cfg: InferenceConfig, band: Tensor | None
) -> Tensor:
    """Add the window probabilities of one strip (1, 3, ch, W) to ``band`` (ch, W, C).

    Classes are the band's last dimension: the per-pixel argmax then reads it contiguously.
    """
    device = device_of(net)
    for i in range(0, len(xs), cfg.window_batch):
        chunk = xs[i : i + cfg.window_batch]
        crops = torch.cat([strip[..., x0 : x0 + cw] for x0 in chunk]).to(device)  # (n, 3, ch, cw)
        probs = tta_probs(net, crops, cfg).cpu()  # (n, C, ch, cw)
        if band is None:
            band = torch.zeros(strip.shape[-2], strip.shape[-1], probs.shape[1])
        for x0, p in zip(chunk, probs, strict=True):
            band[:, x0 : x0 + cw] += p.permute(1, 2, 0)
    assert band is not None
    return band


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
        scores = _resize(scores.float(), tuple(size))
    # The argmax, as max's indices: both give the first of equal maxima (and a NaN's index),
    # but on the CPU argmax over the class dimension of (B, C, H, W) is far slower: 29 ms
    # against 1.3 ms for 21 classes of a 500 x 375 image on 2 cores, where the forward pass of
    # a MobileNetV2 U-Net takes 66 ms.
    return scores.max(dim=1).indices


def normalise(image: np.ndarray, transform: Any) -> Tensor:
    """An RGB uint8 image (H, W, 3) through a checkpoint's eval transform: (1, 3, H', W').

    A localization transform carries box parameters; it gets an empty box list (what it does to
    the image does not depend on the boxes).
    """
    extra = {}
    bbox = getattr(transform, "processors", {}).get("bboxes")
    if bbox is not None:
        extra = {
            "bboxes": np.zeros((0, 4), np.float32),
            **{f: [] for f in bbox.params.label_fields},
        }
    return transform(image=image, **extra)["image"].unsqueeze(0)


def image_rows(image: np.ndarray, transform: Any, y0: int, y1: int) -> Tensor:
    """Rows ``y0:y1`` of an image (H, W, 3), normalised alone: (1, 3, y1 - y0, W).

    Raises:
        ValueError: The transform is not pixel-wise (it changed the size), so rows cannot be
            normalised independently.
    """
    x = normalise(image[y0:y1], transform)
    if tuple(x.shape[-2:]) != (y1 - y0, image.shape[1]):
        raise ValueError(
            "the checkpoint's eval transform changes the image size, so large images cannot be "
            "predicted in bands; raise inference.slide_above"
        )
    return x


def predict_mask(net: nn.Module, image: np.ndarray, transform: Any, cfg: InferenceConfig) -> Tensor:
    """Class mask (H, W) uint8 of an RGB uint8 image (H, W, 3), at the image's own size.

    Images whose longer side exceeds ``cfg.slide_above`` go through :func:`predict_mask_banded`,
    so memory stays bounded by the image width instead of growing with classes x pixels.
    """
    h, w = image.shape[:2]
    if cfg.slide_above is None or max(h, w) <= cfg.slide_above:
        probs = predict_probs(net, normalise(image, transform).to(device_of(net)), cfg)
        return scores_to_mask(probs, (h, w))[0].to(torch.uint8).cpu()
    return predict_mask_banded(net, partial(image_rows, image, transform), (h, w), cfg)

"""The localization path: class probabilities, the box (and the mask) of one image."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from seg.inference.config import InferenceConfig
from seg.inference.masks import class_probs, device_of, normalise, run_net, scores_to_mask
from seg.models import BOX, CLS, has_seg_logits, seg_logits


@dataclass
class Localization:
    """What a classification + localization net predicts for one image.

    Attributes:
        probs: Class probabilities (K,).
        box: The top-1 class's box (4,): (x, y, w, h) normalised to [0, 1], top-left corner.
        mask: Class indices (H, W) uint8 at the image's size, when the net has a mask decoder.
    """

    probs: Tensor
    box: Tensor
    mask: Tensor | None = None


@torch.inference_mode()
def localize(
    net: nn.Module, image: np.ndarray, transform: Any, cfg: InferenceConfig
) -> Localization:
    """Class, box (and mask) of an RGB uint8 image (H, W, 3) from a localization net.

    The box is normalised by the network input's size; the eval transform only rescales the
    image, so it is the same fraction of the original image.
    """
    h, w = image.shape[:2]
    out = run_net(net, normalise(image, transform).to(device_of(net)), cfg)
    mask = None
    if has_seg_logits(out):
        probs = class_probs(seg_logits(out).float())  # (1, C, h', w')
        mask = scores_to_mask(probs, (h, w))[0].to(torch.uint8).cpu()
    box = out[BOX].float()[0].clamp(0, 1).cpu()
    return Localization(out[CLS].float().softmax(-1)[0].cpu(), box, mask)


def box_record(pred: Localization, size: tuple[int, int], class_names: Sequence[str]) -> dict:
    """The predicted class and box of one image, in the image's own pixels (as displayed).

    Args:
        pred: The net's prediction; ``pred.probs`` has one entry per name of ``class_names``.
        size: The image's (H, W), EXIF orientation applied.
        class_names: The names of the net's class logits.

    Returns:
        ``{"class", "class_index", "score", "box_xywh", "box_xyxy"}``; the box is clipped to the
        image.
    """
    h, w = size
    k = int(pred.probs.argmax())
    x, y, bw, bh = pred.box.tolist()
    x1, y1 = min(max(x * w, 0.0), w), min(max(y * h, 0.0), h)
    x2, y2 = min(max((x + bw) * w, x1), w), min(max((y + bh) * h, y1), h)
    return {
        "class": class_names[k],
        "class_index": k,
        "score": float(pred.probs[k]),
        "box_xywh": [x1, y1, x2 - x1, y2 - y1],
        "box_xyxy": [x1, y1, x2, y2],
    }

"""The localization path: class probabilities, the box (and the mask) of one image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from seg.inference.config import InferenceConfig
from seg.inference.masks import device_of, normalise, run_net, scores_to_mask
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
        probs = seg_logits(out).float().softmax(dim=1)  # (1, C, h', w')
        mask = scores_to_mask(probs, (h, w))[0].to(torch.uint8).cpu()
    box = out[BOX].float()[0].clamp(0, 1).cpu()
    return Localization(out[CLS].float().softmax(-1)[0].cpu(), box, mask)

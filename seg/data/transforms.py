"""Augmentation presets. The pipelines live in ``conf/augment/<name>.yaml`` (albumentations 2.x
``Compose`` nodes); this module only instantiates them for code that does not run under Hydra.

Segmentation presets take ``transform(image=uint8 (H, W, 3), mask=uint8 (H, W))`` and return
``image`` float32 (3, H', W') normalised with the ImageNet mean/std and ``mask`` (H', W'); padding
writes 0 into the image and 255 (``IGNORE_INDEX``) into the mask. Localization presets also take
``bboxes`` (N, 4) pixel xyxy and ``labels``.
"""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import numpy as np
from hydra.utils import instantiate
from omegaconf import OmegaConf

#: ``conf/augment`` of this checkout.
AUGMENT_DIR = Path(__file__).resolve().parents[2] / "conf" / "augment"


def load_preset(name: str = "voc", split: str = "train", crop_size: int | None = None) -> A.Compose:
    """Instantiate ``conf/augment/<name>.yaml``'s ``train`` or ``eval`` pipeline.

    Args:
        name: preset file name (``voc``, ``sample``, ``loc``).
        split: ``"train"`` or ``"eval"``.
        crop_size: overrides the preset's ``crop_size``.

    Returns:
        The albumentations Compose.
    """
    node = OmegaConf.load(AUGMENT_DIR / f"{name}.yaml")
    if crop_size is not None:
        node.crop_size = crop_size
    cfg = OmegaConf.create({"augment": node})  # the YAML interpolates ${augment.crop_size}
    return instantiate(cfg.augment[split], _convert_="all")


def denormalize(image: np.ndarray, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
    """Undo ``A.Normalize``: float (3, H, W) normalised -> uint8 (H, W, 3), e.g. for plots."""
    x = np.asarray(image, dtype=np.float32).transpose(1, 2, 0)  # (H, W, 3)
    return np.clip((x * np.asarray(std) + np.asarray(mean)) * 255.0 + 0.5, 0, 255).astype(np.uint8)

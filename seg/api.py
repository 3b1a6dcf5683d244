"""The Python API: ``seg.load(ckpt)`` gives a model that predicts on images in memory.

    import seg
    model = seg.load("outputs/quickstart/<run>/checkpoints/best.ckpt")
    mask = model.predict("photo.jpg")          # (H, W) uint8 class indices, the photo's size
    probs = model.predict_probs(pil_image)     # (C, H, W) float32 class probabilities
    model.classes                              # the class names, index = mask value

A localization checkpoint's ``predict`` returns the class and box record of ``predict.py``'s
``boxes.json`` (pixels of the image as displayed), with ``"mask"`` when its net has a mask
decoder. ``predict.py`` runs the same object, so the masks are the same; inference and TTA
options are ``predict.py``'s, given as Hydra overrides:
``seg.load(ckpt, ["tta.flip=true", "inference.mode=slide"])``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from PIL import Image

from seg.checkpoint import build_net, is_localization, load_checkpoint
from seg.data.classes import checkpoint_classes, checkpoint_logit_names
from seg.data.io import read_image, to_rgb
from seg.errors import InputError
from seg.inference import (
    InferenceConfig,
    box_record,
    localize,
    normalise,
    predict_mask,
    predict_probs,
    prepare_net,
)
from seg.models import has_seg_logits

#: ``conf/`` of this checkout (the entry points' configs).
CONF = Path(__file__).resolve().parents[1] / "conf"

ImageLike = str | Path | Image.Image | np.ndarray


def inference_config(overrides: Sequence[str] = ()) -> InferenceConfig:
    """The ``inference`` / ``tta`` options ``predict.py`` would use with these overrides.

    Raises:
        ConfigError: An invalid option, named on one line.
    """
    from hydra import compose, initialize_config_dir

    from seg.validate import validate_config

    fixed = ["ckpt=unused", "input=unused", "output=unused"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="predict", overrides=[*fixed, *overrides])
    validate_config(cfg)
    return InferenceConfig.from_config(cfg)


class Model:
    """A trained checkpoint ready to predict (see the module docstring).

    Args:
        ckpt: Path of a checkpoint written by ``train.py``.
        infer: Inference options (``inference_config()``: predict.py's defaults).
        device: Where the net runs; the GPU when there is one, by default.
        images: How many images this model will predict, when known: with
            ``inference.compile=auto`` it decides whether compiling pays (``predict.py`` passes
            its input count; unknown stays eager).
    """

    def __init__(
        self,
        ckpt: str | Path,
        infer: InferenceConfig,
        device: str | torch.device | None = None,
        images: int | None = None,
    ) -> None:
        loaded = load_checkpoint(ckpt)
        self.path = Path(ckpt)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        layout = torch.channels_last if infer.channels_last else torch.contiguous_format
        net = build_net(loaded, ckpt, layout).to(self.device)  # the layout inference runs in
        self.transform = instantiate(loaded["seg_config"]["augment"]["eval"])
        self.infer = infer
        self.classes, self.palette = checkpoint_classes(loaded)
        #: Names of the class logits of a localization net; None for a segmentation net.
        self.logit_names = checkpoint_logit_names(loaded) if is_localization(loaded) else None
        self.predicts_masks = self.logit_names is None or self._has_mask_output(net)
        # What inference runs: the net, or the net compiled (a localizer's inputs have one
        # fixed size, so its shapes are never bucketed: padding would move its box). The net
        # is handed over: its bf16 copy is made in place, not beside it (one set of weights).
        bucket = self.logit_names is None
        self.runner = prepare_net(net, infer, images, bucket=bucket, owned=True)

    @torch.inference_mode()
    def _has_mask_output(self, net: torch.nn.Module) -> bool:
        return has_seg_logits(net(torch.zeros(1, 3, 64, 64, device=self.device)))

    @staticmethod
    def rgb(image: ImageLike) -> np.ndarray:
        """A path, PIL image or (H, W, 3) uint8 array as upright RGB uint8 (H, W, 3)."""
        if isinstance(image, str | Path):
            return read_image(image)
        if isinstance(image, Image.Image):
            return to_rgb(image.copy(), "image")  # EXIF applied to a copy, not the caller's
        array = np.asarray(image)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise InputError(
                f"image: expected an (H, W, 3) uint8 array, got {array.dtype} {array.shape}"
            )
        return array

    def predict(self, image: ImageLike) -> np.ndarray | dict[str, Any]:
        """The mask (H, W) uint8 of an image, or, for a localization net, its box record."""
        rgb = self.rgb(image)
        if self.logit_names is None:
            return predict_mask(self.runner, rgb, self.transform, self.infer).numpy()
        pred = localize(self.runner, rgb, self.transform, self.infer)
        record = box_record(pred, rgb.shape[:2], self.logit_names)
        return record | ({"mask": pred.mask.numpy()} if pred.mask is not None else {})

    def predict_probs(self, image: ImageLike) -> np.ndarray:
        """Class probabilities (C, H, W) float32 at the image's size (segmentation nets)."""
        if self.logit_names is not None:
            raise InputError(f"{self.path}: a localization checkpoint has no pixel probabilities")
        rgb = self.rgb(image)
        x = normalise(rgb, self.transform).to(self.device)
        probs = predict_probs(self.runner, x, self.infer)  # (1, C, h, w)
        if probs.shape[-2:] != rgb.shape[:2]:  # a resizing eval transform: back to the image
            size = rgb.shape[:2]
            probs = F.interpolate(probs, size=size, mode="bilinear", align_corners=False)
        return probs[0].cpu().numpy()


def load(
    ckpt: str | Path,
    overrides: Sequence[str] = (),
    device: str | torch.device | None = None,
    images: int | None = None,
) -> Model:
    """Load a checkpoint for prediction in Python; see the module docstring.

    Args:
        ckpt: Path of a checkpoint written by ``train.py``.
        overrides: ``predict.py``'s inference / TTA options as Hydra overrides.
        device: Where the net runs (default: the GPU when there is one).
        images: How many images you will predict, if known: ``inference.compile=auto`` compiles
            the net when that repays the compile (``["inference.compile=true"]`` forces it).

    Raises:
        CheckpointError: The checkpoint cannot be used.
        ConfigError: An invalid inference option.
    """
    return Model(ckpt, inference_config(overrides), device, images)

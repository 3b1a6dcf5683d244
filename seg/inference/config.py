"""How to run a segmentation net on full images: :class:`InferenceConfig`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

MODES = ("whole", "slide")
COMPILE = ("auto", True, False)


@dataclass
class InferenceConfig:
    """How to run a segmentation net on full images (``conf/inference/default.yaml``).

    Attributes:
        mode: ``"whole"`` runs the net on the full image; ``"slide"`` on overlapping windows.
        crop: Sliding-window side (pixels); windows are never larger than the image.
        stride: Sliding-window stride (pixels); ``crop * 2 // 3`` when None.
        flip: Also run on the horizontally flipped image and average the probabilities.
        scales: Image scales to average the probabilities over (1.0 = original size).
        window_batch: How many windows go through the net at once (bounds memory).
        autocast: Run the net under bf16 autocast (CPU with native bf16, or GPU). False leaves
            the caller's autocast state alone (e.g. Lightning's precision during validation).
        channels_last: Feed the net channels_last tensors.
        slide_above: :func:`predict_mask` goes band by band (sliding windows, memory bounded by
            the width) for images whose longer side exceeds this; None: never.
        compile: ``"auto"``, True or False: run the net through ``torch.compile``
            (:mod:`seg.inference.compiled`); auto compiles runs of ``compile_min_images`` or more.
        compile_min_images: The run length from which ``auto`` compiles.
        bucket: Compiled inputs are padded to a multiple of this many pixels per side.
    """

    mode: str = "whole"
    crop: int = 512
    stride: int | None = None
    flip: bool = False
    scales: Sequence[float] = field(default_factory=lambda: (1.0,))
    window_batch: int = 4
    autocast: bool = False
    channels_last: bool = False
    slide_above: int | None = None
    compile: bool | str = False
    compile_min_images: int = 10000
    bucket: int = 32

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"inference.mode must be one of {MODES}, got {self.mode!r}")
        if self.crop <= 0 or (self.stride is not None and self.stride <= 0):
            raise ValueError(
                f"inference.crop and inference.stride must be positive, got {self.crop}, {self.stride}"
            )
        if self.stride is not None and self.stride > self.crop:
            raise ValueError(
                f"inference.stride={self.stride} is larger than inference.crop={self.crop} "
                "(sliding windows would leave pixels unpredicted)"
            )
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ValueError(f"inference.scales must be positive numbers, got {list(self.scales)}")
        self.scales = tuple(float(s) for s in self.scales)
        if self.compile not in COMPILE:
            raise ValueError(f"inference.compile must be auto, true or false, got {self.compile!r}")

    @classmethod
    def from_config(cls, cfg: Any) -> InferenceConfig:
        """Build from the ``inference`` and ``tta`` nodes of an entry-point config."""
        from omegaconf import OmegaConf

        opts = OmegaConf.to_container(cfg.inference, resolve=True)
        tta = OmegaConf.to_container(cfg.tta, resolve=True)
        return cls(**opts, flip=tta["flip"], scales=tuple(tta["scales"]))

    @property
    def window_stride(self) -> int:
        return self.stride or max(self.crop * 2 // 3, 1)

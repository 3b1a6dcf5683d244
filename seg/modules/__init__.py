"""LightningModules: they own losses, metrics, optimizers and schedules; nets stay plain."""

from seg.modules.localization import LocalizationModule
from seg.modules.segmentation import SegmentationModule

__all__ = ["LocalizationModule", "SegmentationModule"]

"""Evaluation metrics (torchmetrics ``Metric``s, summed across DDP processes): segmentation
scores from one confusion matrix (:mod:`.segmentation`) and single-object localization scores
(:mod:`.localization`)."""

from seg.metrics.localization import LocalizationMetrics
from seg.metrics.segmentation import SegmentationMetrics, metrics_from_confmat

__all__ = ["LocalizationMetrics", "SegmentationMetrics", "metrics_from_confmat"]

"""LightningModules: they own losses, metrics, optimizers and schedules; nets stay plain.

:mod:`seg.modules.base` holds what both tasks share; ``segmentation`` and ``localization`` add
their loss, evaluation step and metric.
"""

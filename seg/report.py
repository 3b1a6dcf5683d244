"""Human-facing outputs of an evaluation: the per-class table, metrics.json, the confusion plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from torch import Tensor

from seg.metrics import SegmentationMetrics
from seg.utils import nan_to_none


def metrics_record(
    results: dict[str, Any], class_names: Sequence[str], checkpoint: str
) -> dict[str, Any]:
    """The ``metrics.json`` record of an evaluation.

    Args:
        results: ``SegmentationMetrics.compute()`` output (scores, per-class IoU, image count).
        class_names: Names of the C classes.
        checkpoint: Path of the evaluated checkpoint.

    Returns:
        Keys ``mIoU``, ``pixel_accuracy``, ``mean_accuracy``, ``fw_IoU``, ``per_class_IoU``
        (name -> IoU, or None for a class absent from ground truth and prediction),
        ``num_images`` and ``checkpoint``.
    """
    per_class = results["per_class_IoU"].tolist()
    return nan_to_none(
        {
            **{key: float(results[key]) for key in SegmentationMetrics.SCORES},
            "per_class_IoU": dict(zip(class_names, per_class, strict=True)),
            "num_images": int(results["num_images"]),
            "checkpoint": checkpoint,
        }
    )


def print_table(record: dict[str, Any], console: Console | None = None) -> None:
    """Print the per-class IoU table and the summary scores."""
    table = Table(title="Per-class IoU", show_edge=False)
    table.add_column("class")
    table.add_column("IoU", justify="right")
    for name, iou in record["per_class_IoU"].items():
        table.add_row(name, "—" if iou is None else f"{100 * iou:.2f}")
    table.add_section()
    for key in SegmentationMetrics.SCORES:
        table.add_row(f"[bold]{key}", f"[bold]{100 * record[key]:.2f}")
    (console or Console()).print(table)


def plot_confusion(confmat: Tensor, class_names: Sequence[str], path: str | Path) -> None:
    """Save the row-normalised confusion matrix (rows: ground truth) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = confmat.double().numpy()
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(0.45 * n + 2, 0.45 * n + 1.5))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=90, fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

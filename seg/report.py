"""Human-facing outputs of an evaluation: ``metrics.json`` records, the per-class table, plots.

Segmentation records carry the VOC scores with per-class IoU and per-class accuracy (recall, as
mmsegmentation prints next to IoU); localization records carry the classification and
localization scores with a per-class breakdown.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from torch import Tensor

from seg.metrics import LocalizationMetrics, SegmentationMetrics
from seg.utils import nan_to_none


def metrics_record(
    results: dict[str, Any], class_names: Sequence[str], checkpoint: str
) -> dict[str, Any]:
    """The ``metrics.json`` record of a segmentation evaluation.

    Args:
        results: ``SegmentationMetrics.compute()`` output (scores, per-class values, image count).
        class_names: Names of the C classes.
        checkpoint: Path of the evaluated checkpoint.

    Returns:
        Keys ``mIoU``, ``pixel_accuracy``, ``mean_accuracy``, ``fw_IoU``, ``per_class_IoU`` and
        ``per_class_accuracy`` (name -> value, or None for a class absent from ground truth and
        prediction / from ground truth), ``num_images`` and ``checkpoint``.
    """
    per_class = {
        key: dict(zip(class_names, results[key].tolist(), strict=True))
        for key in ("per_class_IoU", "per_class_accuracy")
    }
    return nan_to_none(
        {
            "task": "segmentation",
            **{key: float(results[key]) for key in SegmentationMetrics.SCORES},
            **per_class,
            "num_images": int(results["num_images"]),
            "checkpoint": checkpoint,
        }
    )


def localization_record(
    results: dict[str, Any], class_names: Sequence[str], checkpoint: str
) -> dict[str, Any]:
    """The ``metrics.json`` record of a localization evaluation.

    Args:
        results: ``LocalizationMetrics.compute()`` output.
        class_names: Names of the K class logits.
        checkpoint: Path of the evaluated checkpoint.

    Returns:
        The scores of :attr:`LocalizationMetrics.SCORES`, ``per_class`` (name -> ``images`` and
        each score, None for a class without images), ``num_images`` and ``checkpoint``.
    """
    counts = results["count"].tolist()
    per_class = {
        name: {"images": n, **{k: float(v[i]) for k, v in results["per_class"].items()}}
        for i, (name, n) in enumerate(zip(class_names, counts, strict=True))
    }
    return nan_to_none(
        {
            "task": "localization",
            **{key: float(results[key]) for key in LocalizationMetrics.SCORES},
            "per_class": per_class,
            "num_images": int(results["num_images"]),
            "checkpoint": checkpoint,
        }
    )


def print_table(record: dict[str, Any], console: Console | None = None) -> None:
    """Print the per-class table and the summary scores of a record (values in %)."""
    if record["task"] == "segmentation":
        columns, scores = ("IoU", "accuracy"), SegmentationMetrics.SCORES
        rows = {
            name: {"IoU": iou, "accuracy": record["per_class_accuracy"][name]}
            for name, iou in record["per_class_IoU"].items()
        }
    else:
        columns, scores = ("images", *LocalizationMetrics.SCORES), LocalizationMetrics.SCORES
        rows = record["per_class"]
    table = Table(title=f"Per class ({record['num_images']} images)", show_edge=False)
    table.add_column("class", no_wrap=True)
    for column in columns:
        table.add_column(SHORT.get(column, column), justify="right")
    for name, values in rows.items():
        table.add_row(name, *(_cell(values[c], percent=c != "images") for c in columns))
    summary = Table(show_edge=False, show_header=False)
    for key in scores:
        summary.add_row(f"[bold]{key}", f"[bold]{_cell(record[key])}")
    console = console or Console()
    console.print(table)
    console.print(summary)


#: Column titles of the localization table (the full names are the metrics.json keys).
SHORT = {
    "loc_acc": "loc",
    "loc_acc_top5": "loc@5",
    "cls_acc": "cls",
    "cls_acc_top5": "cls@5",
    "gt_known_loc": "GT-box",
    "mean_IoU": "IoU",
}


def _cell(value: float | None, percent: bool = True) -> str:
    if value is None:
        return "—"
    return f"{100 * value:.2f}" if percent else str(value)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(confmat: Tensor, class_names: Sequence[str], path: str | Path) -> None:
    """Save the row-normalised confusion matrix (rows: ground truth) as a PNG."""
    plt = _pyplot()
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


def plot_localization(record: dict[str, Any], iou_hist: Tensor, path: str | Path) -> None:
    """Save the IoU histogram of the predicted boxes and the per-class accuracies as a PNG."""
    plt = _pyplot()
    fig, (hist, bars) = plt.subplots(1, 2, figsize=(13, 4.5), width_ratios=(1, 2))
    edges = np.linspace(0, 1, len(iou_hist) + 1)
    hist.bar(edges[:-1], iou_hist.numpy(), width=np.diff(edges), align="edge", edgecolor="white")
    hist.axvline(0.5, color="red", linestyle="--", label="IoU 0.5")
    hist.set(xlabel="IoU of the predicted box", ylabel="images", title="Box IoU")
    hist.legend()
    names = [n for n, v in record["per_class"].items() if v["images"]]
    x = np.arange(len(names))
    for i, key in enumerate(("cls_acc", "loc_acc", "CorLoc")):
        values = [record["per_class"][n][key] for n in names]
        bars.bar(x + (i - 1) * 0.27, values, width=0.27, label=key)
    bars.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
    bars.set(ylim=(0, 1), title="Per class (classes with images)")
    bars.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

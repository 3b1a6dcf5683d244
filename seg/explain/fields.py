"""Receptive field of each stage: measured with the trained weights, and the architecture's.

Luo et al., "Understanding the Effective Receptive Field in Deep Convolutional Neural Networks",
NeurIPS 2016, https://arxiv.org/abs/1701.04128. Both numbers come from
:func:`seg.models.receptive_field.receptive_field` run on the net cut after the stage
(:class:`~seg.explain.layers.LayerOutput`): the *theoretical* field with ``geometric=True``
(every connection counted, as kernel sizes, strides and dilations add up) and the *empirical*
one with the real weights (``geometric=False``: input pixels whose gradient at the centre
output is non-zero; dead ReLUs and max pooling can only make it smaller).
"""

from __future__ import annotations

import warnings

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle
from torch import nn

from seg.explain.layers import Layer, LayerOutput
from seg.models.receptive_field import receptive_field


def measure(net: nn.Module, layer: Layer, size: int, geometric: bool) -> dict:
    """The field (h, w) of ``layer``'s centre output on a ``size`` x ``size`` probe.

    Returns:
        ``{"size": [h, w] or None, "clipped": bool}``: None when no input pixel reaches the
        centre output (all its inputs are dead); ``clipped`` when the field reached the probe's
        border, so it is at least that large (measure with a larger ``receptive_field.size``).
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            field = receptive_field(LayerOutput(net, layer.name), size, geometric=geometric)
        except ValueError:  # no pixel reaches the centre output
            return {"size": None, "clipped": False}
    clipped = any("border" in str(w.message) for w in caught)
    return {"size": list(field), "clipped": clipped}


def _label(entry: dict) -> str:
    size = entry["size"]
    if size is None:
        return "none"
    return f"{'≥' if entry['clipped'] else ''}{size[0]}x{size[1]}"


def draw(image: np.ndarray, rows: list[dict]) -> plt.Figure:
    """Boxes of each stage's field centred on the image centre: solid = empirical (trained
    weights), dashed = theoretical. The axes grow to show fields larger than the image."""
    h, w = image.shape[:2]
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(image)
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, max(len(rows), 1)))
    left, top, right, bottom = 0.0, 0.0, float(w), float(h)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    for row, colour in zip(rows, colours, strict=False):
        for key, style in (("theoretical", "--"), ("empirical", "-")):
            if row[key]["size"] is None:
                continue
            fh, fw = row[key]["size"]
            y0, x0 = cy - (fh - 1) / 2, cx - (fw - 1) / 2
            label = f"{row['layer']} {key} {_label(row[key])}"
            ax.add_patch(
                Rectangle((x0, y0), fw, fh, fill=False, ls=style, lw=1.5, ec=colour, label=label)
            )
            left, top = min(left, x0), min(top, y0)
            right, bottom = max(right, x0 + fw), max(bottom, y0 + fh)
    ax.set_xlim(left - 2, right + 2)
    ax.set_ylim(bottom + 2, top - 2)  # image rows grow downwards
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("Receptive field per stage (centre output): empirical vs theoretical", fontsize=9)
    fig.tight_layout()
    return fig

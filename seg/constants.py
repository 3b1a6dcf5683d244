"""Project-wide constants: the ignore label, the VOC class names and the VOC palette.

This is the single place these live. Everything else (loss, metrics, mask padding,
mask writing) imports them from here or re-exports them (``seg.data.voc``).
"""

from __future__ import annotations

#: Label of "void" pixels (object borders, difficult regions) and of mask padding.
#: Ignored by the loss and by every metric.
IGNORE_INDEX: int = 255

#: The 21 PASCAL VOC classes, in the devkit's order (index = label value).
VOC_CLASSES: tuple[str, ...] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

NUM_CLASSES: int = len(VOC_CLASSES)


def _voc_colormap(n: int = 256) -> list[int]:
    """The devkit's ``VOClabelcolormap.m``: bit-interleaved RGB colours for labels 0..n-1.

    Returns:
        A flat list ``[r0, g0, b0, r1, g1, b1, ...]`` of length ``3 * n``, as PIL's
        ``Image.putpalette`` wants it. Label 255 maps to (224, 224, 192).
    """
    palette: list[int] = []
    for label in range(n):
        r = g = b = 0
        c = label
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.extend((r, g, b))
    return palette


#: The VOC colour palette: 256 RGB triplets flattened to 768 ints (PIL ``putpalette`` layout).
VOC_PALETTE: list[int] = _voc_colormap(256)

"""Top-activating image patches per channel, found in one streaming pass over the data.

Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014,
https://arxiv.org/abs/1311.2901 (Fig. 2: for each feature map, the 9 image patches that excite
it most over the validation set, each cropped at the unit's receptive field).

The pass keeps, per layer and channel, a running top-k of (value, image, y, x): each image
contributes its own maximum of each channel (so the k patches come from k different images,
as in the paper) and the buffer keeps the k largest seen so far. It also accumulates each
channel's mean and standard deviation over all positions. Memory is O(C k) per layer whatever
the data size; no activation outlives its image.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from seg.explain.data import Images, Pixels
from seg.explain.layers import Layer, activations


class ChannelTopK:
    """Running top-k activations and moments of each channel of one layer.

    Attributes:
        values: (C, k) float, largest per-image maxima so far, descending; -inf when unfilled.
        image, y, x: (C, k) int64, where each value was found (image index, row, column of the
            layer's output grid); -1 when unfilled.
    """

    def __init__(self, channels: int, k: int, device: torch.device | str = "cpu") -> None:
        self.k = k
        self.values = torch.full((channels, k), -math.inf, device=device)
        self.image = torch.full((channels, k), -1, dtype=torch.long, device=device)
        self.y, self.x = self.image.clone(), self.image.clone()
        self.total = torch.zeros(channels, dtype=torch.float64, device=device)
        self.total_sq = torch.zeros_like(self.total)
        self.count = 0

    def update(self, act: Tensor, image: int) -> None:
        """Add one image's activation map (C, h, w)."""
        flat = act.flatten(1).float()  # (C, h*w)
        peak, where = flat.max(dim=1)  # (C,)
        width = act.shape[-1]
        new = (peak, torch.full_like(where, image), where // width, where % width)
        old = (self.values, self.image, self.y, self.x)
        merged = [torch.cat([o, n[:, None]], dim=1) for o, n in zip(old, new, strict=True)]
        order = merged[0].topk(self.k, dim=1).indices  # (C, k), descending
        self.values, self.image, self.y, self.x = (m.gather(1, order) for m in merged)
        flat64 = flat.double()
        self.total += flat64.sum(dim=1)
        self.total_sq += flat64.square().sum(dim=1)
        self.count += flat.shape[1]

    @property
    def mean(self) -> Tensor:
        """(C,) mean activation over every position of every image."""
        return self.total / max(self.count, 1)

    @property
    def std(self) -> Tensor:
        """(C,) standard deviation over every position of every image."""
        var = self.total_sq / max(self.count, 1) - self.mean.square()
        return var.clamp_min(0).sqrt()


def seen_cells(act: Tensor, size: tuple[int, int], stride: float) -> Tensor:
    """Crop an activation map (..., h, w) to the cells whose centres lie on the image: nets
    pad inputs to a multiple of their stride, and padding is not part of the data."""
    rows, cols = (max(1, math.ceil(s / stride)) for s in size)
    return act[..., :rows, :cols]


@torch.inference_mode()
def stream(
    net: nn.Module, layers: list[Layer], images: Images, pixels: Pixels, k: int
) -> dict[str, ChannelTopK]:
    """One pass over ``images``: the running top-k and moments of every channel of ``layers``.

    Args:
        net: The net, in eval mode.
        layers: Layers to record.
        images: The data; unreadable images are recorded in ``images.failed`` and skipped.
        pixels: The checkpoint's normalisation.
        k: Patches kept per channel.

    Returns:
        layer name -> its :class:`ChannelTopK`.
    """
    device = next(net.parameters()).device
    stats = {lay.name: ChannelTopK(lay.channels, k, device) for lay in layers}
    names = [lay.name for lay in layers]
    for i, _, image in images.each(range(len(images.paths)), "Streaming activations"):
        acts = images.attempt(i, activations, net, pixels(image, device), names)
        for lay in layers if acts is not None else ():
            act = seen_cells(acts[lay.name][0], image.shape[:2], lay.stride)  # (C, h, w)
            stats[lay.name].update(act, i)
    return stats


def centre(cell: int, stride: float) -> float:
    """Input coordinate of the centre of output cell ``cell`` (within half a stride)."""
    return (cell + 0.5) * stride - 0.5


def crop_centred(image: np.ndarray, cy: float, cx: float, size: tuple[int, int]) -> np.ndarray:
    """The (h, w, 3) window of ``image`` centred at (cy, cx); outside the image is grey.

    Keeping the whole window (instead of clipping it to the image) keeps the exciting position
    at the centre of every patch and shows how much of the field lies off the image.
    """
    h, w = size
    canvas = np.full((h, w, 3), 128, dtype=np.uint8)
    y0, x0 = round(cy - (h - 1) / 2), round(cx - (w - 1) / 2)
    sy0, sx0 = max(y0, 0), max(x0, 0)
    sy1, sx1 = min(y0 + h, image.shape[0]), min(x0 + w, image.shape[1])
    if sy1 > sy0 and sx1 > sx0:
        canvas[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return canvas


@dataclass
class Patch:
    """One cell of a patch grid: where it came from, its value and its thumbnail."""

    layer: str
    row: int  # position of its channel in the grid
    col: int  # rank, 0 = strongest
    channel: int
    image: int
    y: int
    x: int
    value: float
    thumb: np.ndarray | None = None


def top_patches(
    stats: dict[str, ChannelTopK],
    channels: dict[str, list[int]],
    layers: dict[str, Layer],
    fields: dict[str, tuple[int, int]],
    images: Images,
    thumb: int,
) -> list[Patch]:
    """Crop every top patch of the chosen channels, reading each image once.

    Args:
        stats: The pass's statistics, per layer.
        channels: layer -> channels to show, in grid order.
        layers: The layers.
        fields: layer -> receptive field (h, w), the crop size.
        images: The data the pass ran on.
        thumb: Side of the square thumbnails.

    Returns:
        The patches, with ``thumb`` (thumb, thumb, 3) uint8 set.
    """
    patches = []
    for name, chosen in channels.items():
        s = stats[name]
        for row, c in enumerate(chosen):
            for col in range(s.k):
                if s.image[c, col] >= 0:
                    where = (int(s.image[c, col]), int(s.y[c, col]), int(s.x[c, col]))
                    patches.append(Patch(name, row, col, c, *where, float(s.values[c, col])))
    by_image: defaultdict[int, list[Patch]] = defaultdict(list)
    for p in patches:
        by_image[p.image].append(p)
    for i, _, image in images.each(sorted(by_image), "Cropping patches"):
        for p in by_image[i]:
            stride = layers[p.layer].stride
            crop = crop_centred(image, centre(p.y, stride), centre(p.x, stride), fields[p.layer])
            p.thumb = np.asarray(Image.fromarray(crop).resize((thumb, thumb), Image.BILINEAR))
    return [p for p in patches if p.thumb is not None]


def draw_grid(layer: Layer, patches: list[Patch], channels: list[int], k: int, field: tuple):
    """One figure per layer: a row per channel, its k patches strongest first, each titled
    with its activation. Drawn as one mosaic image (one ``imshow``, not rows x k axes).

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    rows = max(len(channels), 1)
    side = patches[0].thumb.shape[0] if patches else 8
    step = side + 4  # thumbnails with a white gap
    mosaic = np.full((rows * step, k * step, 3), 255, dtype=np.uint8)
    fig, ax = plt.subplots(figsize=(0.95 * k + 0.8, 1.0 * rows + 0.6))
    for p in patches:
        y, x = p.row * step, p.col * step
        mosaic[y : y + side, x : x + side] = p.thumb
        ax.text(
            x + 1,
            y + 1,
            f"{p.value:.3g}",
            fontsize=6,
            va="top",
            color="white",
            bbox={"facecolor": "black", "alpha": 0.5, "pad": 0.5, "lw": 0},
        )
    ax.imshow(mosaic)
    ax.set_xticks([(col + 0.5) * step for col in range(k)], [str(c + 1) for c in range(k)])
    ax.set_yticks([(row + 0.5) * step for row in range(rows)], [f"ch {c}" for c in channels])
    ax.tick_params(length=0, labelsize=7)
    ax.set_frame_on(False)
    ax.set_title(
        f"{layer.name}: top-{k} patches per channel (field {field[0]}x{field[1]} px, "
        f"stride {layer.stride:g})",
        fontsize=9,
    )
    return fig

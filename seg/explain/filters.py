"""The first convolution's kernels as colour images, and per-channel statistics of deeper layers.

First-layer filters of a trained net are directly interpretable (oriented edges, colour
blobs; Zeiler & Fergus 2014, https://arxiv.org/abs/1311.2901, Fig. 2 layer 1); deeper kernels
are not, so deeper layers are summarised per channel: the norm of the weights that make each
channel, and its mean and spread over the data (dead channels, dominant channels).
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from seg.explain.figures import no_ticks
from seg.explain.layers import Layer
from seg.explain.patches import ChannelTopK


def kernel_images(weight: torch.Tensor) -> np.ndarray:
    """Kernels (C_out, 3, k, k) -> RGB images (C_out, k, k, 3) in [0, 1].

    Each kernel is scaled by its own largest absolute weight around grey (0.5 = zero weight),
    so its pattern shows whatever its norm, and positive and negative weights stay apart.
    """
    w = weight.detach().float().cpu()
    if w.shape[1] != 3:  # not an RGB input: show the mean over input channels in grey
        w = w.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    scale = w.flatten(1).abs().amax(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return (0.5 + 0.5 * w / scale).permute(0, 2, 3, 1).numpy()


def draw_first_conv(name: str, conv: nn.Conv2d) -> plt.Figure:
    """A grid of the first convolution's kernels, one RGB tile each."""
    tiles = kernel_images(conv.weight)  # (C_out, k, k, 3)
    n = len(tiles)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(0.7 * cols + 0.4, 0.7 * rows + 0.6), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    for i, tile in enumerate(tiles):
        axes.flat[i].imshow(tile, interpolation="nearest")
    k = tuple(conv.kernel_size)
    fig.suptitle(f"{name}: {n} kernels {k[0]}x{k[1]}, stride {conv.stride[0]}", fontsize=9)
    return fig


def weight_norms(module: nn.Module) -> np.ndarray:
    """L2 norm of each output channel's weights (C_out,) of a conv or linear layer."""
    w = module.weight.detach().float().cpu()
    if isinstance(module, nn.ConvTranspose2d):  # (C_in, C_out / groups, k, k)
        w = w.transpose(0, 1)
    return w.flatten(1).norm(dim=1).numpy()


def draw_channel_stats(
    net: nn.Module, layers: list[Layer], stats: dict[str, ChannelTopK] | None
) -> plt.Figure:
    """Per layer: weight norms per channel and activation mean +- std over the data.

    Channels are sorted by mean activation (strongest first) in both panels of a row, so a
    channel's weight norm sits above its activation.
    """
    fig, axes = plt.subplots(len(layers), 2, figsize=(11, 2.2 * len(layers) + 0.4), squeeze=False)
    for (left, right), lay in zip(axes, layers, strict=True):
        s = stats.get(lay.name) if stats else None
        order = np.arange(lay.channels)
        if s is not None and s.count:
            mean, std = s.mean.cpu().numpy(), s.std.cpu().numpy()
            order = np.argsort(-mean, kind="stable")
            rank = np.arange(len(order))
            m, sd = mean[order], std[order]
            right.fill_between(rank, m - sd, m + sd, alpha=0.3, step="mid", label="± std")
            right.plot(rank, m, drawstyle="steps-mid", lw=1, label="mean")
            right.legend(fontsize=6, loc="upper right")
            right.axhline(0, color="grey", lw=0.5)
            right.set_title(f"{lay.name}: activation mean ± std over the data", fontsize=8)
        else:
            right.text(0.5, 0.5, "no data", ha="center", va="center")
            no_ticks(right)
        if lay.weight is not None:
            norms = weight_norms(net.get_submodule(lay.weight))
            left.bar(np.arange(len(order)), norms[order], width=1.0)
            left.set_title(f"{lay.weight}: weight L2 norm per channel", fontsize=8)
        else:
            left.text(0.5, 0.5, "no weights", ha="center", va="center")
            no_ticks(left)
        for ax in (left, right):
            ax.set_xlabel(f"{lay.channels} channels, by decreasing mean activation", fontsize=7)
            ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig

"""The five figure kinds of ``explain.py``, each ``kind(ctx) -> [Figure]`` (see :mod:`.run`).

Each function turns the computations of its module (:mod:`.filters`, :mod:`.patches`,
:mod:`.maximize`, :mod:`.cam`, :mod:`.fields`) into PNG files under the output folder and the
records of ``index.json``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image

from seg.explain import cam as gradcam
from seg.explain import fields as rf
from seg.explain import filters as filt
from seg.explain import maximize as maxim
from seg.explain.data import class_indices
from seg.explain.figures import Figure, save, timer
from seg.explain.options import plain
from seg.explain.patches import draw_grid, top_patches
from seg.inference import predict_probs, scores_to_mask
from seg.models import CLS
from seg.outputs import overlay
from seg.predict import safe_stem
from seg.utils import atomic_write_bytes, write_json

if TYPE_CHECKING:
    from seg.explain.run import Context


def filters(ctx: Context) -> list[Figure]:
    """``filters/first_conv.png`` and ``filters/channel_stats.png``."""
    figures = []
    if ctx.catalogue.first_conv is not None:
        with timer() as t:
            name = ctx.catalogue.first_conv
            fig = filt.draw_first_conv(name, ctx.net.get_submodule(name))
            path = save(fig, ctx.out, "filters/first_conv.png")
        figures.append(Figure(path, "filters", t["seconds"], layer=name))
    with timer() as t:
        fig = filt.draw_channel_stats(ctx.net, ctx.layers, ctx.stats)
        path = save(fig, ctx.out, "filters/channel_stats.png")
    settings = {"layers": [lay.name for lay in ctx.layers], "images": len(ctx.images.paths)}
    figures.append(Figure(path, "channel_stats", t["seconds"], settings=settings))
    return figures


def _channels(ctx: Context, name: str, channels: int) -> list[int]:
    """``patches.channels``: the n channels of highest mean activation, or the given ones."""
    chosen = plain(ctx.cfg.patches.channels)
    if isinstance(chosen, int):
        return ctx.stats[name].mean.argsort(descending=True)[:chosen].tolist()
    return [int(c) for c in chosen]  # checked against every layer's channels in run.build


def patches(ctx: Context) -> list[Figure]:
    """``patches/<layer>.png``: per layer, the top-k patches of its chosen channels."""
    k, thumb = int(ctx.cfg.patches.k), int(ctx.cfg.patches.thumb)
    with timer() as t:
        chosen = {lay.name: _channels(ctx, lay.name, lay.channels) for lay in ctx.layers}
        crop = {}
        for lay in ctx.layers:
            size = ctx.field_of(lay, geometric=True)["size"] or [int(lay.stride)] * 2
            crop[lay.name] = tuple(size)
        found = top_patches(
            ctx.stats, chosen, {lay.name: lay for lay in ctx.layers}, crop, ctx.images, thumb
        )
    figures = []
    for lay in ctx.layers:
        with timer() as t2:
            mine = [p for p in found if p.layer == lay.name]
            fig = draw_grid(lay, mine, chosen[lay.name], k, crop[lay.name])
            path = save(fig, ctx.out, f"patches/{safe_stem_of(lay.name)}.png")
        top = {
            str(c): [
                {"value": p.value, "image": str(ctx.images.paths[p.image]), "cell": [p.y, p.x]}
                for p in mine
                if p.channel == c
            ]
            for c in chosen[lay.name]
        }
        settings = {"k": k, "field": list(crop[lay.name]), "stride": lay.stride, "top": top}
        seconds = round(t["seconds"] / len(ctx.layers) + t2["seconds"], 3)
        figures.append(Figure(path, "patches", seconds, lay.name, chosen[lay.name], None, settings))
    return figures


def safe_stem_of(name: str) -> str:
    """A file stem for a layer or class name, kept whole (``encoder.features.3``)."""
    return safe_stem(Path(f"{name}.png"))


def maximize(ctx: Context) -> list[Figure]:
    """``maximize/<class>.png`` (the image itself) and ``maximize/classes.png`` (a grid)."""
    opts = maxim.Ascent(**{k: v for k, v in plain(ctx.cfg.maximize).items() if k != "classes"})
    with timer() as t:
        classes = _maximize_classes(ctx)
        x, scores = maxim.maximize(ctx.net, classes, opts, ctx.pixels.bounds)
    rows = maxim.summary(classes, ctx.names, scores)
    settings = {k: v for k, v in vars(opts).items() if k != "region"} | {"region": opts.region}
    figures, each = [], round(t["seconds"] / len(classes), 3)
    cols = min(len(classes), 6)
    grid_rows = -(-len(classes) // cols)
    fig, axes = plt.subplots(grid_rows, cols, figsize=(2 * cols, 2.2 * grid_rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (row, ax) in enumerate(zip(rows, axes.flat, strict=False)):
        rgb = (ctx.pixels.undo(x[i]) * 255).round().astype(np.uint8)  # (S, S, 3)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG")
        rel = f"maximize/{safe_stem_of(row['class'])}.png"
        atomic_write_bytes(ctx.out / rel, buf.getvalue())
        figures.append(
            Figure(rel, "maximize", each, classes=[row["class"]], settings=settings | row)
        )
        ax.imshow(rgb)
        ax.set_title(f"{row['class']}\n{row['start']:.2f} -> {row['end']:.2f}", fontsize=8)
    fig.tight_layout()
    fig.suptitle("Class-score maximisation (mean logit: noise -> result)", fontsize=9, y=1.03)
    path = save(fig, ctx.out, "maximize/classes.png")
    names = [r["class"] for r in rows]
    figures.append(Figure(path, "maximize", t["seconds"], classes=names, settings=settings))
    return figures


def _maximize_classes(ctx: Context) -> list[int]:
    """``maximize.classes``: ``all``, the given ones, or (``predicted``) the classes predicted
    on the first ``cam.images`` images (every class when there are none)."""
    spec = plain(ctx.cfg.maximize.classes)
    every = list(range(len(ctx.names)))
    if spec == "all":
        return every
    if spec != "predicted":
        return class_indices(spec, ctx.names, "maximize.classes")
    found: set[int] = set()
    for i, _, image in ctx.images.first(int(ctx.cfg.cam.images), "Predicting classes"):
        got = ctx.images.attempt(i, _predict, ctx, image)
        found |= set(_shown(ctx, got[2], None)) if got is not None else set()
    return sorted(found) or every


@torch.no_grad()
def _predict(ctx: Context, image: np.ndarray) -> tuple:
    """(x, mask, scores) of one image: the normalised input (1, 3, H, W), the predicted mask
    (H, W) (None for class logits) and per class its predicted pixels (or probability) (K,)."""
    x = ctx.pixels(image, ctx.device)
    if ctx.classify:
        return x, None, ctx.net(x)[CLS].float().softmax(-1)[0].cpu()  # (K,)
    mask = scores_to_mask(predict_probs(ctx.net, x, ctx.infer), image.shape[:2])[0]
    return x, mask, torch.bincount(mask.flatten().cpu(), minlength=len(ctx.names))


def _shown(ctx: Context, scores: torch.Tensor, chosen: list[int] | None) -> list[int]:
    """The classes explained: the chosen ones that were predicted, or by default the top class
    (class logits) / every predicted class but the background, unless it is alone (pixels)."""
    if ctx.classify:
        return chosen if chosen is not None else [int(scores.argmax())]
    present = [c for c in range(len(scores)) if scores[c] > 0]
    if chosen is not None:
        return [c for c in chosen if c in present]  # no predicted pixel: nothing to explain
    return [c for c in present if c] or present


def cam(ctx: Context) -> list[Figure]:
    """``cam/<image>.png``: per image, the Grad-CAM of each predicted (or chosen) class, one
    row per layer of ``cam.layers``."""
    chosen = class_indices(plain(ctx.cfg.cam.classes), ctx.names, "cam.classes")
    layers = [lay.name for lay in ctx.cam_layers]
    figures = []
    for i, path, image in ctx.images.first(int(ctx.cfg.cam.images), "Grad-CAM"):
        with timer() as t:
            made = ctx.images.attempt(i, _cam_one, ctx, image, chosen)
            if made is None:
                continue
            fig, classes, scores = made
            rel = save(fig, ctx.out, f"cam/{safe_stem(path)}.png")
        names = [ctx.names[c] for c in classes]
        what = "probability" if ctx.classify else "pixels"
        settings = {
            "image": str(path),
            "layers": layers,
            what: dict(zip(names, scores, strict=True)),
        }
        figures.append(Figure(rel, "cam", t["seconds"], layers[0], None, names, settings))
    return figures


def _cam_one(ctx: Context, image: np.ndarray, chosen: list[int] | None) -> tuple:
    """The CAM figure of one image, its classes, and their scores (pixels or probability)."""
    x, mask, scores = _predict(ctx, image)
    classes = _shown(ctx, scores, chosen)
    header = [("image", image)]
    if mask is not None:
        header.append(
            ("prediction", np.asarray(overlay(image, mask.cpu().numpy(), None, ctx.names)))
        )
    weight = 1 - float(ctx.cfg.cam.alpha)
    cols = max(len(header), len(classes), 1)
    rows = 1 + len(ctx.cam_layers)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.3 * rows + 0.3), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, picture) in zip(axes[0], header, strict=False):
        ax.imshow(picture)
        ax.set_title(title, fontsize=8)
    for row, lay in enumerate(ctx.cam_layers, start=1):
        maps = gradcam.grad_cam(ctx.net, x, lay, classes, mask) if classes else []
        for ax, c, m in zip(axes[row], classes, maps, strict=False):
            ax.imshow(gradcam.overlay(image, m, weight))
            ax.set_title(f"{ctx.names[c]} @ {lay.name}", fontsize=7)
    fig.suptitle("Grad-CAM of the pixels predicted as each class", fontsize=9)
    fig.tight_layout()
    return fig, classes, [round(float(scores[c]), 4) for c in classes]


def receptive_field(ctx: Context) -> list[Figure]:
    """``receptive_field/stages.png`` and its table ``receptive_field/table.json``."""
    with timer() as t:
        rows = [
            {
                "layer": lay.name,
                "stride": lay.stride,
                "channels": lay.channels,
                "theoretical": ctx.field_of(lay, geometric=True),
                "empirical": ctx.field_of(lay, geometric=False),
            }
            for lay in ctx.layers
        ]
        image = ctx.images.first_readable()
        size = int(ctx.cfg.receptive_field.size)
        if image is None:
            image = np.full((size, size, 3), 128, dtype=np.uint8)
        path = save(rf.draw(image, rows), ctx.out, "receptive_field/stages.png")
        write_json(ctx.out / "receptive_field" / "table.json", rows)
    settings = {"probe_size": size, "table": rows}
    return [Figure(path, "receptive_field", t["seconds"], settings=settings)]

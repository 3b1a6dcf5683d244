"""Writers for ``predict.py``: palette masks, overlays with a legend, and ``boxes.json``.

Every file is written atomically (temporary file, then rename), so an interrupted run never
leaves a half-written PNG behind.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from seg.constants import VOC_CLASSES, VOC_PALETTE
from seg.utils import atomic_write_bytes, write_json

PALETTE = np.array(VOC_PALETTE, dtype=np.uint8).reshape(256, 3)


def encode_png(array: np.ndarray, palette: bool = True) -> bytes:
    """PNG bytes of an (H, W) uint8 index mask, with the VOC palette when ``palette``."""
    img = Image.fromarray(array.astype(np.uint8), mode="L")
    if palette:
        img = img.convert("P")
        img.putpalette(VOC_PALETTE)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """The image blended with the mask colours, plus a legend of the classes present.

    Works in uint8 throughout (no float copy of the image), so huge images stay cheap.

    Args:
        image: (H, W, 3) uint8 RGB.
        mask: (H, W) uint8 class indices.
        alpha: Weight of the mask colours.
    """
    base = Image.fromarray(image)
    labels = Image.fromarray(mask.astype(np.uint8, copy=False), mode="L")
    colours = labels.convert("P")
    colours.putpalette(VOC_PALETTE)
    blend = Image.blend(base, colours.convert("RGB"), alpha)
    out = Image.composite(blend, base, labels.point(lambda v: 255 if v else 0))
    draw = ImageDraw.Draw(out)
    present = np.flatnonzero(np.bincount(mask.ravel(), minlength=256)[: len(VOC_CLASSES)])
    for row, c in enumerate(present.tolist()):
        y = 4 + 14 * row
        draw.rectangle((4, y, 14, y + 10), fill=tuple(int(v) for v in PALETTE[c]), outline="white")
        draw.text((18, y - 1), VOC_CLASSES[c], fill="white", stroke_width=1, stroke_fill="black")
    return out


def encode_jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


class MaskWriter:
    """Writes ``<stem>.png`` (VOC palette), and optionally ``<stem>_overlay.jpg`` and
    ``<stem>_index.png`` (plain 8-bit class indices, no palette).

    Args:
        out: Output folder.
        save: Mapping with booleans ``mask``, ``overlay``, ``index``.
    """

    def __init__(self, out: Path, save: Any) -> None:
        self.out = out
        self.save = save

    def _paths(self, stem: str) -> list[Path]:
        paths = [self.out / f"{stem}.png"] if self.save.get("mask", True) else []
        if self.save.get("overlay", False):
            paths.append(self.out / f"{stem}_overlay.jpg")
        if self.save.get("index", False):
            paths.append(self.out / f"{stem}_index.png")
        return paths

    def done(self, stem: str) -> bool:
        return all(p.exists() for p in self._paths(stem))

    def write(self, stem: str, image: np.ndarray, mask: torch.Tensor) -> None:
        m = mask.to(torch.uint8).cpu().numpy()  # (H, W)
        if self.save.get("mask", True):
            atomic_write_bytes(self.out / f"{stem}.png", encode_png(m))
        if self.save.get("index", False):
            atomic_write_bytes(self.out / f"{stem}_index.png", encode_png(m, palette=False))
        if self.save.get("overlay", False):
            atomic_write_bytes(self.out / f"{stem}_overlay.jpg", encode_jpeg(overlay(image, m)))

    def close(self) -> None:
        """Nothing buffered."""


class LocalizationWriter:
    """Collects one box per image into ``boxes.json``; optionally draws it on an overlay.

    Each record: ``{"file", "class", "score", "box_xyxy", "box_xywh"}`` in pixels.
    """

    def __init__(self, out: Path, save: Any) -> None:
        self.out = out
        self.save = save
        self.path = out / "boxes.json"
        self.records: dict[str, Any] = (
            json.loads(self.path.read_text()) if self.path.exists() else {}
        )

    def done(self, stem: str) -> bool:
        return stem in self.records

    def write(
        self, stem: str, path: Path, image: np.ndarray, pred: dict[str, torch.Tensor]
    ) -> None:
        h, w = image.shape[:2]
        k = int(pred["probs"].argmax())
        offset = len(VOC_CLASSES) - pred["probs"].numel()  # 20-way heads skip background
        x, y, bw, bh = (pred["box"] * torch.tensor([w, h, w, h])).tolist()
        self.records[stem] = {
            "file": str(path),
            "class": VOC_CLASSES[k + offset],
            "score": float(pred["probs"][k]),
            "box_xyxy": [x, y, x + bw, y + bh],
            "box_xywh": [x, y, bw, bh],
        }
        if self.save.get("overlay", False):
            img = Image.fromarray(image)
            draw = ImageDraw.Draw(img)
            draw.rectangle((x, y, x + bw, y + bh), outline=(255, 0, 0), width=3)
            draw.text((x + 4, y + 2), self.records[stem]["class"], fill="red")
            atomic_write_bytes(self.out / f"{stem}_overlay.jpg", encode_jpeg(img))

    def close(self) -> None:
        """Write ``boxes.json`` (also after an interruption: the caller closes in ``finally``)."""
        write_json(self.path, self.records)

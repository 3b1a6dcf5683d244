"""Writers for ``predict.py``: palette masks, overlays with a legend, and boxes.

Every file is written atomically (temporary file, then rename), so an interrupted run never
leaves a half-written PNG behind. Boxes go to ``boxes.jsonl`` one line per image as each image
finishes (appended and fsynced, so a kill loses nothing finished and two runs into one folder
both keep theirs), and ``boxes.json`` is rebuilt from it, streaming, when the run closes. What
was written for which input is recorded in the manifest (:mod:`seg.manifest`), last, once the
files it names are on the disk (:meth:`PredictionWriter.write` says which fsyncs that takes).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from seg.constants import VOC_CLASSES, VOC_PALETTE
from seg.manifest import NAME as MANIFEST
from seg.manifest import Manifest, Source
from seg.utils import append_lines, atomic_open, atomic_write_bytes, fsync_folder, read_lines

BOX_COLOUR = (255, 32, 32)


#: zlib level of the mask PNGs. The writer thread shares the CPU with the net (and must keep
#: up with a GPU): level 3 encodes a 500 x 375 VOC mask in 0.4 ms instead of Pillow's default
#: 6's 1.0 ms (2.5 vs 1.0 ms for a random net's speckled masks), for files of 4.3 KB instead
#: of 3.0 KB (the 43 masks of ../shared/voc-mini).
PNG_LEVEL = 3


def encode_png(array: np.ndarray, palette: Sequence[int] | None = VOC_PALETTE) -> bytes:
    """PNG bytes of an (H, W) uint8 index mask, with ``palette`` (flat, 768 ints) if given."""
    img = Image.fromarray(array.astype(np.uint8), mode="L")
    if palette is not None:
        img = img.convert("P")
        img.putpalette(list(palette))
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=PNG_LEVEL)
    return buf.getvalue()


def encode_jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def overlay(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    box: dict[str, Any] | None = None,
    class_names: Sequence[str] = VOC_CLASSES,
    palette: Sequence[int] = VOC_PALETTE,
    alpha: float = 0.5,
) -> Image.Image:
    """The image blended with the mask colours and a legend of the classes present, and the box
    with its class name and score.

    Works in uint8 throughout (no float copy of the image), so huge images stay cheap.

    Args:
        image: (H, W, 3) uint8 RGB.
        mask: (H, W) uint8 class indices, or None.
        box: A box record (:func:`seg.inference.box_record`), or None.
        class_names: Names of the mask's classes.
        palette: Their colours, flat (768 ints).
        alpha: Weight of the mask colours.
    """
    out = Image.fromarray(image)
    draw = ImageDraw.Draw(out)
    if mask is not None:
        labels = Image.fromarray(mask.astype(np.uint8, copy=False), mode="L")
        colours = labels.convert("P")
        colours.putpalette(list(palette))
        blend = Image.blend(out, colours.convert("RGB"), alpha)
        out = Image.composite(blend, out, labels.point(lambda v: 255 if v else 0))
        draw = ImageDraw.Draw(out)
        present = np.flatnonzero(np.bincount(mask.ravel(), minlength=256)[: len(class_names)])
        for row, c in enumerate(present.tolist()):
            y = 4 + 14 * row
            fill = tuple(int(v) for v in palette[3 * c : 3 * c + 3])
            draw.rectangle((4, y, 14, y + 10), fill=fill, outline="white")
            draw.text(
                (18, y - 1), class_names[c], fill="white", stroke_width=1, stroke_fill="black"
            )
    if box is not None:
        x1, y1, x2, y2 = box["box_xyxy"]
        width = max(1, round(min(image.shape[:2]) / 150))
        draw.rectangle((x1, y1, x2, y2), outline=BOX_COLOUR, width=width)
        label = f"{box['class']} {box['score']:.2f}"
        draw.text((x1 + 3, y1 + 2), label, fill=BOX_COLOUR, stroke_width=1, stroke_fill="black")
    return out


class PredictionWriter:
    """Writes the outputs of one image under its stem, a path relative to ``out`` that mirrors
    the input tree: ``<stem>.png`` (VOC palette), ``<stem>_index.png`` (plain 8-bit class
    indices), ``<stem>_overlay.jpg``, its line of ``boxes.jsonl``, and last its record in the
    manifest (:mod:`seg.manifest`), which decides what a re-run skips.

    Args:
        out: Output folder.
        save: Mapping with booleans ``mask``, ``overlay``, ``index``.
        masks: The net predicts masks.
        boxes: The net predicts boxes.
        class_names: The mask classes' names (the overlay's legend).
        palette: Their colours, flat (768 ints): masks and overlays use them.
    """

    JSONL, JSON = "boxes.jsonl", "boxes.json"
    #: Save option -> the suffix its file adds to the stem.
    SUFFIXES = {"mask": ".png", "index": "_index.png", "overlay": "_overlay.jpg"}

    def __init__(
        self,
        out: Path,
        save: Any,
        masks: bool = True,
        boxes: bool = False,
        class_names: Sequence[str] = VOC_CLASSES,
        palette: Sequence[int] = VOC_PALETTE,
    ) -> None:
        self.out, self.save, self.masks, self.boxes = out, save, masks, boxes
        self.class_names, self.palette = class_names, palette
        self.manifest = Manifest(out, self.SUFFIXES.values())

    @classmethod
    def own_files(cls, out: Path) -> set[Path]:
        """Resolved paths of every file predict wrote into ``out``: never inputs."""
        manifest = Manifest(out, cls.SUFFIXES.values())
        folder = out.resolve()
        return {*manifest.own_files(), *(folder / n for n in (cls.JSONL, cls.JSON, MANIFEST))}

    def names(self, stem: str) -> list[str]:
        """The files this run writes for ``stem``, relative to ``out``."""
        kinds = [k for k in ("mask", "index") if self.masks and self.save.get(k, k == "mask")]
        kinds += ["overlay"] if self.save.get("overlay", False) else []
        return [f"{stem}{self.SUFFIXES[k]}" for k in kinds]

    def done(self, source: Source, stem: str) -> bool:
        """Whether ``source`` was predicted as it is now into every output this run asks for."""
        return self.manifest.is_done(source, stem, self.names(stem))

    @property
    def needs_image(self) -> bool:
        """Whether :meth:`write` uses the image (for the overlay): when not, it may be None."""
        return bool(self.save.get("overlay", False))

    def write(
        self,
        stem: str,
        image: np.ndarray | None,
        mask: np.ndarray | None = None,
        box: dict[str, Any] | None = None,
        source: Source | None = None,
    ) -> None:
        """Write the outputs of one image, then its line of ``boxes.jsonl``, then, last, its
        manifest record: a record never names a file that is not fully on the disk.

        Fsyncs, in order: each file before its rename (never half-written), the folder once
        after the renames, the boxes line. The manifest record itself is not fsynced (see
        :meth:`seg.manifest.Manifest.done`): 2 fsyncs for a mask instead of 3, 4 instead of 7
        with index and overlay.

        Args:
            stem: Output stem (a path relative to ``out``, without suffix).
            image: The image (H, W, 3) uint8; only the overlay uses it (:attr:`needs_image`).
            mask: Class indices (H, W), or None (a localizer without mask decoder).
            box: Box record of a localizer, or None.
            source: The input as read; None writes no manifest record.
        """
        names = self.names(stem)
        for name, data in self._encoded(stem, image, mask, box):
            atomic_write_bytes(self.out / name, data, sync_folder=False)
        # The renames reach the disk before the records that rely on them: one fsync a folder.
        for folder in {(self.out / name).parent for name in names}:
            fsync_folder(folder)
        if box is not None:  # fsynced: the manifest record below vouches for it
            append_lines(self.out / self.JSONL, [{"stem": stem, **box}])
        if source is not None:
            self.manifest.done(source, stem, names)

    def _encoded(
        self,
        stem: str,
        image: np.ndarray | None,
        mask: np.ndarray | None,
        box: dict[str, Any] | None,
    ) -> Iterator[tuple[str, bytes]]:
        """(file name, bytes) of each output file asked for."""
        m = None if mask is None else np.asarray(mask, dtype=np.uint8)  # (H, W)
        if m is not None and self.save.get("mask", True):
            yield f"{stem}.png", encode_png(m, self.palette)
        if m is not None and self.save.get("index", False):
            yield f"{stem}_index.png", encode_png(m, palette=None)
        if self.needs_image:
            if image is None:
                raise ValueError(f"{stem}: the overlay needs the image")
            image_overlay = overlay(image, m, box, self.class_names, self.palette)
            yield f"{stem}_overlay.jpg", encode_jpeg(image_overlay)

    def close(self) -> None:
        """Flush the manifest, and rebuild ``boxes.json`` (stem -> record) from ``boxes.jsonl``,
        streaming it; later lines of a stem win, and a torn or foreign line is skipped."""
        jsonl = self.out / self.JSONL
        self.manifest.sync()  # its done records were appended without fsync
        if not self.boxes or not jsonl.exists():
            return
        latest = {r["stem"]: i for i, r in enumerate(read_lines(jsonl, "stem"))}
        with atomic_open(self.out / self.JSON) as f:
            f.write(b"{")
            for i, record in enumerate(read_lines(jsonl, "stem")):
                if latest.get(record["stem"]) != i:
                    continue
                stem = record.pop("stem")
                sep = "," if f.tell() > 1 else ""
                f.write(f"{sep}\n  {json.dumps(stem)}: {json.dumps(record)}".encode())
            f.write(b"\n}\n")

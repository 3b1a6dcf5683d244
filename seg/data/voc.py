"""PASCAL VOC 2012 readers: XML boxes, id lists and the two datasets (images and masks are read
by :mod:`seg.data.io`, re-exported here).

Layout (``root`` is the folder that contains ``VOC2012/``, e.g. ``data/VOCdevkit``, or, for
your own dataset, the folder that contains ``JPEGImages/`` itself)::

    VOC2012/JPEGImages/<id>.jpg
    VOC2012/SegmentationClass/<id>.png      palette PNG: pixel value = class index, 255 = void
    VOC2012/Annotations/<id>.xml            boxes, 1-based pixel coordinates
    VOC2012/ImageSets/{Segmentation,Main}/<split>.txt

The class names and colours are the dataset's (:mod:`seg.data.classes`; VOC's by default).

Dataset: Everingham et al., "The PASCAL Visual Object Classes Challenge"
(http://host.robots.ox.ac.uk/pascal/VOC/voc2012/).

Bad samples raise :class:`BadSampleError`. With ``skip_bad=True`` a dataset logs a warning and
returns the next valid sample instead, so its length (and every sampler built on it) stays fixed;
an evaluation dataset (``drop_bad``) returns None instead, and the batch drops it: a bad sample
is never scored in place of another. A dataset that is unusable as a whole (a missing or empty
split list, duplicate ids, an unreadable folder, ``root`` at ``VOC2012`` itself) raises
:class:`DatasetError` naming the file and what to do, before anything runs.
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from seg.constants import IGNORE_INDEX, VOC_CLASSES, VOC_PALETTE
from seg.data.classes import BACKGROUND, flat_palette
from seg.data.io import check_mask_size, read_image, read_mask, validate_mask
from seg.errors import BadSampleError, DatasetError, DatasetNotFoundError

__all__ = [
    "IGNORE_INDEX",
    "VOC_CLASSES",
    "VOC_PALETTE",
    "VOCLocalization",
    "VOCSegmentation",
    "check_mask_size",
    "parse_annotation",
    "read_ids",
    "read_image",
    "read_mask",
    "validate_mask",
]

log = logging.getLogger(__name__)


def _reject_entities(data: bytes, path: Path) -> None:
    """Refuse DTDs: ElementTree would expand internal entities (billion laughs)."""
    head = data.upper()
    if b"<!DOCTYPE" in head or b"<!ENTITY" in head:
        raise BadSampleError(f"{path}: XML with DOCTYPE/ENTITY declarations is refused")


def _box(obj: ET.Element, path: Path) -> list[float]:
    try:
        bb = obj.find("bndbox")
        # VOC is 1-based and inclusive; subtract 1 from all four, as the devkit does.
        box = [float(bb.findtext(k)) - 1.0 for k in ("xmin", "ymin", "xmax", "ymax")]
    except (AttributeError, TypeError, ValueError) as e:
        raise BadSampleError(f"{path}: object without a valid <bndbox>") from e
    if box[2] < box[0] or box[3] < box[1]:
        raise BadSampleError(f"{path}: degenerate box {box}")
    return box


def parse_annotation(xml_path: str | Path, classes: Sequence[str] = VOC_CLASSES) -> dict[str, Any]:
    """Parse a VOC ``Annotations/<id>.xml``.

    Only the ``<object>`` elements of the annotation are objects: their ``<part>`` children
    (person layout: head, hand, foot, with boxes of their own), ``<actions>`` and ``<point>`` are
    not read, and neither are ``<source>``, ``<owner>`` and ``<segmented>``.

    Args:
        xml_path: The annotation file.
        classes: The dataset's class names; a label is the index of the object's ``<name>``.

    Returns:
        dict with ``boxes`` float32 (N, 4) xyxy 0-based (inclusive pixel indices), ``labels``
        int64 (N,) (1..20 for VOC), ``difficult``, ``truncated`` and ``occluded`` bool (N,) (absent
        means 0), ``pose`` (N strings, "Unspecified" when absent), ``width``, ``height`` (ints
        from ``<size>``).

    Raises:
        BadSampleError: missing/malformed file, DTD present, unknown class, bad box, no objects.
    """
    path = Path(xml_path)
    if not path.is_file():
        raise BadSampleError(f"{path}: annotation file not found")
    data = path.read_bytes()
    _reject_entities(data, path)
    try:
        root = ET.fromstring(data)
        width, height = (int(root.findtext(f"size/{k}", "0")) for k in ("width", "height"))
    except (ET.ParseError, ValueError) as e:
        raise BadSampleError(f"{path}: malformed XML ({e})") from e
    boxes, labels, pose = [], [], []
    flags: dict[str, list[bool]] = {"difficult": [], "truncated": [], "occluded": []}
    for obj in root.findall("object"):  # direct children only: never a nested element
        name = (obj.findtext("name") or "").strip()
        if name not in classes or name == BACKGROUND:
            raise BadSampleError(f"{path}: unknown class {name!r}")
        boxes.append(_box(obj, path))  # the object's own <bndbox>, not a part's
        labels.append(list(classes).index(name))
        pose.append((obj.findtext("pose") or "Unspecified").strip())
        for key, values in flags.items():
            values.append((obj.findtext(key) or "0").strip() == "1")
    if not boxes:
        raise BadSampleError(f"{path}: annotation has no <object>")
    return {
        "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        "labels": np.asarray(labels, dtype=np.int64),
        **{key: np.asarray(values, dtype=bool) for key, values in flags.items()},
        "pose": pose,
        "width": width,
        "height": height,
    }


def read_ids(path: str | Path) -> list[str]:
    """Read an ImageSets list: one id per line.

    The flag column of ``Main/<cls>_<split>.txt`` (-1, 0 or 1) is ignored; otherwise the whole
    line, trailing blanks stripped, is the id, so an id with a space names the file the user
    wrote. A UTF-8 byte-order mark and Windows line ends are accepted.

    Raises:
        DatasetError: The list cannot be read, is not UTF-8, is empty, or lists an id twice
            (that image would be scored twice).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    except OSError as err:
        raise DatasetError(f"{path}: cannot read the split list ({err.strerror})") from err
    ids: list[str] = []
    first: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        flag = len(fields) == 2 and fields[1] in ("-1", "0", "1")
        image_id = fields[0] if flag else line.strip()
        if image_id in first:
            raise DatasetError(
                f"{path}:{number}: id {image_id!r} is listed again (first on line "
                f"{first[image_id]}); each image must be listed once, or it is counted twice"
            )
        first[image_id] = number
        ids.append(image_id)
    if not ids:
        raise DatasetError(f"{path}: the split list is empty (no ids)")
    return ids


def _exists(path: Path) -> bool:
    """Whether ``path`` exists and, for a folder, can be listed and entered.

    Raises:
        DatasetError: ``path`` or a folder above it cannot be read (permissions).
    """
    try:
        found = path.exists()
    except OSError as err:
        raise DatasetError(f"{path}: cannot read ({err.strerror})") from err
    if found and path.is_dir() and not os.access(path, os.R_OK | os.X_OK):
        raise DatasetError(f"{path}: permission denied (the folder cannot be read)")
    return found


def dataset_not_found(root: str | Path, what: Path, sbd: bool = False) -> DatasetNotFoundError:
    """Build the human "dataset missing" error (text from ``seg.data.download`` when present)."""
    try:
        from seg.data.download import missing_dataset_message

        msg = missing_dataset_message(root, sbd=sbd)
    except Exception:  # download.py may be absent or broken; the plain text still helps
        msg = (
            f"PASCAL VOC 2012 was not found under {root}. Run `python -m seg.data.download` "
            "or train on the synthetic sample: `python train.py experiment=quickstart`."
        )
    return DatasetNotFoundError(f"{msg} (missing: {what})")


def voc_folder(root: Path) -> Path:
    """The folder holding ``JPEGImages/``: ``<root>/VOC2012`` (the devkit's layout), or ``root``
    itself when it has ``JPEGImages/`` and no ``VOC2012/`` (your own dataset, or a root that
    points at ``VOC2012`` itself)."""
    if not (root / "VOC2012").is_dir() and (root / "JPEGImages").is_dir():
        return root
    return root / "VOC2012"


class _VOCBase(Dataset):
    """Shared plumbing: locate files, read the id list, skip bad samples on request, and the
    dataset's classes (names, index = label) and colours (``None``: VOC's)."""

    list_dir = "Segmentation"
    #: With ``skip_bad``: return None for a bad sample (evaluation, set by the data module)
    #: instead of the next valid one (training).
    drop_bad = False

    def __init__(
        self,
        root: str | Path,
        split: str,
        transform: Callable | None,
        skip_bad: bool,
        classes: Sequence[str] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
    ):
        self.root = Path(root)
        self.voc = voc_folder(self.root)
        self.split = split
        self.transform = transform
        self.skip_bad = skip_bad
        self.classes = tuple(classes or VOC_CLASSES)
        self.palette = flat_palette(palette or [])
        self._bad: set[int] = set()
        self.ids = self._read_ids()

    def _require(self, path: Path, sbd: bool = False) -> Path:
        if _exists(path):
            return path
        raise dataset_not_found(self.root, path, sbd=sbd)

    def _split_list(self) -> Path:
        """The split's list; a split name that is not there lists the ones that are."""
        folder = self.voc / "ImageSets" / self.list_dir
        path = folder / f"{self.split}.txt"
        if not _exists(path) and _exists(folder):
            stems = {p.stem for p in folder.glob("*.txt")}
            per_class = {f"{c}_{s}" for c in VOC_CLASSES for s in stems}  # Main/<cls>_<split>
            names = sorted(stems - per_class)
            if names:
                raise DatasetError(
                    f"{path}: no split {self.split!r}; the splits in {folder} are: "
                    f"{', '.join(names[:20])}"
                )
        return self._require(path)

    def _read_ids(self) -> list[str]:
        self._require(self.voc / "JPEGImages")
        return read_ids(self._split_list())

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        """Load sample ``index``; with ``skip_bad`` fall through to the next valid one, or
        return None when ``drop_bad``."""
        if not -len(self.ids) <= index < len(self.ids):
            raise IndexError(f"index {index} out of range for {len(self.ids)} samples")
        for step in range(len(self.ids)):
            i = (index + step) % len(self.ids)
            if i not in self._bad:
                try:
                    return self.load(i)
                except BadSampleError as e:
                    if not self.skip_bad:
                        raise
                    log.warning("skipping bad sample %s: %s", self.ids[i], e)
                    self._bad.add(i)
            if self.drop_bad:
                return None  # dropped by the batch: never scored in place of another sample
        raise BadSampleError(f"{self.voc}: every sample of split {self.split!r} is bad")

    def load(self, i: int) -> dict[str, Any]:
        raise NotImplementedError


class VOCSegmentation(_VOCBase):
    """VOC semantic segmentation: ``{"image", "mask", "id"}`` per item.

    Without a transform: image uint8 (H, W, 3), mask int64 (H, W). With an albumentations
    transform ending in ToTensorV2: image float32 (3, H', W'), mask int64 (H', W').

    Args:
        root: folder containing ``VOC2012/``.
        split: name of ``ImageSets/Segmentation/<split>.txt``.
        transform: albumentations-style callable ``transform(image=, mask=) -> dict``.
        skip_bad: log and skip bad samples instead of raising BadSampleError.
        mask_dir: ``SegmentationClass`` or ``SegmentationClassAug`` (SBD trainaug layout).
        classes: Class names (index = label value); VOC's 21 when None.
        palette: RGB colour per label, for masks saved in colours; VOC's when None.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable | None = None,
        skip_bad: bool = False,
        mask_dir: str = "SegmentationClass",
        classes: Sequence[str] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
    ):
        self.mask_dir = mask_dir
        super().__init__(root, split, transform, skip_bad, classes, palette)

    def mask_path(self, image_id: str) -> Path:
        return self.voc / self.mask_dir / f"{image_id}.png"

    def read_mask(self, image_id: str) -> np.ndarray:
        """int64 (H, W) mask of ``image_id``; subclasses change the source (SBD ``.mat``)."""
        return read_mask(self.mask_path(image_id), len(self.classes), self.palette)

    def load(self, i: int) -> dict[str, Any]:
        image_id = self.ids[i]
        image = read_image(self.voc / "JPEGImages" / f"{image_id}.jpg")  # (H, W, 3)
        mask = self.read_mask(image_id)  # (H, W)
        check_mask_size(mask, image, self.mask_path(image_id))
        if self.transform is None:
            return {"image": image, "mask": mask, "id": image_id}
        out = self.transform(image=image, mask=mask.astype(np.uint8))
        m = out["mask"]
        m = m.long() if isinstance(m, torch.Tensor) else m.astype(np.int64)
        return {"image": out["image"], "mask": m, "id": image_id}


class VOCLocalization(_VOCBase):
    """Single-object localization: one box per image from ``Annotations/<id>.xml``.

    Item: ``{"image", "label" (1..20), "box" float32 (4,) = (x, y, w, h) / (W, H, W, H), "id"}``,
    plus ``"mask"`` when ``with_mask``. The box is the continuous extent of the chosen object
    (pixels ``xmin..xmax`` inclusive cover ``[xmin, xmax + 1)``), and it follows geometric
    transforms (the transform must be a Compose with ``BboxParams(format="pascal_voc",
    label_fields=["labels"])``).

    Args:
        root: folder containing ``VOC2012/``.
        split: name of ``ImageSets/<list_dir>/<split>.txt``.
        transform: albumentations Compose with bbox_params.
        select: ``"largest"`` non-difficult object (by box area) or the ``"first"`` non-difficult
            one; all-difficult images fall back to all objects.
        skip_bad: log and skip bad samples instead of raising.
        list_dir: ``"Main"`` (all detection images) or ``"Segmentation"`` (those with masks).
        with_mask: also return the segmentation mask (needs ``SegmentationClass/<id>.png``).
        classes: Class names; an object's label is the index of its ``<name>`` (VOC's: 1..20).
        palette: RGB colour per label, for masks saved in colours; VOC's when None.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable | None = None,
        select: str = "largest",
        skip_bad: bool = False,
        list_dir: str = "Main",
        with_mask: bool = False,
        classes: Sequence[str] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
    ):
        if select not in ("largest", "first"):
            raise ValueError(f"select must be 'largest' or 'first', got {select!r}")
        self.select, self.list_dir, self.with_mask = select, list_dir, with_mask
        super().__init__(root, split, transform, skip_bad, classes, palette)
        self._require(self.voc / "Annotations")

    def choose(self, ann: dict[str, Any]) -> int:
        """Index of the object to localise in ``ann`` (see ``select``)."""
        cand = np.flatnonzero(~ann["difficult"])
        cand = cand if cand.size else np.arange(len(ann["labels"]))
        if self.select == "first":
            return int(cand[0])
        wh = ann["boxes"][cand, 2:] - ann["boxes"][cand, :2] + 1  # (n, 2) inclusive extent
        return int(cand[np.argmax(wh[:, 0] * wh[:, 1])])  # first of equal areas wins

    def load(self, i: int) -> dict[str, Any]:
        image_id = self.ids[i]
        image = read_image(self.voc / "JPEGImages" / f"{image_id}.jpg")  # (H, W, 3)
        ann = parse_annotation(self.voc / "Annotations" / f"{image_id}.xml", self.classes)
        k = self.choose(ann)
        label = int(ann["labels"][k])
        h, w = image.shape[:2]
        x1, y1, x2, y2 = ann["boxes"][k].tolist()
        box = [max(x1, 0), max(y1, 0), min(x2 + 1, w), min(y2 + 1, h)]  # continuous xyxy
        item = {"image": image, "label": label, "id": image_id}
        if self.with_mask:
            path = self.voc / "SegmentationClass" / f"{image_id}.png"
            item["mask"] = read_mask(path, len(self.classes), self.palette)  # (H, W)
            check_mask_size(item["mask"], image, path)
        if self.transform is not None:
            box = self._apply(item, box)
            img = item["image"]
            h, w = img.shape[-2:] if isinstance(img, torch.Tensor) else img.shape[:2]
        item["box"] = np.array(  # (4,) normalised (x, y, w, h)
            [box[0] / w, box[1] / h, (box[2] - box[0]) / w, (box[3] - box[1]) / h], np.float32
        )
        return item

    def _apply(self, item: dict[str, Any], box: list[float]) -> list[float]:
        """Run the transform on ``item`` in place; return the moved pixel box (xyxy)."""
        extra = {"mask": item["mask"].astype(np.uint8)} if "mask" in item else {}
        out = self.transform(
            image=item["image"],
            bboxes=np.asarray([box], np.float32),
            labels=[item["label"]],
            **extra,
        )
        if len(out["bboxes"]) != 1:
            raise BadSampleError(f"{item['id']}: the transform dropped the box {box}")
        item["image"] = out["image"]
        if extra:
            item["mask"] = torch.as_tensor(np.asarray(out["mask"]), dtype=torch.int64)
        return [float(v) for v in out["bboxes"][0]]

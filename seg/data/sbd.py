"""SBD "trainaug": VOC 2012 train extended with the Semantic Boundaries Dataset masks.

Hariharan et al., "Semantic Contours from Inverse Detectors", ICCV 2011
(http://home.bharathh.info/pubs/codes/SBD/download.html). The usual training list (10,582 ids)
is ``(SBD train ∪ SBD val ∪ VOC train) − VOC val``: SBD's own val split overlaps VOC 2012 val,
so the subtraction is what keeps the benchmark honest. :func:`check_no_leak` enforces it.

Two layouts are understood:

* ``VOC2012/SegmentationClassAug/*.png`` + ``VOC2012/ImageSets/Segmentation/train_aug.txt``
  (the widely shared pre-converted PNGs);
* the SBD release ``benchmark_RELEASE/dataset/{cls/*.mat, train.txt, val.txt}``, read directly.
  Ids with an official VOC mask (``SegmentationClass``) use it, since it has the void borders;
  the others use ``GTcls.Segmentation`` from the ``.mat``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from seg.data.voc import (
    VOCSegmentation,
    dataset_not_found,
    read_ids,
    read_mask,
    validate_mask,
)
from seg.errors import BadSampleError, DatasetError


def check_no_leak(train_ids: Iterable[str], val_ids: Iterable[str], what: str = "train") -> None:
    """Raise :class:`DatasetError` (a ``ValueError``, exit status 2) if any evaluation id
    appears in a training list.

    Args:
        train_ids: ids used for training.
        val_ids: ids reserved for evaluation (VOC 2012 val).
        what: name of the training list, for the message.
    """
    leaked = sorted(set(train_ids) & set(val_ids))
    if leaked:
        raise DatasetError(
            f"{len(leaked)} evaluation ids leak into the {what} list, e.g. "
            f"{leaked[:5]}; remove them from one of the lists (trainaug = SBD ∪ VOC train − VOC "
            "val)"
        )


def build_trainaug_ids(
    sbd_train: Iterable[str],
    sbd_val: Iterable[str],
    voc_train: Iterable[str],
    voc_val: Iterable[str],
) -> list[str]:
    """``sorted((sbd_train ∪ sbd_val ∪ voc_train) − voc_val)``, checked leak-free."""
    ids = sorted((set(sbd_train) | set(sbd_val) | set(voc_train)) - set(voc_val))
    check_no_leak(ids, voc_val, "trainaug")
    return ids


def read_sbd_mat(path: str | Path) -> np.ndarray:
    """Read ``GTcls['Segmentation']`` of an SBD ``cls/<id>.mat``.

    Returns:
        int64 array (H, W) with labels 0..20 (SBD has no void label).
    """
    path = Path(path)
    if not path.is_file():
        raise BadSampleError(f"{path}: file not found")
    try:
        gt = scipy.io.loadmat(path, struct_as_record=False, squeeze_me=True)["GTcls"]
        mask = np.asarray(gt.Segmentation)
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as e:
        raise BadSampleError(f"{path}: cannot read GTcls.Segmentation ({e})") from e
    if mask.ndim != 2:
        raise BadSampleError(f"{path}: Segmentation has shape {mask.shape}, expected (H, W)")
    return validate_mask(mask, path)


def _sbd_dir(sbd_root: str | Path | None) -> Path | None:
    """Accept ``benchmark_RELEASE`` or its ``dataset/`` folder."""
    if sbd_root is None:
        return None
    p = Path(sbd_root)
    return p / "dataset" if (p / "dataset").is_dir() else p


class SBDSegmentation(VOCSegmentation):
    """VOC images with trainaug masks; a drop-in for :class:`VOCSegmentation` on the train side.

    Uses the ``SegmentationClassAug`` layout when ``VOC2012/ImageSets/Segmentation/<split>.txt``
    exists, else builds the list from ``sbd_root``. Either way the list is checked against
    ``VOC2012/ImageSets/Segmentation/val.txt`` and a leak raises ValueError.

    Args:
        root: folder containing ``VOC2012/``.
        split: list name in the SegmentationClassAug layout (``train_aug``).
        transform: albumentations-style callable.
        skip_bad: log and skip bad samples instead of raising.
        sbd_root: ``benchmark_RELEASE`` (or its ``dataset/``), used when the list file is absent.
        mask_dir: folder of the pre-converted PNG masks.
        **kwargs: ``classes`` and ``palette``, as :class:`VOCSegmentation` takes them.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train_aug",
        transform: Callable | None = None,
        skip_bad: bool = False,
        sbd_root: str | Path | None = None,
        mask_dir: str = "SegmentationClassAug",
        **kwargs: Any,
    ):
        self.sbd = _sbd_dir(sbd_root)
        self.from_mat = False
        super().__init__(root, split, transform, skip_bad, mask_dir=mask_dir, **kwargs)

    def _read_ids(self) -> list[str]:
        self._require(self.voc / "JPEGImages")
        lists = self.voc / "ImageSets" / "Segmentation"
        val = read_ids(self._require(lists / "val.txt"))
        if (lists / f"{self.split}.txt").is_file() and (self.voc / self.mask_dir).is_dir():
            ids = read_ids(lists / f"{self.split}.txt")
            check_no_leak(ids, val, self.split)
            return ids
        if self.sbd is None:
            raise dataset_not_found(self.root, self.voc / self.mask_dir, sbd=True)
        self.from_mat = True
        sbd = [read_ids(self._require(self.sbd / f"{s}.txt", sbd=True)) for s in ("train", "val")]
        self._require(self.sbd / "cls", sbd=True)
        return build_trainaug_ids(*sbd, read_ids(self._require(lists / "train.txt")), val)

    def mask_path(self, image_id: str) -> Path:
        if not self.from_mat:
            return super().mask_path(image_id)
        voc = self.voc / "SegmentationClass" / f"{image_id}.png"
        return voc if voc.is_file() else self.sbd / "cls" / f"{image_id}.mat"

    def read_mask(self, image_id: str) -> np.ndarray:
        path = self.mask_path(image_id)
        if path.suffix == ".mat":
            return read_sbd_mat(path)
        return read_mask(path, len(self.classes), self.palette)

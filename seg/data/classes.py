"""A dataset's classes and colours: the one place they are decided.

A data config's ``classes`` and ``palette`` default to ``${seg.classes:${.root}}`` and
``${seg.palette:${.root}}``: the files ``classes.txt`` (one name per line, index = label value,
a leading ``background`` is the background) and ``palette.txt`` (one ``r g b`` line per class) in
the dataset root or its ``VOC2012/`` folder, else PASCAL VOC's 21 classes and colours. A list
on the command line (``data.classes=[background,cat,dog]``) replaces them. The resolved lists
are part of the run's config, so every checkpoint records them and ``evaluate.py``,
``predict.py`` and the export read them from there (:func:`checkpoint_classes`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from seg.constants import VOC_CLASSES, VOC_PALETTE
from seg.errors import ConfigError

BACKGROUND = "background"


def _find(root: str | Path, name: str) -> Path | None:
    for folder in (Path(root), Path(root) / "VOC2012"):
        if (folder / name).is_file():
            return folder / name
    return None


def _lines(path: Path) -> list[str]:
    """Non-blank, non-comment lines; a UTF-8 BOM and surrounding spaces are dropped."""
    text = path.read_text(encoding="utf-8-sig")
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def dataset_classes(root: str | Path) -> list[str]:
    """Class names of the dataset at ``root``: its ``classes.txt``, else VOC's 21.

    Raises:
        ConfigError: The file is empty, names a class twice, or has more than 255 classes.
    """
    path = _find(root, "classes.txt")
    if path is None:
        return list(VOC_CLASSES)
    names = _lines(path)
    check_classes(names, str(path))
    return names


def check_classes(names: Sequence[str], source: str) -> None:
    """Raise ConfigError naming ``source`` unless ``names`` can label a dataset."""
    if not 1 <= len(names) <= 255:
        raise ConfigError(f"{source}: {len(names)} classes; between 1 and 255 are needed")
    twice = sorted({n for n in names if list(names).count(n) > 1})
    if twice:
        raise ConfigError(f"{source}: classes named twice: {twice}")


def dataset_palette(root: str | Path) -> list[list[int]] | None:
    """RGB colour of each label value from ``palette.txt``; None (VOC's colours) without one.

    Raises:
        ConfigError: A line of the file is not three integers in 0..255.
    """
    path = _find(root, "palette.txt")
    if path is None:
        return None
    colours = []
    for i, line in enumerate(_lines(path)):
        values = line.replace(",", " ").split()
        if len(values) != 3 or not all(v.isdigit() and int(v) <= 255 for v in values):
            raise ConfigError(f"{path}: line {i + 1} {line!r} is not three numbers in 0..255")
        colours.append([int(v) for v in values])
    return colours


def flat_palette(palette: Sequence[Sequence[int]]) -> list[int]:
    """``[[r, g, b], ...]`` -> the flat 768-int list PIL's ``putpalette`` wants (VOC's colours
    fill the labels a short palette leaves out)."""
    flat = list(VOC_PALETTE)
    for i, colour in enumerate(list(palette)[:256]):
        flat[3 * i : 3 * i + 3] = [int(c) for c in colour]
    return flat


def label_offset(names: Sequence[str]) -> int:
    """1 when label 0 is the background (localization nets predict the objects only), else 0."""
    return 1 if names and names[0] == BACKGROUND else 0


def num_objects(names: Sequence[str]) -> int:
    """The number of object classes (the names after a leading background)."""
    return len(names) - label_offset(names)


def checkpoint_classes(ckpt: dict[str, Any]) -> tuple[tuple[str, ...], list[int]]:
    """(class names, flat palette) a checkpoint was trained with; VOC's for older checkpoints."""
    data = ckpt["seg_config"].get("data") or {}
    names = tuple(data.get("classes") or VOC_CLASSES)
    palette = data.get("palette")
    return names, flat_palette(palette) if palette else list(VOC_PALETTE)


def checkpoint_logit_names(ckpt: dict[str, Any]) -> tuple[str, ...]:
    """Names of a localization net's class logits: the classes from ``model.label_offset`` on."""
    names, _ = checkpoint_classes(ckpt)
    model = ckpt["seg_config"]["model"]
    offset = model.get("label_offset", len(names) - int(model.get("num_classes", 20)))
    return names[offset:]

"""A synthetic dataset in the exact PASCAL VOC 2012 layout, generated in a few seconds.

It lets every stage (loading, augmentation, training, evaluation, localization) run offline. Five
VOC classes are drawn as flat-coloured shapes on grey-ish textured backgrounds; each class has its
own hue and shape, so a small network separates them in minutes on a CPU::

    aeroplane: blue triangle     bus: yellow rectangle     cat: magenta ellipse
    person: red diamond          pottedplant: green pentagon

Like VOC, masks are palette PNGs with a 255 (void) band along object borders, boxes are 1-based in
``Annotations/*.xml`` (with ``difficult``/``truncated`` flags), and image sizes vary (never all
square, never multiples of 32). Generation is deterministic in ``seed`` and atomic: files are
written to a temporary folder that is renamed to ``VOC2012/`` once complete.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from seg.constants import IGNORE_INDEX, VOC_CLASSES, VOC_PALETTE
from seg.errors import DatasetError

#: (VOC label, RGB colour, shape) of the drawn classes.
SAMPLE_CLASSES: tuple[tuple[int, tuple[int, int, int], str], ...] = (
    (1, (45, 85, 225), "triangle"),
    (6, (235, 200, 35), "rectangle"),
    (8, (205, 50, 195), "ellipse"),
    (15, (220, 45, 40), "diamond"),
    (16, (45, 175, 65), "pentagon"),
)
_MARKER = ".complete"
_VERSION = 1
_LISTS = ("ImageSets/Segmentation", "ImageSets/Main")


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Low-saturation texture: smooth noise, a gradient or stripes. float (H, W, 3) in 0..255."""
    kind = rng.integers(3)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    if kind == 0:
        small = rng.uniform(60, 200, size=(max(h // 12, 2), max(w // 12, 2)))
        grey = np.asarray(Image.fromarray(small.astype(np.float32)).resize((w, h), Image.BILINEAR))
    elif kind == 1:
        a = rng.uniform(0, 2 * np.pi)
        grey = 130 + 70 * (np.cos(a) * xx + np.sin(a) * yy - 0.5)
    else:
        a, period = rng.uniform(0, np.pi), rng.uniform(0.05, 0.2)
        grey = 130 + 45 * np.sin(2 * np.pi * (np.cos(a) * xx + np.sin(a) * yy) / period)
    tint = rng.uniform(-12, 12, size=3)
    return grey[..., None] + tint + rng.normal(0, 6, size=(h, w, 3))


def _polygon(shape: str, cx: float, cy: float, rx: float, ry: float, angle: float) -> list:
    """Vertices of a regular-ish polygon (rotated by ``angle``) inscribed in an ellipse."""
    n, phase = {"triangle": (3, -np.pi / 2), "diamond": (4, 0.0), "pentagon": (5, -np.pi / 2)}[
        shape
    ]
    t = phase + angle + 2 * np.pi * np.arange(n) / n
    return list(zip((cx + rx * np.cos(t)).tolist(), (cy + ry * np.sin(t)).tolist(), strict=True))


def _draw_object(rng: np.random.Generator, h: int, w: int, shape: str) -> tuple[np.ndarray, bool]:
    """Binary mask (H, W) of one large shape, and whether it is cut by the image border."""
    rx, ry = rng.uniform(0.17, 0.3) * w, rng.uniform(0.17, 0.3) * h
    cx, cy = rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    box = [cx - rx, cy - ry, cx + rx, cy + ry]
    if shape == "ellipse":
        draw.ellipse(box, fill=1)
    elif shape == "rectangle":
        draw.rectangle(box, fill=1)
    else:
        draw.polygon(_polygon(shape, cx, cy, rx, ry, rng.uniform(-0.3, 0.3)), fill=1)
    truncated = box[0] < 0 or box[1] < 0 or box[2] > w - 1 or box[3] > h - 1
    return np.asarray(canvas, dtype=bool), truncated


def _render(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray, list]:
    """One image: uint8 (H, W, 3), label mask uint8 (H, W), and its objects for the XML."""
    image = _background(rng, h, w)
    label = np.zeros((h, w), np.uint8)
    owner = np.full((h, w), -1)
    drawn = []
    for k in range(rng.integers(1, 4)):
        cls, colour, shape = SAMPLE_CLASSES[rng.integers(len(SAMPLE_CLASSES))]
        obj, truncated = _draw_object(rng, h, w, shape)
        rgb = np.asarray(colour) + rng.normal(0, 10, size=3)
        image[obj] = rgb + rng.normal(0, 8, size=(int(obj.sum()), 3))
        label[obj], owner[obj] = cls, k
        drawn.append((cls, obj.sum(), truncated))
    objects = []
    for k, (cls, area, truncated) in enumerate(drawn):
        ys, xs = np.nonzero(owner == k)
        if xs.size:  # fully occluded objects are not annotated
            box = (xs.min() + 1, ys.min() + 1, xs.max() + 1, ys.max() + 1)  # 1-based, as in VOC
            objects.append((cls, box, xs.size < 0.3 * area, truncated))
    edge = np.zeros((h, w), bool)
    edge[:, :-1] |= label[:, :-1] != label[:, 1:]
    edge[:-1, :] |= label[:-1, :] != label[1:, :]
    label[ndimage.binary_dilation(edge)] = IGNORE_INDEX  # ~3 px void band on borders
    return np.clip(image, 0, 255).astype(np.uint8), label, objects


def _annotation(image_id: str, w: int, h: int, objects: list) -> bytes:
    """VOC-format XML for one image."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC2012"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    size = ET.SubElement(root, "size")
    for key, value in (("width", w), ("height", h), ("depth", 3)):
        ET.SubElement(size, key).text = str(value)
    ET.SubElement(root, "segmented").text = "1"
    for cls, box, difficult, truncated in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = VOC_CLASSES[cls]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = str(int(truncated))
        ET.SubElement(obj, "difficult").text = str(int(difficult))
        bb = ET.SubElement(obj, "bndbox")
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True):
            ET.SubElement(bb, key).text = str(int(value))
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8")


def _size(rng: np.random.Generator, lo: int, hi: int) -> int:
    s = int(rng.integers(lo, hi + 1))
    return s + 1 if s % 32 == 0 else s


def _write_one(voc: Path, image_id: str, rng: np.random.Generator, lo: int, hi: int) -> None:
    h, w = _size(rng, lo, hi), _size(rng, lo, hi)
    image, label, objects = _render(rng, h, w)
    Image.fromarray(image).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=95)
    mask = Image.fromarray(label, mode="P")
    mask.putpalette(VOC_PALETTE)
    mask.save(voc / "SegmentationClass" / f"{image_id}.png")
    (voc / "Annotations" / f"{image_id}.xml").write_bytes(_annotation(image_id, w, h, objects))


def make_sample(
    root: str | Path,
    n_train: int = 48,
    n_val: int = 16,
    seed: int = 0,
    min_size: int = 150,
    max_size: int = 260,
) -> Path:
    """Write the synthetic dataset to ``<root>/VOC2012`` (replacing any previous one).

    Args:
        root: folder that will contain ``VOC2012/`` (use it as the datamodule ``root``).
        n_train: number of ``train`` images; ``val`` follows with ``n_val`` more.
        n_val: number of ``val`` images.
        seed: image ``i`` depends only on ``(seed, i)``.
        min_size: smallest image side in pixels.
        max_size: largest image side in pixels.

    Returns:
        ``Path(root)``.

    Raises:
        DatasetError: ``<root>/VOC2012`` exists and is not a generated sample.
    """
    root = Path(root)
    params = _params(n_train=n_train, n_val=n_val, seed=seed, min_size=min_size, max_size=max_size)
    voc = root / "VOC2012"
    if voc.exists() and not (voc / _MARKER).is_file():  # never replace data that is not ours
        raise DatasetError(
            f"data.root={root}: holds a VOC2012/ that is not the generated sample, which would "
            "replace it; for your own data use data=voc or data=custom, else another data.root"
        )
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".VOC2012.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("JPEGImages", "SegmentationClass", "Annotations", *_LISTS):
        (tmp / sub).mkdir(parents=True)
    ids = [f"sample_{i:05d}" for i in range(n_train + n_val)]
    for i, image_id in enumerate(ids):
        _write_one(tmp, image_id, np.random.default_rng([seed, i]), min_size, max_size)
    splits = {"train": ids[:n_train], "val": ids[n_train:], "trainval": ids}
    for sub in _LISTS:
        for name, split_ids in splits.items():
            (tmp / sub / f"{name}.txt").write_text("".join(f"{i}\n" for i in split_ids))
    (tmp / _MARKER).write_text(json.dumps(params, sort_keys=True))
    shutil.rmtree(root / "VOC2012", ignore_errors=True)
    try:
        tmp.rename(root / "VOC2012")
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
        if not is_complete(root, **params):
            raise
    return root


def is_complete(root: str | Path, **params) -> bool:
    """True when ``<root>/VOC2012`` holds a finished sample made with ``params``."""
    marker = Path(root) / "VOC2012" / _MARKER
    if not marker.is_file():
        return False
    return json.loads(marker.read_text()) == _params(**params)


def _params(**params) -> dict:
    """``make_sample`` keyword arguments with defaults filled in, plus the format version."""
    bound = inspect.signature(make_sample).bind(None, **params)
    bound.apply_defaults()
    bound.arguments.pop("root")
    return {**bound.arguments, "version": _VERSION}


def ensure_sample(root: str | Path, **params) -> Path:
    """Generate the sample under ``root`` unless an identical one is already there.

    Args:
        root: folder that holds (or will hold) ``VOC2012/``.
        **params: keyword arguments of :func:`make_sample`.

    Returns:
        ``Path(root)``.
    """
    if is_complete(root, **params):
        return Path(root)
    return make_sample(root, **params)

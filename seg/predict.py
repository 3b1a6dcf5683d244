"""``python predict.py ckpt=PATH input=PATH output=DIR``: masks for any folder of images.

Writes ``<stem>.png`` palette masks at each image's original resolution and EXIF orientation
(readable back as class indices), optional overlays and raw index masks; localization models
write one box per image (class, score, pixel box) into ``boxes.jsonl`` as each image finishes
and ``boxes.json`` at the end, and masks too when their net has a mask decoder. Writes are
atomic; a re-run skips finished images; SIGTERM still writes ``boxes.json`` (exit 143). A file that fails
(unreadable, inference or write error) is reported as one line naming it and the batch goes on;
the closing summary counts the failures and the exit status is 1. Images whose longer side
exceeds ``inference.slide_above`` are predicted band by band (:func:`seg.inference.predict_mask_banded`),
so a 10000 x 8000 photo peaks at about 2 GB RSS, not the 6.7 GB of its full-size logits alone.
"""

from __future__ import annotations

import glob
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig
from rich.progress import track

from seg.api import Model
from seg.data.io import read_image
from seg.errors import BadSampleError, InputError
from seg.inference import InferenceConfig
from seg.outputs import PredictionWriter
from seg.utils import sigterm_exits

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm"}


@dataclass
class Summary:
    """What a predict run did, for the closing line and the exit status."""

    written: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def list_inputs(spec: str) -> tuple[list[Path], list[Path]]:
    """Resolve ``input=``: a file, a folder (its image files, sorted) or a glob.

    Returns:
        (images, ignored): files to predict, and folder entries skipped as not images.

    Raises:
        InputError: Nothing matches ``spec``, or no match is an image file (an empty folder,
            or one of non-image files only).
    """
    path = Path(spec)
    if path.is_file():
        return [path], []
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
    else:
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        if not files:
            raise InputError(f"input={spec}: no such file, folder or matching glob")
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    ignored = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if not images:
        raise InputError(
            f"input={spec}: no image files to predict ({len(ignored)} other files ignored; "
            f"image suffixes: {' '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return images, ignored


def safe_stem(path: Path) -> str:
    """An output file stem derived from ``path`` that cannot leave the output folder."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", path.stem).lstrip(".")
    return stem or "image"


@dataclass
class Predictor:
    """What :func:`predict_one` needs, built once per run."""

    model: Model
    writer: PredictionWriter
    overwrite: bool = False


def predict(cfg: DictConfig) -> int:
    """Predict every input image (see the module docstring) and print the summary.

    Returns:
        The exit status: 0, or 1 when any image failed.

    Raises:
        CheckpointError: The checkpoint cannot be used.
        InputError: ``input`` matches nothing, or no image file.
    """
    images, ignored = list_inputs(str(cfg.input))
    model = Model(cfg.ckpt, InferenceConfig.from_config(cfg))
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    boxes = model.logit_names is not None
    writer = PredictionWriter(
        out, cfg.save, model.predicts_masks, boxes, model.classes, model.palette
    )
    run = Predictor(model, writer, overwrite=bool(cfg.overwrite))
    summary = Summary(ignored=[str(p) for p in ignored])
    try:
        with sigterm_exits():  # SIGTERM -> SystemExit(143): the finally below still runs
            for path in track(images, description="Predicting", disable=not sys.stderr.isatty()):
                predict_one(path, run, summary)
    finally:
        run.writer.close()
    for line in summary.failed:
        print(f"failed: {line}", file=sys.stderr)
    print(
        f"{summary.written} written, {summary.skipped} already done, "
        f"{len(summary.failed)} failed, {len(summary.ignored)} non-image files ignored "
        f"-> {cfg.output}"
    )
    return 1 if summary.failed else 0


def failure_line(path: Path, err: BaseException) -> str:
    """One line that names the file and the problem."""
    text = " ".join(str(err).split())
    if not isinstance(err, BadSampleError):
        text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if text.startswith(str(path)) else f"{path}: {text}"


def predict_one(path: Path, run: Predictor, summary: Summary) -> None:
    """Predict one image into ``run.writer``, recording the outcome in ``summary``.

    Any error (unreadable file, inference failure, write failure) is recorded as one line
    naming the file; it never stops the batch.
    """
    stem = safe_stem(path)
    if not run.overwrite and run.writer.done(stem):
        summary.skipped += 1
        return
    try:
        image = read_image(path)  # (H, W, 3) uint8, upright
        result = run.model.predict(image)  # mask (H, W), or a box record (+ "mask")
        if isinstance(result, dict):
            mask = result.pop("mask", None)
            run.writer.write(stem, image, mask, {"file": str(path), **result})
        else:
            run.writer.write(stem, image, result)
    except Exception as err:  # noqa: BLE001  (one bad file never stops the batch)
        summary.failed.append(failure_line(path, err))
        log.error("%s", summary.failed[-1])
        return
    summary.written += 1

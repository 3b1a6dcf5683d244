"""``python predict.py ckpt=PATH input=PATH output=DIR``: masks for any folder of images.

Writes ``<stem>.png`` palette masks at each image's original resolution and EXIF orientation
(readable back as class indices), optional overlays and raw index masks, and ``boxes.json`` for
localization models. Writes are atomic; a re-run skips finished images. A file that fails
(unreadable, inference or write error) is reported as one line naming it and the batch goes on;
the closing summary counts the failures and the exit status is 1. Images whose longer side
exceeds ``inference.slide_above`` are predicted band by band (:func:`seg.inference.slide_mask`),
so a 10000 x 8000 photo peaks at about 2 GB RSS, not the 6.7 GB of its full-size logits alone.
"""

from __future__ import annotations

import glob
import logging
import re
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from rich.progress import track

from seg.checkpoint import CheckpointError, build_net, is_localization, load_checkpoint
from seg.data.errors import BadSampleError
from seg.data.io import read_image
from seg.evaluate import inference_config
from seg.inference import InferenceConfig, predict_probs, scores_to_mask, slide_mask
from seg.outputs import LocalizationWriter, MaskWriter
from seg.validate import ConfigError, validate_config

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
        FileNotFoundError: Nothing matches ``spec``, or no match is an image file (an empty
            folder, or one of non-image files only).
    """
    path = Path(spec)
    if path.is_file():
        return [path], []
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
    else:
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        if not files:
            raise FileNotFoundError(f"input={spec}: no such file, folder or matching glob")
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    ignored = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if not images:
        raise FileNotFoundError(
            f"input={spec}: no image files to predict ({len(ignored)} other files ignored; "
            f"image suffixes: {' '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return images, ignored


def safe_stem(path: Path) -> str:
    """An output file stem derived from ``path`` that cannot leave the output folder."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", path.stem).lstrip(".")
    return stem or "image"


def to_tensor(image: Any, transform: Any) -> torch.Tensor:
    """Normalise an RGB uint8 image with the checkpoint's eval transform: (1, 3, H, W)."""
    return transform(image=image)["image"].unsqueeze(0)


def image_rows(image: np.ndarray, transform: Any, y0: int, y1: int) -> torch.Tensor:
    """Rows ``y0:y1`` of an image (H, W, 3), normalised alone: (1, 3, y1 - y0, W).

    Raises:
        ValueError: The transform is not pixel-wise (it changed the size), so rows cannot be
            normalised independently.
    """
    x = to_tensor(image[y0:y1], transform)
    if tuple(x.shape[-2:]) != (y1 - y0, image.shape[1]):
        raise ValueError(
            "the checkpoint's eval transform changes the image size, so large images cannot be "
            "predicted in bands; raise inference.slide_above"
        )
    return x


def segment(
    net: torch.nn.Module,
    image: np.ndarray,
    transform: Any,
    infer: InferenceConfig,
    slide_above: int,
) -> torch.Tensor:
    """Class mask (H, W) of an RGB uint8 image (H, W, 3), at the image's own size.

    Images whose longer side exceeds ``slide_above`` go through :func:`slide_mask`, band by
    band, so memory stays bounded by the image width instead of growing with classes x pixels.
    """
    h, w = image.shape[:2]
    if max(h, w) <= slide_above:
        probs = predict_probs(net, to_tensor(image, transform), infer)  # (1, C, H, W)
        return scores_to_mask(probs, (h, w))[0]
    return slide_mask(net, partial(image_rows, image, transform), (h, w), infer)


@dataclass
class Predictor:
    """What :func:`predict_one` needs, built once per run."""

    net: torch.nn.Module
    transform: Any
    infer: InferenceConfig
    writer: MaskWriter | LocalizationWriter
    localization: bool = False
    slide_above: int = 2048
    overwrite: bool = False


def predict(cfg: DictConfig) -> Summary:
    """Predict every input image; see the module docstring.

    Raises:
        ConfigError: An invalid ``inference`` / ``tta`` value (checked before anything runs).
        CheckpointError: The checkpoint cannot be used.
        FileNotFoundError: ``input`` matches nothing, or no image file.
    """
    validate_config(cfg)
    images, ignored = list_inputs(str(cfg.input))
    ckpt = load_checkpoint(cfg.ckpt)
    localization = is_localization(ckpt)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    run = Predictor(
        net=build_net(ckpt),
        transform=instantiate(ckpt["seg_config"]["augment"]["eval"]),
        infer=inference_config(cfg),
        writer=(LocalizationWriter if localization else MaskWriter)(out, cfg.save),
        localization=localization,
        slide_above=int(cfg.inference.slide_above),
        overwrite=bool(cfg.overwrite),
    )
    summary = Summary(ignored=[str(p) for p in ignored])
    try:
        for path in track(images, description="Predicting", disable=not sys.stderr.isatty()):
            predict_one(path, run, summary)
    finally:
        run.writer.close()
    return summary


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
        if run.localization:
            pred = run_localizer(run.net, to_tensor(image, run.transform))
            run.writer.write(stem, path, image, pred)
        else:
            mask = segment(run.net, image, run.transform, run.infer, run.slide_above)
            run.writer.write(stem, image, mask)
    except Exception as err:  # noqa: BLE001  (one bad file never stops the batch)
        summary.failed.append(failure_line(path, err))
        log.error("%s", summary.failed[-1])
        return
    summary.written += 1


@torch.inference_mode()
def run_localizer(net: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Class probabilities (K,) and the normalised xywh box (4,) of one image."""
    out = net(x)
    return {"probs": out["logits"].float().softmax(-1)[0], "box": out["box"].float()[0]}


def main(cfg: DictConfig) -> int:
    """Entry point. Returns the exit status: 0; 1 when any image failed; 2 when nothing could
    start (bad checkpoint, no input images)."""
    try:
        summary = predict(cfg)
    except (ConfigError, CheckpointError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for line in summary.failed:
        print(f"failed: {line}", file=sys.stderr)
    print(
        f"{summary.written} written, {summary.skipped} already done, "
        f"{len(summary.failed)} failed, {len(summary.ignored)} non-image files ignored "
        f"-> {cfg.output}"
    )
    return 1 if summary.failed else 0

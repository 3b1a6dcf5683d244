"""``python predict.py ckpt=PATH input=PATH output=DIR``: masks for any folder of images.

Writes ``<stem>.png`` palette masks at each image's original resolution (readable back as class
indices), optional overlays and raw index masks, and ``boxes.json`` for localization models.
Writes are atomic; a re-run skips finished images; unreadable files are reported and skipped.
"""

from __future__ import annotations

import glob
import logging
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from rich.progress import track

from seg.checkpoint import CheckpointError, build_net, is_localization, load_checkpoint
from seg.data.voc import read_image
from seg.evaluate import inference_config
from seg.inference import InferenceConfig, predict_probs, scores_to_mask
from seg.outputs import LocalizationWriter, MaskWriter

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
        FileNotFoundError: Nothing matches ``spec``.
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
    return images, ignored


def safe_stem(path: Path) -> str:
    """An output file stem derived from ``path`` that cannot leave the output folder."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", path.stem).lstrip(".")
    return stem or "image"


def to_tensor(image: Any, transform: Any) -> torch.Tensor:
    """Normalise an RGB uint8 image with the checkpoint's eval transform: (1, 3, H, W)."""
    return transform(image=image)["image"].unsqueeze(0)


def predict(cfg: DictConfig) -> Summary:
    """Predict every input image; see the module docstring."""
    ckpt = load_checkpoint(cfg.ckpt)
    net = build_net(ckpt)
    transform = instantiate(ckpt["seg_config"]["augment"]["eval"])
    infer = inference_config(cfg)
    localization = is_localization(ckpt)
    images, ignored = list_inputs(str(cfg.input))
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    writer = (LocalizationWriter if localization else MaskWriter)(out, cfg.save)
    summary = Summary(ignored=[str(p) for p in ignored])
    try:
        for path in track(images, description="Predicting", disable=not sys.stderr.isatty()):
            predict_one(path, net, transform, infer, writer, cfg, summary, localization)
    finally:
        writer.close()
    return summary


def predict_one(path, net, transform, infer, writer, cfg, summary, localization) -> None:
    """Predict one image into ``writer``, recording the outcome in ``summary``."""
    stem = safe_stem(path)
    if not cfg.overwrite and writer.done(stem):
        summary.skipped += 1
        return
    try:
        image = read_image(path)
    except Exception as err:  # noqa: BLE001  (one bad file never stops the batch)
        summary.failed.append(f"{path}: {err}")
        log.error("%s: %s", path, err)
        return
    x = to_tensor(image, transform)
    if localization:
        writer.write(stem, path, image, run_localizer(net, x))
    else:
        mode = infer if max(image.shape[:2]) <= cfg.inference.slide_above else _slide(infer)
        probs = predict_probs(net, x, mode)  # (1, C, H, W)
        writer.write(stem, image, scores_to_mask(probs, image.shape[:2])[0])
    summary.written += 1


def _slide(cfg: InferenceConfig) -> InferenceConfig:
    return replace(cfg, mode="slide")


@torch.inference_mode()
def run_localizer(net: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Class probabilities (K,) and the normalised xywh box (4,) of one image."""
    out = net(x)
    return {"probs": out["logits"].float().softmax(-1)[0], "box": out["box"].float()[0]}


def main(cfg: DictConfig) -> int:
    """Entry point. Returns the exit status: 0, or 1 when any image failed."""
    try:
        summary = predict(cfg)
    except (CheckpointError, FileNotFoundError) as err:
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

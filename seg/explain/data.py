"""What explain.py looks at: the input images, their normalisation, and the class names.

Images come from ``input=`` (a file, folder or glob, as in ``predict.py``) or, when it is null,
from a dataset split (``data.root`` / ``data.split``, as in ``evaluate.py``). Each is read with
:func:`seg.data.io.read_image` when it is needed, so a pass over the data never holds more
than one image; an unreadable file is reported in one line naming it and skipped.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from hydra.utils import instantiate
from rich.progress import track
from torch import Tensor

from seg.data.classes import checkpoint_classes, checkpoint_logit_names
from seg.data.io import read_image
from seg.data.voc import VOCSegmentation
from seg.errors import ConfigError, failure_line
from seg.inference import normalise
from seg.predict import list_inputs

log = logging.getLogger(__name__)


@dataclass
class Images:
    """The images of a run, and the ones that failed.

    Attributes:
        paths: Image files, in order; an image's index in this list identifies it.
        ignored: Non-image files skipped in an input folder.
        failed: path -> one line naming the file and the problem.
    """

    paths: list[Path]
    ignored: list[Path] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: Any) -> Images:
        """``input`` when set, else the ``data.split`` list of ``data.root``; ``max_images`` first.

        Raises:
            InputError: ``input`` matches no image file.
            DatasetNotFoundError: No dataset at ``data.root``.
        """
        if cfg.input is not None:
            inputs = list_inputs(str(cfg.input))
            paths, ignored = inputs.images, inputs.ignored
        else:
            split = VOCSegmentation(cfg.data.root, split=cfg.data.split)
            paths, ignored = [split.voc / "JPEGImages" / f"{i}.jpg" for i in split.ids], []
        limit = cfg.get("max_images")
        return cls(paths[:limit] if limit else paths, ignored)

    def each(
        self, indices: Iterable[int], description: str
    ) -> Iterator[tuple[int, Path, np.ndarray]]:
        """Read the images at ``indices`` one at a time, with a progress bar on a terminal.

        Yields:
            (index, path, RGB uint8 image (H, W, 3)); unreadable files are recorded and skipped.
        """
        indices = list(indices)
        for i in track(indices, description=description, disable=not sys.stderr.isatty()):
            image = self.attempt(i, read_image, self.paths[i])
            if image is not None:
                yield i, self.paths[i], image

    def first(self, n: int, description: str) -> Iterator[tuple[int, Path, np.ndarray]]:
        """Like :meth:`each`, over the first ``n`` images that can be read."""
        for count, item in enumerate(self.each(range(len(self.paths)), description), start=1):
            yield item
            if count == n:
                return

    def attempt(self, i: int, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, or None after recording its failure against image ``i``: one bad
        image never stops a run (as in ``predict.py``)."""
        try:
            return fn(*args)
        except Exception as err:  # noqa: BLE001
            line = failure_line(self.paths[i], err)
            if str(self.paths[i]) not in self.failed:
                log.error("%s", line)
            self.failed.setdefault(str(self.paths[i]), line)
            return None

    def first_readable(self) -> np.ndarray | None:
        """The first image that can be read, or None."""
        return next((image for _, _, image in self.first(1, "Reading")), None)


class Pixels:
    """A checkpoint's pixel normalisation, applied and undone.

    Only the pixel-wise steps of the checkpoint's eval transform are kept (Normalize, and any
    other image-only step): resizing (the localizer's) would break the mapping from activations
    back to the image, and every net here takes any input size.
    """

    def __init__(self, ckpt: dict[str, Any]) -> None:
        full = instantiate(ckpt["seg_config"]["augment"]["eval"])
        steps = [t for t in full.transforms if isinstance(t, A.ImageOnlyTransform)]
        self.transform = A.Compose([*steps, ToTensorV2()])
        norm = next((t for t in steps if isinstance(t, A.Normalize)), None)
        scale = 255.0 / float(norm.max_pixel_value) if norm is not None else 1.0
        mean, std = (norm.mean, norm.std) if norm is not None else ((0.0,) * 3, (1.0 / 255,) * 3)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1) * scale
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1) * scale

    def __call__(self, image: np.ndarray, device: torch.device | str = "cpu") -> Tensor:
        """RGB uint8 (H, W, 3) -> normalised (1, 3, H, W) on ``device``."""
        return normalise(image, self.transform).to(device)

    @property
    def bounds(self) -> tuple[Tensor, Tensor]:
        """(low, high), each (3,): the normalised values of pixel values 0 and 1."""
        mean, std = self.mean.view(3), self.std.view(3)
        return -mean / std, (1 - mean) / std

    def undo(self, x: Tensor) -> np.ndarray:
        """Normalised (3, H, W) -> displayable RGB float (H, W, 3) in [0, 1] (clipped)."""
        rgb = x.detach().float().cpu() * self.std + self.mean
        return rgb.clamp(0, 1).permute(1, 2, 0).numpy()


def class_names(ckpt: dict[str, Any], num_classes: int) -> list[str]:
    """Names of a net's K outputs, as the checkpoint records them (a localizer's class logits
    start after the background); ``class <k>`` where the counts disagree."""
    names = list(checkpoint_classes(ckpt)[0])
    if len(names) != num_classes:
        names = list(checkpoint_logit_names(ckpt))
    return names if len(names) == num_classes else [f"class {k}" for k in range(num_classes)]


def class_indices(chosen: Any, names: list[str], key: str) -> list[int] | None:
    """Class names or indices given on the command line -> indices; None stays None.

    Raises:
        ConfigError: A name or index is not one of the net's classes.
    """
    if chosen is None:
        return None
    chosen = [chosen] if isinstance(chosen, str | int) else list(chosen)
    out, bad = [], []
    for c in chosen:
        if isinstance(c, int) and not isinstance(c, bool) and 0 <= c < len(names):
            out.append(c)
        elif str(c) in names:
            out.append(names.index(str(c)))
        else:
            bad.append(c)
    if bad:
        raise ConfigError(f"{key}: unknown class {bad}; classes: {', '.join(names)}")
    return out

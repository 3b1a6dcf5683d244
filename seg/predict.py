"""``python predict.py ckpt=PATH input=PATH output=DIR``: masks for any folder of images.

Writes ``<stem>.png`` palette masks at each image's original resolution and EXIF orientation
(readable back as class indices), optional overlays and raw index masks; localization models
write one box per image (class, score, pixel box) into ``boxes.jsonl`` as each image finishes
and ``boxes.json`` at the end, and masks too when their net has a mask decoder.

Never destroys or drops a file: the output folder mirrors the input tree (``recursive=true``
walks subfolders; a ``**`` glob does too), every input gets its own output name, decided before
any work (an input whose name is taken, by another input, ``cat.jpg`` and ``cat.png``, or by a
file predict did not write, gets ``cat_png``), and predict's own outputs are never taken as
inputs. Writes are atomic; what was written for which input is recorded in
``predict_manifest.jsonl`` (:mod:`seg.manifest`), and a re-run skips exactly the inputs recorded
there unchanged; SIGTERM still writes ``boxes.json`` (exit 143). A file that fails (unreadable,
inference or write error) is reported as one line naming it and the batch goes on; the closing
summary counts the failures and the exit status is 1. Images whose longer side exceeds
``inference.slide_above`` are predicted band by band (:func:`seg.inference.predict_mask_banded`),
so a 10000 x 8000 photo peaks at about 2 GB RSS, not the 6.7 GB of its full-size logits alone.

Decoding, the net and writing overlap (:mod:`seg.pipeline`): the next images decode, and the
last ones are written, while the net runs; the manifest still records the images in input
order, each after its files, and SIGTERM or Ctrl+C still leaves every image the net finished
written and recorded.
"""

from __future__ import annotations

import glob
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from seg.api import Model
from seg.errors import InputError
from seg.inference import InferenceConfig
from seg.outputs import PredictionWriter
from seg.pipeline import Item, Predictor, Summary, predict_all
from seg.utils import sigterm_exits

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm"}


@dataclass
class Inputs:
    """What ``input=`` lists (:func:`list_inputs`)."""

    images: list[Path]  # image files to predict, each once
    base: Path  # the folder whose tree the output folder mirrors
    ignored: list[Path] = field(default_factory=list)  # not image files
    left_out: list[Path] = field(default_factory=list)  # outputs of predict: never inputs


def _glob_base(spec: str) -> Path:
    """The folder part of a glob before its first wildcard (``photos`` for ``photos/**/*.jpg``)."""
    fixed = []
    for part in Path(spec).parts:
        if re.search(r"[*?[]", part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def list_inputs(
    spec: str,
    recursive: bool = False,
    output: Path | None = None,
    own: frozenset[Path] = frozenset(),
) -> Inputs:
    """Resolve ``input=``: a file, a folder (its image files, sorted; with ``recursive``, those of
    its subfolders too) or a glob (``**`` reaches into subfolders).

    Args:
        spec: The ``input`` value.
        recursive: Walk the subfolders of a folder.
        output: The output folder: when it lies inside the input folder, nothing under it is an
            input.
        own: Resolved paths of the files predict wrote (:meth:`PredictionWriter.own_files`):
            never inputs.

    Raises:
        InputError: Nothing matches ``spec``, or no match is an image file (an empty folder,
            or one of non-image files only).
    """
    path = Path(spec)
    if path.is_file():
        files, base = [path], path.parent
    elif path.is_dir():
        walk = path.rglob("*") if recursive else path.iterdir()
        files, base = sorted(p for p in walk if p.is_file()), path
    else:
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        base = _glob_base(spec)
        if not files:
            raise InputError(f"input={spec}: no such file, folder or matching glob")
    out = output.resolve() if output is not None else None
    below = out is not None and out != base.resolve()  # an output folder inside the input tree
    kept, left_out, seen = [], [], set()
    for p in files:
        real = p.resolve()
        if real in own or (below and real.is_relative_to(out)):
            left_out.append(p)
        elif real not in seen:  # two names (links) of one file: predicted once
            seen.add(real)
            kept.append(p)
    images = [p for p in kept if p.suffix.lower() in IMAGE_SUFFIXES]
    ignored = [p for p in kept if p.suffix.lower() not in IMAGE_SUFFIXES]
    if not images:
        own_note = f", {len(left_out)} outputs of predict left out" if left_out else ""
        raise InputError(
            f"input={spec}: no image files to predict ({len(ignored)} other files ignored"
            f"{own_note}; image suffixes: {' '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return Inputs(images, base, ignored, left_out)


def safe_name(text: str) -> str:
    """``text`` as a file or folder name that cannot leave its folder ('' when nothing is left)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text).lstrip(".")


def safe_stem(path: Path) -> str:
    """An output file stem derived from ``path`` that cannot leave the output folder."""
    return safe_name(path.stem) or "image"


def output_stem(path: Path, base: Path) -> str:
    """The output stem of an input: its path under ``base`` (the tree mirrored under
    ``output``), each part made safe, without suffix: ``base/a b/cat.jpg`` -> ``a_b/cat``."""
    rel = path.relative_to(base) if path.is_relative_to(base) else Path(path.name)
    return "/".join([*(safe_name(d) or "_" for d in rel.parent.parts), safe_stem(rel)])


def check_output(output: Path) -> None:
    """Refuse an ``output=`` that cannot be a folder, before anything runs.

    Raises:
        InputError: ``output``, or a path above it, is a file.
    """
    for folder in (output, *output.parents):
        if folder.is_dir():
            return
        if folder.exists():
            raise InputError(
                f"output={output}: {folder} is a file, not a folder; give a folder for the outputs"
            )


def predict(cfg: DictConfig) -> int:
    """Predict every input image (see the module docstring) and print the summary.

    Returns:
        The exit status: 0, or 1 when any image failed.

    Raises:
        CheckpointError: The checkpoint cannot be used.
        InputError: ``input`` matches nothing, or no image file; ``output`` is a file.
    """
    out = Path(cfg.output)
    check_output(out)
    own = frozenset(PredictionWriter.own_files(out))
    inputs = list_inputs(str(cfg.input), bool(cfg.get("recursive", False)), out, own)
    model = Model(cfg.ckpt, InferenceConfig.from_config(cfg), images=len(inputs.images))
    out.mkdir(parents=True, exist_ok=True)
    boxes = model.logit_names is not None
    writer = PredictionWriter(
        out, cfg.save, model.predicts_masks, boxes, model.classes, model.palette
    )
    run = Predictor(model, writer, overwrite=bool(cfg.overwrite))
    summary = Summary(ignored=[str(p) for p in inputs.ignored], left_out=len(inputs.left_out))
    stems = assign_stems(inputs, run.writer, summary)
    items = [Item(i, p, s) for i, (p, s) in enumerate(zip(inputs.images, stems, strict=True))]
    try:
        # SIGTERM -> SystemExit(143): predict_all still writes every image the net finished,
        # and the finally below still writes boxes.json.
        with sigterm_exits():
            predict_all(items, run, summary)
    finally:
        run.writer.close()
    for line in summary.failed:
        print(f"failed: {line}", file=sys.stderr)
    print(
        f"{summary.written} written, {summary.skipped} already done, "
        f"{len(summary.failed)} failed, {len(summary.ignored)} non-image files ignored"
        + (f", {summary.left_out} outputs of predict left out" if summary.left_out else "")
        + (f", {summary.renamed} renamed" if summary.renamed else "")
        + f" -> {cfg.output}"
    )
    return 1 if summary.failed else 0


def assign_stems(inputs: Inputs, writer: PredictionWriter, summary: Summary) -> list[str]:
    """Every input's own output stem, decided and claimed before any work
    (:meth:`seg.manifest.Manifest.assign`): its mirrored path or, when another input or a file
    that predict did not write has that name, a new one (``cat.png`` -> ``cat_png``), logged
    when it is first taken."""
    wanted = [
        (str(p.resolve()), output_stem(p, inputs.base), p.suffix.lower().lstrip("."))
        for p in inputs.images
    ]
    before = dict(writer.manifest.stem_of)
    assigned = writer.manifest.assign(wanted)
    stems = [assigned[source] for source, _, _ in wanted]
    for path, (source, preferred, _), stem in zip(inputs.images, wanted, stems, strict=True):
        if stem != preferred and before.get(source) != stem:  # said once, when first taken
            summary.renamed += 1
            log.warning("%s: the name %s is taken, writing %s instead", path, preferred, stem)
    return stems

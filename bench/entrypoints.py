"""``evaluate.py`` and ``predict.py`` as a user runs them: start-up, cost per image, compiled.

Each figure comes from running the entry point as a subprocess on ``n1`` and then ``n2`` images
of the same set: the cost per image is the slope ``(t(n2) - t(n1)) / (n2 - n1)`` and the
start-up (interpreter, imports, checkpoint, data, everything before the first image) is the
intercept ``t(n1) - n1 * slope``. The compiled arm runs ``predict.py inference.compile=true``
twice on ``n2`` images with one empty inductor cache folder (cold, then warm: the on-disk cache),
and its masks are compared with the eager run's, pixel by pixel (argmax agreement).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import numpy as np
from common import REPO, SHARED
from PIL import Image

from seg.data.sample import ensure_sample


def labelled_images(root: Path) -> list[tuple[Path, Path]]:
    """(image, mask) pairs of a VOC-layout root, masks from ``SegmentationClass`` or, for ids
    without one, ``SegmentationClassAug``; sorted by id."""
    voc = root / "VOC2012"
    pairs = []
    for jpg in sorted((voc / "JPEGImages").glob("*.jpg")):
        for folder in ("SegmentationClass", "SegmentationClassAug"):
            png = voc / folder / f"{jpg.stem}.png"
            if png.is_file():
                pairs.append((jpg, png))
                break
    return pairs


def image_source() -> tuple[list[tuple[Path, Path]], str]:
    """The real photos of ``../shared/voc-mini`` when present, else the synthetic sample."""
    pairs = labelled_images(SHARED / "voc-mini") if (SHARED / "voc-mini").is_dir() else []
    if pairs:
        return pairs, f"../shared/voc-mini ({len(pairs)} real VOC photos)"
    root = ensure_sample(REPO / "data" / "sample")
    return labelled_images(root), "data/sample (synthetic)"


def subset(pairs: list[tuple[Path, Path]], n: int, folder: Path) -> tuple[Path, Path]:
    """A VOC root whose ``val`` split is the first ``n`` pairs, and a folder of their images
    (symbolic links); returns (root, images folder)."""
    voc, images = folder / "root" / "VOC2012", folder / "images"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    images.mkdir(parents=True, exist_ok=True)
    for jpg, png in pairs[:n]:
        (voc / "JPEGImages" / jpg.name).symlink_to(jpg)
        (voc / "SegmentationClass" / png.name).symlink_to(png)
        (images / jpg.name).symlink_to(jpg)
    ids = "\n".join(jpg.stem for jpg, _ in pairs[:n])
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text(ids + "\n")
    return folder / "root", images


def timed_run(repo: Path, script: str, overrides: list[str], env: dict) -> float:
    """Wall seconds of ``python <script> <overrides>`` in ``repo``; raises on a failure."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, script, *overrides], cwd=repo, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{script} failed: {proc.stderr.strip()[-2000:]}")
    return time.perf_counter() - start


def line_fit(t1: float, t2: float, n1: int, n2: int) -> dict[str, float]:
    """Start-up (intercept) and seconds per image (slope) through two timed runs."""
    slope = max((t2 - t1) / (n2 - n1), 1e-9)
    return {"startup_s": t1 - n1 * slope, "per_image_s": slope}


def agreement(a: Path, b: Path) -> dict[str, float]:
    """Argmax agreement of the masks in two predict.py output folders (same stems)."""
    same = total = 0
    for png in sorted(a.glob("*.png")):
        x, y = np.asarray(Image.open(png)), np.asarray(Image.open(b / png.name))
        same, total = same + int((x == y).sum()), total + x.size
    return {"agreement": same / max(total, 1), "pixels_differing": total - same}


def entry_points(
    ckpt: Path,
    n1: int,
    n2: int,
    repo: Path = REPO,
    compiled: bool = True,
    eager: tuple[str, ...] = ("inference.compile=false",),
    reps: int = 1,
) -> dict:
    """Start-up and per-image cost of ``evaluate.py`` and ``predict.py`` (eager), and
    ``predict.py`` compiled with a cold and a warm on-disk cache, on the same images.

    Args:
        ckpt: A checkpoint written by train.py (or ``endtoend.make_checkpoint``).
        n1, n2: The two image counts (n1 < n2).
        repo: The checkout whose entry points run (another one measures "before").
        compiled: Also run the compiled arm.
        eager: Overrides of the eager runs (none for a checkout older than
            ``inference.compile``).
        reps: Rounds of the four eager runs (predict n1, n2, evaluate n1, n2); each figure is
            the median over rounds: one slope from two runs of a few seconds each moved by
            +-0.06 s per image between rounds on a shared machine.
    """
    pairs, what = image_source()
    n2 = min(n2, len(pairs))
    n1 = min(n1, n2 - 1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp, env = Path(tmp), os.environ | {"TORCHINDUCTOR_CACHE_DIR": f"{tmp}/inductor"}
        runs = {n: subset(pairs, n, tmp / f"n{n}") for n in (n1, n2)}
        common = [f"ckpt={ckpt}", f"hydra.run.dir={tmp}/hydra"]

        def predict(n: int, out: str, extra: list[str]) -> float:
            args = [f"input={runs[n][1]}", f"output={tmp}/{out}", "overwrite=true"]
            return timed_run(repo, "predict.py", [*common, *args, *extra], env)

        def evaluate(n: int) -> float:
            args = [
                "data=voc",
                f"data.root={runs[n][0]}",
                "plot=false",
                f"paths.output_dir={tmp}/ev",
            ]
            return timed_run(repo, "evaluate.py", [*common, *args, *eager], env)

        fits = []
        for _ in range(reps):  # alternating, so that a slower minute hits both entry points
            p = line_fit(predict(n1, "p1", [*eager]), predict(n2, "p2", [*eager]), n1, n2)
            fits.append((p, line_fit(evaluate(n1), evaluate(n2), n1, n2)))
        p, e = ({k: median(f[i][k] for f in fits) for k in fits[0][i]} for i in (0, 1))
        result = {"images": what, "n": [n1, n2], "reps": reps, "predict": p, "evaluate": e}
        result["evaluate_vs_predict_per_image"] = median(
            fe["per_image_s"] / fp["per_image_s"] for fp, fe in fits
        )
        if compiled:
            on = ["inference.compile=true"]
            cold, warm = predict(n2, "c1", on), predict(n2, "c2", on)
            eager_n2 = p["startup_s"] + n2 * p["per_image_s"]
            result["compiled"] = {"cold_s": cold, "warm_s": warm, "eager_s": eager_n2}
            result["compiled"] |= agreement(tmp / "p2", tmp / "c2")
    return result


def main() -> None:
    """``python bench/entrypoints.py [--repo OTHER_CHECKOUT]``: the figures as JSON (``--repo``
    with ``--old`` measures a checkout from before ``inference.compile``: the "before")."""
    import argparse
    import json

    from endtoend import make_checkpoint

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--repo", type=Path, default=REPO)
    parser.add_argument("--model", default="unet_resnet34")
    parser.add_argument("--n", type=int, nargs=2, default=(4, 32))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--old", action="store_true", help="no inference.compile option there")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_checkpoint(args.model, Path(tmp))
        eager = () if args.old else ("inference.compile=false",)
        result = entry_points(ckpt, *args.n, args.repo, not args.old, eager, args.reps)
    print(json.dumps(result | {"repo": str(args.repo), "model": args.model}, indent=2))


if __name__ == "__main__":
    main()

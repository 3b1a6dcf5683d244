"""Cross-validate ``experiment=finetune_voc_mini`` through ``train.py``, as a user runs it.

For each fold k of ``data.folds`` it runs, in child processes, 2 at a time with one thread each::

    python train.py experiment=finetune_voc_mini data.fold=k                    # ImageNet init
    python train.py experiment=finetune_voc_mini data.fold=k \
        model.net.encoder.weights=null                                          # random init

and reads each run's ``metrics.json`` (the model of the last step, scored on the held-out
photos of fold k at full resolution). Prints mean +- std (ddof 1) over folds of val/mIoU and
pixel accuracy per arm and the paired gain, and writes ``bench/finetune_results/cv_train_py.json``.

Usage (from the repository root, with ``../shared`` present)::

    python bench/finetune_cv.py                   # 4 folds x 2 arms, about 25 minutes on 2 cores
    python bench/finetune_cv.py --folds 0 1 -- trainer.max_steps=60   # extra overrides after --
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ARMS = {"pretrained": [], "random": ["model.net.encoder.weights=null"]}
KEYS = ("val/mIoU", "val/pixel_accuracy", "val/mean_accuracy")


def run_one(fold: int, arm: str, out: Path, extra: list[str]) -> dict:
    """One ``train.py`` run; returns its ``metrics.json`` with the fold and arm."""
    run_dir = out / f"{arm}_fold{fold}"
    cmd = [
        sys.executable, "train.py", "experiment=finetune_voc_mini", f"data.fold={fold}",
        f"paths.output_dir={run_dir}", "logger=csv", "callbacks.progress_bar=null",
        *ARMS[arm], *extra,
    ]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    print(f"{arm:>10} fold {fold}: mIoU {metrics['val/mIoU']:.4f}  pixel acc "
          f"{metrics['val/pixel_accuracy']:.4f}  ({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
    return {"fold": fold, "arm": arm, "wall_s": time.perf_counter() - start, **metrics}


def summarise(runs: list[dict]) -> dict:
    """Mean and std over folds per arm, and the paired mIoU gain of the ImageNet init."""
    out: dict = {}
    for arm in ARMS:
        rs = [r for r in runs if r["arm"] == arm]
        out[arm] = {k: [float(np.mean([r[k] for r in rs])), float(np.std([r[k] for r in rs], ddof=1))] for k in KEYS}  # fmt: skip
    by = {(r["arm"], r["fold"]): r["val/mIoU"] for r in runs}
    gains = [by["pretrained", f] - by["random", f] for a, f in by if a == "random"]
    out["gain"] = {"mean": float(np.mean(gains)), "min": float(np.min(gains)),
                   "wins": int(sum(g > 0 for g in gains)), "pairs": len(gains)}  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "finetune_cv")
    parser.add_argument("extra", nargs="*", help="more train.py overrides (after --)")
    args = parser.parse_args()
    jobs = [(f, arm) for f in args.folds for arm in ARMS]
    with ThreadPoolExecutor(2) as pool:  # the two arms of a fold side by side: same load
        runs = list(pool.map(lambda job: run_one(*job, args.out, args.extra), jobs))
    summary = summarise(runs)
    for arm in ARMS:
        s = summary[arm]
        print(f"{arm:>10}: mIoU {s['val/mIoU'][0]:.4f} +- {s['val/mIoU'][1]:.4f}  pixel acc "
              f"{s['val/pixel_accuracy'][0]:.4f} +- {s['val/pixel_accuracy'][1]:.4f}")  # fmt: skip
    g = summary["gain"]
    print(
        f"ImageNet gain: {g['mean']:+.4f} mIoU (min {g['min']:+.4f}, {g['wins']}/{g['pairs']} folds)"
    )
    result = {"argv": sys.argv[1:], "runs": runs, "summary": summary}
    path = REPO / "bench" / "finetune_results" / "cv_train_py.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"Wrote {path}")


if __name__ == "__main__":
    main()

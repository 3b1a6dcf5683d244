"""First GPU run of the FCN reference recipes on real photos (issue 12, part 8).

Trains ``fcn8s_atonce_voc`` and ``fcn32s_voc`` for a few hundred steps each on the 32 VOC 2012
photos of ``shared/voc-mini`` on one GPU, exactly as configured (VGG16, whole images, batch 1,
momentum 0.99, summed loss at lr 1e-10) except that VGG16 starts from random weights when the
ImageNet file is not in the torch hub cache, and prints per recipe: seconds per step, peak GPU
memory, and the mean training loss of the first and the last epoch (the same 32 images each
epoch, so the two are comparable).

Prepared, not yet run: no GPU was available when it was written. Budget: under 10 minutes on
one modern GPU (300 steps of VGG16 FCN on ~500x375 images each).

Usage::

    python bench/recipes_gpu.py                      # both recipes, 320 steps each
    python bench/recipes_gpu.py --steps 64 --recipes fcn32s_voc
    SEG_SHARED=/path/to/shared python bench/recipes_gpu.py   # shared/ elsewhere than ../shared
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))  # StepTimer below is a Hydra _target_

import seg  # noqa: E402,F401  (resolvers)
from seg.models.vgg import imagenet_cache_path  # noqa: E402
from seg.train import train  # noqa: E402

VOC_MINI = Path(os.environ.get("SEG_SHARED", REPO.parent / "shared")) / "voc-mini"
IMAGES = 32  # photos in voc-mini: one epoch = 32 steps at batch 1


class StepTimer(L.Callback):
    """Writes the median seconds per training step (after 10 warm-up steps) to ``path``."""

    def __init__(self, path: str) -> None:
        self.path, self.times, self.start = Path(path), [], 0.0

    def on_train_batch_start(self, *args) -> None:
        torch.cuda.synchronize()
        self.start = time.perf_counter()

    def on_train_batch_end(self, *args) -> None:
        torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self.start)

    def on_train_end(self, *args) -> None:
        self.path.write_text(str(statistics.median(self.times[10:] or self.times)))


def epoch_losses(run: Path) -> list[float]:
    """``train/loss_epoch`` of every epoch, from the run's CSV log."""
    with open(run / "csv" / "metrics.csv", newline="") as f:
        return [
            float(row["train/loss_epoch"]) for row in csv.DictReader(f) if row["train/loss_epoch"]
        ]


def run(recipe: str, steps: int, out: Path) -> dict[str, float | str]:
    """Train ``recipe`` for ``steps`` steps on voc-mini on the GPU; its figures."""
    weights = "imagenet" if imagenet_cache_path().is_file() else "null"
    overrides = [
        f"experiment={recipe}",
        "trainer=gpu",
        f"trainer.max_steps={steps}",
        "trainer.limit_val_batches=0",
        "trainer.log_every_n_steps=1",
        f"model.net.encoder_weights={weights}",
        f"data.root={VOC_MINI}",
        f"paths.output_dir={out}",
        "validate_best=false",
        "callbacks.progress_bar=null",
        "logger=csv",
        "+callbacks.step_timer._target_=recipes_gpu.StepTimer",
        f"+callbacks.step_timer.path={out / 'step_time.txt'}",
    ]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    torch.cuda.reset_peak_memory_stats()
    metrics = train(cfg)
    losses = epoch_losses(out)
    return {
        "recipe": recipe,
        "vgg16": "imagenet" if weights == "imagenet" else "random",
        "steps": metrics["optimizer_steps"],
        "s_per_step": round(float((out / "step_time.txt").read_text()), 4),
        "wall_time_s": metrics["wall_time_s"],
        "peak_gpu_memory_GiB": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "loss_first_epoch": losses[0],
        "loss_last_epoch": losses[-1],
        "loss_falls": losses[-1] < losses[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10 * IMAGES)
    parser.add_argument("--recipes", nargs="+", default=["fcn8s_atonce_voc", "fcn32s_voc"])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no GPU visible: this benchmark needs one")
    if not (VOC_MINI / "VOC2012").is_dir():
        sys.exit(f"{VOC_MINI} is missing")
    with tempfile.TemporaryDirectory() as tmp:
        results = [run(name, args.steps, Path(tmp) / name) for name in args.recipes]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

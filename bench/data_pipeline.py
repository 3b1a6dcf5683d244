"""Throughput of the training input pipeline: JPEG/PNG decode + augmentation + collation.

Measures images/s of ``VOCSegmentation`` with the ``conf/augment/voc.yaml`` train preset (random
scale 0.5-2, pad, crop, flip, colour jitter, normalise) through a DataLoader, for several worker
counts. Each pass draws ``--images`` samples (cycling over the dataset); the first ``--warmup``
passes start the (persistent) workers and are not timed; the median of ``--passes`` timed passes
is reported. Runs on ../shared/voc-sample (real 500x375 VOC photos) when present, else on the
synthetic sample (generated into ``data/sample``; force it with ``--synthetic``)::

    python bench/data_pipeline.py --workers 0 1 2 --crop-size 320
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from common import load_preset
from torch.utils.data import DataLoader

from seg.data.datamodule import pad_collate
from seg.data.sample import ensure_sample
from seg.data.voc import VOCSegmentation

REPO = Path(__file__).resolve().parents[1]
SHARED_VOC = REPO.parent / "shared" / "voc-sample"


def default_root(synthetic: bool) -> tuple[Path, str]:
    """(root, description) of the data to read."""
    if not synthetic and (SHARED_VOC / "VOC2012").is_dir():
        return SHARED_VOC, "../shared/voc-sample (real VOC 2012, 7 images)"
    return ensure_sample(REPO / "data" / "sample"), "data/sample (synthetic, 150-260 px)"


def images_per_second(
    ds: VOCSegmentation, workers: int, images: int, batch: int, passes: int, warmup: int
) -> list[float]:
    """Timed passes of ``images`` samples each; returns images/s per timed pass."""
    order = [i % len(ds) for i in range(images)]
    loader = DataLoader(
        ds,
        batch_size=batch,
        sampler=order,
        num_workers=workers,
        collate_fn=pad_collate,
        persistent_workers=workers > 0,
    )
    rates = []
    for p in range(warmup + passes):
        start = time.perf_counter()
        n = sum(b["image"].shape[0] for b in loader)
        if p >= warmup:
            rates.append(n / (time.perf_counter() - start))
    return rates


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, help="folder with VOC2012/ (default: see above)")
    parser.add_argument("--synthetic", action="store_true", help="use the generated sample")
    parser.add_argument("--split", default="train")
    parser.add_argument("--preset", default="voc", help="conf/augment/<preset>.yaml")
    parser.add_argument("--crop-size", type=int, default=320)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--images", type=int, default=64, help="images per pass")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args(argv)

    root, what = (args.root, str(args.root)) if args.root else default_root(args.synthetic)
    torch.set_num_threads(1)  # as in a DataLoader worker
    transform = load_preset(args.preset, "train", crop_size=args.crop_size)
    ds = VOCSegmentation(root, args.split, transform=transform)
    print(f"data: {what}; preset {args.preset}, crop {args.crop_size}, batch {args.batch_size},")
    print(f"{args.images} images/pass, median of {args.passes} passes, {os.cpu_count()} CPUs\n")
    print("| workers | images/s (median) | min | max |")
    print("|--:|--:|--:|--:|")
    for w in args.workers:
        r = images_per_second(ds, w, args.images, args.batch_size, args.passes, args.warmup)
        print(f"| {w} | {statistics.median(r):.1f} | {min(r):.1f} | {max(r):.1f} |", flush=True)


if __name__ == "__main__":
    main()

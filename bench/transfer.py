"""Transfer learning on real VOC images: ImageNet-pretrained vs random-init encoder.

A U-Net on MobileNetV2-0.35 (``conf/model/unet_mobilenetv2.yaml``) is fine-tuned on the 7 real
VOC 2012 images of ``shared/voc-sample`` twice, from the ImageNet weights in ``shared/weights``
and from random init, with the same decoder init, crops, batches, optimizer (AdamW through
``seg.modules.optim.param_groups``), schedule and number of steps.

Protocol: 7 images are too few to hold whole images back (a held-out image would mostly hold
classes never seen in training), so every image is cut in two halves. Folds 0/1 train on the
left/right halves and validate on the other half; folds 2/3 do the same with top/bottom halves.
Each (seed, fold) run is paired: both arms see the same crops in the same order. mIoU and pixel
accuracy come from one confusion matrix over all validation halves
(``seg.metrics.SegmentationMetrics``). The one difference between the arms is the fine-tuning
recipe's frozen BatchNorm statistics (``frozen_bn="pretrained"``): the pretrained encoder keeps
its ImageNet statistics; a random encoder has none to keep, so its BatchNorm trains.

Measured (``python bench/transfer.py``: seed 0, folds 0-3, 300 steps, batch 8, crop 192, full
resolution, inputs x / 127.5 - 1; 2 single-threaded worker processes, 210-335 s per run and
20 min in all on the 2-core machine, re-run on 2026-11-22 with identical results):

=========  ========================  =========================
fold       pretrained mIoU / acc     random mIoU / acc
=========  ========================  =========================
0          0.196 / 0.740             0.134 / 0.620
1          0.223 / 0.763             0.178 / 0.697
2          0.078 / 0.535             0.056 / 0.470
3          0.159 / 0.721             0.112 / 0.578
mean       0.164 / 0.690             0.120 / 0.591
=========  ========================  =========================

The pretrained encoder wins every paired run, by +0.021 to +0.062 mIoU and +0.06 to +0.14 pixel
accuracy. With 1000 steps the pretrained arm reaches a mean mIoU of 0.194.

Usage::

    python bench/transfer.py                   # the table above (4 folds x 1 seed)
    python bench/transfer.py --seeds 0 1 2     # more pairs
    python bench/transfer.py --frozen-bn none  # ablation: BatchNorm trains in both arms
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
import torch.nn.functional as F
from albumentations.pytorch import ToTensorV2
from torch import nn

from seg.constants import IGNORE_INDEX, NUM_CLASSES
from seg.data.voc import VOCSegmentation
from seg.metrics import SegmentationMetrics
from seg.models.encoders import MobileNetV2Encoder
from seg.models.unet import EncoderUNet
from seg.modules.optim import param_groups
from seg.resolvers import cpu_has_native_bf16

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
VOC_ROOT = SHARED / "voc-sample"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_035_imagenet_features.pth"
DECODER_CHANNELS = (128, 64, 32, 24, 16)  # as conf/model/unet_mobilenetv2.yaml
ARMS = ("pretrained", "random")
# Input normalisation as (mean, std) of A.Normalize (pixel values / 255 first).
NORMS = {
    "keras": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # x / 127.5 - 1, as the weights were trained
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


@dataclass
class Config:
    """Training budget and hyper-parameters, equal for both arms."""

    steps: int = 300
    batch_size: int = 8
    crop: int = 192
    scale: float = 1.0  # images are resized by this factor first (CPU budget)
    lr: float = 3e-3
    encoder_lr_mult: float = 1.0  # encoder LR = lr * encoder_lr_mult (seg.modules.optim)
    weight_decay: float = 1e-4
    warmup: int = 10
    # Encoder BatchNorm in eval mode (running statistics kept) in which arms: "pretrained" (the
    # fine-tuning recipe: keep the ImageNet statistics; a random encoder has none to keep),
    # "both" or "none".
    frozen_bn: str = "pretrained"
    norm: str = "keras"  # a key of NORMS: the weights were trained on x / 127.5 - 1


def load_images(scale: float = 1.0, root: Path = VOC_ROOT) -> list[tuple[np.ndarray, np.ndarray]]:
    """The sample's (image uint8 (H, W, 3), mask int64 (H, W)) pairs resized by ``scale``."""
    pairs = []
    dataset = VOCSegmentation(root, split="train")
    for i in range(len(dataset)):
        image, mask = dataset[i]["image"], dataset[i]["mask"]  # (H, W, 3), (H, W)
        if scale != 1.0:
            size = (round(image.shape[1] * scale), round(image.shape[0] * scale))  # (W, H)
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
        pairs.append((image, mask.astype(np.int64)))
    return pairs


def split_fold(pairs: list, fold: int) -> tuple[list, list]:
    """Cut every image in two halves: (train halves, validation halves) of ``fold``.

    Folds 0/1 cut vertically (train on the left / right half), folds 2/3 horizontally (train on
    the top / bottom half); the other half of each image is held back.
    """
    axis, first = (1 if fold < 2 else 0), fold % 2 == 0
    train, val = [], []
    for image, mask in pairs:
        (image_a, image_b), (mask_a, mask_b) = (
            np.split(x, [image.shape[axis] // 2], axis=axis) for x in (image, mask)
        )
        a, b = (image_a, mask_a), (image_b, mask_b)
        train.append(a if first else b)
        val.append(b if first else a)
    return train, val


def train_transform(crop: int, seed: int, norm: str) -> A.Compose:
    """Scale jitter, crop (padding image 0 / mask 255), flip, normalisation."""
    mean, std = NORMS[norm]
    return A.Compose(
        [
            A.RandomScale(scale_limit=(-0.25, 0.25), p=1.0),
            A.PadIfNeeded(
                crop, crop, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=IGNORE_INDEX
            ),
            A.RandomCrop(crop, crop),
            A.HorizontalFlip(),
            A.Normalize(mean, std),
            ToTensorV2(),
        ],
        seed=seed,
    )


def to_tensor(image: np.ndarray, norm: str) -> torch.Tensor:
    """uint8 (H, W, 3) -> normalised float32 (1, 3, H, W)."""
    out = A.Normalize(*NORMS[norm])(image=image)["image"]
    return torch.from_numpy(out).permute(2, 0, 1)[None]


def build_model(pretrained: bool, seed: int) -> EncoderUNet:
    """The same U-Net for both arms; the decoder init depends only on ``seed``."""
    torch.manual_seed(seed)
    encoder = MobileNetV2Encoder(width_mult=0.35, weights=WEIGHTS if pretrained else None)
    torch.manual_seed(seed + 1000)  # the same decoder init in both arms
    model = EncoderUNet(encoder, decoder_channels=DECODER_CHANNELS, num_classes=NUM_CLASSES)
    return model.to(memory_format=torch.channels_last)  # faster oneDNN convs on CPU


def set_train_mode(model: EncoderUNet, frozen_bn: bool) -> None:
    """Train mode, with the encoder's BatchNorm layers in eval mode if ``frozen_bn``."""
    model.train()
    if frozen_bn:
        for module in model.encoder.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def train(model: EncoderUNet, data: list, cfg: Config, seed: int, bf16: bool) -> None:
    """AdamW with linear warm-up and cosine decay, cross-entropy ignoring 255."""
    transform = train_transform(cfg.crop, seed, cfg.norm)
    order = np.random.default_rng(seed).integers(len(data), size=(cfg.steps, cfg.batch_size))
    groups = param_groups(model, cfg.lr, cfg.encoder_lr_mult)
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)

    def lr_lambda(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        return 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup) / (cfg.steps - cfg.warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    set_train_mode(model, cfg.frozen_bn)
    for step in range(cfg.steps):
        samples = [transform(image=data[i][0], mask=data[i][1]) for i in order[step]]
        images = torch.stack([s["image"] for s in samples])  # (B, 3, crop, crop)
        images = images.contiguous(memory_format=torch.channels_last)
        masks = torch.stack([s["mask"] for s in samples]).long()  # (B, crop, crop)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(images)  # (B, 21, crop, crop)
        loss = F.cross_entropy(logits.float(), masks, ignore_index=IGNORE_INDEX)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()


@torch.no_grad()
def evaluate(model: EncoderUNet, data: list, norm: str, bf16: bool) -> dict[str, float]:
    """mIoU and pixel accuracy from one confusion matrix over whole validation halves."""
    model.eval()
    metric = SegmentationMetrics(num_classes=NUM_CLASSES)
    for image, mask in data:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(to_tensor(image, norm))  # (1, 21, H, W)
        metric.update(logits.float(), torch.from_numpy(mask)[None])
    scores = metric.compute()
    return {"mIoU": float(scores["mIoU"]), "pixel_accuracy": float(scores["pixel_accuracy"])}


def run(seed: int, fold: int, arm: str, cfg: Config, threads: int = 1) -> dict[str, float]:
    """Train and evaluate one arm on one (seed, fold); a job for ``compare``'s process pool."""
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)  # denormals slow CPU training down several times
    bf16 = cpu_has_native_bf16()  # emulated bf16 is slower than fp32
    train_set, val_set = split_fold(load_images(cfg.scale), fold)
    start = time.perf_counter()
    model = build_model(arm == "pretrained", seed)
    frozen = cfg.frozen_bn == "both" or (cfg.frozen_bn == "pretrained" and arm == "pretrained")
    train(model, train_set, dataclasses.replace(cfg, frozen_bn=frozen), seed, bf16)
    scores = evaluate(model, val_set, cfg.norm, bf16)
    return {**scores, "seconds": time.perf_counter() - start}


def compare(
    seeds: tuple[int, ...] = (0,),
    cfg: Config | None = None,
    folds: tuple[int, ...] = (0, 1, 2, 3),
    workers: int = 2,
    verbose: bool = True,
) -> dict[str, dict[str, list[float]]]:
    """Run both arms on the given folds (see ``split_fold``) for every seed.

    Runs are independent jobs on ``workers`` single-threaded processes: on a few CPU cores this
    is faster than one process with several intra-op threads, and a run's result does not
    depend on how many run at once. ``workers=1`` runs them in this process.

    Returns:
        ``{arm: {"mIoU": [...], "pixel_accuracy": [...]}}`` for arm in ``ARMS``, one value per run,
        runs ordered (seed, fold).
    """
    cfg = cfg or Config()
    if cfg.frozen_bn not in ("pretrained", "both", "none"):
        raise ValueError(f"frozen_bn must be pretrained, both or none, got {cfg.frozen_bn!r}")
    jobs = [(seed, fold, arm) for seed in seeds for fold in folds for arm in ARMS]
    done: dict[tuple, dict[str, float]] = {}

    def report(job: tuple, scores: dict[str, float]) -> None:
        done[job] = scores
        if verbose:
            print(
                f"seed {job[0]} fold {job[1]} {job[2]:>10}: mIoU {scores['mIoU']:.4f} "
                f"pixel acc {scores['pixel_accuracy']:.4f} ({scores['seconds']:.0f} s)",
                flush=True,
            )

    if workers == 1:
        for job in jobs:
            report(job, run(*job, cfg, threads=torch.get_num_threads()))
    else:
        context = multiprocessing.get_context("spawn")  # no fork of a threaded parent
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = {pool.submit(run, *job, cfg): job for job in jobs}
            for future in as_completed(futures):
                report(futures[future], future.result())
    return {
        arm: {
            key: [done[job][key] for job in jobs if job[2] == arm]
            for key in ("mIoU", "pixel_accuracy")
        }
        for arm in ARMS
    }


def summary(results: dict[str, dict[str, list[float]]]) -> str:
    """Mean +- std (over runs) of both arms, and the paired mIoU differences."""
    lines = []
    for key in ("mIoU", "pixel_accuracy"):
        pre, rand = (np.array(results[arm][key]) for arm in ARMS)
        lines.append(
            f"{key:>9}: pretrained {pre.mean():.4f} +- {pre.std(ddof=1) if len(pre) > 1 else 0:.4f}"
            f"  random {rand.mean():.4f} +- {rand.std(ddof=1) if len(rand) > 1 else 0:.4f}"
        )
    diff = np.array(results["pretrained"]["mIoU"]) - np.array(results["random"]["mIoU"])
    lines.append(
        f"paired mIoU gain: {diff.mean():.4f} (min {diff.min():.4f}); pretrained wins "
        f"{int((diff > 0).sum())}/{len(diff)} runs"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--workers", type=int, default=2, help="single-threaded processes")
    for field in dataclasses.fields(Config):
        kind = (lambda s: s.lower() in ("1", "true", "yes")) if field.type == "bool" else None
        kind = kind or {"int": int, "float": float, "str": str}[field.type]
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=kind, default=field.default)
    args = parser.parse_args()
    cfg = Config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Config)})
    print(cfg, flush=True)
    start = time.perf_counter()
    results = compare(tuple(args.seeds), cfg, tuple(args.folds), args.workers)
    print(summary(results))
    print(f"wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()

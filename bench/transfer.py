"""Transfer learning on real VOC images: ImageNet-pretrained vs random-init encoder.

A U-Net on MobileNetV2-0.35 (``conf/model/unet_mobilenetv2.yaml``) is fine-tuned on the 7 real
VOC 2012 images of ``shared/voc-sample`` twice, from the ImageNet weights in ``shared/weights``
and from random init, with everything else equal (decoder init, crops, batches, optimizer, steps).

Protocol (7 images are too few to hold whole images back: a held-out image would mostly contain
classes never seen in training): every image is cut into a left and a right half. Fold 0 trains
on the left halves and validates on the right halves, fold 1 the reverse. Each (fold, seed) run
is paired: both arms see the same crops in the same order. mIoU comes from one confusion matrix
over all validation halves (``seg.metrics.SegmentationMetrics``); the script prints each run and
the mean over runs.

Usage::

    python bench/transfer.py                # 2 folds x 1 seed, about 2-3 min on 2 CPU cores
    python bench/transfer.py --seeds 0 1 2  # more pairs
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
import torch.nn.functional as F
from albumentations.pytorch import ToTensorV2

from seg.constants import IGNORE_INDEX, NUM_CLASSES
from seg.data.voc import VOCSegmentation
from seg.metrics import SegmentationMetrics
from seg.models.encoders import MobileNetV2Encoder
from seg.models.unet import EncoderUNet
from seg.resolvers import cpu_has_native_bf16

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
VOC_ROOT = SHARED / "voc-sample"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_035_imagenet_features.pth"
DECODER_CHANNELS = (128, 64, 32, 24, 16)  # as conf/model/unet_mobilenetv2.yaml


@dataclass
class Config:
    """Training budget and hyper-parameters, equal for both arms."""

    steps: int = 200
    batch_size: int = 8
    crop: int = 128
    scale: float = 0.5  # images are resized by this factor first (CPU budget)
    lr: float = 3e-3
    encoder_lr_mult: float = 1.0  # encoder LR = lr * encoder_lr_mult (both arms)
    weight_decay: float = 1e-4
    warmup: int = 10
    color_jitter: float = 0.0  # probability of photometric jitter (brightness/contrast/hue)


def load_halves(scale: float = 1.0, root: Path = VOC_ROOT) -> tuple[list, list]:
    """Left and right halves of every image, resized by ``scale`` (mask: nearest).

    Returns:
        Two lists of (image uint8 (H, W, 3), mask int64 (H, W)) pairs.
    """
    left, right = [], []
    dataset = VOCSegmentation(root, split="train")
    for i in range(len(dataset)):
        image, mask = dataset[i]["image"], dataset[i]["mask"]  # (H, W, 3), (H, W)
        if scale != 1.0:
            size = (round(image.shape[1] * scale), round(image.shape[0] * scale))  # (W, H)
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
            mask = mask.astype(np.int64)
        mid = image.shape[1] // 2
        left.append((image[:, :mid], mask[:, :mid]))
        right.append((image[:, mid:], mask[:, mid:]))
    return left, right


def train_transform(crop: int, seed: int, color_jitter: float = 0.0) -> A.Compose:
    """Scale jitter, crop (padding image 0 / mask 255), flip, colour jitter, normalisation."""
    return A.Compose(
        [
            A.RandomScale(scale_limit=(-0.25, 0.25), p=1.0),
            A.ColorJitter(0.4, 0.4, 0.4, 0.1, p=color_jitter),
            A.PadIfNeeded(
                crop, crop, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=IGNORE_INDEX
            ),
            A.RandomCrop(crop, crop),
            A.HorizontalFlip(),
            A.Normalize(),
            ToTensorV2(),
        ],
        seed=seed,
    )


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> ImageNet-normalised float32 (1, 3, H, W)."""
    out = A.Normalize()(image=image)["image"]
    return torch.from_numpy(out).permute(2, 0, 1)[None]


def build_model(pretrained: bool, seed: int) -> EncoderUNet:
    """The same U-Net for both arms; the decoder init depends only on ``seed``."""
    torch.manual_seed(seed)
    encoder = MobileNetV2Encoder(width_mult=0.35, weights=WEIGHTS if pretrained else None)
    torch.manual_seed(seed + 1000)  # the same decoder init in both arms
    return EncoderUNet(encoder, decoder_channels=DECODER_CHANNELS, num_classes=NUM_CLASSES)


def train(model: EncoderUNet, data: list, cfg: Config, seed: int, bf16: bool) -> None:
    """AdamW with linear warm-up and cosine decay, cross-entropy ignoring 255."""
    transform = train_transform(cfg.crop, seed, cfg.color_jitter)
    order = np.random.default_rng(seed).integers(len(data), size=(cfg.steps, cfg.batch_size))
    encoder_ids = {id(p) for p in model.encoder.parameters()}
    groups = [
        {"params": list(model.encoder.parameters()), "lr": cfg.lr * cfg.encoder_lr_mult},
        {"params": [p for p in model.parameters() if id(p) not in encoder_ids], "lr": cfg.lr},
    ]
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)

    def lr_lambda(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        return 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup) / (cfg.steps - cfg.warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    model.train()
    for step in range(cfg.steps):
        samples = [transform(image=data[i][0], mask=data[i][1]) for i in order[step]]
        images = torch.stack([s["image"] for s in samples])  # (B, 3, crop, crop)
        masks = torch.stack([s["mask"] for s in samples]).long()  # (B, crop, crop)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(images)  # (B, 21, crop, crop)
        loss = F.cross_entropy(logits.float(), masks, ignore_index=IGNORE_INDEX)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()


@torch.no_grad()
def evaluate(model: EncoderUNet, data: list, bf16: bool) -> float:
    """Dataset-level mIoU over whole validation halves."""
    model.eval()
    metric = SegmentationMetrics(num_classes=NUM_CLASSES)
    for image, mask in data:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(to_tensor(image))  # (1, 21, H, W)
        metric.update(logits.float(), torch.from_numpy(mask)[None])
    return float(metric.compute()["mIoU"])


def compare(
    seeds: tuple[int, ...] = (0,), cfg: Config | None = None, folds: tuple[int, ...] = (0, 1)
) -> dict[str, list[float]]:
    """Run both arms on the given folds (0: train left, 1: train right) for every seed.

    Returns:
        {"pretrained": [mIoU per run], "random": [...]}, runs ordered (seed, fold).
    """
    cfg = cfg or Config()
    bf16 = cpu_has_native_bf16()  # emulated bf16 is slower than fp32
    torch.set_flush_denormal(True)  # denormals slow CPU training down several times
    left, right = load_halves(cfg.scale)
    results: dict[str, list[float]] = {"pretrained": [], "random": []}
    for seed in seeds:
        for fold in folds:
            train_set, val_set = (left, right) if fold == 0 else (right, left)
            for arm in ("pretrained", "random"):
                start = time.perf_counter()
                model = build_model(arm == "pretrained", seed)
                train(model, train_set, cfg, seed, bf16)
                miou = evaluate(model, val_set, bf16)
                results[arm].append(miou)
                took = time.perf_counter() - start
                print(f"seed {seed} fold {fold} {arm:>10}: mIoU {miou:.4f} ({took:.0f} s)")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=Config.steps)
    parser.add_argument("--crop", type=int, default=Config.crop)
    parser.add_argument("--scale", type=float, default=Config.scale)
    parser.add_argument("--lr", type=float, default=Config.lr)
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    cfg = Config(steps=args.steps, crop=args.crop, scale=args.scale, lr=args.lr)
    results = compare(tuple(args.seeds), cfg, tuple(args.folds))
    pre, rand = np.mean(results["pretrained"]), np.mean(results["random"])
    wins = sum(p > r for p, r in zip(results["pretrained"], results["random"], strict=True))
    print(
        f"mean mIoU  pretrained {pre:.4f}  random {rand:.4f}  (pretrained wins {wins}/"
        f"{len(results['random'])} paired runs)"
    )


if __name__ == "__main__":
    main()

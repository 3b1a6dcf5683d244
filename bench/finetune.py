"""Few-shot fine-tuning recipes for the U-Net on MobileNetV2-0.35, cross-validated on real VOC.

The model is ``conf/model/unet_mobilenetv2.yaml`` (``EncoderUNet``, transposed-conv decoder
(128, 64, 32, 24, 16), BatchNorm eps 1e-3). Each recipe is trained twice per (seed, fold): from
the ImageNet weights in ``shared/weights`` ("pretrained") and from random init ("random"), with
the same decoder init, the same crops in the same order, the same optimizer, schedule and steps.

Protocol:

- Data: the 32 real VOC 2012 photos of ``shared/voc-mini`` (``train_aug``, SBD-style masks).
- Folds: 4 folds of 8 whole images (``make_folds``): seeded, stratified by class presence (images
  holding rare classes are spread first, each to the fold with the fewest images of its classes).
  Each fold trains on the other 24 images and is evaluated on its 8 held-out images at full
  resolution, one confusion matrix per fold (``seg.metrics.SegmentationMetrics``: mIoU over the
  classes in the ground truth or the prediction, pixel accuracy). A class whose only images are
  held out cannot be learned; that caps every fold's mIoU equally for all recipes.
- Training loop: what ``train.py`` does with ``SegmentationModule``: epochs of shuffled batches
  with the last incomplete batch dropped (``VOCDataModule``), the albumentations pipeline of
  ``conf/augment/voc.yaml`` (parameters exposed as flags), AdamW on
  ``seg.modules.optim.param_groups`` (encoder lr = lr x ``encoder_lr_mult``),
  ``seg.modules.optim.warmup_poly`` stepped per optimizer step, bf16 autocast (on CPUs with
  native bf16, as the ``bf16-mixed`` preset), channels_last, loss in fp32.
- Runs are independent single-threaded spawned processes, 2 at a time (the pretrained and random
  arms of one (seed, fold) side by side, so their timings see the same load).
- Results: per-fold mIoU / pixel accuracy of both arms, mean +- std (ddof=1) over folds (and
  seeds), paired mIoU gains, seconds per training step; written to
  ``bench/finetune_results/<tag>.json``.

Recipe options beyond the ``train.py`` defaults (see ``Config``): encoder BatchNorm in eval mode
with the ImageNet statistics kept (``--bn frozen``; ``fixed`` also freezes its affine
parameters; a random encoder has no statistics to keep, so its BatchNorm trains unless
``--random-bn same``), freezing the encoder for the first N steps, class-balanced cross-entropy,
OHEM, Dice / Lovasz terms, label smoothing, EMA of the weights.

Usage (from the repository root, ``PYTHONPATH=.``)::

    python bench/finetune.py --tag baseline                    # the "obvious" recipe
    python bench/finetune.py --tag frozen_bn --bn frozen       # one option changed
    python bench/finetune.py --tag x --arms pretrained         # screening: pretrained arm only
    python bench/finetune.py --time-steps 12 --bn frozen       # step time, 2 threads, in-process

Results and the chosen recipe are in ``bench/finetune.md``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import multiprocessing
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from albumentations.pytorch import ToTensorV2
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ as a script folder

from transfer import NORMS, to_tensor  # noqa: E402

from seg.constants import IGNORE_INDEX, NUM_CLASSES  # noqa: E402
from seg.data.voc import VOCSegmentation  # noqa: E402
from seg.metrics import SegmentationMetrics  # noqa: E402
from seg.models.encoders import MobileNetV2Encoder  # noqa: E402
from seg.models.unet import EncoderUNet  # noqa: E402
from seg.modules.optim import param_groups, warmup_poly  # noqa: E402
from seg.resolvers import cpu_has_native_bf16  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "finetune_results"
DECODER_CHANNELS = (128, 64, 32, 24, 16)  # as conf/model/unet_mobilenetv2.yaml
ARMS = ("pretrained", "random")


def find_shared() -> Path:
    """``$SEG_SHARED``, else the first ``shared/`` next to the checkout (worktrees sit deeper)."""
    if "SEG_SHARED" in os.environ:
        return Path(os.environ["SEG_SHARED"])
    for parent in ROOT.parents:
        if (parent / "shared" / "voc-mini").is_dir():
            return parent / "shared"
    raise FileNotFoundError("shared/voc-mini not found; set SEG_SHARED")


@dataclass
class Config:
    """One recipe; every field is a ``--flag``. Defaults: the "obvious" baseline recipe."""

    steps: int = 240
    batch_size: int = 8
    crop: int = 256
    lr: float = 1e-3
    encoder_lr_mult: float = 1.0
    weight_decay: float = 1e-2  # conf/optimizer/adamw.yaml
    warmup_fraction: float = 0.05  # conf/scheduler/warmup_poly.yaml
    start_factor: float = 0.1
    power: float = 0.9
    # Encoder BatchNorm: "train" (batch statistics, running stats updated), "frozen" (eval mode:
    # the ImageNet running statistics are kept, gamma/beta still trained), "fixed" (eval mode and
    # gamma/beta frozen too). The decoder's BatchNorm always trains.
    bn: str = "train"
    # BatchNorm of the random arm when bn != "train": "train" (it has no statistics to keep)
    # or "same" (literally the same setting).
    random_bn: str = "train"
    freeze_encoder_steps: int = 0  # encoder without gradients (and BN in eval) for N steps
    norm: str = "imagenet"  # a key of NORMS: "imagenet" or "keras" (x / 127.5 - 1)
    scale_min: float = 0.5  # RandomScale factor range (conf/augment/voc.yaml: 0.5..2.0)
    scale_max: float = 2.0
    jitter: float = 0.3  # ColorJitter brightness/contrast/saturation (hue = jitter / 6), 0 = off
    flip: bool = True
    class_weights: str = "none"  # "none", "medfreq" or "invsqrt" (from the training images)
    weight_clip: float = 10.0  # class weights are clipped to [1 / clip, clip] x their mean
    ohem_keep: float = 0.0  # OHEM: keep at least this fraction of valid pixels (0 = off)
    ohem_thresh: float = 0.0  # ... and every pixel whose p(gt) < thresh (0: top-k only)
    dice_weight: float = 0.0
    lovasz_weight: float = 0.0
    label_smoothing: float = 0.0
    ema: float = 0.0  # EMA decay of the weights (0 = off); the EMA model is evaluated
    head_bias_prior: bool = False  # init the classifier bias to log class priors


# ---------------------------------------------------------------------------------------------
# Data and folds


def load_images(root: Path) -> tuple[list[str], list[tuple[np.ndarray, np.ndarray]]]:
    """Ids and (image uint8 (H, W, 3), mask uint8 (H, W)) pairs of voc-mini's train_aug list."""
    dataset = VOCSegmentation(root, split="train_aug", mask_dir="SegmentationClassAug")
    ids, pairs = [], []
    for i in range(len(dataset)):
        sample = dataset[i]
        ids.append(str(sample.get("id", i)))
        pairs.append((sample["image"], sample["mask"].astype(np.uint8)))
    return ids, pairs


def make_folds(masks: list[np.ndarray], k: int = 4, seed: int = 0) -> list[list[int]]:
    """Split image indices into ``k`` equal folds, stratified by foreground-class presence.

    Images are placed rarest-class first (ties in seeded random order); each goes to the
    non-full fold with the least overlap with its classes (overlap of class c weighted by
    1 / #images holding c), then the smallest fold.
    """
    rng = np.random.default_rng(seed)
    classes = [{int(c) for c in np.unique(m) if 0 < c < NUM_CLASSES} for m in masks]
    count = np.zeros(NUM_CLASSES)
    for cs in classes:
        count[list(cs)] += 1
    size = math.ceil(len(masks) / k)
    rarity = [min((count[c] for c in cs), default=len(masks)) for cs in classes]
    order = sorted(range(len(masks)), key=lambda i: (rarity[i], rng.random()))
    folds: list[list[int]] = [[] for _ in range(k)]
    held = np.zeros((k, NUM_CLASSES))
    for i in order:
        cs = list(classes[i])
        open_folds = [f for f in range(k) if len(folds[f]) < size]
        f = min(
            open_folds,
            key=lambda f: ((held[f, cs] / count[cs]).sum(), len(folds[f]), rng.random()),
        )
        folds[f].append(i)
        held[f, cs] += 1
    return [sorted(f) for f in folds]


def train_transform(cfg: Config, seed: int) -> A.Compose:
    """``conf/augment/voc.yaml``'s pipeline with the recipe's crop, scale range, jitter, flip."""
    mean, std = NORMS[cfg.norm]
    transforms = []
    if cfg.jitter > 0:  # first: padding stays exactly 0
        j = cfg.jitter
        transforms.append(A.ColorJitter(brightness=j, contrast=j, saturation=j, hue=j / 6, p=0.8))
    if (cfg.scale_min, cfg.scale_max) != (1.0, 1.0):
        transforms.append(A.RandomScale(scale_limit=(cfg.scale_min - 1, cfg.scale_max - 1), p=1))
    transforms += [
        A.PadIfNeeded(
            cfg.crop,
            cfg.crop,
            position="top_left",
            border_mode=0,
            fill=0,
            fill_mask=IGNORE_INDEX,
        ),
        A.RandomCrop(cfg.crop, cfg.crop),
    ]
    if cfg.flip:
        transforms.append(A.HorizontalFlip(p=0.5))
    transforms += [A.Normalize(mean, std), ToTensorV2()]
    return A.Compose(transforms, seed=seed)


def class_weights(masks: list[np.ndarray], kind: str, clip: float) -> torch.Tensor | None:
    """Cross-entropy class weights from the training masks (void pixels not counted).

    - ``medfreq`` (Eigen & Fergus 2015, https://arxiv.org/abs/1411.4734): w_c = median(f) / f_c,
      f_c = pixels of c / pixels of the images that hold c.
    - ``invsqrt``: w_c = 1 / sqrt(p_c), p_c = pixels of c / all labelled pixels.

    Classes absent from training get weight 1 (they never occur as a target). Weights are
    clipped to [mean / clip, mean * clip] (mean over the present classes), then divided by the
    pixel-weighted mean so that the average pixel weighs 1.
    """
    if kind == "none":
        return None
    pixels = np.zeros(NUM_CLASSES)
    image_pixels = np.zeros(NUM_CLASSES)  # pixels of the images holding each class
    for m in masks:
        counts = np.bincount(m[m != IGNORE_INDEX].ravel(), minlength=256)[:NUM_CLASSES]
        pixels += counts
        image_pixels[counts > 0] += counts.sum()
    present = pixels > 0
    w = np.ones(NUM_CLASSES)
    if kind == "medfreq":
        f = pixels[present] / image_pixels[present]
        w[present] = np.median(f) / f
    elif kind == "invsqrt":
        w[present] = 1 / np.sqrt(pixels[present] / pixels.sum())
    else:
        raise ValueError(f"class_weights must be none, medfreq or invsqrt, got {kind!r}")
    mean = w[present].mean()
    w[present] = np.clip(w[present], mean / clip, mean * clip)
    w /= (w * pixels).sum() / pixels.sum()
    return torch.tensor(w, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# Model, loss, training


def build_model(pretrained: bool, seed: int, weights: Path) -> EncoderUNet:
    """The same U-Net for both arms; the decoder init depends only on ``seed``."""
    torch.manual_seed(seed)
    encoder = MobileNetV2Encoder(width_mult=0.35, weights=weights if pretrained else None)
    torch.manual_seed(seed + 1000)  # the same decoder init in both arms
    model = EncoderUNet(encoder, decoder_channels=DECODER_CHANNELS, num_classes=NUM_CLASSES)
    return model.to(memory_format=torch.channels_last)  # faster oneDNN convs on CPU


def set_train_mode(model: EncoderUNet, bn_eval: bool, encoder_frozen: bool) -> None:
    """Train mode; the encoder's BatchNorm (or all of it, when frozen) in eval mode."""
    model.train()
    if encoder_frozen:
        model.encoder.eval()
    elif bn_eval:
        for module in model.encoder.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


class Loss(nn.Module):
    """CE (optionally class-weighted, label-smoothed, OHEM) + Dice + Lovasz, all in fp32."""

    def __init__(self, cfg: Config, weight: torch.Tensor | None) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("weight", weight)
        self.dice = smp.losses.DiceLoss("multiclass", ignore_index=IGNORE_INDEX)
        self.lovasz = smp.losses.LovaszLoss("multiclass", ignore_index=IGNORE_INDEX)

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Args: logits (B, C, H, W) fp32, mask (B, H, W) int64 with 255 = void."""
        cfg = self.cfg
        if cfg.ohem_keep > 0 or cfg.ohem_thresh > 0:
            loss = self.ohem(logits, mask)
        else:
            loss = F.cross_entropy(
                logits,
                mask,
                weight=self.weight,
                ignore_index=IGNORE_INDEX,
                label_smoothing=cfg.label_smoothing,
            )
        if cfg.dice_weight:
            loss = loss + cfg.dice_weight * self.dice(logits, mask)
        if cfg.lovasz_weight:
            loss = loss + cfg.lovasz_weight * self.lovasz(logits, mask)
        return loss

    def ohem(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Online hard example mining over pixels (Shrivastava et al. 2016,
        https://arxiv.org/abs/1604.03540), as mmseg's ``OHEMPixelSampler``: keep the pixels whose
        gt-class probability is below ``max(ohem_thresh, p of the min_kept-th hardest pixel)``,
        min_kept = ``ohem_keep`` x valid pixels; the loss is the (weighted) mean over them.
        """
        cfg = self.cfg
        valid = mask != IGNORE_INDEX  # (B, H, W)
        ce = F.cross_entropy(
            logits,
            mask,
            ignore_index=IGNORE_INDEX,
            reduction="none",
            label_smoothing=cfg.label_smoothing,
        )[valid]  # (N,)
        target = mask[valid]  # (N,)
        with torch.no_grad():
            logp = F.log_softmax(logits.detach(), dim=1)  # (B, C, H, W)
            p_gt = logp.gather(1, mask.clamp(max=NUM_CLASSES - 1)[:, None])[:, 0][valid].exp()
            min_kept = max(1, int(cfg.ohem_keep * p_gt.numel()))
            thresh = cfg.ohem_thresh
            if min_kept < p_gt.numel():
                thresh = max(thresh, float(p_gt.kthvalue(min_kept).values))
            keep = p_gt <= thresh  # (N,)
        w = self.weight[target] if self.weight is not None else torch.ones_like(ce)
        w = w * keep
        return (w * ce).sum() / w.sum().clamp(min=1e-12)


def prior_bias(masks: list[np.ndarray]) -> torch.Tensor:
    """log class priors of the training pixels (unseen classes: 1 / (10 x pixels))."""
    pixels = np.zeros(NUM_CLASSES)
    for m in masks:
        pixels += np.bincount(m[m != IGNORE_INDEX].ravel(), minlength=256)[:NUM_CLASSES]
    p = np.maximum(pixels, 0.1) / pixels.sum()
    return torch.tensor(np.log(p), dtype=torch.float32)


def batch_order(n: int, cfg: Config, seed: int) -> np.ndarray:
    """(steps, batch) image indices: shuffled epochs, last incomplete batch dropped."""
    rng = np.random.default_rng(seed)
    per_epoch = n // cfg.batch_size if n > cfg.batch_size else 1
    batches = []
    while len(batches) < cfg.steps:
        perm = rng.permutation(n)
        batches += [perm[i * cfg.batch_size : (i + 1) * cfg.batch_size] for i in range(per_epoch)]
    return np.stack(batches[: cfg.steps])


def train(
    model: EncoderUNet, data: list, cfg: Config, seed: int, bf16: bool, bn_eval: bool
) -> tuple[nn.Module, dict[str, float]]:
    """Train ``model`` in place; returns the model to evaluate (the EMA copy if any) and
    timings."""
    transform = train_transform(cfg, seed)
    order = batch_order(len(data), cfg, seed)
    masks = [m for _, m in data]
    if cfg.head_bias_prior:
        with torch.no_grad():
            model.head.bias.copy_(prior_bias(masks))
    if cfg.bn == "fixed" and bn_eval:
        for module in model.encoder.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.requires_grad_(False)
    criterion = Loss(cfg, class_weights(masks, cfg.class_weights, cfg.weight_clip))
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.lr, cfg.encoder_lr_mult), weight_decay=cfg.weight_decay
    )
    scheduler = warmup_poly(optimizer, cfg.steps, cfg.warmup_fraction, cfg.start_factor, cfg.power)
    ema = copy.deepcopy(model) if cfg.ema else None
    encoder_params = [p for p in model.encoder.parameters() if p.requires_grad]
    times = {"data": 0.0, "step": 0.0}
    for step in range(cfg.steps):
        frozen = step < cfg.freeze_encoder_steps
        if step == 0 or step == cfg.freeze_encoder_steps:
            for p in encoder_params:
                p.requires_grad_(not frozen)
            set_train_mode(model, bn_eval, frozen)
        t0 = time.perf_counter()
        samples = [transform(image=data[i][0], mask=data[i][1]) for i in order[step]]
        images = torch.stack([s["image"] for s in samples])  # (B, 3, crop, crop)
        images = images.contiguous(memory_format=torch.channels_last)
        masks_b = torch.stack([s["mask"] for s in samples]).long()  # (B, crop, crop)
        t1 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(images)  # (B, 21, crop, crop)
        loss = criterion(logits.float(), masks_b)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if ema is not None:
            update_ema(ema, model, cfg.ema, step)
        times["data"] += t1 - t0
        times["step"] += time.perf_counter() - t1
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss {loss.item()} at step {step}")
    return (ema if ema is not None else model), times


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """EMA of the parameters (warm-started: decay min(decay, (1 + t) / (10 + t))); buffers
    (BatchNorm statistics) copied."""
    d = min(decay, (1 + step) / (10 + step))
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p, 1 - d)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)


@torch.no_grad()
def evaluate(model: nn.Module, data: list, norm: str, bf16: bool) -> dict:
    """Scores of one confusion matrix over the whole held-out images at full resolution."""
    model.eval()
    metric = SegmentationMetrics(num_classes=NUM_CLASSES)
    nll, pixels = 0.0, 0
    for image, mask in data:
        x = to_tensor(image, norm).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)  # (1, 21, H, W)
        target = torch.from_numpy(mask.astype(np.int64))[None]  # (1, H, W)
        metric.update(logits.float(), target)
        nll += float(
            F.cross_entropy(logits.float(), target, reduction="sum", ignore_index=IGNORE_INDEX)
        )
        pixels += int((target != IGNORE_INDEX).sum())
    s = metric.compute()
    iou = s["per_class_IoU"]
    return {
        "mIoU": float(s["mIoU"]),
        "pixel_acc": float(s["pixel_acc"]),
        "mean_acc": float(s["mean_acc"]),
        "nll": nll / pixels,  # held-out cross-entropy per labelled pixel: a smoother score
        "per_class_IoU": [None if math.isnan(v) else round(float(v), 4) for v in iou],
    }


def run(
    seed: int, fold: int, arm: str, cfg: Config, folds: list[list[int]], shared: str, threads=1
) -> dict:
    """Train and evaluate one arm on one (seed, fold): a job of ``compare``'s process pool."""
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)  # denormals slow CPU training down several times
    bf16 = cpu_has_native_bf16()  # emulated bf16 is slower than fp32
    shared = Path(shared)
    _, pairs = load_images(shared / "voc-mini")
    held = set(folds[fold])
    train_set = [p for i, p in enumerate(pairs) if i not in held]
    val_set = [p for i, p in enumerate(pairs) if i in held]
    start = time.perf_counter()
    weights = shared / "weights" / "mobilenet_v2_035_imagenet_features.pth"
    model = build_model(arm == "pretrained", seed, weights)
    bn_eval = cfg.bn in ("frozen", "fixed") and (arm == "pretrained" or cfg.random_bn == "same")
    trained, times = train(model, train_set, cfg, seed, bf16, bn_eval)
    train_s = time.perf_counter() - start
    scores = evaluate(trained, val_set, cfg.norm, bf16)
    return {
        **scores,
        "seconds": time.perf_counter() - start,
        "s_per_step": train_s / cfg.steps,
        "s_per_step_compute": times["step"] / cfg.steps,
    }


def compare(
    cfg: Config,
    seeds: tuple[int, ...],
    folds_to_run: tuple[int, ...],
    arms: tuple[str, ...],
    fold_seed: int,
    workers: int,
    shared: Path,
) -> dict:
    """All (seed, fold, arm) runs; returns the JSON-ready record."""
    _, pairs = load_images(shared / "voc-mini")
    folds = make_folds([m for _, m in pairs], 4, fold_seed)
    jobs = [(s, f, a) for s in seeds for f in folds_to_run for a in arms]
    done: dict[tuple, dict] = {}

    def report(job: tuple, scores: dict) -> None:
        done[job] = scores
        print(
            f"seed {job[0]} fold {job[1]} {job[2]:>10}: mIoU {scores['mIoU']:.4f} "
            f"pixel acc {scores['pixel_acc']:.4f} ({scores['seconds']:.0f} s, "
            f"{scores['s_per_step']:.3f} s/step)",
            flush=True,
        )

    if workers == 1:
        for job in jobs:
            report(job, run(*job, cfg, folds, str(shared), threads=torch.get_num_threads()))
    else:
        context = multiprocessing.get_context("spawn")  # no fork of a threaded parent
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = {pool.submit(run, *job, cfg, folds, str(shared)): job for job in jobs}
            for future in as_completed(futures):
                report(futures[future], future.result())
    runs = [{"seed": s, "fold": f, "arm": a, **done[(s, f, a)]} for s, f, a in jobs]
    return {"config": dataclasses.asdict(cfg), "folds": folds, "runs": runs}


def summarize(record: dict) -> dict:
    """Mean +- std over runs of each arm, paired gains; added to ``record["summary"]``."""
    out = {}
    runs = record["runs"]
    for arm in ARMS:
        rs = [r for r in runs if r["arm"] == arm]
        if not rs:
            continue
        out[arm] = {}
        for key in ("mIoU", "pixel_acc", "mean_acc", "nll", "s_per_step"):
            if not all(key in r for r in rs):
                continue
            v = np.array([r[key] for r in rs])
            out[arm][key] = [float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0]
    if "pretrained" in out and "random" in out:
        pre = {(r["seed"], r["fold"]): r["mIoU"] for r in runs if r["arm"] == "pretrained"}
        rnd = {(r["seed"], r["fold"]): r["mIoU"] for r in runs if r["arm"] == "random"}
        d = np.array([pre[k] - rnd[k] for k in pre if k in rnd])
        out["gain"] = {"mean": float(d.mean()), "min": float(d.min()), "wins": int((d > 0).sum())}
        out["gain"]["pairs"] = len(d)
    record["summary"] = out
    return out


def format_summary(summary: dict) -> str:
    lines = []
    for arm in ARMS:
        if arm in summary:
            s = summary[arm]
            lines.append(
                f"{arm:>10}: mIoU {s['mIoU'][0]:.4f} +- {s['mIoU'][1]:.4f}  pixel acc "
                f"{s['pixel_acc'][0]:.4f} +- {s['pixel_acc'][1]:.4f}  mean acc "
                f"{s['mean_acc'][0]:.4f}  nll {s.get('nll', [math.nan])[0]:.3f}  "
                f"{s['s_per_step'][0]:.3f} s/step (1 thread)"
            )
    if "gain" in summary:
        g = summary["gain"]
        lines.append(
            f"paired mIoU gain {g['mean']:+.4f} (min {g['min']:+.4f}); pretrained wins "
            f"{g['wins']}/{g['pairs']}"
        )
    return "\n".join(lines)


def paired_diff(record: dict, ref: dict, arm: str = "pretrained") -> tuple[float, int, int]:
    """Mean paired mIoU difference of ``record`` vs ``ref`` over their common (seed, fold) runs
    of ``arm``, the number of runs where it is positive, and the number of pairs."""
    a = {(r["seed"], r["fold"]): r["mIoU"] for r in record["runs"] if r["arm"] == arm}
    b = {(r["seed"], r["fold"]): r["mIoU"] for r in ref["runs"] if r["arm"] == arm}
    d = np.array([a[k] - b[k] for k in a if k in b])
    return (float(d.mean()), int((d > 0).sum()), len(d)) if len(d) else (math.nan, 0, 0)


def table(ref_tag: str) -> str:
    """Markdown rows for every results file: fold-mean mIoU +- std, pixel accuracy and the
    paired mIoU difference vs ``ref_tag`` (same seeds and folds), both arms."""
    records = {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}
    ref = records[ref_tag]
    rows = [
        "| tag | steps | pretrained mIoU | acc | vs ref (wins) | random mIoU | acc "
        "| pre - rand (wins) | s/step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for tag, rec in sorted(records.items(), key=lambda kv: kv[1].get("finished", 0)):
        s = rec["summary"]
        cells = [tag, str(rec["config"]["steps"])]
        for arm in ARMS:
            if arm in s:
                cells += [
                    f"{s[arm]['mIoU'][0]:.3f} +- {s[arm]['mIoU'][1]:.3f}",
                    f"{s[arm]['pixel_acc'][0]:.3f}",
                ]
            else:
                cells += ["-", "-"]
            if arm == "pretrained":
                d, wins, n = paired_diff(rec, ref, arm)
                cells.append(f"{d:+.3f} ({wins}/{n})" if n else "-")
        g = s.get("gain")
        cells.append(f"{g['mean']:+.3f} ({g['wins']}/{g['pairs']})" if g else "-")
        arm = "pretrained" if "pretrained" in s else "random"
        cells.append(f"{s[arm]['s_per_step'][0]:.2f}")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def time_steps(cfg: Config, n: int, threads: int, shared: Path, rounds: int = 3) -> None:
    """Step time of the pretrained arm on all 32 images in this process (``threads`` threads):
    median of ``n`` steps after 3 warm-up steps, best of ``rounds`` rounds; data included."""
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    bf16 = cpu_has_native_bf16()
    _, pairs = load_images(shared / "voc-mini")
    weights = shared / "weights" / "mobilenet_v2_035_imagenet_features.pth"
    best = []
    for r in range(rounds):
        model = build_model(True, 0, weights)
        step_cfg = dataclasses.replace(cfg, steps=n + 3)
        t = time.perf_counter()
        _, times = train(model, pairs, step_cfg, r, bf16, cfg.bn != "train")
        total = time.perf_counter() - t
        best.append((total / (n + 3), times["step"] / (n + 3), times["data"] / (n + 3)))
        print(
            f"round {r}: {best[-1][0]:.3f} s/step ({best[-1][1]:.3f} compute, "
            f"{best[-1][2]:.3f} data)",
            flush=True,
        )
    b = min(best)
    print(
        f"best: {b[0]:.3f} s/step with {threads} threads; {cfg.steps} steps = "
        f"{b[0] * cfg.steps / 60:.1f} min (+15% = {1.15 * b[0] * cfg.steps / 60:.1f} min)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tag", default="run", help="results go to finetune_results/TAG.json")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--fold-seed", type=int, default=0, help="seed of the fold split")
    parser.add_argument("--workers", type=int, default=2, help="single-threaded processes")
    parser.add_argument("--time-steps", type=int, default=0, help="only time N steps")
    parser.add_argument("--threads", type=int, default=2, help="threads of --time-steps")
    parser.add_argument("--table", metavar="REF", help="only print the table of all results")
    for field in dataclasses.fields(Config):
        if field.type == "bool":
            kind = lambda s: s.lower() in ("1", "true", "yes")  # noqa: E731
        else:
            kind = {"int": int, "float": float, "str": str}[field.type]
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=kind, default=field.default)
    args = parser.parse_args()
    cfg = Config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Config)})
    if args.table:
        print(table(args.table))
        return
    shared = find_shared()
    print(cfg, flush=True)
    if args.time_steps:
        time_steps(cfg, args.time_steps, args.threads, shared)
        return
    start = time.perf_counter()
    record = compare(
        cfg,
        tuple(args.seeds),
        tuple(args.folds),
        tuple(args.arms),
        args.fold_seed,
        args.workers,
        shared,
    )
    record["wall_s"] = time.perf_counter() - start
    record["finished"] = time.time()
    record["argv"] = sys.argv[1:]
    record["host"] = {"cpu_count": os.cpu_count(), "machine": platform.machine()}
    print(format_summary(summarize(record)))
    for arm in args.arms:
        per_fold = [
            f"{r['mIoU']:.3f}/{r['pixel_acc']:.3f}" for r in record["runs"] if r["arm"] == arm
        ]
        print(f"{arm:>10} per run (mIoU/acc): {' '.join(per_fold)}")
    print(f"wall time {record['wall_s']:.0f} s")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{args.tag}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

"""torchvision's ``fcn_resnet50`` trained as torchvision's segmentation reference does, vs seg.

Peer arm (``references/segmentation/train.py`` of torchvision, on CPU): fp32, NCHW, the
reference's train transforms (random resize of the shorter side to 0.5-2x the base size, flip,
random crop padded with 0 / 255, float conversion, ImageNet normalisation), cross-entropy
ignoring 255 on "out" + 0.5 x on "aux", SGD (lr 0.01, momentum 0.9, weight decay 1e-4, aux head
at 10x lr) with the poly schedule. seg arm: the same network from ``conf/model/tv_fcn_resnet50``
trained by ``Trainer.fit`` with seg's defaults (``trainer=cpu``/``gpu``: bf16-mixed where native,
channels_last; ``augment=voc``; ``optimizer=sgd``; ``scheduler=poly``). Both start from the same
random init and read the same images with the same number of loader workers. The two arms
alternate step by step in one process (see :func:`compare`).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from timing import StepTimer, compose_train, seg_trainer, sync
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.models.segmentation import fcn_resnet50
from torchvision.transforms import v2

from seg.constants import IGNORE_INDEX, NUM_CLASSES
from seg.data.voc import VOCSegmentation
from seg.train import build_module


def reference_transform(crop: int) -> v2.Compose:
    """The reference's ``SegmentationPresetTrain`` (base size 520 for crop 480), scaled to ``crop``."""
    base = round(crop * 520 / 480)
    return v2.Compose(
        [
            v2.RandomResize(base // 2, base * 2),
            v2.RandomHorizontalFlip(0.5),
            v2.RandomCrop(crop, pad_if_needed=True, fill={tv_tensors.Mask: 255, "others": 0}),
            v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
            v2.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
        ]
    )


class ReferenceVOC(Dataset):
    """VOC images as torchvision tensors, through the reference's transforms."""

    def __init__(self, root: str, crop: int) -> None:
        self.data, self.transform = VOCSegmentation(root, split="train"), reference_transform(crop)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        item = self.data[i]
        image = tv_tensors.Image(torch.from_numpy(item["image"]).permute(2, 0, 1))  # (3, H, W)
        mask = tv_tensors.Mask(torch.from_numpy(item["mask"].astype("int64")))  # (H, W)
        return self.transform(image, mask)


def reference_optimizer(model: torch.nn.Module, steps: int, lr: float = 0.01) -> tuple[Any, Any]:
    """The reference's SGD parameter groups and its poly (power 0.9) schedule."""
    groups = [
        {"params": [p for p in model.backbone.parameters() if p.requires_grad]},
        {"params": [p for p in model.classifier.parameters() if p.requires_grad]},
        {"params": list(model.aux_classifier.parameters()), "lr": lr * 10},
    ]
    opt = torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=1e-4)
    return opt, torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=steps, power=0.9)


class ReferenceArm:
    """The peer, trained one step per :meth:`step` call, as the reference's loop does.

    Built eagerly (model from ``torch.manual_seed(0)``, optimizer, loader and its workers), so
    that its steps can be run between seg's: both arms then see the same load of a shared
    machine. ``times`` holds the seconds of each step, the batch fetch included; ``losses`` the
    total loss ("out" + 0.5 x "aux") of each.
    """

    def __init__(
        self, root: str, crop: int, batch: int, steps: int, workers: int, device: str
    ) -> None:
        torch.manual_seed(0)
        model = fcn_resnet50(
            weights=None, weights_backbone=None, num_classes=NUM_CLASSES, aux_loss=True
        )
        self.model, self.device = model.to(device).train(), device
        self.opt, self.sched = reference_optimizer(self.model, steps)
        self.loader = DataLoader(
            ReferenceVOC(root, crop), batch, shuffle=True, num_workers=workers, drop_last=True
        )
        self.batches = iter(self.loader)
        self.times: list[float] = []
        self.losses: list[float] = []

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            return next(self.batches)
        except StopIteration:  # a new epoch, reshuffled, as the reference's epoch loop
            self.batches = iter(self.loader)
            return next(self.batches)

    def step(self) -> None:
        """Fetch a batch, forward ("out", "aux"), loss, backward, SGD and poly steps."""
        start = time.perf_counter()
        image, mask = self._next_batch()  # (B, 3, crop, crop) float32, (B, crop, crop) int64
        image, mask = image.to(self.device), mask.to(self.device)
        out = self.model(image)
        loss = F.cross_entropy(out["out"], mask, ignore_index=IGNORE_INDEX)
        loss = loss + 0.5 * F.cross_entropy(out["aux"], mask, ignore_index=IGNORE_INDEX)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.sched.step()
        sync(self.device)
        self.times.append(time.perf_counter() - start)
        self.losses.append(loss.item())


def seg_run(
    root: str,
    crop: int,
    batch: int,
    steps: int,
    workers: int,
    device: str,
    between: Callable[[], Any] | None = None,
    compile: bool = False,
) -> tuple[list[float], list[float]]:
    """Train the same network with seg's defaults; ``between`` runs after each step, untimed.
    ``compile``: ``model.compile=true``, what ``auto`` picks for a run of the reference's
    length (tens of thousands of steps; ``seg.modules.compile``).

    Returns:
        (seconds per step, loss per step).
    """
    cfg = compose_train(
        [
            "model=tv_fcn_resnet50",
            f"trainer={'gpu' if device == 'cuda' else 'cpu'}",
            "augment=voc",
            f"augment.crop_size={crop}",
            f"data.root={root}",
            f"data.batch_size={batch}",
            f"data.num_workers={workers}",
            f"data.persistent_workers={workers > 0}",
            "optimizer=sgd",
            "scheduler=poly",
            f"model.compile={compile}",
        ]
    )
    torch.manual_seed(0)
    module, datamodule = build_module(cfg), instantiate(cfg.data)
    timer = StepTimer(device, between)
    with tempfile.TemporaryDirectory() as tmp:
        seg_trainer(cfg, timer, steps, tmp).fit(module, datamodule=datamodule)
    return timer.step_times, timer.losses


def compare(
    root: str,
    crop: int,
    batch: int,
    steps: int,
    warmup: int,
    workers: int,
    device: str,
    compile: bool = False,
) -> dict[str, Any]:
    """Both arms from the same init, alternating step by step (a peer step after each of seg's).

    Alternating rather than running one arm after the other keeps a shared machine's load
    changes (2-5x here) out of the ratio. Returns the speed-up of seg and both loss curves.
    """
    reference = ReferenceArm(root, crop, batch, steps, workers, device)
    seg_t, seg_loss = seg_run(root, crop, batch, steps, workers, device, reference.step, compile)
    peer_t, peer_loss = reference.times, reference.losses
    peer_s, seg_s = statistics.median(peer_t[warmup:]), statistics.median(seg_t[warmup:])
    return {
        "peer_s_per_step": peer_s,
        "seg_s_per_step": seg_s,
        "speedup": peer_s / seg_s,
        "peer_loss": peer_loss,
        "seg_loss": seg_loss,
        **loss_agreement(peer_loss, seg_loss),
    }


def loss_agreement(peer: list[float], ours: list[float], window: int = 10) -> dict[str, Any]:
    """Whether the mean loss over the last ``window`` steps agrees within 2 standard errors.

    The noise is the step-to-step spread of both curves over the window (two-sample z-test at
    about 95%): a systematic gap larger than that means the two recipes do not train alike.
    """
    a, b = torch.tensor(peer[-window:]), torch.tensor(ours[-window:])
    gap = float(b.mean() - a.mean())
    noise = float((a.var() / len(a) + b.var() / len(b)).sqrt()) if len(a) > 1 else float("nan")
    return {"loss_gap": gap, "loss_noise": noise, "loss_within_noise": abs(gap) <= 2 * noise}

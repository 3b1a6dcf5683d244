"""Where a training step of torchvision's ``fcn_resnet50`` goes: the reference's way vs seg's.

Profiles (``torch.profiler``) one training step of each arm of ``bench/peer.py`` on the same
in-memory batch, after warm-up steps, and sums the operators' own CPU time into groups
(convolutions, BatchNorm, ReLU, elementwise adds/multiplies, casts, loss, upsampling, the
optimizer, the rest). Reference arm: fp32, NCHW, the reference's loss and SGD groups. seg arm:
``SegmentationModule`` of ``conf/model/tv_fcn_resnet50.yaml`` (its channels_last forward, its
loss with the aux term, the optimizer of ``conf/optimizer/sgd.yaml``) under bf16 autocast, as
``Trainer`` with ``precision=bf16-mixed`` runs it, without Lightning's loop around it.
Prints a Markdown table: seconds and share of each group per arm, and their ratio, then the
rate of each arm's convolutions (their FLOPs, 3 x the forward's for a training step, over their
time) against the matmul rate of its precision measured in the same run: what bounds the ratio::

    python bench/peer_profile.py --crop 480 --batch 2 --threads 1
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Callable

import peer
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from timing import autocast, compose_train, forward_flops, matmul_tflops, random_batch
from torch.profiler import ProfilerActivity, profile
from torchvision.models.segmentation import fcn_resnet50

from seg.constants import IGNORE_INDEX, NUM_CLASSES
from seg.train import build_module

#: (group, substrings of aten operator names), first match wins.
GROUPS = (
    ("convolution", ("conv",)),
    ("batchnorm", ("batch_norm",)),
    ("relu", ("relu", "threshold", "clamp_min")),
    ("optimizer (fused)", ("_fused_sgd", "_fused_adam")),
    ("elementwise add/mul (residuals, optimizer)", ("add", "mul", "lerp", "addcmul", "div")),
    ("casts and copies", ("copy", "_to_copy")),
    ("loss", ("softmax", "nll")),
    ("upsampling", ("upsample",)),
    ("pooling", ("pool",)),
)


def group_of(name: str) -> str:
    """The group of an operator name such as ``aten::mkldnn_convolution``."""
    op = name.removeprefix("aten::")
    return next((g for g, keys in GROUPS if any(k in op for k in keys)), "other")


def reference_step(x: torch.Tensor, y: torch.Tensor, steps: int) -> Callable[[], None]:
    """One step of the reference: fp32, NCHW, out + 0.5 x aux cross-entropy, its SGD groups."""
    torch.manual_seed(0)
    model = fcn_resnet50(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES, aux_loss=True
    ).train()
    opt, _ = peer.reference_optimizer(model, steps)

    def step() -> None:
        out = model(x)
        loss = F.cross_entropy(out["out"], y, ignore_index=IGNORE_INDEX)
        loss = loss + 0.5 * F.cross_entropy(out["aux"], y, ignore_index=IGNORE_INDEX)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def seg_step(x: torch.Tensor, y: torch.Tensor, bf16: bool) -> Callable[[], None]:
    """One step of seg's training step with its defaults, outside Lightning's loop."""
    cfg = compose_train(["model=tv_fcn_resnet50", "optimizer=sgd", "trainer=cpu"])
    torch.manual_seed(0)
    module = build_module(cfg).train()
    module.setup("fit")  # channels_last, as Trainer.fit does
    opt = instantiate(cfg.optimizer)(module.net.parameters())

    def step() -> None:
        with autocast("cpu", bf16):
            loss = module.loss(module(x), {"mask": y})["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def profile_step(step: Callable[[], None], warmup: int) -> tuple[float, Counter]:
    """(wall seconds of the profiled step, own CPU seconds per group)."""
    for _ in range(warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        step()
        wall = time.perf_counter() - start
    groups: Counter = Counter()
    for event in prof.key_averages():
        groups[group_of(event.key)] += event.self_cpu_time_total / 1e6
    return wall, groups


def conv_rates(arms: dict[str, tuple[float, Counter]], x: torch.Tensor, bf16: bool) -> str:
    """Markdown lines: each arm's convolution GFLOP/s against its precision's matmul rate."""
    model = fcn_resnet50(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES, aux_loss=True
    )
    flops = 3 * forward_flops(model, tuple(x.shape))  # forward + backward (input and weight)
    fp32 = matmul_tflops(torch.float32, "cpu", 2048)
    ours = ("bf16", matmul_tflops(torch.bfloat16, "cpu", 2048)) if bf16 else ("fp32", fp32)
    rates = {"reference": ("fp32", fp32), "seg": ours}
    lines = []
    for arm, (precision, peak) in rates.items():
        achieved = flops / arms[arm][1]["convolution"] / 1e12
        lines.append(
            f"- {arm}: convolutions at {achieved * 1e3:.0f} GFLOP/s, {achieved / peak:.0%} of the "
            f"{precision} matmul rate ({peak * 1e3:.0f} GFLOP/s, n = 2048, this run)"
        )
    lines.append(f"- {ours[0]} / fp32 matmul rate: {ours[1] / fp32:.2f}x")
    return "\n".join(lines)


def table(arms: dict[str, tuple[float, Counter]]) -> str:
    """Markdown: seconds and share per group for each arm, and reference / seg."""
    (ref_wall, ref), (seg_wall, ours) = arms["reference"], arms["seg"]
    lines = [
        "| group | reference s | share | seg s | share | reference / seg |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    ref_total, seg_total = sum(ref.values()), sum(ours.values())
    for name in sorted(set(ref) | set(ours), key=lambda g: -ref[g]):
        ratio = f"{ref[name] / ours[name]:.1f}" if ours[name] else "-"
        lines.append(
            f"| {name} | {ref[name]:.3f} | {ref[name] / ref_total:.1%} | {ours[name]:.3f} "
            f"| {ours[name] / seg_total:.1%} | {ratio} |"
        )
    lines.append(
        f"| **all (profiled step, wall s)** | {ref_wall:.2f} | | {seg_wall:.2f} | "
        f"| {ref_wall / seg_wall:.2f} |"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crop", type=int, default=480)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, help="intra-op threads (default: torch's)")
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = compose_train(["trainer=cpu"])
    bf16 = str(cfg.trainer.precision).startswith("bf16")
    x, y = random_batch(args.batch, args.crop, "cpu")  # (B, 3, crop, crop), (B, crop, crop)
    arms = {
        "reference": profile_step(reference_step(x, y, 10), args.warmup),
        "seg": profile_step(seg_step(x, y, bf16), args.warmup),
    }
    print(
        f"fcn_resnet50, {args.batch} x {args.crop}, {torch.get_num_threads()} threads, seg in "
        f"{cfg.trainer.precision}; operators' own CPU time of one step after {args.warmup} "
        "warm-up steps:\n"
    )
    print(table(arms))
    print()
    print(conv_rates(arms, x, bf16))


if __name__ == "__main__":
    main()

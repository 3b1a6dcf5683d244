"""Per-model rows of ``bench/run.py``: seg's fit vs a plain loop, inference, ``torch.compile``.

A row is a dict of one model at one batch x crop. :func:`train_row` times the eager arms;
:func:`compiled_fields` adds the compiled ones (run last by the harness: compiling is slow);
:func:`with_roofline` turns images/s into fractions of the measured matmul rate (MFU).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from timing import (
    compiled_train_times,
    compose_train,
    forward_flops,
    inference_times,
    matmul_tflops,
    plain_stepper,
    random_batch,
    seg_step_times,
)
from torch import Tensor, nn

from seg.inference.precast import has_batch_norm

#: Steps of the compiled training arm that include compilation (forward + backward graphs).
COMPILE_STEPS = 2


@dataclass
class Setup:
    """One model's config, net (train mode, device, memory format) and seeded batch.

    ``x`` (B, 3, crop, crop) float32 and ``y`` (B, crop, crop) int64 are on the device; ``x`` is
    in the net's memory format.
    """

    cfg: DictConfig
    bf16: bool
    channels_last: bool
    net: nn.Module
    x: Tensor
    y: Tensor


def setup(name: str, batch: int, crop: int, device: str) -> Setup:
    """``model=name`` with seg's trainer preset for ``device`` (``trainer=cpu`` or ``gpu``)."""
    cfg = compose_train([f"model={name}", f"trainer={'gpu' if device == 'cuda' else 'cpu'}"])
    channels_last = bool(cfg.model.get("channels_last", True))
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x, y = random_batch(batch, crop, device)
    torch.manual_seed(0)
    net = instantiate(cfg.model.net).to(device).to(memory_format=layout).train()
    bf16 = str(cfg.trainer.precision).startswith("bf16")
    return Setup(cfg, bf16, channels_last, net, x.contiguous(memory_format=layout), y)


def train_row(name: str, batch: int, crop: int, warmup: int, steps: int, rounds: int) -> dict:
    """Plain loop vs seg's fit, and inference, for one model.

    The two arms alternate step by step (a plain step after each of seg's, untimed by seg's
    timer), so both see the same load of a shared machine; ``rounds`` fits of ``warmup +
    steps`` steps each, the warm-up steps of both arms dropped.
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    s = setup(name, batch, crop, device)
    flops = forward_flops(s.net, (1, 3, crop, crop)) * batch  # one batch, forward
    plain_step = plain_stepper(s.net.train(), s.x, s.y, s.bf16)
    plain: list[float] = []
    ours: list[float] = []

    def between() -> None:
        plain.append(plain_step())

    for _ in range(rounds):
        torch.manual_seed(0)
        first = len(plain)
        ours += seg_step_times(s.cfg, s.x.cpu(), s.y.cpu(), warmup + steps, between)[warmup:]
        del plain[first : first + warmup]
    infer = inference_times(s.net.eval(), s.x, s.bf16, s.channels_last, warmup + steps + 1)
    plain_s, seg_s, infer_s = (statistics.median(v) for v in (plain, ours, infer[warmup:]))
    return {
        "model": name,
        "batch": batch,
        "crop": crop,
        "precision": str(s.cfg.trainer.precision),
        "bf16": s.bf16,
        "gflops_fwd": flops / 1e9,
        "plain_img_s": batch / plain_s,
        "seg_img_s": batch / seg_s,
        "train_vs_plain": plain_s / seg_s,
        "infer_img_s": batch / infer_s,
        "compiled_infer_img_s": None,
        # inference.compile=auto compiles nets with BatchNorm on long runs (seg.inference.compiled)
        "auto_compiled": has_batch_norm(s.net),
    }


def compiled_fields(row: dict, steps: int, inference: bool, train: bool) -> dict:
    """``torch.compile`` figures of ``row``'s model at its batch x crop.

    Args:
        row: A :func:`train_row` result.
        steps: Timed steps after the compiling ones.
        inference: Time seg's compiled inference (``compiled_infer_img_s``, and
            ``infer_compile_s``: what the first call took beyond a steady one).
        train: Time seg's fit with ``model.compile=true`` against an eager plain loop, step by
            step: ``compiled_train_img_s``; ``eager_alongside_img_s`` (the plain loop's);
            ``compiled_vs_eager`` (eager s/step / compiled
            s/step, medians after the compiling steps); ``train_compile_s`` (what the first
            :data:`COMPILE_STEPS` steps took beyond steady-state ones); and
            ``compile_break_even_steps`` (``train_compile_s`` / the time saved per step; None
            when nothing is saved).
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    s, batch, out = setup(row["model"], row["batch"], row["crop"], device), row["batch"], {}
    if inference:
        times = inference_times(s.net, s.x, s.bf16, s.channels_last, steps + 1, compile=True)
        compiled_s = statistics.median(times[1:])
        out["compiled_infer_img_s"] = batch / compiled_s
        out["infer_compile_s"] = times[0] - compiled_s
    if train:
        compiled, eager = compiled_train_times(
            s.cfg, s.net.train(), s.x, s.y, s.bf16, COMPILE_STEPS + steps
        )
        compiled_s = statistics.median(compiled[COMPILE_STEPS:])
        eager_s = statistics.median(eager[COMPILE_STEPS:])
        compile_s = sum(compiled[:COMPILE_STEPS]) - COMPILE_STEPS * compiled_s
        saved = eager_s - compiled_s
        out |= {
            "eager_alongside_img_s": batch / eager_s,
            "compiled_train_img_s": batch / compiled_s,
            "compiled_vs_eager": eager_s / compiled_s,
            "train_compile_s": compile_s,
            "compile_break_even_steps": compile_s / saved if saved > 0 else None,
        }
    return out


def with_roofline(row: dict, peak: Callable[[bool], float]) -> dict:
    """``row`` plus achieved FLOP/s as fractions of ``peak(bf16)`` (training = 3x forward).

    The fraction of the measured matmul rate in seg's precision is the model FLOPs utilisation
    (MFU) against what the device achieves, rather than against its datasheet peak.
    """
    per_image, rate = row["gflops_fwd"] * 1e9 / row["batch"], peak(row["bf16"])
    rates = {
        "train_roofline_fraction": 3 * row["seg_img_s"],
        "plain_roofline_fraction": 3 * row["plain_img_s"],
        # Inference as a long run gets it: compiled where inference.compile=auto compiles.
        "infer_roofline_fraction": (row["auto_compiled"] and row.get("compiled_infer_img_s"))
        or row["infer_img_s"],
        "eager_infer_roofline_fraction": row["infer_img_s"],
        "compiled_infer_roofline_fraction": row.get("compiled_infer_img_s"),
        "compiled_train_roofline_fraction": 3 * row.get("compiled_train_img_s", 0) or None,
        "eager_alongside_roofline_fraction": 3 * row.get("eager_alongside_img_s", 0) or None,
    }
    return row | {key: per_image * v / rate for key, v in rates.items() if v}


def roofline(device: str, smoke: bool) -> dict[str, float]:
    """Measured matmul TFLOP/s in fp32 and bf16 (n = 2048 on CPU, 8192 on GPU)."""
    n = 512 if smoke else (8192 if device == "cuda" else 2048)
    return {
        "fp32_tflops": matmul_tflops(torch.float32, device, n),
        "bf16_tflops": matmul_tflops(torch.bfloat16, device, n),
        "matmul_n": n,
    }

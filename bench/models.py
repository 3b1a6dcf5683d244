"""Size, cost and CPU speed of every model config in ``conf/model/*.yaml``.

For each config the net is built from ``cfg.model.net`` (random init, offline-safe) and the script
reports its parameter count, GFLOPs of one forward pass of one image (``--flops-size``, default
320x320, counted by ``torch.utils.flop_counter.FlopCounterMode``: FLOPs = 2 x MACs, convolutions
and matmuls only, so BatchNorm/ReLU/pooling/interpolation are not counted), the output stride
stated in the yaml's first line ("Output stride: N") and the CPU forward throughput (images/s,
median of ``--repeats`` timed runs after ``--warmup`` untimed ones, under
``torch.inference_mode()``) in (a) fp32 NCHW and (b) bf16 autocast with model and input in
``torch.channels_last``, plus the speed-up (b)/(a). bf16 only pays off on CPUs with native bf16
(AMX / AVX512-BF16); elsewhere it is emulated and usually slower. Usage::

    python bench/models.py --quick                       # all models, batch 1, 3 repeats
    python bench/models.py --models unet,fcn8s --batch 8
    python bench/models.py --smoke --json /tmp/models.json  # two smallest models at 64x64
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from common import CONF, machine
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

SMOKE_MODELS = 2  # --smoke benchmarks this many models, the smallest by stated params


def model_names() -> list[str]:
    """Names of all model configs (``conf/model/<name>.yaml``), sorted."""
    return sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


def header_number(name: str, key: str) -> float | None:
    """Number after ``key`` (e.g. ``"Output stride: "``) in the yaml's first line, or None."""
    first = (CONF / "model" / f"{name}.yaml").read_text().splitlines()[0]
    match = re.search(re.escape(key) + r"\s*([\d.]+)", first)
    return float(match.group(1)) if match else None


def build_net(name: str) -> nn.Module:
    """The nn.Module of ``conf/model/<name>.yaml`` (``cfg.model.net``) in eval mode."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"model={name}"])
    return instantiate(cfg.model.net).eval()


def count_gflops(net: nn.Module, size: int) -> float:
    """FLOPs (2 x MACs) / 1e9 of one forward pass of a (1, 3, size, size) input."""
    x = torch.randn(1, 3, size, size)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net(x)  # tensor logits, or a dict for the localizer: the outputs are not needed
    return counter.get_total_flops() / 1e9


def throughput(net: nn.Module, x: torch.Tensor, bf16: bool, repeats: int, warmup: int) -> float:
    """Median images/s of ``net(x)`` over ``repeats`` timed runs after ``warmup`` untimed ones.

    Args:
        net: Model in eval mode (already in channels_last when ``bf16``).
        x: Input batch (B, 3, H, W) (already in channels_last when ``bf16``).
        bf16: Run under ``torch.autocast("cpu", dtype=torch.bfloat16)``.
        repeats: Timed runs (>= 1).
        warmup: Untimed runs before them.
    """
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    rates = []
    with torch.inference_mode(), autocast:
        for i in range(warmup + repeats):
            start = time.perf_counter()
            net(x)
            if i >= warmup:
                rates.append(x.shape[0] / (time.perf_counter() - start))
    return statistics.median(rates)


def bench_model(name: str, args: argparse.Namespace) -> dict:
    """Params, GFLOPs, output stride and fp32 / bf16+channels_last throughput of one config."""
    torch.manual_seed(0)
    net = build_net(name)
    params = sum(p.numel() for p in net.parameters()) / 1e6
    gflops = count_gflops(net, args.flops_size)
    x = torch.randn(args.batch, 3, args.size, args.size)  # (B, 3, S, S)
    fp32 = throughput(net, x, False, args.repeats, args.warmup)
    net = net.to(memory_format=torch.channels_last)
    x = x.to(memory_format=torch.channels_last)  # same shape, NHWC strides
    bf16 = throughput(net, x, True, args.repeats, args.warmup)
    stride = header_number(name, "Output stride:")
    return {
        "model": name,
        "params_m": params,
        "gflops": gflops,
        "output_stride": int(stride) if stride is not None else None,
        "fp32_img_s": fp32,
        "bf16_cl_img_s": bf16,
        "speedup": bf16 / fp32,
    }


def markdown(rows: list[dict], flops_size: int) -> str:
    """The results as a Markdown table."""
    lines = [
        f"| model | params (M) | GFLOPs @{flops_size} | out stride | fp32 img/s "
        "| bf16+CL img/s | speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['params_m']:.1f} | {r['gflops']:.1f} | {r['output_stride']} "
            f"| {r['fp32_img_s']:.2f} | {r['bf16_cl_img_s']:.2f} | {r['speedup']:.2f}x |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options; ``--quick`` and ``--smoke`` override the matching settings."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", help="comma-separated subset of conf/model names")
    parser.add_argument("--size", type=int, default=320, help="input side for throughput")
    parser.add_argument("--flops-size", type=int, default=320, help="input side for GFLOPs")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="batch 1, repeats 3, warmup 1")
    parser.add_argument("--smoke", action="store_true", help="2 smallest models at 64x64, 1 run")
    parser.add_argument("--json", type=Path, help="also save the results to this file")
    args = parser.parse_args(argv)
    names = model_names()
    if args.quick:
        args.batch, args.repeats, args.warmup = 1, 3, 1
    if args.smoke:
        args.size, args.batch, args.repeats, args.warmup = 64, 1, 1, 0
    if args.models:
        args.models = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = sorted(set(args.models) - set(names))
        if unknown:
            parser.error(f"unknown model(s) {unknown}; available: {', '.join(names)}")
    elif args.smoke:
        args.models = sorted(names, key=lambda n: header_number(n, "Params:") or float("inf"))
        args.models = args.models[:SMOKE_MODELS]
    else:
        args.models = names
    if min(args.size, args.flops_size, args.batch, args.repeats) < 1 or args.warmup < 0:
        parser.error("--size, --flops-size, --batch and --repeats must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    """Benchmark the selected models, print the table and optionally save JSON."""
    args = parse_args(argv)
    info = machine()
    print(
        f"CPU: {info['cpu']}; torch {info['torch']}; {info['threads']} threads; "
        f"native bf16: {info['native_bf16']}"
    )
    print(
        f"throughput: {args.size}x{args.size}, batch {args.batch}, median of {args.repeats} "
        f"after {args.warmup} warm-up; GFLOPs = FLOPs/1e9 with FLOPs = 2*MACs (FlopCounterMode)"
    )
    rows = []
    for name in args.models:
        rows.append(bench_model(name, args))
        print(f"  done {name}", flush=True)
    print(markdown(rows, args.flops_size))
    if args.json:
        settings = {k: getattr(args, k) for k in ("size", "flops_size", "batch", "repeats")}
        settings |= {"warmup": args.warmup, "flops": "2*MACs (FlopCounterMode)"}
        payload = {"machine": info, "settings": settings, "models": rows}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2))
    return rows


if __name__ == "__main__":
    main()

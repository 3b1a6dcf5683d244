"""One benchmark harness: seg against a plain loop, a peer, the hardware limit and itself.

Every figure is a median over timed steps after warm-up ones, and every ratio compares two
arms measured in the same run, one after the other, because a shared machine is noisy:

1. training images/s of seg's ``Trainer.fit`` vs a plain PyTorch loop (same net, batch, crop,
   precision and memory format, in-memory tensors) -> ``train_vs_plain``;
2. achieved FLOP/s (``torch.utils.flop_counter``; training = 3x forward) as a fraction of the
   matmul rate measured now, in the precision seg uses -> ``*_roofline_fraction``;
3. torchvision's ``fcn_resnet50`` trained as torchvision's reference does vs with seg's defaults
   (``bench/peer.py``) -> ``vs_torchvision_reference``, plus the loss curves;
4. the train input pipeline (decode + augment) vs the model's consumption -> ``loader_vs_model``;
5. ``predict.py`` end to end vs the model alone -> ``predict_vs_model``;
6. peak RSS of a fresh training process at batch 8, crop 320 -> ``peak_rss_mb``;
7. ``evaluate.py`` and ``predict.py`` as subprocesses: start-up and cost per image
   (``evaluate_vs_predict``), and ``predict.py`` compiled, cold and warm inductor cache, with
   its masks' agreement with eager's (``bench/entrypoints.py``).

Usage::

    python bench/run.py --quick --readme   # < 10 min on 2 CPU cores; updates README's table
    python bench/run.py                    # the full settings (long on a CPU)
    python bench/run.py --smoke --out /tmp/r.json   # seconds; what the tests run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import peer
import torch
from common import REPO, machine
from endtoend import (
    data_root,
    loader_rates,
    make_checkpoint,
    peak_rss_mb,
    predict_vs_model,
    synthetic_root,
)
from entrypoints import entry_points
from hydra.utils import instantiate
from report import markdown, update_readme
from timing import (
    compiled_inference_times,
    compose_train,
    forward_flops,
    inference_times,
    matmul_tflops,
    plain_step_times,
    random_batch,
    seg_step_times,
)

from seg.inference.compiled import has_batch_norm

MODELS = ("unet_resnet34", "fcn8s", "dilation_context")
#: (batch, crop, warm-up steps, timed steps, rounds) per mode; --quick shrinks the VGG nets.
FULL = {m: (8, 320, 1, 3, 2) for m in MODELS}
QUICK = {"unet_resnet34": (8, 320, 1, 3, 2), "fcn8s": (4, 192, 1, 3, 2)}
QUICK["dilation_context"] = (2, 160, 1, 2, 2)
SMOKE = {m: (2, 64, 1, 1, 1) for m in MODELS}
#: (crop, batch, steps, warm-up) of the torchvision-reference comparison per mode.
#: (n1, n2) images of the evaluate.py / predict.py runs (start-up and per-image cost) per mode.
ENTRY = {"full": (8, 32), "quick": (4, 16), "smoke": (1, 2)}
PEER = {"full": (320, 8, 50, 5), "quick": (112, 4, 20, 3), "smoke": (64, 2, 4, 1)}


def train_row(
    name: str,
    batch: int,
    crop: int,
    warmup: int,
    steps: int,
    rounds: int,
    compile_inference: bool = False,
    auto_compile: bool = True,
) -> dict:
    """Plain loop vs seg's fit, and inference (eager, and compiled for the nets that
    ``inference.compile=auto`` compiles, or every net with ``compile_inference``), for one
    model; rounds alternate the two training arms."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = compose_train([f"model={name}", f"trainer={'gpu' if device == 'cuda' else 'cpu'}"])
    bf16 = str(cfg.trainer.precision).startswith("bf16")
    layout = (
        torch.channels_last if cfg.model.get("channels_last", True) else torch.contiguous_format
    )
    x, y = random_batch(batch, crop, device)
    torch.manual_seed(0)
    net = instantiate(cfg.model.net).to(device)
    flops = forward_flops(net, (1, 3, crop, crop)) * batch  # one batch, forward
    net, x_plain = net.to(memory_format=layout).train(), x.contiguous(memory_format=layout)
    plain, ours = [], []
    for _ in range(rounds):
        plain += plain_step_times(net, x_plain, y, bf16, warmup + steps)[warmup:]
        torch.manual_seed(0)
        ours += seg_step_times(cfg, x.cpu(), y.cpu(), warmup + steps)[warmup:]
    channels_last = layout == torch.channels_last
    infer = inference_times(net.eval(), x, bf16, channels_last, warmup + steps + 1)
    plain_s, seg_s, infer_s = (statistics.median(v) for v in (plain, ours, infer[warmup:]))
    compiled_s = compile_s = None
    # The nets inference.compile=auto compiles (all with compile_inference; none in smoke runs).
    if compile_inference or (auto_compile and has_batch_norm(net)):
        times = compiled_inference_times(net, x, bf16, channels_last, steps + 1)
        compiled_s = statistics.median(times[1:])
        compile_s = times[0] - compiled_s
    return {
        "model": name,
        "batch": batch,
        "crop": crop,
        "precision": str(cfg.trainer.precision),
        "bf16": bf16,
        "gflops_fwd": flops / 1e9,
        "plain_img_s": batch / plain_s,
        "seg_img_s": batch / seg_s,
        "train_vs_plain": plain_s / seg_s,
        "infer_img_s": batch / infer_s,
        "compiled_infer_img_s": compiled_s and batch / compiled_s,
        "compile_s": compile_s,
    }


def with_roofline(row: dict, peak) -> dict:
    """``row`` plus achieved FLOP/s as fractions of ``peak(bf16)`` (training = 3x forward)."""
    per_image, rate = row["gflops_fwd"] * 1e9 / row["batch"], peak(row["bf16"])
    # Inference as a long run gets it: compiled where inference.compile=auto compiles.
    infer_img_s = row["compiled_infer_img_s"] or row["infer_img_s"]
    fractions = {
        "train_roofline_fraction": 3 * per_image * row["seg_img_s"] / rate,
        "plain_roofline_fraction": 3 * per_image * row["plain_img_s"] / rate,
        "infer_roofline_fraction": per_image * infer_img_s / rate,
        "eager_infer_roofline_fraction": per_image * row["infer_img_s"] / rate,
    }
    return row | fractions


def roofline(device: str, smoke: bool) -> dict[str, float]:
    """Measured matmul TFLOP/s in fp32 and bf16 (n = 2048 on CPU, 8192 on GPU)."""
    n = 512 if smoke else (8192 if device == "cuda" else 2048)
    return {
        "fp32_tflops": matmul_tflops(torch.float32, device, n),
        "bf16_tflops": matmul_tflops(torch.bfloat16, device, n),
        "matmul_n": n,
    }


def run(args: argparse.Namespace) -> dict:
    """All measurements of one mode; returns the ``results.json`` record."""
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    settings = {"smoke": SMOKE, "quick": QUICK, "full": FULL}[mode]
    models = args.models or list(MODELS)
    info = machine()
    print(f"mode {mode}; {info}", flush=True)
    rates = [roofline(device, args.smoke)]
    print(f"matmul: {rates[-1]}", flush=True)

    def peak(bf16: bool) -> float:
        """The best matmul rate seen so far: a loaded machine only lowers the estimate."""
        return 1e12 * max(r["bf16_tflops" if bf16 else "fp32_tflops"] for r in rates)

    rows = []
    for name in models:
        row = train_row(name, *settings[name], args.compile, auto_compile=not args.smoke)
        rates.append(roofline(device, args.smoke))  # re-measured between models
        rows.append(with_roofline(row, peak))
        print(f"  {name}: {rows[-1]}", flush=True)
    peak_rate = {k: max(r[k] for r in rates) for k in rates[0]}
    crop, batch, steps, warmup = PEER[mode]
    versus = peer.compare(synthetic_root(REPO), crop, batch, steps, warmup, args.workers, device)
    print(f"  vs torchvision reference: {versus['speedup']:.2f}x", flush=True)
    root, what = data_root(REPO)
    workers = sorted({0, 1, 2, args.workers})
    loader = loader_rates(root, 64 if args.smoke else 320, 8, workers, 16 if args.smoke else 64)
    main = rows[0]
    predict = predict_vs_model(main["model"], root, *((1, 1) if args.smoke else (3, 3)))
    rss = peak_rss_mb(main["model"], *(settings[main["model"]][:2]))
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_checkpoint(main["model"], Path(tmp))
        entry = entry_points(ckpt, *ENTRY[mode], compiled=not args.smoke)
    return {
        "mode": mode,
        "machine": info | {"device": device},
        "roofline": peak_rate,
        "train_vs_plain": {r["model"]: r["train_vs_plain"] for r in rows},
        "train_roofline_fraction": {r["model"]: r["train_roofline_fraction"] for r in rows},
        "infer_roofline_fraction": {r["model"]: r["infer_roofline_fraction"] for r in rows},
        "vs_torchvision_reference": versus["speedup"],
        "loader_vs_model": loader[args.workers] / main["seg_img_s"],
        "predict_vs_model": predict["ratio"],
        "peak_rss_mb": rss,
        "evaluate_vs_predict": entry["evaluate_vs_predict_per_image"],
        "startup_s": {k: entry[k]["startup_s"] for k in ("predict", "evaluate")},
        "details": {
            "entry_points": entry | {"model": main["model"]},
            "models": rows,
            "peer": versus | {"crop": crop, "batch": batch, "steps": steps},
            "loader_img_s": {str(k): v for k, v in loader.items()},
            "loader_data": what,
            "loader_workers": args.workers,
            "predict": predict | {"model": main["model"], "data": what},
            "peak_rss_setting": {
                "model": main["model"],
                "batch": main["batch"],
                "crop": main["crop"],
            },
        },
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smaller VGG runs; < 10 min on 2 cores")
    mode.add_argument("--smoke", action="store_true", help="tiny sizes; checks the harness runs")
    parser.add_argument("--models", nargs="+", choices=MODELS, help="subset of the models")
    parser.add_argument("--workers", type=int, default=2, help="loader workers (seg's default)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results.json")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="time compiled inference of every model, not only "
        "those inference.compile=auto compiles (nets with BatchNorm)",
    )
    parser.add_argument("--readme", action="store_true", help="write the table into README.md")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Run, print the Markdown table, write the JSON (and the README table with --readme)."""
    args = parse_args(argv)
    command = "python bench/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results = run(args) | {"command": command.strip()}
    table = markdown(results)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(table + "\n")
    if args.readme:
        update_readme(REPO / "README.md", table)
    return results


if __name__ == "__main__":
    main()

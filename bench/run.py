"""One benchmark harness: seg against a plain loop, a peer, the hardware limit and itself.

Every figure is a median over timed steps after warm-up ones, and every ratio compares two
arms measured in the same run, one after the other or alternating step by step, because a
shared machine is noisy:

1. training images/s of seg's ``Trainer.fit`` vs a plain PyTorch loop (same net, batch, crop,
   precision and memory format, in-memory tensors) -> ``train_vs_plain``;
2. achieved FLOP/s (``torch.utils.flop_counter``; training = 3x forward) as a fraction of the
   matmul rate measured now, in the precision seg uses (MFU) -> ``*_roofline_fraction``;
3. torchvision's ``fcn_resnet50`` trained as torchvision's reference does vs with seg's defaults
   (``bench/peer.py``), at the reference's crop 480 -> ``vs_torchvision_reference`` and at a
   small crop -> ``vs_torchvision_reference_small_crop``, plus the loss curves;
4. the train input pipeline (decode + augment) vs the model's consumption -> ``loader_vs_model``;
5. ``predict.py`` end to end vs the model alone -> ``predict_vs_model``;
6. peak RSS of a fresh training process at the first model's batch and crop -> ``peak_rss_mb``;
7. ``evaluate.py`` and ``predict.py`` as subprocesses: start-up and cost per image
   (``evaluate_vs_predict``), and ``predict.py`` compiled, cold and warm inductor cache, with
   its masks' agreement with eager's (``bench/entrypoints.py``);
8. last (compiling is slow): compiled inference of the nets ``inference.compile=auto``
   compiles (every net with ``--compile``), and seg's fit with ``model.compile=true`` vs eager
   (``--train-compile``), and then vs torchvision's reference at crop 480
   -> ``vs_torchvision_reference_compiled`` (``auto`` compiles for a run of its length).

Usage::

    python bench/run.py --quick --readme   # < 10 min on 2 CPU cores; updates README's table
    python bench/run.py                    # the full settings (long on a CPU)
    python bench/run.py --smoke --out /tmp/r.json   # seconds; what the tests run
    python bench/run.py --quick --train-compile     # + training through torch.compile
    bash bench/gpu.sh                      # --gpu: one GPU, < 10 min (see bench/README.md)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
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
from report import markdown, update_readme
from rows import compiled_fields, roofline, train_row, with_roofline

MODELS = ("unet_resnet34", "fcn8s", "dilation_context")
#: (batch, crop, warm-up steps, timed steps, rounds) per mode; --quick shrinks the VGG nets.
FULL = {m: (8, 320, 1, 3, 2) for m in MODELS}
QUICK = {"unet_resnet34": (8, 320, 1, 3, 2), "fcn8s": (4, 192, 1, 3, 2)}
QUICK["dilation_context"] = (2, 160, 1, 2, 2)
SMOKE = {m: (2, 64, 1, 1, 1) for m in MODELS}
#: One GPU (bench/gpu.sh): larger batches and crops, more steps (a step takes milliseconds).
GPU = {"unet_resnet34": (32, 512, 5, 20, 2), "fcn8s": (16, 512, 5, 20, 2)}
GPU["dilation_context"] = (8, 512, 3, 10, 2)
#: (n1, n2, rounds) of the evaluate.py / predict.py runs (start-up and per-image cost) per mode:
#: 4 and 16 images once gave evaluate/predict 1.83, then 0.98-1.19 over 3 rounds of 4 and 32.
ENTRY = {"full": (4, 32, 3), "gpu": (8, 32, 3), "quick": (4, 32, 3), "smoke": (1, 2, 1)}
#: (results key, details key) of the torchvision-reference comparisons: at the reference's own
#: crop 480, then at a small crop.
PEER_KEYS = (
    ("vs_torchvision_reference", "peer"),
    ("vs_torchvision_reference_small_crop", "peer_small_crop"),
)
#: (crop, batch, steps, warm-up) of each comparison of PEER_KEYS per mode. Crop 480 takes the
#: reference's batch 4 per GPU in full mode, 2 in quick mode (an fp32 step of the peer takes
#: 5-20 s on 2 cores, hence 6 steps) and 16 on one GPU.
PEER = {
    "full": ((480, 4, 30, 3), (112, 4, 30, 3)),
    "quick": ((480, 2, 6, 2), (112, 4, 20, 3)),
    "gpu": ((480, 16, 60, 10), (112, 32, 60, 10)),
    "smoke": ((64, 2, 4, 1), (32, 2, 3, 1)),
}
#: (crop, batch, steps, warm-up) of the comparison at crop 480 with seg's net compiled
#: (``--train-compile``): the first steps compile the forward and backward graphs.
PEER_COMPILED = {
    "full": (480, 4, 30, 10),
    "quick": (480, 2, 10, 5),
    "gpu": (480, 16, 60, 20),
    "smoke": (64, 2, 4, 2),
}
#: Seconds a compile measurement is assumed to take before one has run (--budget-s).
COMPILE_RESERVE_S = 150.0


def peer_comparisons(mode: str, workers: int, device: str) -> list[tuple[str, str, dict]]:
    """Every torchvision-reference comparison of ``mode`` (:data:`PEER_KEYS`, :data:`PEER`).

    Returns:
        (results key, details key, record) per comparison; the record is :func:`peer.compare`'s
        plus its crop, batch and steps.
    """
    return [
        peer_comparison(key, detail, setting, workers, device)
        for (key, detail), setting in zip(PEER_KEYS, PEER[mode], strict=True)
    ]


def peer_comparison(
    key: str, detail: str, setting: tuple, workers: int, device: str, compile: bool = False
) -> tuple[str, str, dict]:
    """One comparison at ``setting`` (crop, batch, steps, warm-up); ``compile``: seg's net
    through ``model.compile=true``."""
    crop, batch, steps, warmup = setting
    versus = peer.compare(
        synthetic_root(REPO), crop, batch, steps, warmup, workers, device, compile=compile
    )
    shown = ", compiled" if compile else ""
    print(
        f"  vs torchvision reference, {batch} x {crop}{shown}: {versus['speedup']:.2f}x", flush=True
    )
    record = versus | {"crop": crop, "batch": batch, "steps": steps}
    return key, detail, record | ({"compiled": True} if compile else {})


def compile_phase(rows: list[dict], settings: dict, args: argparse.Namespace, start: float):
    """Add the ``torch.compile`` figures (:func:`rows.compiled_fields`) to ``rows`` in place.

    With ``--budget-s``, a measurement starts only when it is expected to end within the
    budget (its expected length: the longest so far, or :data:`COMPILE_RESERVE_S`).

    Returns:
        The models whose compile measurements were skipped for lack of time.
    """
    skipped, longest = [], COMPILE_RESERVE_S
    for row in rows:
        # Inference: every net with --compile, else those inference.compile=auto compiles.
        inference = args.compile or (row["auto_compiled"] and not args.smoke)
        train = args.train_compile
        if not (inference or train):
            continue
        if args.budget_s and time.monotonic() - start + longest > args.budget_s:
            skipped.append(row["model"])
            continue
        began = time.monotonic()
        _, _, _, steps, rounds = settings[row["model"]]
        row |= compiled_fields(row, steps * rounds, inference, train)
        longest = max(longest, time.monotonic() - began)
        print(f"  {row['model']} compiled: {row}", flush=True)
    return skipped


def peer_compile_phase(args: argparse.Namespace, mode: str, device: str, start: float):
    """With ``--train-compile``, torchvision's reference vs seg with ``model.compile=true`` at
    crop 480 (``auto`` compiles for a run of the reference's length, so this is seg's default
    there), when the budget leaves room; returns its record in a list (empty when not run)."""
    if not args.train_compile:
        return []
    if args.budget_s and time.monotonic() - start + COMPILE_RESERVE_S > args.budget_s:
        return []
    key = ("vs_torchvision_reference_compiled", "peer_compiled")
    return [peer_comparison(*key, PEER_COMPILED[mode], args.workers, device, compile=True)]


def run(args: argparse.Namespace) -> dict:
    """All measurements of one mode; returns the ``results.json`` record."""
    start = time.monotonic()
    if args.threads:
        torch.set_num_threads(args.threads)
    mode = "smoke" if args.smoke else "quick" if args.quick else "gpu" if args.gpu else "full"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":  # as trainer=gpu (and torchvision's reference) do: fixed crops
        torch.backends.cudnn.benchmark = True
    settings = {"smoke": SMOKE, "quick": QUICK, "full": FULL, "gpu": GPU}[mode]
    info = machine()
    print(f"mode {mode}; {info}", flush=True)
    rates = [roofline(device, args.smoke)]
    print(f"matmul: {rates[-1]}", flush=True)
    rows = []
    for name in args.models or list(MODELS):
        rows.append(train_row(name, *settings[name]))
        rates.append(roofline(device, args.smoke))  # re-measured between models
        print(f"  {name}: {rows[-1]}", flush=True)
    peers = peer_comparisons(mode, args.workers, device)
    root, what = data_root(REPO)
    main, images = rows[0], 16 if args.smoke else 256 if mode == "gpu" else 64
    loader = loader_rates(root, main["crop"], 8, sorted({0, 1, 2, args.workers}), images)
    predict = predict_vs_model(main["model"], root, *((1, 1) if args.smoke else (3, 3)))
    rss = peak_rss_mb(main["model"], main["batch"], main["crop"])
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_checkpoint(main["model"], Path(tmp))
        n1, n2, reps = ENTRY[mode]
        # predict.py compiled, cold and warm cache: 2.5 min on 2 cores, so not in --quick
        entry = entry_points(ckpt, n1, n2, compiled=mode in ("full", "gpu"), reps=reps)
    print(f"  entry points: {entry}", flush=True)
    eager_s = time.monotonic() - start
    skipped = compile_phase(rows, settings, args, start)
    peers += peer_compile_phase(args, mode, device, start)

    def peak(bf16: bool) -> float:
        """The best matmul rate seen: a loaded machine only lowers the estimate."""
        return 1e12 * max(r["bf16_tflops" if bf16 else "fp32_tflops"] for r in rates)

    rows = [with_roofline(row, peak) for row in rows]
    return {
        "mode": mode,
        "machine": info | {"device": device},
        "roofline": {k: max(r[k] for r in rates) for k in rates[0]},
        "train_vs_plain": {r["model"]: r["train_vs_plain"] for r in rows},
        "train_roofline_fraction": {r["model"]: r["train_roofline_fraction"] for r in rows},
        "infer_roofline_fraction": {r["model"]: r["infer_roofline_fraction"] for r in rows},
        **{key: versus["speedup"] for key, _, versus in peers},
        "loader_vs_model": loader[args.workers] / main["seg_img_s"],
        "predict_vs_model": predict["ratio"],
        "peak_rss_mb": rss,
        "evaluate_vs_predict": entry["evaluate_vs_predict_per_image"],
        "startup_s": {k: entry[k]["startup_s"] for k in ("predict", "evaluate")},
        "details": {
            "entry_points": entry | {"model": main["model"]},
            "models": rows,
            **{detail: versus for _, detail, versus in peers},
            "loader_img_s": {str(k): v for k, v in loader.items()},
            "loader_data": what,
            "loader_workers": args.workers,
            "predict": predict | {"model": main["model"], "data": what},
            "peak_rss_setting": {k: main[k] for k in ("model", "batch", "crop")},
            "compile_skipped_for_time": skipped,
            "wall_s": {"total": time.monotonic() - start, "before_compile": eager_s},
        },
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smaller VGG runs; < 10 min on 2 cores")
    mode.add_argument("--smoke", action="store_true", help="tiny sizes; checks the harness runs")
    mode.add_argument("--gpu", action="store_true", help="one GPU's sizes (bench/gpu.sh)")
    parser.add_argument("--models", nargs="+", choices=MODELS, help="subset of the models")
    parser.add_argument("--workers", type=int, default=2, help="loader workers (seg's default)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results.json")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="time compiled inference of every model, not only of those inference.compile=auto "
        "compiles (nets with BatchNorm)",
    )
    parser.add_argument(
        "--train-compile",
        action="store_true",
        help="also time seg's fit with model.compile=true against eager, step by step, and "
        "against torchvision's reference at crop 480",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="intra-op threads (default: torch's, one per core); 1 steadies the ratios on a "
        "machine shared with other jobs, where a descheduled thread stalls every parallel region",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        help="skip compile measurements that would end after this many seconds of the run",
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

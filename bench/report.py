"""Markdown tables of ``bench/run.py`` results, and the README section they are written into."""

from __future__ import annotations

import re
from pathlib import Path

START, END = "<!-- bench:start -->", "<!-- bench:end -->"
#: (results key, label, target, higher is better) of every targeted ratio. A label's
#: ``{peer}`` / ``{peer_small_crop}`` is that comparison's batch x crop.
TARGETS = (
    ("train_vs_plain", "seg fit / plain loop, train img/s", 0.95, True),
    ("train_roofline_fraction", "training, fraction of matmul roofline", 0.35, True),
    ("infer_roofline_fraction", "inference, fraction of matmul roofline", 0.55, True),
    ("vs_torchvision_reference", "speed-up vs torchvision reference, {peer}", 2.5, True),
    (
        "vs_torchvision_reference_small_crop",
        "speed-up vs torchvision reference, {peer_small_crop}",
        2.5,
        True,
    ),
    (
        "vs_torchvision_reference_compiled",
        "speed-up vs torchvision reference, {peer_compiled}, seg compiled (auto at its length)",
        2.5,
        True,
    ),
    ("loader_vs_model", "loader img/s / model train img/s", 1.0, True),
    ("predict_vs_model", "predict.py end to end / model alone", 0.9, True),
    ("evaluate_vs_predict", "evaluate.py / predict.py, seconds per image", 1.2, False),
)


def _models_table(results: dict) -> list[str]:
    lines = [
        "| model | batch x crop | precision | GFLOP/batch | plain img/s | seg img/s | seg/plain "
        "| train roofline | infer img/s | infer roofline |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["details"]["models"]:
        lines.append(
            f"| {r['model']} | {r['batch']} x {r['crop']} | {r['precision']} "
            f"| {r['gflops_fwd']:.0f} | {r['plain_img_s']:.2f} | {r['seg_img_s']:.2f} "
            f"| {r['train_vs_plain']:.2f} | {r['train_roofline_fraction']:.1%} "
            f"| {r['infer_img_s']:.2f} | {r['infer_roofline_fraction']:.1%} |"
        )
    lines += [
        f"\nInference of {r['model']}: compiled (inductor, freezing) {r['compiled_infer_img_s']:.2f}"
        f" img/s vs eager {r['infer_img_s']:.2f} ({r['compiled_infer_img_s'] / r['infer_img_s']:.2f}x"
        f"; eager {r['eager_infer_roofline_fraction']:.1%} of the roofline), compiling took "
        f"{r['infer_compile_s']:.0f} s"
        + ("; inference.compile=auto compiles it in long runs." if r.get("auto_compiled") else ".")
        for r in results["details"]["models"]
        if r.get("compiled_infer_img_s")
    ]
    return lines + _compiled_train_lines(results)


def _mfu_table(results: dict) -> list[str]:
    """Model FLOPs utilisation (against the measured matmul rate in seg's precision) of every arm,
    when ``torch.compile`` training was timed (``--train-compile``, as ``bench/gpu.sh`` runs)."""
    rows = [r for r in results["details"]["models"] if r.get("compiled_vs_eager") is not None]
    if not rows:
        return []
    lines = [
        "",
        "MFU: achieved FLOP/s (training = 3 x forward) / the measured matmul rate in the same "
        "precision (bf16 where seg trains in bf16-mixed). Compiled training alternated step by "
        'step with an eager plain loop ("alongside"): compare those two columns.',
        "",
        "| model | batch x crop | train eager | eager alongside | train compiled | compile s "
        "| inference eager | inference compiled |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        compiled_infer = r.get("compiled_infer_roofline_fraction")
        lines.append(
            f"| {r['model']} | {r['batch']} x {r['crop']} | {r['train_roofline_fraction']:.1%} "
            f"| {r['eager_alongside_roofline_fraction']:.1%} "
            f"| {r['compiled_train_roofline_fraction']:.1%} | {r['train_compile_s']:.0f} "
            f"| {r['eager_infer_roofline_fraction']:.1%} "
            f"| {f'{compiled_infer:.1%}' if compiled_infer else '-'} |"
        )
    return lines


def _compiled_train_lines(results: dict) -> list[str]:
    """One line per model timed with ``--train-compile``."""
    lines = []
    for r in results["details"]["models"]:
        if r.get("compiled_vs_eager") is None:
            continue
        even = r["compile_break_even_steps"]
        lines.append(
            f"\nTraining through `torch.compile` (`model.compile=true`), {r['model']}: "
            f"{r['compiled_train_img_s']:.2f} img/s, {r['compiled_vs_eager']:.2f}x eager; "
            f"compiling took {r['train_compile_s']:.0f} s, repaid after "
            + (f"{even:.0f} steps." if even is not None else "never (no faster).")
        )
    return lines


def _peer_settings(results: dict) -> dict[str, str]:
    """``{"peer": "4 x 480", ...}``: batch x crop of each torchvision-reference comparison."""
    details = results["details"]
    return {
        key: f"{details[key]['batch']} x {details[key]['crop']}"
        for key in ("peer", "peer_small_crop", "peer_compiled")
        if key in details
    }


def _targets_table(results: dict) -> list[str]:
    lines = ["| ratio | measured | target | met |", "|---|---:|---:|:-:|"]
    settings = _peer_settings(results)
    for key, label, target, higher in TARGETS:
        if key not in results:  # e.g. a results file written before the comparison existed
            continue
        label = label.format_map(settings)
        value = results[key]
        values = value.values() if isinstance(value, dict) else [value]
        met = min(values) >= target if higher else max(values) <= target
        shown = (
            ", ".join(f"{k} {v:.2f}" for k, v in value.items())
            if isinstance(value, dict)
            else f"{value:.2f}"
        )
        sign = ">=" if higher else "<="
        lines.append(f"| {label} | {shown} | {sign} {target} | {'yes' if met else 'no'} |")
    return lines


def markdown(results: dict) -> str:
    """The results of one run as Markdown: machine, per-model table, targets, the rest."""
    m, roof = results["machine"], results["roofline"]
    loader = results["details"]["loader_img_s"]
    head = [
        f"`{results.get('command', 'python bench/run.py')}` ({results['mode']} mode) on "
        f"{m['gpu'] or m['cpu']}, {m['cores']} cores, torch {m['torch']}. Matmul roofline "
        f"(n={roof['matmul_n']}): fp32 {roof['fp32_tflops'] * 1e3:.0f} GFLOP/s, bf16 "
        f"{roof['bf16_tflops'] * 1e3:.0f} GFLOP/s.",
        "",
    ]
    tail = [""] + [_peer_line(results["details"][key]) for key in _peer_settings(results)]
    tail += [
        "- Train pipeline img/s at 0/1/2 workers: "
        + " / ".join(f"{float(v):.1f}" for v in loader.values())
        + f" ({results['details']['loader_data']}).",
        f"- Peak RSS of a training process ({results['details']['peak_rss_setting']}): "
        f"{results['peak_rss_mb']:.0f} MiB.",
    ]
    skipped = results["details"].get("compile_skipped_for_time")
    if skipped:
        tail.append(f"- Not compiled for lack of time (`--budget-s`): {', '.join(skipped)}.")
    tables = _models_table(results) + _mfu_table(results) + [""] + _targets_table(results)
    return "\n".join(head + tables + tail + _entry_lines(results))


def _peer_line(peer: dict) -> str:
    """One comparison with torchvision's reference: s/step of both arms and the loss curves."""
    return (
        f"- torchvision `fcn_resnet50`, reference recipe (fp32, NCHW) vs seg defaults"
        f"{' with model.compile=true' if peer.get('compiled') else ''}, "
        f"{peer['batch']} x {peer['crop']}, {peer['steps']} steps (alternating): "
        f"{peer['peer_s_per_step']:.2f} vs {peer['seg_s_per_step']:.2f} s/step; mean loss over "
        f"the last steps differs by {peer['loss_gap']:+.3f} (noise {peer['loss_noise']:.3f}): "
        f"{'within' if peer['loss_within_noise'] else 'outside'} noise."
    )


def update_readme(readme: Path, table: str) -> None:
    """Replace the text between the bench markers of ``readme`` with ``table``."""
    text = readme.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{readme} has no {START} ... {END} section to update")
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.DOTALL)
    readme.write_text(pattern.sub(lambda _: f"{START}\n{table}\n{END}", text))


def _entry_lines(results: dict) -> list[str]:
    """Start-up, per-image cost and the compiled predict.py run (``bench/entrypoints.py``)."""
    e = results["details"].get("entry_points")
    if not e:
        return []
    p, v = e["predict"], e["evaluate"]
    lines = [
        f"- `predict.py` / `evaluate.py` ({e['model']}, {e['images']}, {e['n'][0]} and "
        f"{e['n'][1]} images): start-up {p['startup_s']:.1f} / {v['startup_s']:.1f} s, "
        f"{p['per_image_s']:.3f} / {v['per_image_s']:.3f} s per image."
    ]
    c = e.get("compiled")
    if c:
        lines.append(
            f"- `predict.py inference.compile=true` on {e['n'][1]} images: {c['cold_s']:.0f} s "
            f"with an empty inductor cache, {c['warm_s']:.0f} s with it filled, eager "
            f"{c['eager_s']:.0f} s; its masks agree with eager's on {c['agreement']:.5f} of the "
            f"pixels ({c['pixels_differing']} differ)."
        )
    return lines

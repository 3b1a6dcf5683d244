"""bench/run.py: the --smoke run writes every results.json key and a Markdown table.

No timing is asserted (the machine is shared and noisy); only that each measurement ran and
produced a finite, positive figure, and that --readme rewrites exactly the marked section.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO

SCRIPT = REPO / "bench" / "run.py"
PER_MODEL = ("train_vs_plain", "train_roofline_fraction", "infer_roofline_fraction")
SCALARS = (
    "vs_torchvision_reference",
    "vs_torchvision_reference_small_crop",
    "loader_vs_model",
    "predict_vs_model",
    "peak_rss_mb",
    "evaluate_vs_predict",
)


def run_smoke(tmp_path: Path, *models: str) -> dict:
    out = tmp_path / "results.json"
    cmd = [sys.executable, str(SCRIPT), "--smoke", "--out", str(out), "--models", *models]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| ratio | measured | target | met |" in proc.stdout
    return json.loads(out.read_text())


def check_results(results: dict, models: tuple[str, ...]) -> None:
    for key in PER_MODEL:
        assert set(results[key]) == set(models), key
        assert all(math.isfinite(v) and v > 0 for v in results[key].values()), key
    for key in SCALARS:
        assert math.isfinite(results[key]) and results[key] > 0, key
    assert {"cpu", "cores", "torch"} <= set(results["machine"])
    assert all(math.isfinite(v) for v in results["startup_s"].values())
    for key in ("peer", "peer_small_crop"):
        peer = results["details"][key]
        assert len(peer["peer_loss"]) == len(peer["seg_loss"]) == peer["steps"]
        # Both arms start from the same init on 21 classes: the first loss is near ln(21) (+ aux).
        assert all(1.0 < losses[0] < 10.0 for losses in (peer["peer_loss"], peer["seg_loss"]))


def test_smoke_run_writes_every_key(tmp_path: Path) -> None:
    results = run_smoke(tmp_path, "unet_resnet34")
    check_results(results, ("unet_resnet34",))
    assert (tmp_path / "results.md").read_text().startswith("`python bench/run.py --smoke")


@pytest.mark.slow
def test_smoke_run_all_models(tmp_path: Path) -> None:
    models = ("unet_resnet34", "fcn8s", "dilation_context")
    check_results(run_smoke(tmp_path, *models), models)


def test_readme_section_is_replaced(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "bench"))
    try:
        from report import END, START, update_readme
    finally:
        sys.path.remove(str(REPO / "bench"))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nold table\n{END}\noutro\n")
    update_readme(readme, "| new |")
    assert readme.read_text() == f"intro\n{START}\n| new |\n{END}\noutro\n"
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="bench:start"):
        update_readme(readme, "| new |")


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU it runs the whole GPU harness")
def test_gpu_script_fails_fast_without_cuda() -> None:
    env = {k: v for k, v in os.environ.items() if k != "SEG_GPU_DRY"} | {"PYTHON": sys.executable}
    cmd = ["bash", str(REPO / "bench" / "gpu.sh")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "no CUDA device" in proc.stderr
    assert proc.stdout == ""


@pytest.mark.slow  # compiles seg's training twice: minutes on 2 cores
def test_train_compile_adds_the_compiled_peer(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    cmd = [sys.executable, str(SCRIPT), "--smoke", "--train-compile", "--out", str(out)]
    proc = subprocess.run(
        [*cmd, "--models", "unet_resnet34"], cwd=REPO, capture_output=True, text=True, timeout=1800
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert math.isfinite(results["vs_torchvision_reference_compiled"])
    peer = results["details"]["peer_compiled"]
    assert peer["compiled"] and len(peer["seg_loss"]) == peer["steps"]
    assert "seg compiled (auto at its length)" in (tmp_path / "results.md").read_text()
    assert "vs seg defaults with model.compile=true" in (tmp_path / "results.md").read_text()


def test_peer_profile_prints_the_groups_and_what_bounds_the_ratio() -> None:
    """``bench/peer_profile.py`` as bench/README runs it, at a tiny size: both arms profiled,
    every operator in a group, and each arm's convolution rate against its matmul rate."""
    cmd = [sys.executable, "bench/peer_profile.py", "--crop", "64", "--batch", "1"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| convolution |")]
    assert len(rows) == 1
    ref_s, seg_s = (float(rows[0].split("|")[i]) for i in (2, 4))
    assert ref_s > 0 and seg_s > 0
    rates = [line for line in proc.stdout.splitlines() if "convolutions at" in line]
    assert [line.split(":")[0] for line in rates] == ["- reference", "- seg"]
    assert "/ fp32 matmul rate:" in proc.stdout

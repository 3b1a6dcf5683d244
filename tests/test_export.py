"""Export works for every model family, with dynamic H and W, and parity against PyTorch."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import compose, fake_checkpoint

from seg.export import export


def run_export(ckpt: Path, fmt: str, out: Path, *overrides: str) -> dict:
    cfg = compose(
        "export",
        f"ckpt={ckpt}",
        f"format={fmt}",
        f"output={out}",
        "example_size=[64,96]",
        *(overrides or ["parity.sizes=[[1,45,67],[2,70,33]]"]),
    )
    return export(cfg)


@pytest.mark.parametrize(
    ("model", "outputs"), [("unet_mobilenetv2", {"out"}), ("localizer", {"cls", "box"})]
)
def test_onnx_export_small_models(model: str, outputs: set[str], tmp_path: Path) -> None:
    """At the default parity sizes, tiny (<= 16 px: the U-Net's reflect padding falls back to
    replication inside the graph) and non-square ones included, on every output."""
    sizes = compose("export", "ckpt=x").parity.sizes
    assert [1, 16, 16] in sizes and [1, 1, 1] in sizes and [1, 7, 45] in sizes
    ckpt = fake_checkpoint(model, tmp_path / "m.ckpt")
    report = run_export(ckpt, "onnx", tmp_path / "m.onnx", "parity.max_abs=1.0e-3")
    assert report["passed"], report
    assert set(report["per_output"]) >= outputs


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "fmt"),
    [
        ("fcn8s", "torchscript"),
        ("fcn8s_resnet50", "onnx"),
        ("unet", "torchscript"),
        ("unet_resnet34", "onnx"),
        ("dilation_context", "torchscript"),
    ],
)
def test_export_every_family(model: str, fmt: str, tmp_path: Path) -> None:
    report = run_export(fake_checkpoint(model, tmp_path / "m.ckpt"), fmt, tmp_path / f"m.{fmt}")
    assert report["passed"], report

"""Export works for every model family, with dynamic H and W, and parity against PyTorch."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import compose, fake_checkpoint

from seg.export import export


def run_export(ckpt: Path, fmt: str, out: Path) -> dict:
    cfg = compose(
        "export",
        f"ckpt={ckpt}",
        f"format={fmt}",
        f"output={out}",
        "example_size=[64,96]",
        "parity.sizes=[[1,45,67],[2,70,33]]",
    )
    return export(cfg)


@pytest.mark.parametrize("model", ["unet_mobilenetv2", "localizer"])
def test_onnx_export_small_models(model: str, tmp_path: Path) -> None:
    report = run_export(fake_checkpoint(model, tmp_path / "m.ckpt"), "onnx", tmp_path / "m.onnx")
    assert report["passed"], report


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

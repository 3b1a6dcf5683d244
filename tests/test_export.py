"""Export works for every model family, with dynamic H and W, and parity against PyTorch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

import seg  # noqa: F401  (resolvers)
from seg.export import export

REPO = Path(__file__).resolve().parents[1]


def fake_checkpoint(model: str, path: Path) -> Path:
    """A train.py-style checkpoint (config + random weights) for ``model=<model>``."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            config_name="train", overrides=[f"model={model}", f"paths.output_dir={path.parent}"]
        )
    torch.manual_seed(0)
    net = instantiate(cfg.model.net)
    config = OmegaConf.to_container(cfg, resolve=True)
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    torch.save({"seg_config": config, "state_dict": state}, path)
    return path


def run_export(ckpt: Path, fmt: str, out: Path) -> dict:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            config_name="export",
            overrides=[
                f"ckpt={ckpt}",
                f"format={fmt}",
                f"output={out}",
                "example_size=[64,96]",
                "parity.sizes=[[1,45,67],[2,70,33]]",
            ],
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

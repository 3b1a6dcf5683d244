"""Every experiment composes, and runs one fast_dev_run step on the generated sample.

The experiments' data (VOC, SBD) and ImageNet weights are not available offline, so the
fast_dev_run swaps in the sample and random initialisation; model, optimizer, scheduler, loss
and trainer settings stay the experiment's own.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import REPO, compose
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from seg.train import build_module, train

EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))

#: Per experiment: overrides that make it runnable offline in a few seconds.
OFFLINE = {
    "fcn8s_voc": ["model.net.encoder_weights=null"],
    "dilation_frontend_voc": ["model.net.encoder_weights=null", "augment.crop_size=112"],
    "dilation_voc": ["augment.crop_size=112"],
    "localization_voc": [
        "model.net.encoder.weights=null",
        "data=sample_loc",
        "augment.crop_size=64",
    ],
    "unet_resnet34_voc_aug": ["model.net.encoder.weights=null"],
}


def compose_train(overrides: list[str]) -> DictConfig:
    return compose("train", *overrides)


def test_every_experiment_is_tested() -> None:
    assert set(EXPERIMENTS) >= {
        "quickstart",
        "fcn8s_voc",
        "unet_voc",
        "dilation_voc",
        "localization_voc",
        "unet_resnet34_voc_aug",
    }


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes(name: str, tmp_path: Path) -> None:
    extra = ["frontend_ckpt=stage1.ckpt"] if name == "dilation_voc" else []
    cfg = compose_train([f"experiment={name}", f"paths.output_dir={tmp_path}", *extra])
    OmegaConf.resolve(cfg)  # every interpolation resolves
    assert cfg.task_name == name
    assert "Module" in cfg.model._target_ and "_target_" in cfg.model.net
    assert cfg.optimizer._partial_


def frontend_checkpoint(path: Path, cfg: DictConfig) -> str:
    """A stage-1 checkpoint for ``dilation_voc`` (random front-end weights)."""
    frontend = instantiate(cfg.model.net.frontend)
    state = {f"net.{k}": v for k, v in frontend.state_dict().items()}
    torch.save({"state_dict": state, "seg_config": {}}, path)  # as train.py writes it
    return str(path)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_fast_dev_run(name: str, tmp_path: Path, sample_root: Path) -> None:
    overrides = [
        f"experiment={name}",
        f"paths.output_dir={tmp_path}",
        "data=sample",
        f"data.root={sample_root}",
        "data.batch_size=2",
        "data.num_workers=0",
        "augment.crop_size=64",
        "trainer.fast_dev_run=true",
        "trainer.accelerator=cpu",
        "logger=csv",
        *OFFLINE.get(name, []),
    ]
    if name == "dilation_voc":
        base = compose_train([*overrides, "frontend_ckpt=x"])
        overrides.append(f"frontend_ckpt={frontend_checkpoint(tmp_path / 'stage1.ckpt', base)}")
    cfg = compose_train(overrides)
    module = build_module(cfg)
    assert isinstance(module.net, torch.nn.Module)
    metrics = train(cfg)
    assert metrics["global_step"] == 1

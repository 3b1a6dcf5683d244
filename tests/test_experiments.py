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
    "fcn32s_voc": ["model.net.encoder_weights=null"],
    "fcn8s_atonce_voc": ["model.net.encoder_weights=null"],
    "dilation_frontend_voc": ["model.net.encoder_weights=null", "augment.crop_size=112"],
    "dilation_voc": ["augment.crop_size=112"],
    "localization_voc": [
        "model.net.encoder.weights=null",
        "data=sample_loc",
        "augment.crop_size=64",
    ],
    "unet_resnet34_voc_aug": ["model.net.encoder.weights=null"],
    "localization_quickstart": ["data=sample_loc"],
    "finetune_voc_mini": ["model.net.encoder.weights=null", "data.train_split=train"],
}

#: Staged experiments: the key of the checkpoint they start from, and the experiment whose net
#: writes it.
STAGES = {
    "fcn16s_voc": ("init_ckpt", "fcn32s_voc"),
    "fcn8s_voc": ("init_ckpt", "fcn16s_voc"),
    "dilation_voc": ("frontend_ckpt", "dilation_frontend_voc"),
}


def placeholder(name: str) -> list[str]:
    """The checkpoint override a staged experiment needs to compose (not to run)."""
    return [f"{STAGES[name][0]}=stage.ckpt"] if name in STAGES else []


def compose_train(overrides: list[str]) -> DictConfig:
    return compose("train", *overrides)


def test_every_experiment_is_tested() -> None:
    assert set(EXPERIMENTS) >= {
        "quickstart",
        "fcn32s_voc",
        "fcn16s_voc",
        "fcn8s_voc",
        "fcn8s_atonce_voc",
        "unet_voc",
        "dilation_frontend_voc",
        "dilation_voc",
        "localization_voc",
        "unet_resnet34_voc_aug",
    }


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes(name: str, tmp_path: Path) -> None:
    cfg = compose_train([f"experiment={name}", f"paths.output_dir={tmp_path}", *placeholder(name)])
    OmegaConf.resolve(cfg)  # every interpolation resolves
    assert cfg.task_name == name
    assert "Module" in cfg.model._target_ and "_target_" in cfg.model.net
    assert cfg.optimizer._partial_


def stage_checkpoint(path: Path, name: str) -> str:
    """The checkpoint ``name`` starts from: random weights of its previous stage's net, saved as
    train.py saves them."""
    previous = STAGES[name][1]
    cfg = compose_train(
        [f"experiment={previous}", *OFFLINE.get(previous, []), *placeholder(previous)]
    )
    state = {f"net.{k}": v for k, v in instantiate(cfg.model.net).state_dict().items()}
    torch.save({"state_dict": state, "seg_config": {}}, path)
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
    if name in STAGES:
        path = stage_checkpoint(tmp_path / "previous_stage.ckpt", name)
        overrides.append(f"{STAGES[name][0]}={path}")
    cfg = compose_train(overrides)
    module = build_module(cfg)
    assert isinstance(module.net, torch.nn.Module)
    metrics = train(cfg)
    assert metrics["global_step"] == 1

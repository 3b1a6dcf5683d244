"""``data.batch_size`` is the batch of one optimizer step, whatever the number of processes
(issue 12): how it splits, how it fails, and that 2 gloo processes with gradient accumulation
make exactly the first update of one process on the same global batch."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import compose
from hydra.utils import instantiate
from test_ddp import run_job
from torch.utils.data import RandomSampler

from seg.data.batching import WholeSteps, plan_batches
from seg.data.datamodule import VOCDataModule
from seg.data.sample import make_sample
from seg.errors import ConfigError
from seg.train import train
from seg.validate import validate_config


@pytest.mark.parametrize(
    ("batch", "world", "micro", "per_process", "accumulate"),
    [
        (20, 1, None, 20, 1),
        (20, 4, None, 5, 1),
        (20, 2, 5, 10, 2),
        (60, 4, 5, 15, 3),
        (1, 1, 1, 1, 1),
    ],
)
def test_plan(batch: int, world: int, micro: int | None, per_process: int, accumulate: int) -> None:
    plan = plan_batches(batch, world, micro)
    assert (plan.per_process, plan.accumulate) == (per_process, accumulate)
    assert plan.micro_batch * plan.accumulate * plan.world_size == plan.global_batch == batch


@pytest.mark.parametrize(
    ("batch", "world", "micro", "names"),
    [
        (14, 4, None, ["data.batch_size=14", "4 processes"]),
        (1, 2, None, ["data.batch_size=1", "2 processes"]),
        (20, 2, 3, ["data.micro_batch_size=3", "10 images", "data.batch_size=20"]),
    ],
)
def test_plan_refuses_what_does_not_divide(batch, world, micro, names) -> None:
    with pytest.raises(ConfigError) as info:
        plan_batches(batch, world, micro)
    assert "\n" not in str(info.value) and all(n in str(info.value) for n in names)


def test_config_check_names_both_before_anything_runs() -> None:
    cfg = compose("train", "experiment=dilation_frontend_voc", "trainer=ddp", "trainer.devices=4")
    with pytest.raises(ConfigError, match=r"data.batch_size=14 .* 4 processes"):
        validate_config(cfg)
    validate_config(compose("train", "trainer=ddp", "trainer.devices=4", "data.batch_size=16"))


def test_whole_steps_drops_the_incomplete_last_step() -> None:
    sampler = WholeSteps(RandomSampler(range(11)), step=4)
    assert len(sampler) == len(list(sampler)) == 8 and len(set(sampler)) == 8


def test_datamodule_splits_the_batch_and_sets_the_accumulation(sample_root: Path) -> None:
    dm = VOCDataModule(sample_root, batch_size=8, micro_batch_size=2, num_workers=0)
    dm.trainer = SimpleNamespace(world_size=2, global_rank=0, accumulate_grad_batches=1)
    dm.setup("fit")
    assert dm.trainer.accumulate_grad_batches == 2
    loader = dm.train_dataloader()
    assert loader.batch_size == 2 and len(loader) == 12  # 24 images of this rank, 6 steps x 2
    dm.trainer.accumulate_grad_batches = 3
    with pytest.raises(ConfigError, match="trainer.accumulate_grad_batches=3"):
        dm.setup("fit")


def one_step_args(root: Path) -> list[str]:
    """One SGD step on the whole 4-image set, deterministic inputs, a tiny U-Net without
    BatchNorm (per-process batch statistics would differ by design)."""
    return [
        "model=unet",
        "model.net.base_channels=4",
        "model.net.depth=2",
        "model.net.batch_norm=false",
        "model.loss_reduction=sum",  # exact under any split (see SegmentationModule)
        "data=sample",
        f"data.root={root}",
        "data.generate_sample=null",
        "data.batch_size=4",
        "data.num_workers=0",
        "augment=sample",
        "augment.train=${augment.eval}",  # no randomness: every process sees the same pixels
        "optimizer=sgd",
        "optimizer.lr=0.5",
        "optimizer.momentum=0",
        "optimizer.weight_decay=0",
        "scheduler=none",
        "trainer.max_epochs=-1",
        "trainer.max_steps=1",
        "trainer.limit_val_batches=0",
        "trainer.precision=64-true",  # float64: sums in another order agree far below 1e-9
        "trainer.accelerator=cpu",
        "validate_best=false",
        "callbacks.progress_bar=null",
        "logger=csv",
    ]


def net_state(run: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return {k: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}


def test_two_processes_with_accumulation_make_the_single_process_update(tmp_path: Path) -> None:
    """2 gloo processes x 2 accumulated micro-batches of 1 = 1 process x 1 batch of 4."""
    root = make_sample(tmp_path / "data", n_train=4, n_val=2, min_size=48, max_size=48)
    single_run = tmp_path / "single"
    single = train(compose("train", *one_step_args(root), f"paths.output_dir={single_run}"))
    ddp_run = tmp_path / "ddp"
    ddp_args = ["trainer=ddp", "trainer.devices=2", "data.micro_batch_size=1"]
    code, out, _ = run_job(
        ["train.py", *one_step_args(root), *ddp_args, f"hydra.run.dir={ddp_run}"], limit=300
    )
    assert code == 0, out[-3000:]
    ddp = json.loads((ddp_run / "metrics.json").read_text())
    assert single["optimizer_steps"] == ddp["optimizer_steps"] == 1
    assert single["global_batch_size"] == ddp["global_batch_size"] == 4
    assert (ddp["world_size"], ddp["micro_batch_size"], ddp["accumulate_grad_batches"]) == (2, 1, 2)
    assert (single["world_size"], single["micro_batch_size"]) == (1, 4)
    a, b = net_state(single_run), net_state(ddp_run)
    torch.manual_seed(42)  # the run's seed: its initial weights, to compare the updates
    initial = compose("train", *one_step_args(root), "paths.output_dir=unused")
    start = {f"net.{k}": v for k, v in instantiate(initial.model.net).state_dict().items()}
    step_a = {k: a[k] - start[k] for k in a}  # the update of one process on the 4 images
    largest = max(v.abs().max().item() for v in step_a.values())
    assert largest > 1e-2
    for key in a:  # float64 sums in another order: equal to 1e-9 of the largest update
        torch.testing.assert_close(b[key] - start[key], step_a[key], rtol=1e-9, atol=1e-9 * largest)

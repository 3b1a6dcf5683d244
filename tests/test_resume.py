"""``ckpt_path=`` resumes exactly: weights, optimizer, scheduler, epoch and step are restored."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

import seg  # noqa: F401  (resolvers)
from seg.train import train

REPO = Path(__file__).resolve().parents[1]


def quick_cfg(out: Path, sample_root: Path, *extra: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(
            config_name="train",
            overrides=[
                "experiment=quickstart",
                f"paths.output_dir={out}",
                f"data.root={sample_root}",
                "data.batch_size=8",
                "augment.crop_size=64",
                "trainer.accelerator=cpu",
                "trainer.check_val_every_n_epoch=1",
                "trainer.limit_val_batches=2",
                "callbacks.progress_bar=null",
                "logger=csv",
                *extra,
            ],
        )


def test_resume_restores_training_state(tmp_path: Path, sample_root: Path) -> None:
    first = train(quick_cfg(tmp_path / "a", sample_root, "trainer.max_epochs=1"))
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved["epoch"] == 0 and saved["global_step"] == first["global_step"] == 6
    assert saved["optimizer_states"][0]["state"]  # AdamW moments are in the checkpoint
    assert saved["lr_schedulers"][0]["last_epoch"] == 6

    resumed = train(
        quick_cfg(tmp_path / "b", sample_root, "trainer.max_epochs=2", f"ckpt_path={last}")
    )
    assert resumed["epochs"] == 2 and resumed["global_step"] == 12
    after = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)
    assert after["lr_schedulers"][0]["last_epoch"] == 12  # the schedule continued, not restarted
    assert after["seg_config"]["ckpt_path"] == str(last)

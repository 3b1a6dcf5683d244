"""``ckpt_path=`` resumes exactly: weights, optimizer, scheduler, epoch and step are restored; a
longer resumed run gets a schedule for its new length; the CSV log of the first part is kept; and
``last.ckpt`` exists after any run."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from conftest import compose

from seg.train import train


def quick_cfg(out: Path, sample_root: Path, *extra: str):
    return compose(
        "train",
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
    )


def learning_rates(run: Path) -> dict[int, float]:
    """step -> head learning rate, from the run's CSV log (LearningRateMonitor)."""
    with open(run / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    key = next(k for k in rows[0] if k.startswith("lr-") and k.endswith("head"))
    return {int(r["step"]): float(r[key]) for r in rows if r.get(key)}


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


def test_longer_resumed_run_gets_the_schedule_of_its_new_length(
    tmp_path: Path, sample_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """1 epoch (6 steps), then resumed in place to 2 epochs: without the rebuild, steps 6-11
    would train at the poly schedule's final learning rate, 0."""
    run, every_step = tmp_path / "run", "trainer.log_every_n_steps=1"
    train(quick_cfg(run, sample_root, "trainer.max_epochs=1", every_step))
    last = run / "checkpoints" / "last.ckpt"
    train(quick_cfg(run, sample_root, "trainer.max_epochs=2", every_step, f"ckpt_path={last}"))
    assert "schedule was rebuilt" in caplog.text
    fresh = tmp_path / "fresh"
    train(quick_cfg(fresh, sample_root, "trainer.max_epochs=2", every_step))
    resumed, reference = learning_rates(run), learning_rates(fresh)
    assert sorted(resumed) == sorted(reference) == list(range(12))  # the first part's log kept
    assert all(resumed[step] > 0 for step in range(6, 12))
    assert [resumed[s] for s in range(6, 12)] == pytest.approx([reference[s] for s in range(6, 12)])


def test_last_checkpoint_exists_when_validation_never_ran(tmp_path: Path, sample_root: Path):
    metrics = train(
        quick_cfg(
            tmp_path, sample_root, "trainer.max_epochs=1", "trainer.check_val_every_n_epoch=5"
        )
    )
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert metrics["global_step"] == 6

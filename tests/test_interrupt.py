"""Interruption and resume (issue #6): SIGTERM / SIGINT in the middle of an epoch, exact resume,
atomic checkpoint writes, and the non-finite loss guard.

The signal tests run ``python train.py`` as a user would, on the quickstart sample (2 epochs of 2
batches, crop 64), with ``tests.faults.PauseAt`` holding the run before step 3 (epoch 1, batch 1)
until the test has sent the signal. One thread per process keeps runs bit-identical.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import REPO, compose
from hydra.core.override_parser.overrides_parser import OverridesParser
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import seg.checkpoint_io  # also registers the resolvers (import seg)
from seg.checkpoint_io import AtomicCheckpointIO
from seg.modules.segmentation import SegmentationModule
from seg.resilience import NonFiniteLossError, hydra_value
from seg.train import train

ENV = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


def overrides(sample_root: Path, *extra: str) -> list[str]:
    """The quickstart, small and deterministic: 2 epochs x 2 batches of 8 crops of 64 px."""
    return [
        "experiment=quickstart",
        f"data.root={sample_root}",
        "augment.crop_size=64",
        "trainer.max_epochs=2",
        "trainer.check_val_every_n_epoch=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=2",
        "trainer.deterministic=true",
        "trainer.accelerator=cpu",
        "trainer.precision=32-true",
        "callbacks.progress_bar=null",
        "logger=csv",
        "+trainer.enable_progress_bar=false",
        *extra,
    ]


@dataclass
class Interrupted:
    returncode: int
    stderr: str
    run_dir: Path


def _ctrl_c_as_in_a_terminal() -> None:
    """In the child, before exec: SIGINT's default action, whatever the test run inherited.

    A shell starts a background job (``pytest ... &`` in a script) with SIGINT ignored, the
    child inherits that, and Python then installs no KeyboardInterrupt handler: the SIGINT run
    never stopped (PauseAt's TimeoutError, exit 1). Python sets its handler at start-up only
    when SIGINT is not ignored.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_paused(sample_root: Path, base: Path, name: str) -> tuple[subprocess.Popen, Path]:
    """Start ``train.py`` held before step 3; return the process and its pause flag file."""
    flag = base / f"{name}.flag"
    pause = ["+callbacks.pause._target_=tests.faults.PauseAt", "+callbacks.pause.step=3"]
    args = overrides(sample_root, *pause, f"+callbacks.pause.flag={flag}")
    with open(base / f"{name}.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "train.py", *args, f"hydra.run.dir={base / name}"],
            cwd=REPO,
            env=ENV,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_ctrl_c_as_in_a_terminal,
        )
    return proc, flag


def signal_when_paused(runs: dict, timeout: float = 240) -> None:
    """Send each run its signal as soon as it waits at the pause, then wait for all to exit.

    ``runs`` maps a signal to its ``(process, flag)``; each is served as soon as it pauses, not
    after the other one has exited (PauseAt gives up after 120 s).
    """
    deadline = time.monotonic() + timeout
    waiting = dict(runs)
    while waiting:
        for signum, (proc, flag) in list(waiting.items()):
            assert proc.poll() is None, f"train.py exited early ({proc.returncode})"
            if flag.exists():
                proc.send_signal(signum)
                del waiting[signum]
        assert time.monotonic() < deadline, "train.py never reached step 3"
        time.sleep(0.2)
    for proc, _ in runs.values():
        proc.wait(timeout=120)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory, sample_root: Path) -> dict:
    """One run stopped by SIGTERM and one by SIGINT, both in the middle of epoch 1."""
    base = tmp_path_factory.mktemp("interrupted")
    runs = {s: start_paused(sample_root, base, s.name) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        signal_when_paused(runs)
    finally:
        for proc, _ in runs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    return {
        s: Interrupted(proc.returncode, (base / f"{s.name}.log").read_text(), base / s.name)
        for s, (proc, _) in runs.items()
    }


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_saves_a_resumable_checkpoint_and_exits_143(interrupted: dict) -> None:
    run = interrupted[signal.SIGTERM]
    assert run.returncode == 143, run.stderr[-3000:]
    ckpts = run.run_dir / "checkpoints"
    assert (ckpts / "interrupted.ckpt").is_file() and not (ckpts / "epoch_start.ckpt").exists()
    state = load(ckpts / "interrupted.ckpt")
    assert state["global_step"] == 2  # the start of epoch 1: its steps 2 and 3 are redone
    assert f"ckpt_path={ckpts / 'interrupted.ckpt'}" in run.stderr
    assert "Traceback" not in run.stderr


def test_sigint_saves_the_same_checkpoint_and_exits_130(interrupted: dict) -> None:
    term, intr = interrupted[signal.SIGTERM], interrupted[signal.SIGINT]
    assert intr.returncode == 130, intr.stderr[-3000:]
    assert "Resume with:" in intr.stderr
    a = load(term.run_dir / "checkpoints" / "interrupted.ckpt")
    b = load(intr.run_dir / "checkpoints" / "interrupted.ckpt")
    assert same_tensors(a["state_dict"], b["state_dict"])
    moments = [c["optimizer_states"][0]["state"][0]["exp_avg"] for c in (a, b)]
    assert torch.equal(*moments)


def resume_command(stderr: str) -> list[str]:
    """The command printed after "Resume with:", run with this interpreter."""
    line = stderr.split("Resume with:\n", 1)[1].splitlines()[0]
    command = shlex.split(line)
    assert command[:2] == ["python", "train.py"]
    return [sys.executable, *command[1:]]


@pytest.fixture
def one_thread():
    """Run in-process training like the subprocesses: one thread, then restore the defaults."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(False)


def test_resume_ends_with_the_metrics_of_an_uninterrupted_run(
    interrupted: dict, sample_root: Path, tmp_path: Path, one_thread: None
) -> None:
    run = interrupted[signal.SIGTERM]
    resumed = subprocess.run(
        resume_command(run.stderr), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    cfg = compose("train", *overrides(sample_root, f"paths.output_dir={tmp_path}"))
    reference = train(cfg)

    after = json.loads((run.run_dir / "metrics.json").read_text())
    assert after["global_step"] == reference["global_step"] == 4
    for key in set(reference) - {"wall_time_s", "best_checkpoint"}:
        assert after[key] == reference[key], key
    assert Path(after["best_checkpoint"]).name == Path(reference["best_checkpoint"]).name
    ours = load(tmp_path / "checkpoints" / "last.ckpt")
    theirs = load(run.run_dir / "checkpoints" / "last.ckpt")
    assert ours["global_step"] == theirs["global_step"] == 4  # last.ckpt follows every epoch
    assert same_tensors(ours["state_dict"], theirs["state_dict"])


def test_atomic_checkpoint_io_keeps_the_old_file_when_a_write_fails(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"w": torch.ones(3)}, path)

    def half_then_fail(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr("seg.checkpoint_io.torch.save", half_then_fail)
    with pytest.raises(OSError, match="No space"):
        io.save_checkpoint({"w": torch.zeros(3)}, path)
    assert torch.equal(io.load_checkpoint(path)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left


def _save_and_stall(path: Path, flag: Path) -> None:
    """In a forked child: start saving a new checkpoint, stall half-way, wait to be killed."""

    def stalled_save(obj, f):
        f.write(b"PK\x03\x04 the first half of a new checkpoint")
        f.flush()
        flag.touch()
        time.sleep(120)

    seg.checkpoint_io.torch.save = stalled_save  # no torch work in the forked child
    AtomicCheckpointIO().save_checkpoint({"new": True}, path)


def test_sigkill_during_a_save_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    path, flag = tmp_path / "last.ckpt", tmp_path / "writing"
    AtomicCheckpointIO().save_checkpoint({"w": torch.ones(1000)}, path)
    child = multiprocessing.get_context("fork").Process(target=_save_and_stall, args=(path, flag))
    child.start()
    try:
        deadline = time.monotonic() + 60
        while not flag.exists():
            assert child.is_alive() and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        child.kill()
        child.join()
    assert child.exitcode == -signal.SIGKILL
    assert torch.equal(load(path)["w"], torch.ones(1000))
    assert len(list(tmp_path.glob(".last.ckpt.*.tmp"))) == 1  # the half-written new one


def test_trainer_presets_write_checkpoints_atomically() -> None:
    from hydra.utils import instantiate

    for preset in ("default", "cpu", "ddp"):
        cfg = compose("train", f"trainer={preset}", "trainer.accelerator=cpu")
        trainer = instantiate(cfg.trainer, logger=False)
        assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO), preset


def test_non_finite_loss_stops_before_the_step_and_names_the_files(
    sample_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    seen: list[tuple[SegmentationModule, list[str]]] = []
    training_step = SegmentationModule.training_step

    def nan_at_step_3(self, batch, batch_idx):
        loss = training_step(self, batch, batch_idx)
        if self.trainer.global_step == 3:
            seen.append((self, list(batch["id"])))
            return loss * float("nan")
        return loss

    monkeypatch.setattr(SegmentationModule, "training_step", nan_at_step_3)
    cfg = compose("train", *overrides(sample_root, f"paths.output_dir={tmp_path}"))
    with pytest.raises(NonFiniteLossError) as info:
        train(cfg)
    message = str(info.value)
    assert "step 3 (epoch 1, batch 1)" in message
    (module, ids), images = seen[0], sample_root / "VOC2012" / "JPEGImages"
    assert len(seen) == 1 and all(str(images / f"{i}.jpg") in message for i in ids)
    assert all(torch.isfinite(p).all() for p in module.parameters())  # no step was taken
    for name in ("last", "epoch_start"):  # after epoch 0 / at the start of epoch 1: both kept
        state = load(tmp_path / "checkpoints" / f"{name}.ckpt")
        assert state["global_step"] == 2, name
        floats = [v for v in state["state_dict"].values() if v.is_floating_point()]
        assert all(torch.isfinite(v).all() for v in floats), name


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40))
def test_resume_command_paths_survive_hydra_parsing(path: str) -> None:
    assume("${" not in path)  # an interpolation, not a path
    override = OverridesParser.create().parse_override(f"ckpt_path={hydra_value(path)}")
    assert override.value() == path

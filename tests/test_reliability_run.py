r"""Reliability, round two (issue #16): nothing is overwritten by a failure, export works at every
size, and every failure of training, export and checkpoints is one line with its exit status.

Training runs are in process (``seg.train.train`` through :func:`seg.cli.run`, as ``train.py``
does) on the generated sample with a MobileNetV2 U-Net, 32-px crops and two steps.

| case | what the user now sees | test |
|---|---|---|
| `train.py ckpt_path=` missing / a folder / truncated / a plain state dict / another model's checkpoint | exit 2 before anything is written: `error: <path>: not found` / `is a folder, not a file` / `not a readable checkpoint (...)` / `ckpt_path=<path>: not a training checkpoint (...); resume from a run's checkpoints/last.ckpt` / `ckpt_path=<path>: weights do not match SegmentationModule: N missing keys [...]` | `test_bad_resume_checkpoint_is_one_line_and_writes_nothing[...]` |
| a failed resume into a finished run folder | its `config_resolved.yaml` and `.hydra/*.yaml` are untouched (train.py writes them itself once the resume has loaded; `hydra.output_subdir: null`) | `test_failed_resume_keeps_the_run_folder_config` |
| a run that starts | writes `config_resolved.yaml` and `.hydra/{config,hydra,overrides}.yaml` as Hydra did | `test_run_config_files_are_written_as_hydra_did` |
| a full disk while training | exit 1, `error: <file>: No space left on device (free some disk space; then resume with: ... ckpt_path=.../interrupted.ckpt)` | `test_full_disk_while_training_is_one_line_with_the_resume_command` |
| a DataLoader worker killed mid-epoch | exit 1, `error: DataLoader worker (pid N) is killed by signal: Killed (often out of memory: ...; then resume with: ...)` | `test_killed_loader_worker_is_one_line_with_the_resume_command` |
| a full disk anywhere else (evaluate, export) | exit 1, `error: <file>: No space left on device (free some disk space)` | `test_full_disk_is_one_line` |
| weights that disagree with the checkpoint's config (predict, evaluate, export) | exit 2, `error: <ckpt>: weights do not fit Conv2d: size mismatch ...` / `its config cannot build the network (...)` | `test_weights_that_disagree_with_the_config_are_one_line[...]` |
| export whose parity fails, over a good file | exit 1, `error: ...: max \|output diff\| = ... -> FAIL; nothing was written`; the good file is untouched, no temporary file left | `test_failed_parity_keeps_the_previous_export` |
| export into a missing folder; `output=` a folder | the folder is created before any work / exit 2 before any work | `test_export_output_folders` |
| ONNX export of the U-Net family (reflect padding) and of a dict-output localizer | parity passes at every default size, tiny (<= 16 px) and non-square included, on every output | `test_export.py::test_onnx_export_small_models[...]` |
| the exported model fails at a size | exit 1, `error: the exported model fails on a 1x3x7x7 input: ...`, nothing written | `test_parity_names_the_size_the_export_fails_at` |
| a hand-placed archive with a wrong md5 | renamed to `<file>.md5-<md5>` with a message, deleted only once a download replaced it | `test_download.py::test_existing_file_with_wrong_md5_is_replaced`, `test_existing_file_with_wrong_md5_is_kept_offline` |
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import CONF, compose, fake_checkpoint, run_entry
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from PIL import Image
from test_bad_input import colour_ckpt  # noqa: F401
from test_resume import quick_cfg as resume_cfg

from seg import evaluate as evaluate_mod
from seg import export as export_mod
from seg import predict as predict_mod
from seg import train as train_mod
from seg.checkpoint import AtomicCheckpointIO
from seg.cli import run
from seg.data.voc import VOCSegmentation
from seg.errors import ExportError
from seg.utils import atomic_open, write_run_config


def quick_cfg(run_dir: Path, sample_root: Path, *extra: str):
    """``test_resume``'s quickstart config cut to two steps of batch 2, 32-px crops, one
    validation batch."""
    small = ("data.batch_size=2", "augment.crop_size=32", "trainer.limit_val_batches=1")
    steps = ("trainer.max_epochs=1", "trainer.limit_train_batches=2", "logger=none")
    return resume_cfg(run_dir, sample_root, *small, *steps, "callbacks.lr_monitor=null", *extra)


def exit_and_err(task, cfg, capsys) -> tuple[int, list[str]]:
    try:
        run(task, cfg)
        code = 0
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err.strip().splitlines()


def bad_resume(kind: str, tmp_path: Path) -> tuple[Path, str]:
    """A ``ckpt_path`` of ``kind`` and the start of its error line."""
    path = tmp_path / f"{kind}.ckpt"
    if kind == "missing":
        return path, f"error: {path}: not found"
    if kind == "folder":
        path.mkdir()
        return path, f"error: {path}: is a folder, not a file"
    if kind == "state dict":
        torch.save({"weight": torch.zeros(2)}, path)
        return path, f"error: ckpt_path={path}: not a training checkpoint"
    if kind == "another model":
        path = another_models_checkpoint(path)
        return path, f"error: ckpt_path={path}: weights do not match SegmentationModule:"
    fake_checkpoint("unet_mobilenetv2", path)
    path.write_bytes(path.read_bytes()[:5000])  # truncated
    return path, f"error: {path}: not a readable checkpoint"


def another_models_checkpoint(path: Path) -> Path:
    """A training checkpoint (with loop state) of an FCN-32s, not the quickstart's U-Net."""
    ckpt = torch.load(fake_checkpoint("fcn32s", path), weights_only=True)
    torch.save({**ckpt, "loops": {}, "epoch": 0}, path)
    return path


@pytest.mark.parametrize("kind", ["missing", "folder", "truncated", "state dict", "another model"])
def test_bad_resume_checkpoint_is_one_line_and_writes_nothing(kind, tmp_path, sample_root, capsys):
    run_dir = tmp_path / "finished"
    run_dir.mkdir()
    (run_dir / "config_resolved.yaml").write_text("the finished run's config\n")
    path, expected = bad_resume(kind, tmp_path)
    code, err = exit_and_err(
        train_mod.train, quick_cfg(run_dir, sample_root, f"ckpt_path={path}"), capsys
    )
    assert code == 2 and len(err) == 1 and err[0].startswith(expected), err
    assert sorted(p.name for p in run_dir.iterdir()) == ["config_resolved.yaml"]
    assert (run_dir / "config_resolved.yaml").read_text() == "the finished run's config\n"


def test_failed_resume_keeps_the_run_folder_config(tmp_path: Path, sample_root: Path) -> None:
    """What a user sees at the command line, Hydra's own files included."""
    run_dir = tmp_path / "finished"
    files = ["config_resolved.yaml", ".hydra/config.yaml", ".hydra/hydra.yaml"]
    for name in [*files, ".hydra/overrides.yaml"]:
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / name).write_text(f"finished run: {name}\n")
    other = another_models_checkpoint(tmp_path / "other.ckpt")
    proc = run_entry(
        "train.py",
        "experiment=quickstart",
        f"data.root={sample_root}",
        f"hydra.run.dir={run_dir}",
        f"ckpt_path={other}",
        check=False,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines[-1].startswith(f"error: ckpt_path={other}: weights do not match")
    for name in [*files, ".hydra/overrides.yaml"]:
        assert (run_dir / name).read_text() == f"finished run: {name}\n", name


def test_run_config_files_are_written_as_hydra_did(tmp_path: Path) -> None:
    overrides = ["experiment=quickstart", f"hydra.run.dir={tmp_path}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        full = hydra_compose("train", overrides=overrides, return_hydra_config=True)
    assert full.hydra.output_subdir is None  # Hydra itself writes nothing at job start
    HydraConfig.instance().set_config(full)
    try:
        cfg = OmegaConf.masked_copy(full, [k for k in full if k != "hydra"])
        write_run_config(cfg, tmp_path)
    finally:
        HydraConfig.instance().cfg = None
    assert OmegaConf.load(tmp_path / ".hydra/overrides.yaml") == ["experiment=quickstart"]
    assert OmegaConf.load(tmp_path / ".hydra/config.yaml").task_name == "quickstart"
    assert OmegaConf.load(tmp_path / ".hydra/hydra.yaml").hydra.run.dir == str(tmp_path)
    assert OmegaConf.load(tmp_path / "config_resolved.yaml").model.net._target_.endswith(
        "EncoderUNet"
    )


def test_full_disk_while_training_is_one_line_with_the_resume_command(
    tmp_path, sample_root, capsys, monkeypatch
):
    save = AtomicCheckpointIO.save_checkpoint

    def full_disk(self, checkpoint, path, storage_options=None):
        if Path(path).name == "epoch_start.ckpt":
            return save(self, checkpoint, path, storage_options)
        with atomic_open(path):  # what torch.save into a full disk raises
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", full_disk)
    code, err = exit_and_err(train_mod.train, quick_cfg(tmp_path, sample_root), capsys)
    kept = tmp_path / "checkpoints" / "interrupted.ckpt"
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(f"error: {tmp_path / 'checkpoints'}/") and kept.is_file()
    assert "No space left on device (free some disk space; then resume with: " in err[0]
    assert err[0].endswith(f"ckpt_path={kept} (with the same config))")
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))


def test_killed_loader_worker_is_one_line_with_the_resume_command(
    tmp_path, sample_root, capsys, monkeypatch
):
    load, started = VOCSegmentation.load, tmp_path / "checkpoints" / "epoch_start.ckpt"

    def killed(self, i):  # the workers of the epoch's loader die once its start is saved
        info = torch.utils.data.get_worker_info()
        if info is not None and self.split == "train" and started.exists():
            os.kill(os.getpid(), signal.SIGKILL)
        return load(self, i)

    monkeypatch.setattr(VOCSegmentation, "load", killed)
    cfg = quick_cfg(tmp_path, sample_root, "data.num_workers=1", "data.persistent_workers=false")
    code, err = exit_and_err(train_mod.train, cfg, capsys)
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("error: DataLoader worker (pid")
    assert "often out of memory" in err[0] and "then resume with: ckpt_path=" in err[0]
    assert (tmp_path / "checkpoints" / "interrupted.ckpt").is_file()


def test_full_disk_is_one_line(colour_ckpt, tmp_path, capsys, monkeypatch):  # noqa: F811
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "metrics.json"))

    monkeypatch.setattr(export_mod, "export", full)
    cfg = compose("export", f"ckpt={colour_ckpt}")
    code, err = exit_and_err(export_mod.export_and_check, cfg, capsys)
    assert code == 1 and err == [
        f"error: {tmp_path / 'metrics.json'}: No space left on device (free some disk space)"
    ]


def disagreeing(path: Path, case: str) -> Path:
    """A checkpoint whose weights do not fit its own net config (``case``: ``shape``, or a
    ``config`` that cannot build a net at all)."""
    ckpt = torch.load(fake_checkpoint("unet_mobilenetv2", path), weights_only=True)
    net = ckpt["seg_config"]["model"]["net"]
    if case == "shape":
        net["num_classes"] = 5
    else:
        net["decoder_channels"] = [1, 2]
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("case", ["shape", "config"])
@pytest.mark.parametrize("stage", ["predict", "evaluate", "export"])
def test_weights_that_disagree_with_the_config_are_one_line(stage, case, tmp_path, capsys):
    ckpt = disagreeing(tmp_path / "bad.ckpt", case)
    if stage == "predict":
        Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
        cfg = compose("predict", f"ckpt={ckpt}", f"input={tmp_path}", f"output={tmp_path / 'o'}")
        task = predict_mod.predict
    elif stage == "evaluate":
        cfg = compose("evaluate", f"ckpt={ckpt}", "trainer.accelerator=cpu")
        task = evaluate_mod.evaluate
    else:
        cfg = compose("export", f"ckpt={ckpt}", f"output={tmp_path / 'm.onnx'}")
        task = export_mod.export_and_check
    code, err = exit_and_err(task, cfg, capsys)
    expected = (
        "weights do not fit EncoderUNet: size mismatch"
        if case == "shape"
        else ("its config cannot build the network (")
    )
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {ckpt}: {expected}"), err


def export_cfg(ckpt: Path, out: Path, fmt: str = "onnx", *extra: str):
    return compose(
        "export", f"ckpt={ckpt}", f"format={fmt}", f"output={out}", "example_size=[64,96]", *extra
    )


def test_failed_parity_keeps_the_previous_export(colour_ckpt, tmp_path, capsys):  # noqa: F811
    good = tmp_path / "model.pt"
    good.write_bytes(b"a good export")
    cfg = export_cfg(colour_ckpt, good, "torchscript", "parity.max_abs=-1")
    code, err = exit_and_err(export_mod.export_and_check, cfg, capsys)
    assert code == 1 and len(err) == 1 and err[0].endswith("-> FAIL; nothing was written")
    assert good.read_bytes() == b"a good export" and sorted(tmp_path.iterdir()) == [good]


def test_export_output_folders(colour_ckpt, tmp_path, capsys, monkeypatch):  # noqa: F811
    out = tmp_path / "new" / "deeper" / "model.pt"
    report = export_mod.export(export_cfg(colour_ckpt, out, "torchscript"))
    assert report["passed"] and out.is_file()
    monkeypatch.setattr(export_mod, "load_checkpoint", lambda p: pytest.fail("the work started"))
    code, err = exit_and_err(export_mod.export_and_check, export_cfg(colour_ckpt, tmp_path), capsys)
    assert code == 2 and err == [
        f"error: output={tmp_path}: is a folder; give the path of the file to write"
    ]


def test_parity_names_the_size_the_export_fails_at() -> None:
    net = torch.nn.Conv2d(3, 4, 1)

    def runner(x):
        if x.shape[-1] == 7:
            raise RuntimeError("Pad reflect: post-pad (17) exceeds maximum allowed\nmore")
        return (net(x),)

    with pytest.raises(ExportError) as err:
        export_mod.parity(net, runner, [[1, 20, 20], [1, 7, 7]])
    assert str(err.value) == (
        "the exported model fails on a 1x3x7x7 input: Pad reflect: post-pad (17) exceeds "
        "maximum allowed more"
    )

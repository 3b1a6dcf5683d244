"""Reliability, round two (issue #16): evaluation never double-counts, and a dataset that is
unusable as a whole says what is wrong in one line before anything runs.

Evaluations run ``seg.evaluate.evaluate`` through :func:`seg.cli.run`, as ``evaluate.py`` does,
with a 1x1-convolution checkpoint on a tiny VOC-layout folder (``voc_root`` of
``test_bad_data.py``), so each takes seconds.

| case | what the user sees | test |
|---|---|---|
| an id listed twice in a split list | exit 2, `error: <list>:<line>: id 'a' is listed again (first on line 1); ...` | `test_duplicate_id_is_one_line_naming_the_list_and_lines` |
| `data.skip_bad=true`, a bad sample | dropped, not replaced by its neighbour: scores and `num_images` equal those of the list without it | `test_skip_bad_drops_a_bad_sample_and_counts_what_was_scored` |
| every sample bad, `skip_bad=true` | exit 2, `error: data.split=val: no image was scored (...)` | `test_nothing_scored_is_one_line` |
| 5-class checkpoint, 21-label data | exit 2 before any image: `the model predicts 5 classes, but the data at data.root=... has 21 labels` | `test_class_count_mismatch_is_refused_before_scoring[module]` |
| net logits disagree with `model.num_classes` | exit 2: `the net has 5 class logits but its config says model.num_classes=21` | `test_class_count_mismatch_is_refused_before_scoring[net]` |
| `data=checkpoint` (the default) and a checkpoint without a data config | exit 2, `error: <ckpt>: holds no data config to evaluate on; name the data, e.g. data=voc data.root=PATH` (was `KeyError: 'data'`) | `test_checkpoint_without_data_config_is_one_line` |
| all-void ground truth | exit 0, a warning line, every metric `null` in `metrics.json` (`fw_IoU` too) | `test_all_void_ground_truth_gives_null_metrics_and_a_warning` |
| empty split list | exit 2, `error: <list>: the split list is empty (no ids)` (was `KeyError: 'per_class_IoU'`) | `test_unusable_split_lists_are_one_line[empty]` |
| `data.split=tarin` | exit 2, `... no split 'tarin'; the splits in <folder> are: train, val` (was an offer to download 2 GB) | `test_unusable_split_lists_are_one_line[typo]` |
| `data.root` at `VOC2012` itself | exit 0: a folder with `JPEGImages/` is a root (your own data's layout), the same scores as its parent | `test_root_at_the_voc2012_folder_reads_the_same_data` |
| a list that is not UTF-8 | exit 2, `<list>: not UTF-8 text (...)` | `test_unusable_split_lists_are_one_line[latin-1]` |
| UTF-8 BOM, Windows line ends, ids with a space, `Main` flag column | read as written: the BOM is dropped, the whole line is the id | `test_split_lists_read_as_written` |
| an id whose file is missing | `<folder>/JPEGImages/my photo.jpg: file not found`: the name as written | `test_split_lists_read_as_written` |
| train and val lists overlap | `train.py`: exit 2, `error: 1 evaluation ids leak into the 'train' training list, e.g. ['a']; ...` | `test_overlapping_train_and_val_lists_are_one_line` |
| unreadable dataset folder, with or without `skip_bad` | exit 2 before anything runs: `<folder>: permission denied (the folder cannot be read)` | `test_unreadable_dataset_folder_is_one_line[...]` |
| multi-scale TTA on 1x1 and 2000x1 images | works (fixed in the first round) | `test_inference.py::test_multiscale_returns_input_size_probabilities` |
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose
from test_bad_data import bad_mask, labels, palette_png, voc_root
from test_reliability_run import quick_cfg

from seg.cli import error_line, run
from seg.data.voc import VOCSegmentation, read_ids
from seg.errors import DatasetError
from seg.evaluate import evaluate
from seg.train import train

NORMALIZE = [{"_target_": f"albumentations.{t}"} for t in ("Normalize", "pytorch.ToTensorV2")]


def conv_ckpt(path: Path, logits: int = 21, num_classes: int | None = None) -> Path:
    """A train.py-style checkpoint of a 1x1 convolution with ``logits`` outputs; its module
    config says ``num_classes`` (default: the module's, 21)."""
    net = {
        "_target_": "torch.nn.Conv2d",
        "in_channels": 3,
        "out_channels": logits,
        "kernel_size": 1,
    }
    model = {"_target_": "seg.modules.segmentation.SegmentationModule", "net": net}
    if num_classes is not None:
        model["num_classes"] = num_classes
    data = {"_target_": "seg.data.datamodule.VOCDataModule", "root": "unused", "num_workers": 0}
    augment = {"eval": {"_target_": "albumentations.Compose", "transforms": NORMALIZE}}
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, logits, 1)
    state = {f"net.{k}": v for k, v in conv.state_dict().items()}
    config = {"model": model, "augment": augment, "data": data}
    torch.save({"seg_config": config, "state_dict": state}, path)
    return path


def evaluate_cli(ckpt: Path, root: Path, out: Path, *overrides: str) -> int:
    """``evaluate.py ckpt=... data.root=...`` in process; returns the exit status."""
    cfg = compose(
        "evaluate",
        f"ckpt={ckpt}",
        f"data.root={root}",
        "trainer.accelerator=cpu",
        "plot=false",
        f"paths.output_dir={out}",
        *overrides,
    )
    try:
        run(evaluate, cfg)
    except SystemExit as stop:
        return stop.code
    return 0


def one_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    return conv_ckpt(tmp_path / "conv.ckpt")


def test_duplicate_id_is_one_line_naming_the_list_and_lines(ckpt, tmp_path, capsys):
    root = voc_root(tmp_path / "data", {i: palette_png(labels()) for i in "abc"})
    val = root / "VOC2012/ImageSets/Segmentation/val.txt"
    val.write_text("a\nb\nc\na\n")
    assert evaluate_cli(ckpt, root, tmp_path / "eval") == 2
    assert one_line(capsys) == (
        f"error: {val}:4: id 'a' is listed again (first on line 1); each image must be listed "
        "once, or it is counted twice"
    )
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_skip_bad_drops_a_bad_sample_and_counts_what_was_scored(ckpt, tmp_path):
    varied = labels()
    varied[2:10, 2:12] = 7  # another class, so that a repeated image would change the scores
    masks = {"a": palette_png(labels()), "b": bad_mask("values")[0], "c": palette_png(varied)}
    root = voc_root(tmp_path / "data", masks)
    (root / "VOC2012/ImageSets/Segmentation/good.txt").write_text("a\nc\n")
    assert evaluate_cli(ckpt, root, tmp_path / "skip", "data.skip_bad=true") == 0
    assert evaluate_cli(ckpt, root, tmp_path / "good", "data.split=good") == 0
    skipped, good = (
        json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("skip", "good")
    )
    assert skipped["num_images"] == good["num_images"] == 2
    assert {k: v for k, v in skipped.items() if k != "checkpoint"} == {
        k: v for k, v in good.items() if k != "checkpoint"
    }


def test_nothing_scored_is_one_line(ckpt, tmp_path, capsys):
    root = voc_root(tmp_path / "data", {"a": bad_mask("values")[0]})
    assert evaluate_cli(ckpt, root, tmp_path / "eval", "data.skip_bad=true") == 2
    assert one_line(capsys).startswith("error: data.split=val: no image was scored")


@pytest.mark.parametrize("case", ["module", "net"])
def test_class_count_mismatch_is_refused_before_scoring(case, tmp_path, capsys, monkeypatch):
    path = tmp_path / "five.ckpt"
    ckpt = conv_ckpt(path, 5, num_classes=5) if case == "module" else conv_ckpt(path, 5)
    root = voc_root(tmp_path / "data", {"a": palette_png(labels())})
    monkeypatch.setattr("lightning.Trainer.test", lambda *a, **k: pytest.fail("scored"))
    assert evaluate_cli(ckpt, root, tmp_path / "eval") == 2
    expected = {
        "module": f"the model predicts 5 classes, but the data at data.root={root} has 21 labels",
        "net": "the net has 5 class logits but its config says model.num_classes=21",
    }
    assert one_line(capsys).startswith(f"error: {ckpt}: {expected[case]}")


def test_checkpoint_without_data_config_is_one_line(ckpt, tmp_path, capsys):
    saved = torch.load(ckpt, weights_only=True)
    del saved["seg_config"]["data"]
    torch.save(saved, ckpt)
    root = voc_root(tmp_path / "data", {"a": palette_png(labels())})
    assert evaluate_cli(ckpt, root, tmp_path / "eval") == 2
    assert one_line(capsys) == (
        f"error: {ckpt}: holds no data config to evaluate on; name the data, e.g. data=voc "
        "data.root=PATH"
    )
    assert evaluate_cli(ckpt, root, tmp_path / "eval", "data=voc") == 0


def test_all_void_ground_truth_gives_null_metrics_and_a_warning(ckpt, tmp_path, caplog):
    void = palette_png(np.full_like(labels(), 255))
    root = voc_root(tmp_path / "data", {"a": void, "b": void})
    with caplog.at_level(logging.WARNING, logger="seg.evaluate"):
        assert evaluate_cli(ckpt, root, tmp_path / "eval") == 0
    assert "every ground-truth pixel of the 2 scored images is void (255)" in caplog.text
    record = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert record["num_images"] == 2
    scores = ("mIoU", "pixel_accuracy", "mean_accuracy", "fw_IoU")
    assert [record[k] for k in scores] == [None] * 4
    assert set(record["per_class_IoU"].values()) == set(record["per_class_accuracy"].values())
    assert set(record["per_class_IoU"].values()) == {None}


def _split_case(root: Path, case: str) -> tuple[list[str], str]:
    """Break ``root`` as ``case`` says; return extra overrides and the expected error line."""
    lists = root / "VOC2012/ImageSets/Segmentation"
    if case == "empty":
        (lists / "val.txt").write_text("\n  \n")
        return [], f"error: {lists / 'val.txt'}: the split list is empty (no ids)"
    if case == "typo":
        return ["data.split=tarin"], (
            f"error: {lists / 'tarin.txt'}: no split 'tarin'; the splits in {lists} are: train, val"
        )
    if case == "latin-1":
        (lists / "val.txt").write_bytes("caf\xe9\n".encode("latin-1"))
        return [], f"error: {lists / 'val.txt'}: not UTF-8 text (invalid continuation byte"
    raise ValueError(case)


@pytest.mark.parametrize("case", ["empty", "typo", "latin-1"])
def test_unusable_split_lists_are_one_line(case, ckpt, tmp_path, capsys):
    root = voc_root(tmp_path / "data", {"a": palette_png(labels())})
    overrides, expected = _split_case(root, case)
    assert evaluate_cli(ckpt, root, tmp_path / "eval", *overrides) == 2
    assert one_line(capsys).startswith(expected)


def test_the_sample_never_replaces_a_dataset(tmp_path, capsys):
    root = voc_root(tmp_path / "data", {i: palette_png(labels()) for i in "ab"})
    before = sorted(p.name for p in (root / "VOC2012/JPEGImages").iterdir())
    with pytest.raises(SystemExit) as exit_:
        run(train, quick_cfg(tmp_path / "run", root))  # experiment=quickstart: data=sample
    assert exit_.value.code == 2
    assert one_line(capsys) == (
        f"error: data.root={root}: holds a VOC2012/ that is not the generated sample, which "
        "would replace it; for your own data use data=voc or data=custom, else another data.root"
    )
    assert sorted(p.name for p in (root / "VOC2012/JPEGImages").iterdir()) == before


def test_root_at_the_voc2012_folder_reads_the_same_data(ckpt, tmp_path):
    """A folder with ``JPEGImages/`` in it is a dataset root (your own data's layout), so
    ``data.root=.../VOC2012`` scores what its parent does."""
    root = voc_root(tmp_path / "data", {"a": palette_png(labels()), "b": palette_png(labels())})
    for name, data_root in (("parent", root), ("voc2012", root / "VOC2012")):
        assert evaluate_cli(ckpt, data_root, tmp_path / name) == 0
    parent, voc = (
        json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("parent", "voc2012")
    )
    assert voc["num_images"] == parent["num_images"] == 2 and voc["mIoU"] == parent["mIoU"]


def test_split_lists_read_as_written(tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "bom.txt").write_bytes("\ufeffa\r\nmy photo \r\n\r\n".encode())
    (lists / "dog_train.txt").write_text("a  1\nb -1\nc  0\n")
    assert read_ids(lists / "bom.txt") == ["a", "my photo"]
    assert read_ids(lists / "dog_train.txt") == ["a", "b", "c"]
    root = voc_root(tmp_path / "data", {"a": palette_png(labels())})
    (root / "VOC2012/ImageSets/Segmentation/val.txt").write_bytes(b"\xef\xbb\xbfa\r\nmy photo\r\n")
    data = VOCSegmentation(root, "val")
    assert data[0]["id"] == "a"
    with pytest.raises(Exception) as err:
        data[1]
    assert error_line(err.value).startswith(
        f"{root / 'VOC2012/JPEGImages/my photo.jpg'}: file not found"
    )


def test_overlapping_train_and_val_lists_are_one_line(tmp_path, capsys):
    root = voc_root(tmp_path / "data", {i: palette_png(labels()) for i in "abv"}, val="v")
    (root / "VOC2012/ImageSets/Segmentation/val.txt").write_text("v\na\n")
    cfg = quick_cfg(tmp_path / "run", root, "data.generate_sample=null")
    with pytest.raises(SystemExit) as exit_:
        run(train, cfg)
    assert exit_.value.code == 2
    assert one_line(capsys).startswith(
        "error: 1 evaluation ids leak into the 'train' training list, e.g. ['a']"
    )


def _as_nobody(build) -> str:
    """``build()`` as an unprivileged user (root reads any folder): in a forked child when this
    runs as root. Returns ``"ok"`` or the one error line."""

    def attempt() -> str:
        try:
            build()
        except DatasetError as err:
            return f"{err.exit_code} {error_line(err)}"
        return "ok"

    if os.geteuid() != 0:
        return attempt()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (child)
        try:
            os.setgid(65534)
            os.setuid(65534)
            os.write(write, attempt().encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        line = f.read()
    os.waitpid(pid, 0)
    return line


@pytest.mark.parametrize("skip_bad", [False, True])
def test_unreadable_dataset_folder_is_one_line(skip_bad: bool) -> None:
    base = Path(tempfile.mkdtemp())  # not under pytest's 0700 folder: another user can enter
    try:
        base.chmod(0o755)
        root = voc_root(base, {"a": palette_png(labels())})
        images = root / "VOC2012/JPEGImages"
        images.chmod(0o000)
        line = _as_nobody(lambda: VOCSegmentation(root, "val", skip_bad=skip_bad))
        images.chmod(0o755)
        assert line == f"2 {images}: permission denied (the folder cannot be read)"
    finally:
        shutil.rmtree(base, ignore_errors=True)

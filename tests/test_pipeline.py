"""End to end through the real entry points: train -> evaluate -> predict -> export.

The quickstart runs once per session (a short, 2-epoch version) and later tests reuse its
checkpoint. The mIoU that evaluate.py reports must equal the mIoU computed independently from
predict.py's PNG masks against the ground-truth PNGs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_entry as run
from PIL import Image


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A short quickstart run: data generated into a temp data dir, 2 epochs."""
    base = tmp_path_factory.mktemp("quickstart")
    run_dir = base / "run"
    run(
        "train.py",
        "experiment=quickstart",
        f"paths.data_dir={base / 'data'}",
        f"hydra.run.dir={run_dir}",
        "trainer.max_epochs=2",
        "trainer.check_val_every_n_epoch=1",
        "data.num_workers=0",
        "data.generate_sample.n_train=16",
        "data.generate_sample.n_val=7",
    )
    return {"run": run_dir, "root": base / "data" / "sample", "base": base}


def test_train_writes_checkpoints_and_metrics(quickstart: dict[str, Path]) -> None:
    run_dir = quickstart["run"]
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "config_resolved.yaml").is_file()
    assert list((run_dir / "csv").glob("metrics.csv"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["val/mIoU"] <= 1.0
    assert set(metrics["per_class_IoU"]) >= {"background", "aeroplane"}
    assert metrics["global_step"] == 2 * 2  # 16 images / batch 8, 2 epochs


def voc_miou_from_pngs(pred_dir: Path, root: Path, ids: list[str]) -> float:
    """mIoU from PNG files alone (numpy), with devkit semantics, independent of seg.metrics."""
    n = 21
    confmat = np.zeros((n, n), dtype=np.int64)
    for image_id in ids:
        gt = np.array(Image.open(root / "VOC2012" / "SegmentationClass" / f"{image_id}.png"))
        pred = np.array(Image.open(pred_dir / f"{image_id}.png"))
        assert pred.shape == gt.shape, image_id
        keep = gt != 255
        confmat += np.bincount(n * gt[keep].astype(np.int64) + pred[keep], minlength=n * n).reshape(
            n, n
        )
    tp = np.diag(confmat)
    union = confmat.sum(0) + confmat.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / union
    return float(np.nanmean(iou))


def test_evaluate_equals_predict_pngs(quickstart: dict[str, Path]) -> None:
    ckpt = quickstart["run"] / "checkpoints" / "best.ckpt"
    root = quickstart["root"]
    eval_dir = quickstart["base"] / "eval"
    run(
        "evaluate.py",
        f"ckpt={ckpt}",
        f"data.root={root}",
        "data.split=val",
        f"hydra.run.dir={eval_dir}",
        "data.num_workers=0",
    )
    record = json.loads((eval_dir / "metrics.json").read_text())
    assert {
        "mIoU",
        "pixel_accuracy",
        "mean_accuracy",
        "fw_IoU",
        "per_class_IoU",
        "num_images",
        "checkpoint",
    } <= set(record)
    assert (eval_dir / "confusion_matrix.png").is_file()
    ids = (root / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    assert record["num_images"] == len(ids) == 7
    # classes absent from the sample's val set and from the predictions are null, not 0
    assert any(v is None for v in record["per_class_IoU"].values())

    out = quickstart["base"] / "pred"
    run(
        "predict.py",
        f"ckpt={ckpt}",
        f"input={root / 'VOC2012' / 'JPEGImages'}",
        f"output={out}",
        "save.overlay=true",
    )
    for image_id in ids:
        png = Image.open(out / f"{image_id}.png")
        assert png.mode == "P"
        jpg = Image.open(root / "VOC2012" / "JPEGImages" / f"{image_id}.jpg")
        assert png.size == jpg.size
        assert (out / f"{image_id}_overlay.jpg").is_file()
    assert voc_miou_from_pngs(out, root, ids) == pytest.approx(record["mIoU"], abs=1e-6)


def test_predict_skips_done_reports_bad_files(quickstart: dict[str, Path], tmp_path: Path) -> None:
    ckpt = quickstart["run"] / "checkpoints" / "best.ckpt"
    src = tmp_path / "in"
    src.mkdir()
    image = Image.open(next((quickstart["root"] / "VOC2012" / "JPEGImages").glob("*.jpg")))
    image.save(src / "good one.jpg")
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (src / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    first = run("predict.py", f"ckpt={ckpt}", f"input={src}", f"output={out}", check=False)
    assert first.returncode == 1, first.stderr
    assert "broken.jpg" in first.stderr and "Traceback" not in first.stderr
    assert "1 written" in first.stdout and "1 failed" in first.stdout
    assert (out / "good_one.png").is_file() and not list(out.glob(".*tmp"))
    second = run("predict.py", f"ckpt={ckpt}", f"input={src / 'good one.jpg'}", f"output={out}")
    assert "1 already done" in second.stdout


def test_ddp_evaluation_equals_single_process(quickstart: dict[str, Path]) -> None:
    """2 CPU processes over 7 images (4 + 3): no padded duplicate may be counted."""
    ckpt = quickstart["run"] / "checkpoints" / "best.ckpt"
    common = [
        f"ckpt={ckpt}",
        f"data.root={quickstart['root']}",
        "data.num_workers=0",
        "plot=false",
        "trainer.accelerator=cpu",
    ]
    one, two = quickstart["base"] / "eval1", quickstart["base"] / "eval2"
    run("evaluate.py", *common, f"hydra.run.dir={one}")
    run(
        "evaluate.py",
        *common,
        f"hydra.run.dir={two}",
        "trainer=ddp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
    )
    single = json.loads((one / "metrics.json").read_text())
    ddp = json.loads((two / "metrics.json").read_text())
    assert ddp["num_images"] == single["num_images"] == 7
    for key in ("mIoU", "pixel_accuracy", "mean_accuracy", "fw_IoU", "per_class_IoU"):
        assert ddp[key] == single[key], key


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_parity(quickstart: dict[str, Path], tmp_path: Path, fmt: str) -> None:
    ckpt = quickstart["run"] / "checkpoints" / "best.ckpt"
    out = tmp_path / f"model.{fmt}"
    proc = run(
        "-m seg.export",
        f"ckpt={ckpt}",
        f"format={fmt}",
        f"output={out}",
        f"hydra.run.dir={tmp_path}",
    )
    assert out.is_file() and "PASS" in proc.stdout


def test_missing_voc_gives_guidance_not_traceback(tmp_path: Path) -> None:
    proc = run(
        "train.py", f"paths.data_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}", check=False
    )
    assert proc.returncode == 2
    assert "experiment=quickstart" in proc.stderr and "Traceback" not in proc.stderr
    assert "VOC" in proc.stderr


def test_bad_checkpoint_is_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "evil.ckpt"
    bad.write_bytes(b"not a checkpoint")
    proc = run("evaluate.py", f"ckpt={bad}", f"hydra.run.dir={tmp_path}", check=False)
    assert proc.returncode == 2 and "evil.ckpt" in proc.stderr and "Traceback" not in proc.stderr

"""``python evaluate.py ckpt=PATH``: scores of a checkpoint on a dataset split.

Segmentation checkpoints get the VOC scores (mIoU from one confusion matrix, per-class IoU);
localization checkpoints get classification accuracy, ILSVRC localization accuracy (top-1 and
top-5), CorLoc and box IoU, per class. The data is the checkpoint's own (``data=checkpoint``:
its dataset, root and validation split) unless the command line says otherwise.

Images keep their original size; predictions are brought to the ground truth's resolution.
Runs the checkpoint's own LightningModule through ``Trainer.test``, so the scores come from the
same code as training-time validation (:mod:`seg.inference`), and ``trainer=ddp`` works and gives
the single-process score. Errors become exit statuses in :mod:`seg.cli`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from seg import report
from seg.checkpoint import build_module, is_localization, load_checkpoint
from seg.constants import NUM_CLASSES
from seg.data.classes import checkpoint_classes, checkpoint_logit_names
from seg.errors import CheckpointError, DatasetError
from seg.inference import InferenceConfig
from seg.models import CLS, seg_logits
from seg.utils import output_dir, write_json

log = logging.getLogger(__name__)


def data_config(cfg: DictConfig, ckpt: dict[str, Any]) -> DictConfig:
    """``cfg.data``, or, with ``data=checkpoint``, the checkpoint's data config with the keys
    that ``cfg.data`` sets (not null) replaced.

    Raises:
        CheckpointError: ``data=checkpoint`` and the checkpoint holds no data config.
    """
    if not cfg.data.get("from_checkpoint"):
        return cfg.data
    if "data" not in ckpt["seg_config"]:
        raise CheckpointError(
            f"{cfg.ckpt}: holds no data config to evaluate on; name the data, e.g. data=voc "
            "data.root=PATH"
        )
    chosen = {k: v for k, v in cfg.data.items() if v is not None and k != "from_checkpoint"}
    return OmegaConf.merge(OmegaConf.create(ckpt["seg_config"]["data"]), chosen)


@torch.inference_mode()
def check_classes(module: Any, datamodule: Any, source: str, localization: bool) -> None:
    """Check, before any image is scored, that the net's logits, the module's class count and
    the data's labels agree (one forward pass on a small input).

    Raises:
        CheckpointError: The net's logits disagree with the checkpoint's ``model.num_classes``.
        DatasetError: The model's classes are not the data's labels.
    """
    out = module.net(torch.zeros(1, 3, 64, 64))
    logits = out[CLS] if localization else seg_logits(out)  # (1, K) / (1, K, H, W)
    k, labels = module.num_classes, getattr(datamodule, "num_classes", NUM_CLASSES)
    if logits.shape[1] != k:
        raise CheckpointError(
            f"{source}: the net has {logits.shape[1]} class logits but its config says "
            f"model.num_classes={k}"
        )
    fits = (labels, labels - 1) if localization else (labels,)  # localization: background
    if k not in fits:
        root = getattr(datamodule, "root", "?")
        raise DatasetError(
            f"{source}: the model predicts {k} classes, but the data at data.root={root} has "
            f"{labels} labels; evaluate it on the data it was trained on"
        )


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt`` on its data split and write the reports.

    Returns:
        The ``metrics.json`` record.
    """
    ckpt = load_checkpoint(cfg.ckpt)
    localization = is_localization(ckpt)
    extra = {} if localization else {"inference": InferenceConfig.from_config(cfg)}
    module = build_module(ckpt, cfg.ckpt, **extra)
    # Normalise exactly as in training: the checkpoint's own eval transform.
    data = data_config(cfg, ckpt)
    datamodule = instantiate(data, eval_transform=ckpt["seg_config"]["augment"]["eval"])
    check_classes(module, datamodule, cfg.ckpt, localization)
    trainer: L.Trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    trainer.test(module, datamodule=datamodule, verbose=False)
    if "test" not in module.scores:
        raise DatasetError(
            f"data.split={getattr(datamodule, 'split', '?')}: no image was scored (every sample "
            "was skipped as bad, or trainer.limit_test_batches=0)"
        )
    results, source = module.scores["test"], str(Path(cfg.ckpt).resolve())
    if not localization and not int(results["confmat"].sum()):
        log.warning(
            "every ground-truth pixel of the %d scored images is void (255): there is nothing "
            "to score, so every metric is null",
            int(results["num_images"]),
        )
    names, _ = checkpoint_classes(ckpt)
    if localization:
        record = report.localization_record(results, checkpoint_logit_names(ckpt), source)
    else:
        record = report.metrics_record(results, names, source)
    if trainer.is_global_zero:
        out = output_dir(cfg)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "metrics.json", record)
        if cfg.get("plot", True) and localization:
            report.plot_localization(record, results["iou_hist"], out / "localization.png")
        elif cfg.get("plot", True):
            report.plot_confusion(results["confmat"], names, out / "confusion_matrix.png")
        report.print_table(record)
        print(f"Wrote {out / 'metrics.json'}")
    return record

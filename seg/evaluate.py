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

from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from seg import report
from seg.checkpoint import build_module, is_localization, load_checkpoint
from seg.data.classes import checkpoint_classes, checkpoint_logit_names
from seg.inference import InferenceConfig
from seg.utils import output_dir, write_json


def data_config(cfg: DictConfig, ckpt: dict[str, Any]) -> DictConfig:
    """``cfg.data``, or, with ``data=checkpoint``, the checkpoint's data config with the keys
    that ``cfg.data`` sets (not null) replaced."""
    if not cfg.data.get("from_checkpoint"):
        return cfg.data
    chosen = {k: v for k, v in cfg.data.items() if v is not None and k != "from_checkpoint"}
    return OmegaConf.merge(OmegaConf.create(ckpt["seg_config"]["data"]), chosen)


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
    trainer: L.Trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    trainer.test(module, datamodule=datamodule, verbose=False)
    results, source = module.scores["test"], str(Path(cfg.ckpt).resolve())
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

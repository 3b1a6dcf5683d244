"""``python evaluate.py ckpt=PATH``: mIoU of a checkpoint on a VOC split (default VOC2012 val).

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
from omegaconf import DictConfig

from seg.checkpoint import build_module, load_checkpoint
from seg.constants import VOC_CLASSES
from seg.inference import InferenceConfig
from seg.report import metrics_record, plot_confusion, print_table
from seg.utils import output_dir, write_json


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt`` on ``cfg.data`` (split ``cfg.data.split``) and write the reports.

    Returns:
        The ``metrics.json`` record.
    """
    ckpt = load_checkpoint(cfg.ckpt)
    module = build_module(ckpt, cfg.ckpt, inference=InferenceConfig.from_config(cfg))
    # Normalise exactly as in training: the checkpoint's own eval transform.
    datamodule = instantiate(cfg.data, eval_transform=ckpt["seg_config"]["augment"]["eval"])
    trainer: L.Trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    trainer.test(module, datamodule=datamodule, verbose=False)
    results = module.scores["test"]
    record = metrics_record(results, VOC_CLASSES, str(Path(cfg.ckpt).resolve()))
    if trainer.is_global_zero:
        out = output_dir(cfg)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "metrics.json", record)
        if cfg.get("plot", True):
            plot_confusion(results["confmat"], VOC_CLASSES, out / "confusion_matrix.png")
        print_table(record)
        print(f"Wrote {out / 'metrics.json'}")
    return record

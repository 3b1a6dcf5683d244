"""``python evaluate.py ckpt=PATH``: mIoU of a checkpoint on a VOC split (default VOC2012 val).

Images keep their original size; predictions are brought to the ground truth's resolution.
Runs through ``Trainer.test`` so ``trainer=ddp`` works and gives the single-process score.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from seg.checkpoint import CheckpointError, build_net, load_checkpoint
from seg.constants import VOC_CLASSES
from seg.data.errors import BadSampleError, DatasetNotFoundError
from seg.inference import InferenceConfig
from seg.modules.evaluation import EvaluationModule
from seg.report import metrics_record, plot_confusion, print_table
from seg.train import output_dir
from seg.utils import write_json
from seg.validate import ConfigError, error_line, validate_config


def inference_config(cfg: DictConfig) -> InferenceConfig:
    """``InferenceConfig`` from the ``inference`` and ``tta`` nodes of a config."""
    opts = OmegaConf.to_container(cfg.inference, resolve=True)
    opts.pop("slide_above", None)
    tta = OmegaConf.to_container(cfg.tta, resolve=True)
    return InferenceConfig(**opts, flip=tta["flip"], scales=tuple(tta["scales"]))


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt`` on ``cfg.data`` (split ``cfg.data.split``) and write the reports.

    Returns:
        The ``metrics.json`` record.
    """
    ckpt = load_checkpoint(cfg.ckpt)
    net = build_net(ckpt)
    module = EvaluationModule(net, inference_config(cfg), num_classes=len(VOC_CLASSES))
    # Normalise exactly as in training: the checkpoint's own eval transform.
    datamodule = instantiate(cfg.data, eval_transform=ckpt["seg_config"]["augment"]["eval"])
    trainer: L.Trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    trainer.test(module, datamodule=datamodule, verbose=False)
    record = metrics_record(module.results, VOC_CLASSES, str(Path(cfg.ckpt).resolve()))
    if trainer.is_global_zero:
        out = output_dir(cfg)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "metrics.json", record)
        if cfg.get("plot", True):
            plot_confusion(module.results["confmat"], VOC_CLASSES, out / "confusion_matrix.png")
        print_table(record)
        print(f"Wrote {out / 'metrics.json'}")
    return record


def main(cfg: DictConfig) -> dict[str, Any]:
    """Entry point: the config is checked first; one clear line instead of a traceback for an
    invalid config, a bad checkpoint or missing data (exit 2), or a bad sample (exit 1)."""
    try:
        validate_config(cfg)
        return evaluate(cfg)
    except (ConfigError, CheckpointError, DatasetNotFoundError) as err:
        print(f"\nerror: {err}\n", file=sys.stderr)
        sys.exit(2)
    except BadSampleError as err:
        print(f"\nerror: {error_line(err)}\n", file=sys.stderr)
        sys.exit(1)

"""``python train.py``: fit, validate the best checkpoint, write ``metrics.json``.

Everything is built from the Hydra config with ``instantiate``; see ``conf/train.yaml``. Errors
and signals become exit statuses in :mod:`seg.cli`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf

from seg.callbacks import StoreConfig
from seg.checkpoint import check_resume
from seg.resilience import resumable_failures
from seg.utils import instantiate_all, nan_to_none, output_dir, write_json, write_run_config

log = logging.getLogger(__name__)


def build_module(cfg: DictConfig) -> L.LightningModule:
    """The LightningModule of ``cfg.model`` with the optimizer and scheduler groups plugged in."""
    return instantiate(cfg.model, optimizer=cfg.get("optimizer"), scheduler=cfg.get("scheduler"))


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run fit (optionally resuming from ``cfg.ckpt_path``), then validate the best checkpoint.

    Args:
        cfg: The composed ``train`` config.

    Returns:
        The metrics written to ``<run dir>/metrics.json``.
    """
    start = time.perf_counter()
    L.seed_everything(cfg.seed, workers=True)
    out = output_dir(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    datamodule = instantiate(cfg.data)
    module = build_module(cfg)
    if cfg.get("ckpt_path"):
        check_resume(cfg.ckpt_path, module)  # a failed resume writes nothing into the run folder
    write_run_config(cfg, out)

    loggers = instantiate_all(cfg.get("logger"))
    callbacks = [*instantiate_all(cfg.get("callbacks")), StoreConfig(resolved)]
    if not loggers:  # logger=none: Lightning refuses a learning-rate monitor with nothing to log to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    with resumable_failures(callbacks):  # a full disk, a dead worker: the resume command
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    if trainer.interrupted:
        log.warning("Training was interrupted; not validating.")
        return {}
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if cfg.get("validate_best") and not trainer.fast_dev_run:
        results = trainer.validate(module, datamodule=datamodule, ckpt_path=best or None)[0]
    else:
        results = dict(trainer.callback_metrics)
    metrics = {
        **{k: float(v) for k, v in results.items()},
        **per_class_scores(module, cfg.data.classes),
        "best_checkpoint": best,
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        **batch_record(datamodule, trainer),
        "wall_time_s": round(time.perf_counter() - start, 2),
    }
    if trainer.is_global_zero:
        write_json(out / "metrics.json", metrics)
        log.info("Metrics written to %s", out / "metrics.json")
    return metrics


def batch_record(datamodule: Any, trainer: L.Trainer) -> dict[str, Any]:
    """The batch a step was made of and how many steps were made, for ``metrics.json``.

    ``global_batch_size`` is the images of one optimizer step, all processes together;
    ``optimizer_steps`` the steps taken (Lightning's ``global_step``).
    """
    record: dict[str, Any] = {"optimizer_steps": trainer.global_step}
    plan = getattr(datamodule, "batch_plan", None)
    if plan is not None:
        record.update(
            global_batch_size=plan.global_batch,
            micro_batch_size=plan.micro_batch,
            accumulate_grad_batches=plan.accumulate,
            world_size=plan.world_size,
        )
    return record


def per_class_scores(module: L.LightningModule, names: list[str]) -> dict[str, Any]:
    """Per-class IoU and accuracy (class name -> value, None when absent) of the module's last
    validation, for segmentation modules."""
    scores = module.scores.get("val", {})
    return {
        key: nan_to_none(dict(zip(names, scores[key].tolist(), strict=True)))
        for key in ("per_class_IoU", "per_class_accuracy")
        if key in scores
    }

"""``python train.py``: fit, validate the best checkpoint, write ``metrics.json``.

Everything is built from the Hydra config with ``instantiate``; see ``conf/train.yaml``.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from seg.callbacks import StoreConfig
from seg.checkpoint import CheckpointError
from seg.constants import VOC_CLASSES
from seg.data.errors import BadSampleError, DatasetNotFoundError
from seg.resilience import NonFiniteLossError, signal_exit_codes
from seg.utils import instantiate_all, write_json
from seg.validate import ConfigError, error_line, validate_config

log = logging.getLogger(__name__)


def build_module(cfg: DictConfig) -> L.LightningModule:
    """The LightningModule of ``cfg.model`` with the optimizer and scheduler groups plugged in."""
    return instantiate(cfg.model, optimizer=cfg.get("optimizer"), scheduler=cfg.get("scheduler"))


def output_dir(cfg: DictConfig) -> Path:
    """The run directory (Hydra's, or ``cfg.paths.output_dir`` outside a Hydra app)."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.paths.output_dir)


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
    out.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    (out / "config_resolved.yaml").write_text(OmegaConf.to_yaml(resolved))

    datamodule = instantiate(cfg.data)
    module = build_module(cfg)
    callbacks = [*instantiate_all(cfg.get("callbacks")), StoreConfig(resolved)]
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=instantiate_all(cfg.get("logger")) or False
    )
    with signal_exit_codes():  # SIGINT -> exit 130, SIGTERM -> 143 (seg/resilience.py)
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        if trainer.interrupted:
            log.warning("Training was interrupted; not validating.")
            return {}

        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        results: dict[str, Any] = {}
        if cfg.get("validate_best") and not trainer.fast_dev_run:
            ckpt = best or None
            results = trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt)[0]
        else:
            results = {k: float(v) for k, v in trainer.callback_metrics.items()}
    metrics = {
        **{k: float(v) for k, v in results.items()},
        **extra_metrics(module),
        "best_checkpoint": best,
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "wall_time_s": round(time.perf_counter() - start, 2),
    }
    if trainer.is_global_zero:
        write_json(out / "metrics.json", metrics)
        log.info("Metrics written to %s", out / "metrics.json")
    return metrics


def extra_metrics(module: L.LightningModule) -> dict[str, Any]:
    """Per-class IoU (class name -> value, None when absent) of the module's last validation."""
    per_class = (getattr(module, "last_val_metrics", None) or {}).get("per_class_IoU")
    if per_class is None:
        return {}
    values = [None if v != v else float(v) for v in per_class.tolist()]
    return {"per_class_IoU": dict(zip(VOC_CLASSES, values, strict=True))}


def main(cfg: DictConfig) -> dict[str, Any]:
    """Entry point: the config is checked first; friendly errors instead of tracebacks.

    Exit status 2: invalid config or missing dataset (nothing ran); 1: a bad sample (corrupt
    image, bad mask), an unreadable or untrusted ``ckpt_path``, or a non-finite loss stopped the
    run; its one-line message names the file or the step.
    """
    try:
        validate_config(cfg)
        return train(cfg)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except DatasetNotFoundError as err:
        print(f"\n{err}\n", file=sys.stderr)
        sys.exit(2)
    except BadSampleError as err:
        print(f"error: {error_line(err)} (data.skip_bad=true skips such samples)", file=sys.stderr)
        sys.exit(1)
    except (CheckpointError, NonFiniteLossError) as err:
        print(f"error: {error_line(err)}", file=sys.stderr)
        sys.exit(1)

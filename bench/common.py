"""Paths and machine facts shared by the ``bench/`` scripts."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import torch

from seg.resolvers import cpu_has_native_bf16

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SHARED = REPO.parent / "shared"


def machine() -> dict:
    """CPU model, cores, torch version, intra-op threads, native bf16 and the GPU (if any)."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = re.findall(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)
        cpu = names[0].strip() if names else cpu
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "native_bf16": cpu_has_native_bf16(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def load_preset(name: str = "voc", split: str = "train", crop_size: int | None = None):
    """The ``train`` or ``eval`` pipeline of ``conf/augment/<name>.yaml``, composed by Hydra."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    overrides = [f"augment={name}", "paths.output_dir=unused"]
    overrides += [f"augment.crop_size={crop_size}"] if crop_size is not None else []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    return instantiate(cfg.augment[split], _convert_="all")

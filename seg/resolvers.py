"""OmegaConf resolvers used by the configs. Registered on ``import seg``.

The hardware ones pick defaults at compose time (``conf/trainer/*.yaml``), so one config works
on a laptop CPU, an AMX/AVX512-BF16 server CPU and a GPU. The class ones read a dataset's
classes and colours (:mod:`seg.data.classes`) for ``conf/data/*.yaml`` and size the models'
outputs from them (``conf/module/*.yaml``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import OmegaConf


def cpu_has_native_bf16() -> bool:
    """True when the CPU executes bf16 matmuls natively (Intel AMX or AVX512-BF16)."""
    import torch

    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


def cpu_precision() -> str:
    """``"bf16-mixed"`` on CPUs with native bf16, else ``"32-true"`` (emulated bf16 is slower)."""
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"


def gpu_precision() -> str:
    """``"bf16-mixed"`` on GPUs that support it (Ampere and newer), else ``"16-mixed"``."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "16-mixed"


def auto_precision() -> str:
    """Precision for ``accelerator: auto``: the GPU choice when CUDA is visible, else the CPU one."""
    import torch

    return gpu_precision() if torch.cuda.is_available() else cpu_precision()


def native_bf16() -> bool:
    """Whether bf16 autocast pays off here: a bf16-capable GPU, or a CPU with native bf16."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_has_native_bf16()


def multi_device(devices: object, num_nodes: object = 1) -> bool:
    """Whether a run spans more than one device (then SyncBatchNorm is worth its cost).

    Args:
        devices: Lightning's ``devices``: an int, a list of ids, ``-1`` or ``"auto"``.
        num_nodes: Number of nodes.
    """
    import torch

    if isinstance(devices, str) and devices not in ("auto", "-1"):
        devices = int(devices) if devices.isdigit() else len(devices.split(","))
    if devices in ("auto", "-1", -1):
        devices = max(torch.cuda.device_count(), 1)
    elif not isinstance(devices, int):
        devices = len(devices)
    return int(devices) * int(num_nodes) > 1


def register() -> None:
    """Register the ``seg.*`` resolvers (idempotent)."""
    from seg.data import classes

    resolvers = {
        "seg.cpu_precision": cpu_precision,
        "seg.gpu_precision": gpu_precision,
        "seg.auto_precision": auto_precision,
        "seg.multi_device": multi_device,
        "seg.native_bf16": native_bf16,
        "seg.classes": classes.dataset_classes,
        "seg.palette": classes.dataset_palette,
        "seg.len": len,
        "seg.num_objects": classes.num_objects,
        "seg.label_offset": classes.label_offset,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, _as_config(fn))


def _as_config(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` returning a ListConfig where it returns a list or tuple: ``OmegaConf.resolve``
    cannot store a plain list in the node it resolves."""

    def resolver(*args: Any) -> Any:
        value = fn(*args)
        return OmegaConf.create(list(value)) if isinstance(value, list | tuple) else value

    return resolver

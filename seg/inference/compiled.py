"""Compiled inference: the net through ``torch.compile`` (inductor) where the run repays it.

:func:`prepare_net` is the one place that decides and builds it; ``evaluate.py``, ``predict.py``
and the Python API call it, and everything downstream (:func:`seg.inference.predict_probs`,
:func:`seg.inference.localize`) runs the module it returns as it runs a plain net.

- **What is compiled:** the module eager inference runs, by inductor with ``freezing`` (the
  weights pre-packed for oneDNN / cuDNN) and the elementwise ops fused, rounded to bf16 where
  eager rounds (:func:`inductor_options`). Under bf16 that module is the copy with BatchNorm
  folded into bf16 convolutions (:class:`seg.inference.precast.Bf16Weights`), so both paths run
  the same operations; in fp32 it is the net, whose BatchNorm freezing folds.
- **Shape buckets:** inputs are padded at the bottom and right to a multiple of ``bucket``
  pixels per side with the net's own padding rule (``pad_mode``, reflection for the U-Nets) and
  the outputs cropped back. With the default of 32, the nets' own multiple, the padding is the
  one the net would do itself and the masks are eager's (below); one graph with
  dynamic height and width serves every bucket (static graphs per bucket of 128 px ran no faster
  here, and padding 500 x 375 photos to 512 x 384 changed 0.05-0.2% of the pixels of a weakly
  trained net through the border context: ``bench/README.md``).
- **On-disk cache:** inductor's FX graph cache keeps the compiled kernels in
  ``TORCHINDUCTOR_CACHE_DIR`` (default ``~/.cache/seg/inductor``), so a second run with the
  same checkpoint and buckets skips code generation.
- **auto:** compiling costs seconds per bucket, so ``compile: auto`` compiles only when the
  run has at least ``compile_min_images`` images (``predict.py`` and ``evaluate.py`` know how
  many before they start; the Python API does not, and stays eager unless told), and only nets
  with BatchNorm (:func:`wants_compile`).

The outputs are eager's: bit for bit in bf16 on the CPU, trained BatchNorm included (the
quickstart's U-Net on its 64 images; ``bench/README.md``); in fp32 up to float rounding, where
inductor's fold and eager's BatchNorm round differently (the same U-Net's masks were equal on
the 32 voc-mini photos). A net torch.fx cannot trace keeps its BatchNorm in both paths, which
inductor computes in another order than eager's kernel (44 of 2.8M pixels of a trained U-Net
flipped that way).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from seg.inference.config import InferenceConfig
from seg.inference.masks import device_of
from seg.inference.precast import Bf16Weights, has_batch_norm
from seg.models.blocks import pad_to_multiple

log = logging.getLogger(__name__)

#: Compilations per net before dynamo falls back to eager (its default is 8).
MAX_SHAPES = 64


class Bucketed(nn.Module):
    """A compiled net behind a shape-bucketing pad: (B, 3, H, W) in, the net's outputs at (H, W).

    Args:
        net: The eager module to compile (its parameters are shared, not copied).
        bucket: Pad H and W up to a multiple of this; None: no padding and a static shape
            (fixed-size inputs, e.g. a localizer's resized images, where padding would move the
            box).
        options: Inductor options (``freezing`` and the like).
        pad_mode: The net's padding rule (its ``pad_mode``: reflection for the U-Nets; zeros,
            that of the FCNs, when it has none).
    """

    def __init__(
        self, net: nn.Module, bucket: int | None, options: dict[str, Any], pad_mode: str
    ) -> None:
        super().__init__()
        self.bucket, self.pad_mode = bucket, pad_mode
        # Dynamic height and width: one compilation for every bucket (and batch size).
        self.compiled = torch.compile(net, dynamic=bucket is not None, options=options)

    def forward(self, x: Tensor) -> Any:
        h, w = x.shape[-2:]
        if self.bucket:
            channels_last = x.is_contiguous(memory_format=torch.channels_last)
            x = pad_to_multiple(x, self.bucket, self.pad_mode)  # (B, 3, H', W')
            if channels_last:  # the gather of the reflection returns NCHW
                x = x.contiguous(memory_format=torch.channels_last)
        return crop_outputs(self.compiled(x), h, w)


def crop_outputs(out: Any, h: int, w: int) -> Any:
    """Every spatial output (a (B, C, H', W') tensor, alone or in the net's dict) cropped to
    (H, W); class and box outputs pass unchanged."""
    if isinstance(out, Tensor):
        return out[..., :h, :w] if out.dim() == 4 else out
    if isinstance(out, dict):
        return {k: crop_outputs(v, h, w) for k, v in out.items()}
    return out


def inductor_available(device_type: str) -> bool:
    """Whether inductor can generate kernels here: a C++ compiler for CPUs, Triton for GPUs."""
    if not torch._dynamo.is_dynamo_supported():
        return False
    if device_type == "cuda":
        from torch.utils._triton import has_triton

        return has_triton()
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        return shutil.which(get_cpp_compiler()) is not None
    except Exception:  # no compiler found: inductor raises its own error types
        return False


class CpuCudaNotice(logging.Filter):
    """Drops torch's "No CUDA runtime is found" warning: inductor's C++ build imports
    ``torch.utils.cpp_extension``, which prints it on any machine with a CUDA toolkit and no GPU,
    though a compile for the CPU needs no CUDA. Every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No CUDA runtime is found")


def quiet_cuda_notice(device_type: str) -> None:
    """Before compiling for the CPU: drop that one line (the filter is added once)."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    if device_type == "cpu" and not any(isinstance(f, CpuCudaNotice) for f in logger.filters):
        logger.addFilter(CpuCudaNotice())


def wants_compile(cfg: InferenceConfig, images: int | None, net: nn.Module | None = None) -> bool:
    """Whether to compile ``net`` for a run of ``images`` images (None: unknown).

    ``compile`` true or false decides; ``auto`` compiles when ``images`` is known and at least
    ``compile_min_images``, and the net has BatchNorm: what compiling wins is the elementwise
    ops (the activations, the residual additions) fused into the convolutions, a few percent
    over the eager copy with BatchNorm folded (bench/README.md); the BatchNorm-free VGG nets
    (FCN, the dilation network) ran no faster compiled.
    """
    if cfg.compile in (True, False):
        return cfg.compile
    long_run = images is not None and images >= cfg.compile_min_images
    if not long_run or (net is not None and not has_batch_norm(net)):
        return False
    device = "cpu" if net is None else device_of(net).type
    return inductor_available(device)  # auto never fails for want of a compiler


def inductor_options(device: torch.device) -> dict[str, Any]:
    """Inductor options for inference: freezing everywhere; bf16 rounding where eager rounds;
    CUDA graphs on a GPU (fixed shapes per bucket make them replayable).

    ``emulate_precision_casts``: inductor's fused elementwise kernels (activations, additions)
    otherwise keep fp32 between the ops that eager rounds to bf16 one by one, which flipped
    0.26% of the pixels of the voc-mini photos; with it the outputs are eager's bit for bit (the
    convolutions are the same oneDNN kernels), at the same speed here (bench/README.md).
    """
    options: dict[str, Any] = {"freezing": True, "emulate_precision_casts": True}
    if device.type == "cuda":
        options["triton.cudagraphs"] = True
    return options


def use_cache_dir() -> Path:
    """Point inductor's on-disk cache at ``~/.cache/seg/inductor`` unless the user set
    ``TORCHINDUCTOR_CACHE_DIR``; returns the folder.

    Importing ``torch._dynamo`` (Lightning does, and so does compiling) writes torch's own
    default, ``/tmp/torchinductor_<user>``, into the environment, where a reboot wipes it: that
    value counts as unset.
    """
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir  # no torch imports

    ours = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "seg" / "inductor"
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not current or os.path.abspath(current) == os.path.abspath(default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = current = str(ours)
    folder = Path(current)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def prepare_net(
    net: nn.Module,
    cfg: InferenceConfig,
    images: int | None = None,
    bucket: bool = True,
    owned: bool = False,
) -> nn.Module:
    """The module inference runs: ``net`` itself, or compiled behind shape buckets.

    Args:
        net: Segmentation or localization net in eval mode, on its device.
        cfg: ``compile`` (auto / true / false), ``compile_min_images`` and ``bucket``.
        images: How many images the run will predict (None: unknown).
        bucket: Pad to ``cfg.bucket``; False for nets whose inputs have a fixed size.
        owned: The caller hands ``net`` over and will not use it again: the bf16 copy is made
            of ``net`` itself (changed in place), not of a copy of it.

    Returns:
        A module with the net's call signature and outputs: the compiled net behind shape
        buckets, or eager: with ``cfg.autocast`` a copy of the net (the net itself when
        ``owned``) with BatchNorm folded and its weights in bf16
        (:class:`seg.inference.precast.Bf16Weights`: no autocast casts on every call), else
        ``net`` itself. Compiled, the same module runs behind the buckets.
    """
    compile_ = wants_compile(cfg, images, net)  # asked before the fold takes BatchNorm out
    pad_mode = getattr(net, "pad_mode", "constant")
    eager = Bf16Weights(net, cfg.channels_last, inplace=owned) if cfg.autocast else net
    if not compile_:
        return eager
    cache = use_cache_dir()  # before torch._dynamo's import writes torch's default
    import torch._dynamo

    for key in ("recompile_limit", "cache_size_limit"):  # renamed across torch versions
        if hasattr(torch._dynamo.config, key):
            setattr(torch._dynamo.config, key, max(getattr(torch._dynamo.config, key), MAX_SHAPES))
    device = device_of(eager)
    quiet_cuda_notice(device.type)
    log.info(
        "compiling the net for inference (inductor, freezing; shape buckets of %s px; cache %s); "
        "inference.compile=false skips this",
        cfg.bucket if bucket else "no",
        cache,
    )
    # The eager module itself is compiled: the same folded bf16 weights, the same operations.
    return Bucketed(
        eager, cfg.bucket if bucket else None, inductor_options(device), pad_mode
    ).eval()

"""``python -m seg.export ckpt=PATH format=onnx|torchscript``: a deployable model with dynamic
height and width, checked for parity against PyTorch before it is written.

Parity is measured on random inputs at ``parity.sizes``, other sizes than the export example,
including tiny (<= 16 px, where the U-Net family pads by replication) and non-square ones: the
maximum absolute difference of every output and the argmax agreement of the class logits must
pass ``parity.max_abs`` and ``parity.min_agreement``. The file is written only once parity has
passed, so a failed export never replaces a good file; the output folder is created first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from seg.checkpoint import build_net, load_checkpoint
from seg.cli import run
from seg.data.classes import checkpoint_classes
from seg.errors import ConfigError, ExportError, InputError
from seg.models import OUT
from seg.utils import atomic_path

#: Export format -> the suffix of the default output file.
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}


class TupleOutput(nn.Module):
    """Wraps a net whose forward returns a dict, so exporters see a fixed tuple of tensors."""

    def __init__(self, net: nn.Module, keys: tuple[str, ...]) -> None:
        super().__init__()
        self.net = net
        self.keys = keys

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        out = self.net(x)
        return tuple(out[k] for k in self.keys)


def exportable(net: nn.Module, example: Tensor) -> tuple[nn.Module, tuple[str, ...]]:
    """The net with tuple outputs, and the output names (the keys of the output contract,
    :mod:`seg.models`; a plain tensor output is named ``"out"``)."""
    with torch.no_grad():
        out = net(example)
    if isinstance(out, dict):
        keys = tuple(out)
        return TupleOutput(net, keys).eval(), keys
    return net, (OUT,)


def export_torchscript(net: nn.Module, example: Tensor, path: Path, meta: dict[str, str]) -> Any:
    """Trace to TorchScript, with ``meta`` as the extra file ``seg.json``; returns a callable
    that runs the saved file."""
    traced = torch.jit.trace(net, example, strict=False, check_trace=False)
    traced.save(str(path), _extra_files={"seg.json": json.dumps(meta)})
    loaded = torch.jit.load(str(path))
    return lambda x: _as_tuple(loaded(x))


def export_onnx(
    net: nn.Module, example: Tensor, path: Path, names: tuple[str, ...], meta: dict[str, str]
) -> Any:
    """Export to ONNX with dynamic batch, height and width and ``meta`` in the model's metadata
    properties; returns an onnxruntime runner."""
    import onnx
    import onnxruntime as ort

    dims = {
        0: torch.export.Dim("batch", max=256),
        2: torch.export.Dim.DYNAMIC,
        3: torch.export.Dim.DYNAMIC,
    }
    torch.onnx.export(
        net,
        (example,),
        str(path),
        input_names=["image"],
        output_names=list(names),
        dynamic_shapes={"x": dims},
        dynamo=True,
        external_data=False,
    )
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, meta)
    onnx.save(model, str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: tuple(torch.from_numpy(o) for o in session.run(None, {"image": x.numpy()}))


def export_metadata(ckpt: dict[str, Any], outputs: tuple[str, ...]) -> dict[str, str]:
    """What a deployment needs besides the weights: the class names (index = output channel),
    their colours, the output names and the input normalisation (JSON strings)."""
    names, palette = checkpoint_classes(ckpt)
    steps = ckpt["seg_config"]["augment"]["eval"].get("transforms", [])
    norm = next((t for t in steps if str(t.get("_target_", "")).endswith("Normalize")), {})
    return {
        "classes": json.dumps(list(names)),
        "palette": json.dumps([palette[i : i + 3] for i in range(0, 3 * len(names), 3)]),
        "outputs": json.dumps(list(outputs)),
        "normalize": json.dumps({k: norm.get(k) for k in ("mean", "std")}),
    }


def _as_tuple(out: Any) -> tuple[Tensor, ...]:
    return tuple(out) if isinstance(out, list | tuple) else (out,)


@torch.no_grad()
def parity(
    net: nn.Module, runner: Any, sizes: list[list[int]], names: tuple[str, ...] = (OUT,)
) -> dict[str, Any]:
    """Compare every output of the exported model with PyTorch's on random inputs of ``sizes``.

    Returns:
        ``max_abs_diff`` (over every output), ``per_output`` (name -> max absolute difference)
        and ``argmax_agreement`` of the first output (the class logits) over its dimension 1.

    Raises:
        ExportError: The exported model fails to run at one of the sizes, or returns outputs
            of other shapes.
    """
    per_output = dict.fromkeys(names, 0.0)
    agree, total = 0, 0
    gen = torch.Generator().manual_seed(0)
    for b, h, w in sizes:
        x = torch.randn(b, 3, h, w, generator=gen)
        ref = _as_tuple(net(x))
        try:
            got = runner(x)
        except Exception as err:  # noqa: BLE001  (ONNX Runtime raises its own classes)
            first = " ".join(str(err).split())[:300]
            raise ExportError(
                f"the exported model fails on a {b}x3x{h}x{w} input: {first}"
            ) from err
        for name, r, g in zip(names, ref, got, strict=True):
            if r.shape != g.shape:
                raise ExportError(
                    f"output {name!r} of a {b}x3x{h}x{w} input has shape {tuple(g.shape)}, "
                    f"PyTorch's {tuple(r.shape)}"
                )
            per_output[name] = max(per_output[name], float((r - g).abs().max()))
        agree += int((ref[0].argmax(1) == got[0].argmax(1)).sum())
        total += ref[0].argmax(1).numel()
    return {
        "max_abs_diff": max(per_output.values()),
        "per_output": per_output,
        "argmax_agreement": agree / total,
    }


def output_path(cfg: DictConfig) -> Path:
    """Where the export goes (``output``, or the checkpoint path with the format's suffix),
    checked before any work: its folder is created, and an existing folder is refused.

    Raises:
        ConfigError: ``format`` is not one of :data:`SUFFIXES`.
        InputError: ``output`` is a folder, or its folder cannot be created.
    """
    if cfg.format not in SUFFIXES:
        raise ConfigError(f"format={cfg.format!r} must be one of: {', '.join(SUFFIXES)}")
    path = Path(cfg.output) if cfg.output else Path(cfg.ckpt).with_suffix(SUFFIXES[cfg.format])
    if path.is_dir():
        raise InputError(f"output={path}: is a folder; give the path of the file to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"output={path}: cannot create its folder ({err.strerror})") from err
    return path


def export(cfg: DictConfig) -> dict[str, Any]:
    """Export ``cfg.ckpt`` and check parity (see ``conf/export.yaml``); the file is written only
    when parity passes (a temporary file until then), so a failed export never replaces a good
    one.

    Raises:
        ExportError: Parity failed, or the exported model fails at one of the parity sizes.
    """
    path = output_path(cfg)
    ckpt_path = Path(cfg.ckpt)
    ckpt = load_checkpoint(ckpt_path)
    net = build_net(ckpt, ckpt_path)
    example = torch.randn(1, 3, *cfg.example_size)
    model, names = exportable(net, example)
    meta = export_metadata(ckpt, names)
    with atomic_path(path) as tmp:  # replaces `path` only if nothing below raises
        if cfg.format == "onnx":
            runner = export_onnx(model, example, tmp, names, meta)
        else:
            runner = export_torchscript(model, example, tmp, meta)
        report = parity(model, runner, [list(s) for s in cfg.parity.sizes], names)
        report["passed"] = (
            report["max_abs_diff"] <= cfg.parity.max_abs
            and report["argmax_agreement"] >= cfg.parity.min_agreement
        )
        report["path"] = str(path)
        if not report["passed"]:
            raise ExportError(f"{parity_line(report, cfg)} -> FAIL; nothing was written")
    return report


def parity_line(report: dict[str, Any], cfg: DictConfig) -> str:
    """The parity result in one line."""
    return (
        f"{report['path']}: max |output diff| = {report['max_abs_diff']:.2e} "
        f"(limit {cfg.parity.max_abs}), argmax agreement = {report['argmax_agreement']:.5f} "
        f"(limit {cfg.parity.min_agreement}) at {len(cfg.parity.sizes)} sizes"
    )


def export_and_check(cfg: DictConfig) -> dict[str, Any]:
    """The ``python -m seg.export`` task: export, check parity, print the parity line.

    Raises:
        ExportError: Parity failed (exit status 1); nothing was written.
    """
    report = export(cfg)
    print(f"{parity_line(report, cfg)} -> PASS")
    return report


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    run(export_and_check, cfg)


if __name__ == "__main__":
    main()

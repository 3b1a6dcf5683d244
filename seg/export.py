"""``python -m seg.export ckpt=PATH format=onnx|torchscript``: a deployable model with dynamic
height and width, checked for parity against PyTorch before it is reported as written.

Parity is measured on random inputs at sizes other than the export example: the maximum
absolute logit difference and the argmax agreement must pass ``parity.max_abs`` and
``parity.min_agreement``.
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
from seg.errors import ConfigError, ExportError
from seg.models import OUT


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
def parity(net: nn.Module, runner: Any, sizes: list[list[int]]) -> dict[str, float]:
    """Max absolute difference of the first output and its argmax agreement over ``sizes``."""
    max_abs, agree, total = 0.0, 0, 0
    gen = torch.Generator().manual_seed(0)
    for b, h, w in sizes:
        x = torch.randn(b, 3, h, w, generator=gen)
        ref = _as_tuple(net(x))[0]
        got = runner(x)[0]
        max_abs = max(max_abs, float((ref - got).abs().max()))
        agree += int((ref.argmax(1) == got.argmax(1)).sum())
        total += ref.argmax(1).numel()
    return {"max_abs_diff": max_abs, "argmax_agreement": agree / total}


def export(cfg: DictConfig) -> dict[str, Any]:
    """Export ``cfg.ckpt`` and check parity; see ``conf/export.yaml``."""
    ckpt_path = Path(cfg.ckpt)
    ckpt = load_checkpoint(ckpt_path)
    net = build_net(ckpt, ckpt_path)
    example = torch.randn(1, 3, *cfg.example_size)
    model, names = exportable(net, example)
    if cfg.format not in ("onnx", "torchscript"):
        raise ConfigError(f"format={cfg.format!r} must be 'onnx' or 'torchscript'")
    suffix = ".onnx" if cfg.format == "onnx" else ".pt"
    path = Path(cfg.output) if cfg.output else ckpt_path.with_suffix(suffix)
    meta = export_metadata(ckpt, names)
    if cfg.format == "onnx":
        runner = export_onnx(model, example, path, names, meta)
    else:
        runner = export_torchscript(model, example, path, meta)
    report = parity(model, runner, [list(s) for s in cfg.parity.sizes])
    report["passed"] = (
        report["max_abs_diff"] <= cfg.parity.max_abs
        and report["argmax_agreement"] >= cfg.parity.min_agreement
    )
    report["path"] = str(path)
    return report


def export_and_check(cfg: DictConfig) -> dict[str, Any]:
    """The ``python -m seg.export`` task: export, print the parity line, fail when it fails.

    Raises:
        ExportError: Parity failed (exit status 1).
    """
    report = export(cfg)
    line = (
        f"{report['path']}: max |logit diff| = {report['max_abs_diff']:.2e} "
        f"(limit {cfg.parity.max_abs}), argmax agreement = {report['argmax_agreement']:.5f} "
        f"(limit {cfg.parity.min_agreement})"
    )
    if not report["passed"]:
        raise ExportError(f"{line} -> FAIL")
    print(f"{line} -> PASS")
    return report


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    run(export_and_check, cfg)


if __name__ == "__main__":
    main()

"""One contract for every ``conf/model/*.yaml``, as smp's shared model tester does it.

A new model config gets these tests by existing; the per-family files (``test_fcn.py``,
``test_unet.py``, ``test_dilation.py``, ``test_localization_net.py``) only add what is special
about a family (paper layouts, skip fusion, identity init, box selection).

1. The net follows the output contract of :mod:`seg.models` at odd sizes, its backward pass
   reaches every trainable parameter, and its parameter count is the one its config states.
2. It trains, evaluates, predicts and exports through the entry points exactly as a user runs
   them. The small models run in the default suite; the VGG16 and other large ones are slow.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONF, MODELS, compose, run_entry
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

from seg.checkpoint import _uninitialised, build_net
from seg.models import BOX, BOX_ALL, CLS, has_seg_logits, seg_logits
from seg.modules.localization import LocalizationModule

CONTRACT_KEYS = {"out", "aux", CLS, BOX, BOX_ALL}
#: Models whose end-to-end run takes under a minute here: the default suite runs them.
SMALL = {"unet_mobilenetv2", "localizer", "localizer_mobilenetv2", "tv_fcn_resnet50"}


def is_localization(model: str) -> bool:
    return issubclass(
        get_class(compose("train", f"model={model}").model._target_), LocalizationModule
    )


def stated_params(model: str) -> float:
    """Millions of parameters stated in the first-line comment of the model's config."""
    header = (CONF / "model" / f"{model}.yaml").read_text().splitlines()[0]
    return float(re.search(r"Params: ([\d.]+)M", header).group(1))


def check_output(out, batch: int, size: tuple[int, int], model: str) -> None:
    """The output contract of seg.models, for this model's task."""
    if isinstance(out, dict):
        assert set(out) <= CONTRACT_KEYS, sorted(out)
    if is_localization(model):
        k = compose("train", f"model={model}").model.num_classes
        assert out[CLS].shape == (batch, k) and out[BOX].shape == (batch, 4)
        assert out[BOX].min() >= 0 and out[BOX].max() <= 1
    else:
        assert has_seg_logits(out) and seg_logits(out).shape == (batch, 21, *size)


@pytest.mark.parametrize("model", MODELS)
def test_output_contract_backward_and_parameter_count(model: str) -> None:
    torch.manual_seed(0)
    net = instantiate(compose("train", f"model={model}").model.net)
    n_params = sum(p.numel() for p in net.parameters())
    assert abs(n_params / 1e6 - stated_params(model)) <= 0.05, n_params
    net.eval()
    with torch.no_grad():
        check_output(net(torch.randn(1, 3, 1, 1)), 1, (1, 1), model)  # the smallest image
    net.train()
    x = torch.randn(2, 3, 45, 67)  # odd, non-square, not a multiple of any stride
    out = net(x)
    check_output(out, 2, (45, 67), model)
    tensors = out.values() if isinstance(out, dict) else [out]
    sum(t.float().square().mean() for t in tensors).backward()
    trainable = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    missing = [n for n, p in trainable if p.grad is None]
    assert not missing, missing[:5]
    assert all(torch.isfinite(p.grad).all() for _, p in trainable)


@pytest.mark.parametrize("model", MODELS)
def test_rebuilt_net_skips_the_random_init_and_equals_the_trained_one(model: str) -> None:
    """``build_net`` builds on the meta device (no wasted initialisation): the strict load must
    restore every tensor the net uses."""
    cfg = compose("train", f"model={model}")
    torch.manual_seed(0)
    net = instantiate(cfg.model.net).eval()
    config = OmegaConf.to_container(cfg, resolve=True)
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    assert _uninitialised(config["model"]["net"]) is not None  # the fast path, for every model
    rebuilt = build_net({"seg_config": config, "state_dict": state})
    x = torch.randn(1, 3, 45, 67)
    with torch.no_grad():
        want, got = net(x), rebuilt(x)
    pairs = (
        zip(want.values(), got.values(), strict=True) if isinstance(want, dict) else [(want, got)]
    )
    assert all(torch.equal(a, b) for a, b in pairs)


def test_rebuilt_net_takes_the_checkpoint_tensors_in_the_layout_and_dtype_asked() -> None:
    """The meta-device build takes the loaded tensors as its own: no second copy of the weights
    when they are in the layout asked (train.py saves a conv net channels_last, the layout
    inference runs in). By default the weights come back contiguous, as the constructor lays
    them out (a channels_last weight made torch.export specialise the batch to 1), and a bf16
    checkpoint (``precision=bf16-true``) still gives an fp32 net, as a copy into the
    initialised net did."""
    cfg = compose("train", "model=unet_mobilenetv2")
    torch.manual_seed(0)
    net = instantiate(cfg.model.net).eval().to(memory_format=torch.channels_last)
    config = OmegaConf.to_container(cfg, resolve=True)
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    rebuilt = build_net({"seg_config": config, "state_dict": state}, "x", torch.channels_last)
    pointers = {v.data_ptr() for v in state.values()}
    assert all(p.data_ptr() in pointers for p in rebuilt.parameters())
    rebuilt = build_net({"seg_config": config, "state_dict": state})
    assert all(p.is_contiguous() for p in rebuilt.parameters())
    half = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()}
    rebuilt = build_net({"seg_config": config, "state_dict": half})
    assert {p.dtype for p in rebuilt.parameters()} == {torch.float32}
    x = torch.randn(1, 3, 45, 67)
    with torch.no_grad():
        want = net.to(torch.bfloat16).float().to(memory_format=torch.contiguous_format)(x)
        assert torch.equal(rebuilt(x), want)


class PlainTensorNet(nn.Module):
    """A tensor the state dict does not hold: a plain attribute and a non-persistent buffer."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 21, 1)
        if kind == "attribute":
            self.offset = torch.full((21, 1, 1), 2.0)
        else:
            self.register_buffer("offset", torch.full((21, 1, 1), 2.0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.offset


@pytest.mark.parametrize("kind", ["attribute", "buffer"])
def test_rebuilt_net_with_tensors_outside_the_state_dict_is_initialised(kind: str) -> None:
    node = {"_target_": f"{__name__}.PlainTensorNet", "kind": kind}
    assert _uninitialised(node) is None  # built normally: the tensor keeps its value
    net = PlainTensorNet(kind)
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    rebuilt = build_net({"seg_config": {"model": {"net": node}}, "state_dict": state})
    x = torch.randn(1, 3, 4, 5)
    assert torch.equal(rebuilt(x), net(x))


def task_overrides(model: str, root: Path) -> list[str]:
    """Data and augmentation for the model's task, on the bundled sample."""
    data, augment = ("sample_loc", "loc") if is_localization(model) else ("sample", "sample")
    return [f"data={data}", f"augment={augment}", f"data.root={root}", "data.num_workers=0"]


@pytest.mark.parametrize(
    "model", [m if m in SMALL else pytest.param(m, marks=pytest.mark.slow) for m in MODELS]
)
def test_train_evaluate_predict_export_as_a_user_runs_them(
    model: str, tmp_path: Path, sample_root: Path
) -> None:
    task = task_overrides(model, sample_root)
    run = tmp_path / "run"
    run_entry(
        "train.py",
        f"model={model}",
        *task,
        "augment.crop_size=64",
        "data.batch_size=2",
        "trainer.max_steps=1",
        "trainer.limit_val_batches=1",
        "validate_best=false",
        "logger=csv",
        f"hydra.run.dir={run}",
    )
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()

    run_entry(
        "evaluate.py",
        f"ckpt={ckpt}",
        *task,
        "trainer.limit_test_batches=2",
        f"hydra.run.dir={tmp_path / 'eval'}",
    )
    record = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert record["num_images"] > 0

    images = sorted((sample_root / "VOC2012" / "JPEGImages").glob("*.jpg"))[:2]
    src = tmp_path / "in"
    src.mkdir()
    for path in images:
        (src / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "out"
    proc = run_entry("predict.py", f"ckpt={ckpt}", f"input={src}", f"output={out}")
    assert "2 written" in proc.stdout
    if is_localization(model):
        boxes = json.loads((out / "boxes.json").read_text())
        assert len(boxes) == 2
    else:
        for path in images:
            mask = np.array(Image.open(out / f"{path.stem}.png"))
            assert mask.shape == np.array(Image.open(path)).shape[:2] and mask.max() <= 20

    onnx = tmp_path / "model.onnx"
    proc = run_entry(
        "-m seg.export",
        f"ckpt={ckpt}",
        "format=onnx",
        f"output={onnx}",
        "example_size=[64,96]",
        "parity.sizes=[[1,45,67],[2,70,33]]",
        f"hydra.run.dir={tmp_path / 'export'}",
    )
    assert onnx.is_file() and "PASS" in proc.stdout

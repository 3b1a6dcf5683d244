"""Eager bf16 inference on weights rounded to bf16 once (``seg.inference.precast``) gives the
autocast net's outputs bit for bit, for every model config, and leaves the net alone."""

from __future__ import annotations

import pytest
import torch
from conftest import MODELS, compose
from hydra.utils import instantiate

from seg.inference import InferenceConfig, predict_probs, prepare_net
from seg.inference.precast import Bf16Weights


def outputs(out) -> list[torch.Tensor]:
    return list(out.values()) if isinstance(out, dict) else [out]


@pytest.mark.parametrize("model", MODELS)
def test_bf16_weights_give_the_autocast_outputs_exactly(model: str) -> None:
    torch.manual_seed(0)
    net = instantiate(compose("train", f"model={model}").model.net).eval()
    with torch.no_grad():  # zero-initialised layers (FCN's scores) would hide every weight
        for p in net.parameters():
            if not p.any():
                p.normal_(0.0, 0.01)
    net = net.to(memory_format=torch.channels_last)  # as inference runs it
    before = {k: v.clone() for k, v in net.state_dict().items()}  # keeps the memory format
    x = torch.randn(2, 3, 45, 67).contiguous(memory_format=torch.channels_last)  # odd sizes
    with torch.inference_mode():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            want = outputs(net(x))
        got = outputs(Bf16Weights(net.to(memory_format=torch.contiguous_format), True)(x))
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)
    state = net.state_dict()  # the net itself keeps its fp32 weights
    assert all(torch.equal(state[k], v) and state[k].dtype == v.dtype for k, v in before.items())


def test_prepare_net_precasts_only_under_autocast() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    assert prepare_net(net, InferenceConfig(autocast=False)) is net
    runner = prepare_net(net, InferenceConfig(autocast=True, channels_last=True))
    assert isinstance(runner, Bf16Weights)
    assert runner.net[0].weight.dtype == torch.bfloat16  # the convolution's
    assert runner.net[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert net[0].weight.dtype == torch.float32 and net[0].weight.is_contiguous()
    assert runner.net[1].weight.dtype == torch.float32  # BatchNorm stays fp32, as in autocast
    x = torch.randn(1, 3, 9, 11)
    cfg = InferenceConfig(autocast=True, channels_last=True)
    assert torch.equal(predict_probs(runner, x, cfg), predict_probs(net, x, cfg))

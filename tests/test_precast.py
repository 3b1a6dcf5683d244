"""Eager bf16 inference on a copy of the net (``seg.inference.precast``): BatchNorm folded into
the convolutions (the fp32 outputs unchanged up to rounding), then the weights rounded to bf16
once, giving the folded net's autocast outputs bit for bit, for every model config; the net
itself is left alone."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import MODELS, compose
from hydra.utils import instantiate

from seg.inference import InferenceConfig, predict_probs, prepare_net
from seg.inference.precast import Bf16Weights, fold_batch_norm, has_batch_norm


def outputs(out) -> list[torch.Tensor]:
    return list(out.values()) if isinstance(out, dict) else [out]


def trained_looking(model: str) -> torch.nn.Module:
    """The model's net in eval mode with no zero layer (FCN's zero-initialised scores would hide
    every weight) and BatchNorm statistics and affine maps away from the initial identity."""
    torch.manual_seed(0)
    net = instantiate(compose("train", f"model={model}").model.net).eval()
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(0.0, 0.01)
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
    return net


@pytest.mark.parametrize("model", MODELS)
def test_batch_norm_folds_into_the_convolutions(model: str) -> None:
    net = trained_looking(model)
    had = has_batch_norm(net)
    folded = fold_batch_norm(net)
    assert folded is not net and not has_batch_norm(folded)  # every one folded
    assert has_batch_norm(net) == had  # the net keeps its own
    x = torch.randn(2, 3, 45, 67)  # odd sizes
    with torch.inference_mode():
        for a, b in zip(outputs(folded(x)), outputs(net(x)), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


@pytest.mark.parametrize("model", MODELS)
def test_bf16_weights_give_the_folded_nets_autocast_outputs_exactly(model: str) -> None:
    net = trained_looking(model).to(memory_format=torch.channels_last)  # as inference runs it
    before = {k: v.clone() for k, v in net.state_dict().items()}  # keeps the memory format
    x = torch.randn(2, 3, 45, 67).contiguous(memory_format=torch.channels_last)  # odd sizes
    with torch.inference_mode():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            want = outputs(fold_batch_norm(net)(x))
        got = outputs(Bf16Weights(net.to(memory_format=torch.contiguous_format), True)(x))
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)
    state = net.state_dict()  # the net itself keeps its fp32 weights
    assert all(torch.equal(state[k], v) and state[k].dtype == v.dtype for k, v in before.items())


class Branchy(torch.nn.Module):
    """A net torch.fx cannot trace: Python control flow on a tensor's values."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return y if y.mean() > 0 else -y


def test_an_untraceable_net_is_copied_unfolded(caplog: pytest.LogCaptureFixture) -> None:
    net = Branchy().eval()
    with caplog.at_level(logging.INFO, logger="seg.inference.precast"):
        copy = fold_batch_norm(net)
    assert "BatchNorm left unfolded: torch.fx cannot trace Branchy" in caplog.text
    assert copy is not net and has_batch_norm(copy)
    x = torch.randn(1, 3, 9, 11)
    assert torch.equal(copy(x), net(x))


def test_prepare_net_precasts_only_under_autocast() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    net[1].running_var.fill_(4.0)  # a BatchNorm that is not the identity
    assert prepare_net(net, InferenceConfig(autocast=False)) is net
    runner = prepare_net(net, InferenceConfig(autocast=True, channels_last=True))
    assert isinstance(runner, Bf16Weights) and not has_batch_norm(runner)
    conv = next(m for m in runner.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.dtype == torch.bfloat16
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert net[0].weight.dtype == torch.float32 and net[0].weight.is_contiguous()
    assert has_batch_norm(net)
    x = torch.randn(1, 3, 9, 11)
    cfg = InferenceConfig(autocast=True, channels_last=True)
    torch.testing.assert_close(
        predict_probs(runner, x, cfg), predict_probs(net, x, cfg), rtol=0, atol=2e-2
    )

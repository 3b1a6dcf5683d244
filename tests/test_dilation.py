"""Dilated front end and context module (https://arxiv.org/abs/1511.07122): identity
initialisation, receptive fields, parameter counts, sizes and the Hydra model configs."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, compose
from hydra.utils import instantiate
from torch import nn

from seg.models.dilation import (
    CONTEXT_DILATIONS,
    ContextModule,
    DilationFrontEnd,
    DilationNet,
    identity_init_,
)
from seg.models.receptive_field import receptive_field

C = 21
# Table 1 of the paper: receptive field after each context layer.
TABLE1_FIELDS = (3, 5, 9, 17, 33, 65, 67, 67)


@pytest.fixture(scope="module")
def frontend() -> DilationFrontEnd:
    torch.manual_seed(0)
    return DilationFrontEnd(C, dropout=0.0).eval()


def context_param_count(widths: tuple[int, ...], c: int = C) -> int:
    """Weights + biases of layers 1-7 (3x3) and layer 8 (1x1) with c_i = widths[i] * c."""
    channels = [c] + [w * c for w in widths]
    kernels = [9] * 7 + [1]
    return sum(k * a * b + b for k, a, b in zip(kernels, channels[:-1], channels[1:], strict=True))


def test_basic_context_is_identity_at_init() -> None:
    """Eq. 4: exact identity on non-negative input (class scores after truncation)..."""
    ctx = ContextModule(C, "basic")
    x = 5 * torch.rand(2, C, 19, 13)
    assert torch.equal(ctx(x), x)
    # ... and max(x, 0) in general, since layer 1 is followed by ReLU as in the paper.
    x = torch.randn(2, C, 19, 13)
    assert torch.equal(ctx(x), x.clamp(min=0))


def test_large_context_is_identity_at_init() -> None:
    """Eq. 5 without noise is exact; with the default sigma it stays close (and breaks the
    symmetry between the channels that copy one class)."""
    torch.manual_seed(0)
    x = 5 * torch.rand(2, C, 19, 13)
    torch.testing.assert_close(ContextModule(C, "large", noise_std=0.0)(x), x)
    noisy = ContextModule(C, "large")
    assert (noisy(x) - x).abs().max() < 0.05 * x.max()
    w1 = noisy.layers[0][0].weight  # (2C, C, 3, 3): outputs 2a and 2a+1 copy class a
    assert not torch.equal(w1[0], w1[1])


def test_eq5_weights() -> None:
    conv = nn.Conv2d(2 * C, 4 * C, 3, padding=1)  # layer 3 of the large module: c_i=2C, c_i+1=4C
    identity_init_(conv, C, noise_std=0.0)
    centre = conv.weight[:, :, 1, 1]  # (4C, 2C)
    a, b = torch.meshgrid(torch.arange(2 * C), torch.arange(4 * C), indexing="xy")
    expected = torch.where(a // 2 == b // 4, C / (4 * C), 0.0)  # floor(aC/c_i) == floor(bC/c_i+1)
    assert torch.equal(centre, expected)
    assert not conv.weight[:, :, [0, 2]].any() and not conv.bias.any()


@pytest.mark.parametrize("variant", ["basic", "large"])
def test_context_receptive_fields_match_table1(variant: str) -> None:
    """Back-propagate from the centre output with random positive weights: after layer k the
    field is exactly TABLE1_FIELDS[k-1], 67x67 for the whole module."""
    torch.manual_seed(0)
    ctx = ContextModule(C if variant == "basic" else 2, variant)
    with torch.no_grad():
        for p in ctx.parameters():
            p.copy_(torch.rand_like(p) + 0.1)  # positive: every ReLU is on, no cancellation
    for k, field in enumerate(TABLE1_FIELDS, start=1):
        prefix = ctx.layers[:k]
        assert receptive_field(prefix, 81, geometric=False) == (field, field), k
        assert receptive_field(prefix, (81, 75)) == (field, field), k  # geometric mode agrees
    assert CONTEXT_DILATIONS == (1, 1, 2, 4, 8, 16, 1, 1)


def test_identity_initialised_context_sees_one_pixel() -> None:
    """With the exact identity init the measured (weight-dependent) field is 1x1; the
    architecture's field is still 67x67 (geometric mode)."""
    ctx = ContextModule(C, "basic")
    assert receptive_field(ctx, 81, geometric=False) == (1, 1)
    assert receptive_field(ctx, 81) == (67, 67)


def test_context_param_counts() -> None:
    basic = sum(p.numel() for p in ContextModule(C, "basic").parameters())
    large = sum(p.numel() for p in ContextModule(C, "large").parameters())
    assert basic == context_param_count((1,) * 8) == 64 * C**2 + 8 * C == 28_392  # paper: 64C^2
    assert large == context_param_count((2, 2, 4, 8, 16, 32, 32, 1)) == 6_803_139


@pytest.mark.parametrize("size", [(13, 7), (1, 1), (42, 33)])
def test_context_keeps_size(size: tuple[int, int]) -> None:
    assert ContextModule(C, "large")(torch.rand(1, C, *size)).shape == (1, C, *size)


def test_context_argument_errors(frontend: DilationFrontEnd) -> None:
    with pytest.raises(ValueError, match="variant"):
        ContextModule(C, "huge")
    with pytest.raises(ValueError, match="channels"):
        DilationNet(frontend, ContextModule(5))


def test_frontend_layout(frontend: DilationFrontEnd) -> None:
    """pool4/pool5 removed, conv5 dilated by 2, fc6 7x7 dilated by 4: output stride 8."""
    pools = [m for m in frontend.encoder.features if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 3
    convs = [m for m in frontend.encoder.features if isinstance(m, nn.Conv2d)]
    assert [c.dilation[0] for c in convs] == [1] * 10 + [2] * 3
    assert frontend.encoder.fc6.dilation == (4, 4) and frontend.encoder.fc6.kernel_size == (7, 7)
    with torch.no_grad():
        assert frontend.scores(torch.randn(1, 3, 64, 41)).shape == (1, C, 8, 6)


@pytest.mark.parametrize("size", [(93, 71), (23, 23), (67, 45), (1, 1)])
def test_output_size_equals_input_size(frontend: DilationFrontEnd, size: tuple[int, int]) -> None:
    """Any size works (minimum 1x1): the input is padded to a multiple of 8. (333x250 is
    covered by the slow config test below.)"""
    net = DilationNet(frontend, ContextModule(C, "basic"))
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        assert frontend(x).shape == net(x).shape == (1, C, *size)
        # The basic context starts as the identity on scores >= 0 (max(s, 0) in general).
        scores = frontend.scores(x)
        assert torch.equal(net.context(scores), scores.clamp(min=0))


def test_dilation_net_without_context_equals_frontend(frontend: DilationFrontEnd) -> None:
    x = torch.randn(1, 3, 45, 37)
    with torch.no_grad():
        assert torch.equal(DilationNet(frontend)(x), frontend(x))
    assert DilationNet(frontend).encoder is frontend.encoder


# ---------------------------------------------------------------- Hydra model configs
CONFIGS = [("dilation_frontend", ()), ("dilation_context", ()), ("dilation_context", ("large",))]


def compose_model(name: str, context: tuple[str, ...] = ()):
    """``cfg.model`` of ``train.yaml`` with ``model=<name>`` (and ``model.context=<variant>``)."""
    overrides = [f"model={name}", *(f"model.context={v}" for v in context)]
    return compose("train", *overrides).model


def stated_params(name: str, context: tuple[str, ...]) -> float:
    """Params in millions from the first-line comment (``large: X.XM`` for the large context)."""
    header = (REPO / "conf" / "model" / f"{name}.yaml").read_text().splitlines()[0]
    key = "large" if context else "Params"
    return float(re.search(rf"{key}: ([\d.]+)M", header).group(1))


@pytest.mark.parametrize(("name", "context"), CONFIGS)
def test_config_params_and_odd_size(name: str, context: tuple[str, ...]) -> None:
    """Forward only: on CPU the backward of fc6 (7x7, dilation 4, padding 12) on a map smaller
    than its padding takes ~90 s in oneDNN; backward is covered by the slow test below."""
    cfg = compose_model(name, context)
    net = instantiate(cfg.net)
    n_params = sum(p.numel() for p in net.parameters())
    assert abs(n_params / 1e6 - stated_params(name, context)) <= 0.05, n_params
    if name == "dilation_context":
        assert net.context.variant == cfg.context == (context[0] if context else "basic")
    assert net.encoder.fc6.dilation == (4, 4)
    with torch.no_grad():
        assert net(torch.randn(2, 3, 67, 45)).shape == (2, C, 67, 45)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "context"), CONFIGS)
def test_config_forward_backward_full_size(name: str, context: tuple[str, ...]) -> None:
    """333x250, batch 2 on CPU (~50-60 s: fc6 runs at stride 8)."""
    net = instantiate(compose_model(name, context).net)
    y = net(torch.randn(2, 3, 333, 250))
    assert y.shape == (2, C, 333, 250)
    F.cross_entropy(y, torch.randint(0, C, (2, 333, 250))).backward()
    assert torch.isfinite(net.encoder.fc6.weight.grad).all()

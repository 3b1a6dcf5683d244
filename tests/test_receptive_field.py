"""Empirical receptive field on stacks whose field is known in closed form."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from seg.models.receptive_field import receptive_field


def conv(c_in: int, c_out: int, k: int | tuple[int, int], **kw: int) -> nn.Conv2d:
    """A "same"-padded convolution (for stride 1)."""
    kh, kw_ = (k, k) if isinstance(k, int) else k
    d = kw.get("dilation", 1)
    return nn.Conv2d(c_in, c_out, k, padding=(d * (kh // 2), d * (kw_ // 2)), **kw)


def theoretical(layers: list[tuple[int, int, int]]) -> int:
    """r = 1 + sum_l (k_l - 1) d_l prod_{m<l} s_m for (kernel, stride, dilation) triples."""
    field, jump = 1, 1
    for k, s, d in layers:
        field += (k - 1) * d * jump
        jump *= s
    return field


@pytest.mark.parametrize("geometric", [True, False])
def test_three_3x3_convs_give_7x7(geometric: bool) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(conv(3, 8, 3), nn.ReLU(), conv(8, 8, 3), nn.ReLU(), conv(8, 4, 3))
    assert receptive_field(net, 21, geometric=geometric) == (7, 7)


def test_dilated_3x3_gives_5x5() -> None:
    assert receptive_field(conv(3, 4, 3, dilation=2), 21) == (5, 5)


def test_kernel_1_gives_1x1() -> None:
    assert receptive_field(conv(3, 4, 1), 9) == (1, 1)


def test_asymmetric_kernel() -> None:
    assert receptive_field(conv(3, 4, (3, 5)), 15) == (3, 5)


@pytest.mark.parametrize("size", [(61, 61), (64, 57)])
def test_strided_stack_matches_formula(size: tuple[int, int]) -> None:
    layers = [(3, 2, 1), (3, 2, 1), (5, 1, 1), (3, 1, 2)]  # (kernel, stride, dilation)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        conv(4, 4, 5),
        conv(4, 2, 3, dilation=2),
    )
    expected = theoretical(layers)
    assert expected == 1 + 2 + 4 + 16 + 16
    assert receptive_field(net, size) == (expected, expected)


def test_max_pooling_counts_its_whole_window() -> None:
    """conv3 -> maxpool2 -> conv3: 3 + 1 + 2*2 = 8."""
    net = nn.Sequential(conv(3, 4, 3), nn.MaxPool2d(2), conv(4, 4, 3))
    assert (
        receptive_field(net, 32)
        == (theoretical([(3, 1, 1), (2, 2, 1), (3, 1, 1)]),) * 2
        == (
            8,
            8,
        )
    )


def test_zero_weights_need_geometric_mode() -> None:
    """Zero-initialised layers (FCN score layers) give no gradient with the real weights."""
    net = nn.Sequential(conv(3, 4, 3), nn.ReLU(), conv(4, 2, 3))
    nn.init.zeros_(net[2].weight)
    with pytest.raises(ValueError, match="zero"):
        receptive_field(net, 15, geometric=False)
    assert receptive_field(net, 15) == (5, 5)


def test_model_is_not_modified() -> None:
    net = nn.Sequential(conv(3, 4, 3), nn.BatchNorm2d(4), nn.MaxPool2d(2), nn.Dropout(0.5))
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    receptive_field(net, 16)
    assert net.training and isinstance(net[2], nn.MaxPool2d)
    after = net.state_dict()
    assert all(
        torch.equal(before[k], after[k]) and after[k].dtype == before[k].dtype for k in after
    )


def test_dict_output_uses_the_per_pixel_logits() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.small, self.big = conv(3, 2, 3), conv(3, 2, 5)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"cls": self.small(x).mean((2, 3)), "out": self.big(x)}

    assert receptive_field(Net(), 21) == (5, 5)


def test_clipped_field_warns() -> None:
    with pytest.warns(UserWarning, match="border"):
        assert receptive_field(conv(3, 2, 7), 5) == (5, 5)


def test_in_channels_inferred_or_required() -> None:
    assert receptive_field(conv(5, 2, 3), 9) == (3, 3)  # 5 input channels inferred
    with pytest.raises(ValueError, match="in_channels"):
        receptive_field(nn.AvgPool2d(3, 1, 1), 9)
    assert receptive_field(nn.AvgPool2d(3, 1, 1), 9, in_channels=2) == (3, 3)


def test_relu6_after_residual_sums_counts_every_pixel() -> None:
    """MobileNetV2: residual sums double the probe's averages until a ReLU6 would saturate."""

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = conv(4, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.conv(x)

    net = nn.Sequential(conv(3, 4, 1), *(Residual() for _ in range(4)), nn.ReLU6(), conv(4, 4, 3))
    assert receptive_field(net, 31) == (11, 11)  # 1 + 4 * 2 + 2

"""U-Net: paper parameter count, odd sizes, transposed-conv decoder, concatenated skips, configs."""

from __future__ import annotations

import re
import time

import hydra
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, compose
from torch import nn

from seg.models.blocks import pad_to_multiple
from seg.models.encoders import MobileNetV2Encoder
from seg.models.unet import EncoderUNet, UNet

MY_CONFIGS = ["unet", "unet_resnet34", "unet_mobilenetv2", "localizer"]


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def paper_unet_params(in_ch: int = 3, classes: int = 21, base: int = 64, depth: int = 4) -> int:
    """Parameters of the paper's U-Net without BN: 3x3 convs with bias, 2x2 up-convs, 1x1 head."""

    def conv(c_in: int, c_out: int, k: int) -> int:
        return c_in * c_out * k * k + c_out

    chans = [base * 2**i for i in range(depth + 1)]  # 64 .. 1024
    total, c_prev = 0, in_ch
    for c in chans:  # contracting path: two 3x3 convs per level
        total += conv(c_prev, c, 3) + conv(c, c, 3)
        c_prev = c
    for c in reversed(chans[:-1]):  # expanding path: up-conv 2C->C, concat -> 2C, two 3x3 convs
        total += conv(2 * c, c, 2) + conv(2 * c, c, 3) + conv(c, c, 3)
    return total + conv(base, classes, 1)


def test_paper_unet_parameter_count() -> None:
    expected = paper_unet_params()
    assert n_params(UNet(batch_norm=False)) == expected
    assert abs(expected - 31.0e6) < 0.1e6  # 31,033,045
    # BN replaces each conv bias (C) by gamma and beta (2C): +C per 3x3 conv.
    extra = 2 * sum(64 * 2**i for i in range(5)) + 2 * sum(64 * 2**i for i in range(4))
    assert n_params(UNet(batch_norm=True)) == expected + extra


@pytest.mark.parametrize("size", [(23, 23), (33, 17), (5, 7), (32, 48)])
@pytest.mark.parametrize("batch_norm", [True, False])
def test_unet_any_size(size: tuple[int, int], batch_norm: bool) -> None:
    net = UNet(base_channels=4, batch_norm=batch_norm)
    out = net(torch.randn(2, 3, *size))
    assert out.shape == (2, 21, *size)


def test_unet_padding_equals_explicit_pad_then_crop() -> None:
    torch.manual_seed(0)
    net = UNet(base_channels=4, depth=3).eval()
    x = torch.randn(1, 3, 21, 13)
    padded = F.pad(x, (0, 3, 0, 3), mode="reflect")  # 24 x 16: multiples of 8
    with torch.no_grad():
        expected = net(padded)[..., :21, :13]
        torch.testing.assert_close(net(x), expected)
        # Zero padding is a different input: the border logits change.
        zero = UNet(base_channels=4, depth=3, pad_mode="constant").eval()
        zero.load_state_dict(net.state_dict())
        assert not torch.allclose(zero(x), expected)


def test_pad_to_multiple_values() -> None:
    x = torch.arange(12.0).view(1, 1, 3, 4)
    y = pad_to_multiple(x, 4, "reflect")
    assert y.shape == (1, 1, 4, 4)
    torch.testing.assert_close(y[..., 3, :], x[..., 1, :])  # reflect: row 3 mirrors row 1
    assert torch.equal(pad_to_multiple(y, 4, "reflect"), y)  # already a multiple: untouched
    tiny = pad_to_multiple(torch.ones(1, 1, 2, 2), 8, "reflect")  # pad > side: replicate
    assert tiny.shape == (1, 1, 8, 8) and torch.all(tiny == 1)
    zeros = pad_to_multiple(torch.ones(1, 1, 3, 5), 4)  # default: zero padding
    assert zeros.shape == (1, 1, 4, 8) and zeros.sum() == 15


def test_traced_unet_keeps_dynamic_size() -> None:
    """The padding is scripted under tracing, so a trace at one size runs at any other."""
    net = UNet(num_classes=3, base_channels=4, depth=3).eval()
    traced = torch.jit.trace(net, torch.randn(1, 3, 32, 32), check_trace=False)
    x = torch.randn(2, 3, 45, 37)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), net(x))


def test_decoder_is_transposed_convs_without_interpolation(monkeypatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("U-Net must not interpolate")

    monkeypatch.setattr(F, "interpolate", forbidden)
    monkeypatch.setattr(F, "upsample", forbidden)
    for net, depth in [(UNet(base_channels=4), 4), (EncoderUNet(MobileNetV2Encoder()), 5)]:
        ups = [m for m in net.decoder.modules() if isinstance(m, nn.ConvTranspose2d)]
        assert len(ups) == depth
        assert all(m.kernel_size == (2, 2) and m.stride == (2, 2) for m in ups)
        assert not any(isinstance(m, nn.Upsample) for m in net.modules())
        assert net(torch.randn(1, 3, 37, 29)).shape == (1, 21, 37, 29)


def test_skips_are_concatenated() -> None:
    net = UNet(base_channels=4, depth=4)
    seen: list[int] = []
    for block in net.decoder.blocks:
        block.conv.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    net(torch.randn(1, 3, 32, 32))
    # Up-conv output C plus the skip C: 32+32, 16+16, 8+8, 4+4.
    assert seen == [64, 32, 16, 8]


def test_skip_features_reach_the_output() -> None:
    torch.manual_seed(0)
    net = UNet(base_channels=4, depth=2).eval()
    feats = net.encoder(torch.randn(1, 3, 16, 16))
    with torch.no_grad():
        base = net.decoder(feats)
        feats[0] = feats[0] + 1.0  # change only the finest skip
        assert not torch.allclose(net.decoder(feats), base)


def test_encoder_unet_channel_arithmetic_and_depth_check() -> None:
    enc = MobileNetV2Encoder(depth=3)  # out_channels (3, 8, 8, 16)
    net = EncoderUNet(enc, decoder_channels=(12, 10, 6), num_classes=5)
    convs_in = [b.conv[0][0].in_channels for b in net.decoder.blocks]
    assert convs_in == [12 + 8, 10 + 8, 6]  # the last block has no skip (input level unused)
    assert net(torch.randn(2, 3, 23, 23)).shape == (2, 5, 23, 23)
    with pytest.raises(ValueError, match="one decoder channel count per encoder stage"):
        EncoderUNet(enc, decoder_channels=(12, 10))


def compose_net_cfg(name: str):
    return compose("train", f"model={name}").model.net


def header(name: str) -> tuple[float, int]:
    first = (REPO / "conf" / "model" / f"{name}.yaml").read_text().splitlines()[0]
    params = re.search(r"Params: ([\d.]+)M", first)
    stride = re.search(r"Output stride: (\d+)", first)
    assert first.startswith("# ") and params and stride, first
    return float(params.group(1)), int(stride.group(1))


@pytest.mark.parametrize("name", MY_CONFIGS)
def test_config_header_matches_model(name: str) -> None:
    params_m, stride = header(name)
    net = hydra.utils.instantiate(compose_net_cfg(name))
    assert abs(n_params(net) - params_m * 1e6) <= 0.05e6, n_params(net)
    assert 2 ** (len(net.encoder.out_channels) - 1) == stride


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("unet", marks=pytest.mark.slow),
        "unet_resnet34",
        "unet_mobilenetv2",
        "localizer",
    ],
)
def test_config_forward_backward_333x250(name: str) -> None:
    torch.manual_seed(0)
    net = hydra.utils.instantiate(compose_net_cfg(name))
    x = torch.randn(2, 3, 333, 250)
    start = time.perf_counter()
    out = net(x)
    logits = out["cls"] if isinstance(out, dict) else out
    loss = logits.float().square().mean() + (out["box"].sum() if isinstance(out, dict) else 0)
    loss.backward()
    if not isinstance(out, dict):
        assert out.shape == (2, 21, 333, 250)
    grads = [p.grad for p in net.encoder.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert time.perf_counter() - start < 60

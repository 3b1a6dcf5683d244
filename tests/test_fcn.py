"""FCN-32s/16s/8s (https://arxiv.org/abs/1411.4038): bilinear upsampling, skip fusion, sizes,
alignment, parameter counts, VGG16 weight loading and the Hydra model configs."""

from __future__ import annotations

import re
import urllib.error
from itertools import pairwise
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, compose
from hydra.utils import instantiate
from torch import nn

import seg.models.vgg as vgg
from seg.models.blocks import MatmulConv2d, bilinear_upsample_layer, conv2d_as_matmul
from seg.models.fcn import FCN, FCN8s, FCN16s, FCN32s, fixed_bilinear_upsample
from seg.models.vgg import VGG16_IMAGENET_FILE, VGG16Encoder, load_vgg16_weights

K = 21
STRIDES = (32, 16, 8)


class PoolEncoder(nn.Module):
    """Parameter-free stand-in encoder: block means of the input at strides 8, 16 and 32."""

    out_channels = (3, 3, 3)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [F.avg_pool2d(x, s) for s in (8, 16, 32)]


@pytest.fixture(scope="module")
def nets() -> dict[int, FCN]:
    """FCN-32s/16s/8s sharing one random VGG16 (eval mode), score layers randomised."""
    torch.manual_seed(0)
    encoder = VGG16Encoder(dropout=0.0)
    out = {s: FCN(K, output_stride=s, encoder=encoder).eval() for s in STRIDES}
    for net in out.values():
        for layer in (net.score, *net.score_skips):
            nn.init.normal_(layer.weight, 0.0, 0.01)
    return out


def vgg16_fcn_param_count(output_stride: int, k: int = K) -> int:
    """FCN parameter count from the architecture (VGG16 convs, fc6/fc7, scores, upsampling)."""
    widths = [3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    count = sum(9 * c_in * c_out + c_out for c_in, c_out in pairwise(widths))
    count += 7 * 7 * 512 * 4096 + 4096 + 4096 * 4096 + 4096  # fc6, fc7
    count += 4096 * k + k  # score on fc7
    skip_channels = {32: [], 16: [512], 8: [512, 256]}[output_stride]
    count += sum(c * k + k + k * k * 4 * 4 for c in skip_channels)  # score_pool + 2x upsample
    return count + k * (2 * output_stride) ** 2  # fixed channel-wise final upsampling


@pytest.mark.parametrize("stride", [2, 8, 16, 32])
@pytest.mark.parametrize("make", [bilinear_upsample_layer, fixed_bilinear_upsample])
def test_upsampling_initialised_to_bilinear(make, stride: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 7)  # interpolation is linear, so a random map tests every weight
    y = make(3, stride)(x)
    ref = F.interpolate(x, scale_factor=stride, mode="bilinear", align_corners=False)
    assert y.shape == ref.shape == (2, 3, 9 * stride, 7 * stride)
    m = stride // 2  # only the outermost s/2 pixels see the zero padding
    torch.testing.assert_close(y[..., m:-m, m:-m], ref[..., m:-m, m:-m], atol=1e-5, rtol=0)


def test_model_upsampling_layers(nets: dict[int, FCN]) -> None:
    net = nets[8]
    assert all(up.weight.requires_grad for up in net.upsample2)  # learned 2x, bilinear init
    assert not net.upsample_final.weight.requires_grad  # fixed bilinear, as in the paper
    for up in net.upsample2:
        assert torch.equal(up.weight, bilinear_upsample_layer(K, 2).weight)
    assert torch.equal(net.upsample_final.weight, fixed_bilinear_upsample(K, 8).weight)
    learned = FCN(K, 8, encoder=PoolEncoder(), learn_final_upsample=True).upsample_final
    assert learned.weight.requires_grad and learned.weight.shape == (K, K, 16, 16)


def test_score_layers_zero_initialised() -> None:
    net = FCN8s(num_classes=5, encoder=PoolEncoder())
    assert len(net.score_skips) == 2
    for layer in (net.score, *net.score_skips):
        assert not layer.weight.any() and not layer.bias.any()
    assert not net(torch.randn(1, 3, 40, 33)).any()


@pytest.mark.parametrize(
    ("cls", "stride", "n_skips"), [(FCN32s, 32, 0), (FCN16s, 16, 1), (FCN8s, 8, 2)]
)
def test_variants_fuse_their_strides(cls: type[FCN], stride: int, n_skips: int) -> None:
    net = cls(encoder=PoolEncoder())
    assert net.output_stride == stride
    assert len(net.score_skips) == len(net.upsample2) == n_skips
    assert net.upsample_final.stride == (stride, stride)


@pytest.mark.parametrize(("level", "changed"), [(0, {8}), (1, {8, 16}), (2, {8, 16, 32})])
def test_perturbing_a_feature_level_changes_only_nets_that_fuse_it(
    nets: dict[int, FCN], level: int, changed: set[int]
) -> None:
    """Level 0 = pool3 (stride 8), 1 = pool4 (stride 16), 2 = fc7 (stride 32)."""
    x = torch.randn(1, 3, 32, 64)

    def perturb(module: nn.Module, inputs: object, outputs: list[torch.Tensor]) -> list:
        outputs = list(outputs)
        outputs[level] = outputs[level] + torch.rand_like(outputs[level])
        return outputs

    with torch.no_grad():
        for stride, net in nets.items():
            clean = net(x)
            handle = net.encoder.register_forward_hook(perturb)
            try:
                noisy = net(x)
            finally:
                handle.remove()
            assert (not torch.equal(clean, noisy)) == (stride in changed), stride


@pytest.mark.parametrize("size", [(333, 250), (23, 23), (67, 45), (1, 1)])
def test_output_size_equals_input_size(nets: dict[int, FCN], size: tuple[int, int]) -> None:
    """Any size works (the minimum is 1x1): the input is padded to a multiple of 32."""
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        for net in nets.values():
            assert net(x).shape == (1, K, *size)


@pytest.mark.parametrize("cls", [FCN32s, FCN16s, FCN8s])
@pytest.mark.parametrize("size", [(160, 192), (333, 250)])
def test_output_is_aligned_with_input(cls: type[FCN], size: tuple[int, int]) -> None:
    """Block means upsampled bilinearly reproduce a linear ramp exactly iff every path is
    aligned (a shift by d pixels would add a constant error of d * slope)."""
    net = cls(num_classes=1, encoder=PoolEncoder())
    n_paths = 1 + len(net.score_skips)
    with torch.no_grad():
        for layer in (net.score, *net.score_skips):  # class 0 = mean of channel 0 over paths
            layer.weight.zero_()
            layer.weight[0, 0] = 1.0 / n_paths
    h, w = size
    ramp = torch.arange(h)[:, None] * 1.0 + 2.0 * torch.arange(w)[None, :]  # (H, W)
    x = torch.stack([ramp, -ramp, ramp])[None]  # (1, 3, H, W)
    with torch.no_grad():
        y = net(x)[0, 0]  # (H, W)
    inner = (slice(32, (h - 64) // 32 * 32), slice(32, (w - 64) // 32 * 32))  # away from padding
    assert y[inner].numel() >= 64 * 64  # a real region is compared, not an empty slice
    torch.testing.assert_close(y[inner], ramp[inner], atol=1e-3, rtol=0)


def test_vgg16_fcn_param_counts(nets: dict[int, FCN]) -> None:
    for stride, net in nets.items():
        assert sum(p.numel() for p in net.parameters()) == vgg16_fcn_param_count(stride)
    # The paper (Table 1) lists 134M parameters for FCN-VGG16.
    assert vgg16_fcn_param_count(8) == pytest.approx(134e6, rel=5e-3)


def test_fcn_argument_errors() -> None:
    with pytest.raises(ValueError, match="output_stride"):
        FCN(output_stride=4, encoder=PoolEncoder())
    with pytest.raises(ValueError, match="encoder_weights"):
        FCN8s(encoder=PoolEncoder(), encoder_weights="imagenet")


def test_vgg16_loads_torchvision_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A torchvision vgg16 state dict loads strictly (from a path and from the hub cache) and
    fc6/fc7 as convolutions reproduce the Linear classifier layers."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    reference = torchvision.models.vgg16().eval()
    path = tmp_path / "hub" / "checkpoints" / VGG16_IMAGENET_FILE
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    encoder = VGG16Encoder(dropout=0.0).eval()
    for weights in (str(path), "imagenet"):
        nn.init.zeros_(encoder.fc7.weight)
        load_vgg16_weights(encoder, weights)
        x = torch.randn(1, 3, 224, 224)
        with torch.no_grad():
            pool5 = reference.features(x)  # (1, 512, 7, 7)
            fc7_ref = reference.classifier[:5](pool5.flatten(1))  # (1, 4096) after relu7
            assert torch.equal(encoder.features(x), pool5)
            fc7 = encoder.relu(encoder.fc7(encoder.relu(encoder.fc6(pool5))))  # (1, 4096, 1, 1)
        # Unpadded, fc6 on the 7x7 pool5 map is exactly the Linear layer of the classifier.
        torch.testing.assert_close(fc7[..., 0, 0], fc7_ref, atol=1e-5, rtol=1e-4)


def test_missing_imagenet_weights_raise_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline() -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    monkeypatch.setattr(vgg, "_download_imagenet_state_dict", offline)
    expected = str(tmp_path / "checkpoints" / VGG16_IMAGENET_FILE)
    with pytest.raises(FileNotFoundError, match=re.escape(expected)):
        load_vgg16_weights(nn.Module(), "imagenet")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="not found"):
        load_vgg16_weights(nn.Module(), tmp_path / "missing.pth")  # type: ignore[arg-type]


# ---------------------------------------------------------------- Hydra model configs
CONFIGS = ["fcn32s", "fcn16s", "fcn8s", "fcn8s_resnet50"]


def compose_model(name: str, overrides: tuple[str, ...] = ()):
    """``cfg.model`` of ``train.yaml`` composed with ``model=<name>``."""
    return compose("train", f"model={name}", *overrides).model


def stated(name: str, key: str) -> float:
    """A number stated in the first-line comment of conf/model/<name>.yaml, e.g. Params: 134.4M."""
    header = (REPO / "conf" / "model" / f"{name}.yaml").read_text().splitlines()[0]
    return float(re.search(rf"{key}: ([\d.]+)", header).group(1))


@pytest.mark.parametrize("name", CONFIGS)
def test_config_params_stride_and_odd_size(name: str) -> None:
    net = instantiate(compose_model(name).net)
    n_params = sum(p.numel() for p in net.parameters())
    assert abs(n_params / 1e6 - stated(name, "Params")) <= 0.05, n_params
    assert net.output_stride == stated(name, "Output stride")
    x = torch.randn(2, 3, 67, 45)
    y = net(x)
    assert y.shape == (2, K, 67, 45)
    F.cross_entropy(y, torch.randint(0, K, (2, 67, 45))).backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) for n in CONFIGS[:3]] + CONFIGS[3:]
)
def test_config_forward_backward_full_size(name: str) -> None:
    """333x250, batch 2 on CPU (VGG16: ~15 s, marked slow; ResNet-50: ~6 s)."""
    net = instantiate(compose_model(name).net)
    y = net(torch.randn(2, 3, 333, 250))
    assert y.shape == (2, K, 333, 250)
    F.cross_entropy(y, torch.randint(0, K, (2, 333, 250))).backward()
    assert torch.isfinite(net.score.weight.grad).all() and net.score.weight.grad.any()


@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_as_matmul_is_the_convolution(dilation: int, channels_last: bool) -> None:
    """fc6 as a matrix product: the convolution's output and gradients, at odd sizes."""
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 7, (3, 2), dilation=dilation).double()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    conv = conv.to(memory_format=fmt)
    x = torch.randn(2, 5, 11, 8, dtype=torch.float64).contiguous(memory_format=fmt)
    x.requires_grad_()
    want = conv(x)
    got = conv2d_as_matmul(x, conv)
    assert got.shape == want.shape == (2, 7, 11 - 2 * dilation, 8 - dilation)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    grads = [
        torch.autograd.grad(y.square().sum(), (x, conv.weight, conv.bias)) for y in (got, want)
    ]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_fc6_product_is_a_module_hooks_see(nets: dict[int, FCN]) -> None:
    """fc6 runs as a matrix product but stays the module explain.py hooks (one call a pass)."""
    fc6 = nets[8].encoder.fc6
    assert isinstance(fc6, MatmulConv2d)
    seen = []
    handle = fc6.register_forward_hook(lambda m, a, out: seen.append(out.shape))
    try:
        with torch.no_grad():
            nets[8](torch.randn(1, 3, 70, 45))
    finally:
        handle.remove()
    assert seen == [(1, 4096, 3, 2)]

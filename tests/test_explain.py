"""What each explanation computes, checked against an independent computation.

- Top-activating patches: the streaming top-k equals a brute-force pass over a tiny set.
- Class-score maximisation: the class's mean logit rises above its start and every other class.
- Grad-CAM: on an image built for two classes, each class's map peaks where it is predicted.
- The layer catalogue finds the encoder stages of every ``conf/model``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import MODELS, compose, fake_checkpoint
from hydra.utils import instantiate
from torch import nn

from seg.checkpoint import build_net, load_checkpoint
from seg.data.io import read_image
from seg.explain.cam import grad_cam
from seg.explain.data import Images, Pixels
from seg.explain.layers import Layer, probe
from seg.explain.maximize import Ascent, class_scores, maximize
from seg.explain.patches import seen_cells, stream
from seg.models.blocks import pad_to_multiple


@pytest.fixture(scope="module")
def quickstart_net(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Pixels]:
    """The quickstart architecture (U-Net on MobileNetV2-0.35) with random weights."""
    path = fake_checkpoint("unet_mobilenetv2", tmp_path_factory.mktemp("ckpt") / "q.ckpt")
    ckpt = load_checkpoint(path)
    return build_net(ckpt).requires_grad_(False), Pixels(ckpt)


def brute_force(net: nn.Module, layer: Layer, pixels: Pixels, paths: list[Path]) -> list:
    """The layer's activation map (C, h, w) on each image's own cells, all kept in memory."""
    maps = []
    module = net.get_submodule(layer.name)
    handle = module.register_forward_hook(lambda m, a, out: maps.append(out.detach().clone()))
    with torch.no_grad():
        for path in paths:
            image = read_image(path)
            net(pixels(image))
            maps[-1] = seen_cells(maps[-1][0], image.shape[:2], layer.stride)
    handle.remove()
    return maps


def test_top_patches_are_the_channel_maxima_of_a_brute_force_pass(
    quickstart_net: tuple[nn.Module, Pixels], sample_root: Path
) -> None:
    net, pixels = quickstart_net
    catalogue = probe(net)
    layers = [catalogue.layers[n] for n in catalogue.stages[:3]]
    paths = sorted((sample_root / "VOC2012" / "JPEGImages").glob("*.jpg"))[:5]
    images = Images(paths)
    k = 3
    stats = stream(net, layers, images, pixels, k)

    for layer in layers:
        maps = brute_force(net, layer, pixels, paths)  # every image's whole map, kept
        peaks = [m.flatten(1).amax(dim=1) for m in maps]  # (C,) per image
        peaks = torch.stack(peaks, dim=1)  # (C, images)
        s = stats[layer.name]
        expected = peaks.sort(dim=1, descending=True).values[:, :k]
        torch.testing.assert_close(s.values, expected)
        assert torch.equal(s.values[:, 0], peaks.amax(dim=1))  # the channel's maximum
        for c in range(layer.channels):  # each record points at its own value
            for j in range(k):
                i, y, x = int(s.image[c, j]), int(s.y[c, j]), int(s.x[c, j])
                assert maps[i][c, y, x] == s.values[c, j]
        every = torch.cat([m.flatten(1) for m in maps], dim=1).double()  # (C, all positions)
        torch.testing.assert_close(s.mean, every.mean(dim=1))
        torch.testing.assert_close(s.std, every.std(dim=1, correction=0))


RED, BLUE = torch.tensor([0.9, 0.1, 0.1]), torch.tensor([0.1, 0.1, 0.9])


def coloured_squares(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (n, 3, 16, 16) of one colour, with a red (person, 15) or blue (aeroplane, 1)
    square; background colours are anything but red or blue, so that colour alone decides."""
    x = torch.empty(n, 3, 16, 16)
    y = torch.zeros(n, 16, 16, dtype=torch.long)
    for i in range(n):
        while True:
            colour = torch.rand(3, generator=gen)
            if min((colour - RED).norm(), (colour - BLUE).norm()) > 0.6:
                break
        x[i] = colour.view(3, 1, 1) + 0.03 * torch.randn(3, 16, 16, generator=gen)
        top, left, side = (int(v) for v in torch.randint(0, 8, (3,), generator=gen))
        red = bool(torch.rand(1, generator=gen) < 0.5)
        box = (slice(top, top + side + 4), slice(left, left + side + 4))
        x[i, :, box[0], box[1]] = (RED if red else BLUE).view(3, 1, 1)
        y[i, box[0], box[1]] = 15 if red else 1
    return x, y


@pytest.fixture(scope="module")
def colour_net() -> nn.Module:
    """A small per-pixel classifier trained (in seconds) to call red person, blue aeroplane."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 32, 1),
        nn.ReLU(),
        nn.Conv2d(32, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 21, 1),
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-2)
    for _ in range(250):
        x, y = coloured_squares(8, gen)
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss < 0.1
    return net.eval().requires_grad_(False)


def test_maximisation_lifts_the_class_above_its_start_and_every_other_class(
    colour_net: nn.Module,
) -> None:
    classes = [15, 1]  # person (red), aeroplane (blue)
    x, scores = maximize(colour_net, classes, Ascent(size=32, steps=60, lr=0.1, l2=1e-3))
    with torch.no_grad():
        end = class_scores(colour_net, x)  # recomputed from the returned images
    torch.testing.assert_close(end, scores["end"])
    for row, c in enumerate(classes):
        assert end[row, c] > scores["start"][row, c]
        others = torch.cat([end[row, :c], end[row, c + 1 :]])
        assert end[row, c] > others.max(), (c, end[row])
    red, blue = x.mean(dim=(2, 3))[:, 0], x.mean(dim=(2, 3))[:, 2]  # what it learnt shows
    assert red[0] > blue[0] and blue[1] > red[1]


def test_maximisation_leaves_the_net_alone_and_takes_every_option(
    quickstart_net: tuple[nn.Module, Pixels],
) -> None:
    net, pixels = quickstart_net
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opts = Ascent(size=40, steps=4, jitter=3, blur_every=2, region=[0.25, 0.25, 0.75, 0.75])
    x, scores = maximize(net, [1], opts, pixels.bounds)
    assert x.shape == (1, 3, 40, 40) and torch.isfinite(x).all()
    low, high = (b.view(1, 3, 1, 1) for b in pixels.bounds)
    assert (x >= low - 1e-6).all() and (x <= high + 1e-6).all()  # a displayable image
    rgb = pixels.undo(x[0])
    assert rgb.shape == (40, 40, 3) and rgb.min() >= 0 and rgb.max() <= 1
    assert scores["start"].shape == scores["end"].shape == (1, 21)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in net.parameters())


class HandMadeNet(nn.Module):
    """Per-pixel logits from colour, through a stride-4 encoder (padded inputs, as seg's nets).

    Encoder channels: 0 = redness, 1 = blueness, 2 = constant. Logits: person (15) = 4 *
    redness, aeroplane (1) = 4 * blueness, background = 0.5, every other class = -5.
    """

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU(), nn.AvgPool2d(4))
        self.head = nn.Conv2d(3, 21, 1)
        with torch.no_grad():
            self.encoder[0].weight.copy_(
                torch.tensor([[1, -0.5, -0.5], [-0.5, -0.5, 1], [0, 0, 0]]).view(3, 3, 1, 1)
            )
            self.encoder[0].bias.copy_(torch.tensor([0.0, 0.0, 1.0]))
            self.head.weight.zero_()
            self.head.bias.fill_(-5.0)
            self.head.bias[0], self.head.bias[15], self.head.bias[1] = 0.5, 0.0, 0.0
            self.head.weight[15, 0], self.head.weight[1, 1] = 4.0, 4.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        scores = self.head(self.encoder(pad_to_multiple(x, 4)))  # (B, 21, H'/4, W'/4)
        up = F.interpolate(scores, scale_factor=4, mode="bilinear", align_corners=False)
        return up[..., :h, :w]


def test_cam_of_each_class_peaks_where_that_class_is_predicted() -> None:
    net = HandMadeNet().eval().requires_grad_(False)
    image = torch.full((3, 45, 67), 0.5)  # grey; size not a multiple of the stride
    image[:, 10:30, 5:25] = torch.tensor([1.0, 0.1, 0.1]).view(3, 1, 1)  # red: person
    image[:, 15:40, 40:62] = torch.tensor([0.1, 0.1, 1.0]).view(3, 1, 1)  # blue: aeroplane
    x = image[None]
    with torch.no_grad():
        mask = net(x).argmax(dim=1)[0]  # (H, W)
    assert set(mask.unique().tolist()) == {0, 1, 15}
    layer = probe(net, size=64).layers["encoder"]
    maps = grad_cam(net, x, layer, [15, 1], mask)
    assert maps.shape == (2, 45, 67)
    for cam, c in zip(maps, [15, 1], strict=True):
        region = (mask == c).numpy()
        peak = np.unravel_index(cam.argmax(), cam.shape)
        assert region[peak], (c, peak)
        assert cam[region].mean() > 3 * cam[~region].mean()


#: Stage ends every model is expected to have (first and last), with their strides.
STAGES = {
    "unet_mobilenetv2": ("encoder.features.1", "encoder.features.18", 2, 32),
    "unet_resnet34": ("encoder.relu", "encoder.layer4", 2, 32),
    "localizer": ("encoder.relu", "encoder.layer4", 2, 32),
    "localizer_mobilenetv2": ("encoder.features.1", "encoder.features.18", 2, 32),
    "fcn8s_resnet50": ("encoder.relu", "encoder.layer4", 2, 32),
    "unet": ("encoder.blocks.0", "encoder.blocks.4", 1, 16),
    "fcn8s": ("encoder.features.16", "encoder.fc7", 8, 32),
    "fcn16s": ("encoder.features.16", "encoder.fc7", 8, 32),
    "fcn32s": ("encoder.features.16", "encoder.fc7", 8, 32),
    "dilation_frontend": ("encoder.features.16", "encoder.fc7", 8, 8),
    "dilation_context": ("frontend.encoder.features.16", "frontend.encoder.fc7", 8, 8),
    "tv_fcn_resnet50": ("backbone.layer3", "backbone.layer4", 8, 8),
}


@pytest.mark.parametrize("model", MODELS)
def test_catalogue_finds_the_encoder_stages_of_every_model(model: str) -> None:
    torch.manual_seed(0)
    net = instantiate(compose("train", f"model={model}").model.net).eval()
    catalogue = probe(net, size=64)
    first, last, first_stride, last_stride = STAGES[model]
    stages = [catalogue.layers[n] for n in catalogue.stages]
    assert (stages[0].name, stages[-1].name) == (first, last)
    assert (stages[0].stride, stages[-1].stride) == (first_stride, last_stride)
    strides = [s.stride for s in stages]
    assert strides == sorted(strides)
    assert catalogue.first_conv is not None
    assert net.get_submodule(catalogue.first_conv).in_channels == 3
    assert all(s.weight is not None for s in stages)

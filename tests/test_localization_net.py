"""Localizer: output contract, box range, per-class box selection, shared mask decoder."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from seg.models.encoders import MobileNetV2Encoder
from seg.models.localization import Localizer, select_box


def make(**kwargs) -> Localizer:
    torch.manual_seed(0)
    return Localizer(MobileNetV2Encoder(), hidden_channels=32, **kwargs)


@pytest.mark.parametrize("size", [(23, 23), (333, 250)])
def test_class_agnostic_outputs(size: tuple[int, int]) -> None:
    out = make(num_classes=20).eval()(torch.randn(3, 3, *size))
    assert set(out) == {"cls", "box"}
    assert out["cls"].shape == (3, 20)
    assert out["box"].shape == (3, 4)
    assert (out["box"] >= 0).all() and (out["box"] <= 1).all()


@pytest.mark.parametrize("per_class_box", [False, True])
def test_untrained_boxes_start_at_the_centred_prior(per_class_box: bool) -> None:
    """Not saturated at the full image or a corner, whatever the input (the default init's
    random sums did that, and the boxes never left it)."""
    net = make(num_classes=20, per_class_box=per_class_box).eval()
    out = net(torch.randn(4, 3, 96, 128) * 3)
    boxes = out["box_all"] if per_class_box else out["box"]  # (4, 20, 4) / (4, 4)
    prior = torch.tensor([0.25, 0.25, 0.5, 0.5])
    assert (boxes - prior).abs().max() < 0.05


def test_box_is_a_sigmoid_of_the_regressor() -> None:
    net = make().eval()
    with torch.no_grad():
        net.box_head.weight.zero_()
        net.box_head.bias.copy_(torch.tensor([0.0, 100.0, -100.0, 1.0]))
    box = net(torch.randn(2, 3, 40, 40))["box"]
    expected = torch.tensor([0.5, 1.0, 0.0, torch.sigmoid(torch.tensor(1.0)).item()])
    torch.testing.assert_close(box, expected.expand(2, 4))


def test_per_class_box_returns_the_predicted_class_box() -> None:
    net = make(num_classes=21, per_class_box=True).eval()
    with torch.no_grad():  # force class 7 to win for every input
        net.cls_head.weight.zero_()
        net.cls_head.bias.copy_(torch.nn.functional.one_hot(torch.tensor(7), 21).float())
    out = net(torch.randn(2, 3, 33, 47))
    assert out["box_all"].shape == (2, 21, 4)
    assert (out["box_all"] >= 0).all() and (out["box_all"] <= 1).all()
    torch.testing.assert_close(out["box"], out["box_all"][:, 7])
    assert not torch.allclose(out["box"], out["box_all"][:, 6])


def test_select_box_picks_rows() -> None:
    box_all = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)
    picked = select_box(box_all, torch.tensor([2, 0]))
    torch.testing.assert_close(picked, torch.tensor([[8.0, 9, 10, 11], [12.0, 13, 14, 15]]))


@pytest.mark.parametrize("labels", [[-1, 0], [0, 3]])
def test_select_box_rejects_out_of_range_labels(labels: list[int]) -> None:
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.2"):
        select_box(torch.zeros(2, 3, 4), torch.tensor(labels))


def test_select_box_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="expected box_all"):
        select_box(torch.zeros(2, 12), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="expected box_all"):
        select_box(torch.zeros(2, 3, 4), torch.tensor([0, 1, 2]))


def test_per_class_gradient_flows_only_through_the_selected_box() -> None:
    net = make(num_classes=4, per_class_box=True)
    out = net(torch.randn(2, 3, 32, 32))
    select_box(out["box_all"], torch.tensor([1, 1])).sum().backward()
    rows = net.box_head.weight.grad.view(4, 4, -1).abs().sum(dim=(1, 2))  # per class
    assert rows[1] > 0 and torch.all(rows[[0, 2, 3]] == 0)


@pytest.mark.parametrize("size", [(23, 23), (64, 96)])
def test_shared_mask_decoder(size: tuple[int, int]) -> None:
    net = make(num_classes=20, seg_decoder=True, decoder_channels=(16, 8, 8, 8, 8))
    out = net(torch.randn(2, 3, *size))
    assert set(out) == {"cls", "box", "out"}
    assert out["out"].shape == (2, 21, *size)
    ups = [m for m in net.decoder.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(ups) == 5 and all(m.stride == (2, 2) for m in ups)
    out["out"].mean().backward()  # the mask loss trains the shared encoder
    assert net.encoder.features[0][0].weight.grad.abs().sum() > 0


def test_mask_decoder_leaves_classification_unchanged() -> None:
    plain = make(num_classes=20).eval()
    joint = make(num_classes=20, seg_decoder=True).eval()
    joint.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(1, 3, 64, 64)  # a multiple of 32: no padding
    with torch.no_grad():
        a, b = plain(x), joint(x)
    torch.testing.assert_close(a["cls"], b["cls"])
    torch.testing.assert_close(a["box"], b["box"])


def test_decoder_channels_must_match_depth() -> None:
    with pytest.raises(ValueError, match="decoder_channels"):
        make(seg_decoder=True, decoder_channels=(8, 8))

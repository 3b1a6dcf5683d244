"""The one inference path: windows, TTA, overlap averaging, the band path and the final argmax,
on nets whose behaviour is known exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seg.inference import (
    InferenceConfig,
    class_probs,
    predict_mask,
    predict_mask_banded,
    predict_probs,
    scores_to_mask,
    window_starts,
    windows,
)


def pointwise_net(seed: int = 0) -> nn.Module:
    """A 1x1-conv net: translation-equivariant with a 1-pixel receptive field."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 5, 1)).eval()


def conv_net(seed: int = 0) -> nn.Module:
    """A 3x3 / 5x5-conv net: windows see different contexts, and flips and scales matter."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 5, padding=2)
    ).eval()


@pytest.mark.parametrize(("size", "crop", "stride"), [(100, 48, 31), (48, 48, 31), (20, 48, 31)])
def test_windows_cover_the_side_and_end_at_the_border(size: int, crop: int, stride: int) -> None:
    starts = window_starts(size, crop, stride)
    side = min(crop, size)
    covered = torch.zeros(size, dtype=torch.bool)
    for s in starts:
        covered[s : s + side] = True
    assert covered.all() and starts[0] == 0 and starts[-1] + side == size
    assert all(b - a <= stride for a, b in zip(starts, starts[1:], strict=False))


def test_whole_mode_is_one_window_the_image() -> None:
    assert windows((37, 59), InferenceConfig()) == ([0], [0], 37, 59)
    ys, xs, h, w = windows((37, 59), InferenceConfig(mode="slide", crop=32, stride=20))
    assert (ys, xs, h, w) == ([0, 5], [0, 20, 27], 32, 32)


@pytest.mark.parametrize("size", [(23, 23), (333, 250), (64, 200)])
def test_slide_equals_whole_for_pointwise_net(size: tuple[int, int]) -> None:
    net = pointwise_net()
    x = torch.randn(2, 3, *size)
    cfg = InferenceConfig(mode="slide", crop=48, stride=31, window_batch=3)
    whole = predict_probs(net, x)
    slid = predict_probs(net, x, cfg)
    assert slid.shape == whole.shape == (2, 5, *size)
    torch.testing.assert_close(slid, whole, rtol=1e-5, atol=1e-6)


def test_slide_averages_probabilities_where_windows_overlap() -> None:
    class WindowMean(nn.Module):
        """Logits (m, 0) everywhere, m the mean of channel 0 over the window."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, h, w) -> (B, 2, h, w)
            m = x[:, :1].mean(dim=(2, 3), keepdim=True).expand(-1, 1, *x.shape[2:])
            return torch.cat([m, torch.zeros_like(m)], dim=1)

    x = torch.zeros(1, 3, 3, 5)
    x[:, 0, :, 4] = 3.0
    # windows cover columns [0, 3) (mean 0) and [2, 5) (mean 3 * 3 / 9 = 1)
    p = predict_probs(WindowMean(), x, InferenceConfig(mode="slide", crop=3, stride=2))
    s = torch.sigmoid(torch.tensor(1.0)).item()  # softmax([1, 0])[0]
    assert p[0, 0, 1].tolist() == pytest.approx([0.5, 0.5, (0.5 + s) / 2, s, s])


def test_tta_averages_softmax_probabilities_over_scales_and_flips() -> None:
    net, x = conv_net(), torch.randn(1, 3, 20, 28)
    cfg = InferenceConfig(flip=True, scales=(0.5, 1.0))
    want = []
    for size in ((10, 14), (20, 28)):
        xs = F.interpolate(x, size=size, mode="bilinear") if size != (20, 28) else x
        for out in (net(xs), net(xs.flip(-1)).flip(-1)):
            out = F.interpolate(out, size=(20, 28), mode="bilinear") if size != (20, 28) else out
            want.append(out.softmax(1))
    torch.testing.assert_close(predict_probs(net, x, cfg), torch.stack(want).mean(0))


def test_flip_tta_is_exact_for_flip_equivariant_net() -> None:
    net = pointwise_net()
    x = torch.randn(1, 3, 31, 47)
    plain = predict_probs(net, x, InferenceConfig())
    flipped = predict_probs(net, x, InferenceConfig(flip=True))
    torch.testing.assert_close(plain, flipped, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size", [(37, 29), (1, 1), (2000, 1)])
def test_multiscale_returns_input_size_probabilities(size: tuple[int, int]) -> None:
    x = torch.randn(2, 3, *size)
    probs = predict_probs(pointwise_net(), x, InferenceConfig(scales=(0.5, 1.0, 1.75), flip=True))
    assert probs.shape == (2, 5, *size)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, *size))


def identity_transform(image) -> dict:
    return {"image": torch.from_numpy(image).permute(2, 0, 1).float() / 255}


@pytest.mark.parametrize("size", [(40, 56), (90, 130)])
def test_tta_mask_is_the_same_whole_and_band_by_band(size: tuple[int, int]) -> None:
    """The same image, TTA on, through the whole-image path and through the band path (which
    predict.py takes above ``slide_above``): one window semantics, one TTA, the same mask."""
    torch.manual_seed(1)
    image = (torch.rand(*size, 3) * 255).to(torch.uint8).numpy()
    net = conv_net()
    tta = {"flip": True, "scales": (0.75, 1.0, 1.5)}
    whole = InferenceConfig(mode="slide", crop=128, stride=80, slide_above=10_000, **tta)
    banded = InferenceConfig(mode="slide", crop=128, stride=80, slide_above=8, **tta)
    a = predict_mask(net, image, lambda image: identity_transform(image), whole)
    b = predict_mask(net, image, lambda image: identity_transform(image), banded)
    assert a.dtype == b.dtype == torch.uint8 and a.shape == size
    assert torch.equal(a, b)
    if max(size) <= 128:  # one window: the band path equals plain whole-image inference
        plain = InferenceConfig(slide_above=10_000, **tta)
        assert torch.equal(predict_mask(net, image, identity_transform, plain), a)


def test_banded_rows_are_normalised_one_band_at_a_time() -> None:
    net, x = conv_net(), torch.randn(1, 3, 150, 230)
    cfg = InferenceConfig(mode="slide", crop=48, stride=31, window_batch=3)
    heights: list[int] = []

    def rows(y0: int, y1: int) -> torch.Tensor:
        heights.append(y1 - y0)
        return x[:, :, y0:y1]

    mask = predict_mask_banded(net, rows, (150, 230), cfg)
    assert torch.equal(mask.long(), scores_to_mask(predict_probs(net, x, cfg))[0])
    assert max(heights) == 48 and len(heights) == len(window_starts(150, 48, 31))


def test_scores_to_mask_resizes_scores_not_labels() -> None:
    scores = torch.zeros(1, 3, 2, 2)
    scores[0, 2, 0, 0] = 5.0  # top-left quadrant is class 2
    mask = scores_to_mask(scores, (4, 6))
    assert mask.shape == (1, 4, 6) and mask.dtype == torch.int64
    assert mask[0, 0, 0] == 2 and mask[0, -1, -1] == 0
    assert set(mask.unique().tolist()) == {0, 2}


@pytest.mark.parametrize("channels_last", [False, True])
def test_scores_to_mask_is_the_argmax_with_ties_and_nan(channels_last: bool) -> None:
    """It takes max's indices (faster on the CPU): the same first-of-equal-maxima rule."""
    torch.manual_seed(0)
    scores = torch.randint(0, 3, (2, 21, 9, 11)).float()  # many ties
    scores[0, 4, 0, 0] = scores[1, 7, 3, 5] = scores[1, 9, 3, 5] = float("nan")
    if channels_last:
        scores = scores.contiguous(memory_format=torch.channels_last)
    mask = scores_to_mask(scores)
    assert mask.dtype == torch.int64 and torch.equal(mask, scores.argmax(dim=1))
    assert mask[0, 0, 0] == 4 and mask[1, 3, 5] == 7


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "tiles"},
        {"crop": 0},
        {"stride": -1},
        {"crop": 32, "stride": 33},
        {"scales": ()},
        {"scales": (0.0,)},
    ],
)
def test_bad_inference_options_are_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="inference"):
        InferenceConfig(**kwargs)


@pytest.mark.parametrize("shape", [(2, 21, 37, 53), (1, 1, 5, 7), (1, 4, 1, 1)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_class_probs_are_the_softmax_over_classes(shape: tuple, channels_last: bool) -> None:
    torch.manual_seed(0)
    logits = torch.randn(shape) * 4  # (B, C, H, W)
    if channels_last:
        logits = logits.contiguous(memory_format=torch.channels_last)
    probs = class_probs(logits)
    assert probs.shape == logits.shape
    torch.testing.assert_close(probs, torch.softmax(logits.double(), 1).float(), rtol=0, atol=1e-6)
    torch.testing.assert_close(probs.sum(1), torch.ones(shape[0], *shape[2:]))

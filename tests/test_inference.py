"""Inference: sliding window, TTA and the scores -> mask function, on nets with known behaviour."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from seg.inference import InferenceConfig, predict_probs, scores_to_mask, slide_logits


def pointwise_net(seed: int = 0) -> nn.Module:
    """A 1x1-conv net: translation-equivariant with a 1-pixel receptive field."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 5, 1)).eval()


@pytest.mark.parametrize("size", [(23, 23), (333, 250), (64, 200)])
def test_slide_equals_whole_for_pointwise_net(size: tuple[int, int]) -> None:
    net = pointwise_net()
    x = torch.randn(2, 3, *size)
    cfg = InferenceConfig(mode="slide", crop=48, stride=31, window_batch=3)
    with torch.no_grad():
        whole = net(x)
        slid = slide_logits(net, x, cfg)
    assert slid.shape == whole.shape
    torch.testing.assert_close(slid, whole, rtol=1e-5, atol=1e-5)


def test_slide_averages_overlaps() -> None:
    """A net whose output depends on the window contents: overlaps must be averaged."""

    class WindowMean(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, h, w) -> (B, 2, h, w)
            m = x[:, :1].mean(dim=(2, 3), keepdim=True)
            return m.expand(-1, 2, *x.shape[2:]).contiguous()

    x = torch.zeros(1, 3, 3, 5)
    x[:, 0, :, 4] = 3.0
    # windows cover columns [0, 3) (mean 0) and [2, 5) (mean 3 * 3 / 9 = 1)
    out = slide_logits(WindowMean(), x, InferenceConfig(mode="slide", crop=3, stride=2))
    assert out[0, 0, 1].tolist() == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.0])


def test_flip_tta_is_exact_for_flip_equivariant_net() -> None:
    net = pointwise_net()
    x = torch.randn(1, 3, 31, 47)
    plain = predict_probs(net, x, InferenceConfig())
    flipped = predict_probs(net, x, InferenceConfig(flip=True))
    torch.testing.assert_close(plain, flipped, rtol=1e-5, atol=1e-6)


def test_multiscale_returns_input_size_probabilities() -> None:
    net = pointwise_net()
    x = torch.randn(2, 3, 37, 29)
    probs = predict_probs(net, x, InferenceConfig(scales=(0.5, 1.0, 1.75), flip=True))
    assert probs.shape == (2, 5, 37, 29)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 37, 29))


def test_scores_to_mask_resizes_scores_not_labels() -> None:
    scores = torch.zeros(1, 3, 2, 2)
    scores[0, 2, 0, 0] = 5.0  # top-left quadrant is class 2
    mask = scores_to_mask(scores, (4, 6))
    assert mask.shape == (1, 4, 6) and mask.dtype == torch.int64
    assert mask[0, 0, 0] == 2 and mask[0, -1, -1] == 0
    assert set(mask.unique().tolist()) == {0, 2}


@pytest.mark.parametrize(
    "kwargs", [{"mode": "tiles"}, {"crop": 0}, {"stride": -1}, {"scales": ()}, {"scales": (0.0,)}]
)
def test_bad_inference_options_are_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="inference"):
        InferenceConfig(**kwargs)

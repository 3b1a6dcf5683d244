"""Classification + single-object localization from one encoder, optionally with a mask decoder.

Follows the localization set-up of Simonyan and Zisserman, "Very Deep Convolutional Networks for
Large-Scale Image Recognition", Appendix A, https://arxiv.org/abs/1409.1556: the classification
network's last layer is replaced by a bounding-box regressor, either single-class (one box shared
by all classes, "SCR") or per-class (one box per class, "PCR"; the loss uses the box of the
ground-truth class). The segmentation branch is the transposed-conv U-Net decoder of
``seg.models.unet`` (Ronneberger et al., https://arxiv.org/abs/1505.04597).

Output of ``Localizer.forward``: a dict following the contract of :mod:`seg.models`:

- ``"cls"``: (B, K) class logits.
- ``"box"``: (B, 4) (x, y, w, h) in [0, 1], top-left corner and size normalised by the image
  width/height. Class-agnostic: the single box. Per-class: the box of the *predicted* class
  (argmax of the logits), i.e. what inference and metrics use.
- ``"box_all"`` (per-class only): (B, K, 4), every class's box. Training selects the box of the
  *target* class with ``select_box(out["box_all"], target_index)``.
- ``"out"`` (with ``seg_decoder=True``): (B, seg_classes, H, W) segmentation logits.

Class indices: logit k is class k. With ``num_classes=20`` (VOC objects without background) the
VOC label l in 1..20 is index l - 1; with ``num_classes=21`` the VOC index is used directly.
Sigmoid keeps x, y, w, h each in [0, 1]; x + w may exceed 1 (metrics clip the box to the image).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from seg.constants import NUM_CLASSES
from seg.models import BOX, BOX_ALL, CLS, OUT
from seg.models.blocks import pad_to_multiple
from seg.models.unet import UNetDecoder


def select_box(box_all: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Pick each sample's box of class ``labels[b]`` from per-class boxes.

    Args:
        box_all: (B, K, 4) per-class boxes.
        labels: (B,) int64 class indices in 0..K-1 (logit indices, not VOC labels when K=20).

    Returns:
        (B, 4), ``box_all[b, labels[b]]``.

    Raises:
        ValueError: Shapes disagree or a label is outside 0..K-1 (negative indices would
            otherwise silently wrap around).
    """
    if box_all.ndim != 3 or box_all.shape[-1] != 4 or labels.shape != box_all.shape[:1]:
        raise ValueError(
            f"expected box_all (B, K, 4) and labels (B,), got {tuple(box_all.shape)} "
            f"and {tuple(labels.shape)}"
        )
    num_classes = box_all.shape[1]
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be in 0..{num_classes - 1}, got {labels.tolist()}")
    return box_all[torch.arange(box_all.shape[0], device=box_all.device), labels]  # (B, 4)


class Localizer(nn.Module):
    """Encoder -> fixed grid of deep features -> MLP -> class logits and a box (+ optional mask).

    As in VGG's classifier, the fully connected layers see a fixed ``grid`` x ``grid`` map of the
    deepest features (7 x 7 at 224 x 224 input), not a global average: a box regressor needs to
    know *where* the object is. The map is first reduced to ``reduce_channels`` by a 1x1 conv
    (the FC layer's input would otherwise be C * 49 wide) and brought to the grid by bilinear
    resampling, which, unlike adaptive pooling, exports to ONNX for any input size.

    Args:
        encoder: Module following the encoder contract (``seg.models.encoders``).
        num_classes: K, number of class logits (20 VOC objects, or 21 with background).
        reduce_channels: Channels of the deepest features after the 1x1 reduction.
        grid: Side of the feature grid the MLP reads.
        hidden_channels: Width of the shared hidden layer of the MLP.
        dropout: Dropout after the hidden layer.
        per_class_box: Regress K boxes (PCR) instead of one class-agnostic box (SCR).
        seg_decoder: Add the U-Net decoder on the same encoder features, giving ``"out"``.
        seg_classes: Channels of the mask logits.
        decoder_channels: Decoder block widths, coarsest first, one per encoder stage.
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int = 20,
        reduce_channels: int = 128,
        grid: int = 7,
        hidden_channels: int = 512,
        dropout: float = 0.5,
        per_class_box: bool = False,
        seg_decoder: bool = False,
        seg_classes: int = NUM_CLASSES,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    ) -> None:
        super().__init__()
        self.encoder = encoder
        encoder_channels = tuple(encoder.out_channels)
        self.depth = len(encoder_channels) - 1
        self.num_classes = num_classes
        self.per_class_box = per_class_box
        self.grid = grid
        self.reduce = nn.Sequential(
            nn.Conv2d(encoder_channels[-1], reduce_channels, 1), nn.ReLU(inplace=True)
        )
        self.mlp = nn.Sequential(
            nn.Flatten(),  # (B, r * g * g)
            nn.Linear(reduce_channels * grid * grid, hidden_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.cls_head = nn.Linear(hidden_channels, num_classes)
        self.box_head = nn.Linear(hidden_channels, 4 * (num_classes if per_class_box else 1))
        self._init_box_prior()
        self.decoder: UNetDecoder | None = None
        if seg_decoder:
            if len(decoder_channels) != self.depth:
                raise ValueError(f"need {self.depth} decoder_channels, got {decoder_channels}")
            self.decoder = UNetDecoder(encoder_channels[1:], tuple(decoder_channels))
            self.seg_head = nn.Conv2d(decoder_channels[-1], seg_classes, kernel_size=1)

    def _init_box_prior(self) -> None:
        """Start every box at the centred half-size box (x, y, w, h) = (.25, .25, .5, .5), with
        small weights: from the default init, random sums of the hidden units push the
        sigmoids into saturation, where the boxes stick at the full image or at a corner.
        (A prior-probability bias, as in RetinaNet's classifier, https://arxiv.org/abs/1708.02002.)
        """
        prior = torch.logit(torch.tensor([0.25, 0.25, 0.5, 0.5]))
        with torch.no_grad():
            self.box_head.weight.mul_(0.01)
            self.box_head.bias.copy_(prior.repeat(self.box_head.out_features // 4))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Args: x (B, 3, H, W), any H and W.

        Returns:
            Dict with "cls" (B, K), "box" (B, 4) in [0, 1], "box_all" (B, K, 4) when
            ``per_class_box``, "out" (B, seg_classes, H, W) when ``seg_decoder``.
        """
        h, w = x.shape[-2:]
        stride = 2**self.depth
        if self.decoder is not None:
            x = pad_to_multiple(x, stride, "reflect")  # (B, 3, H', W')
        features = self.encoder(x)
        # Pool only the deepest cells that see the real image, not the padding.
        # ceil division written with non-negative operands: exporters map // to truncation.
        cells_h, cells_w = (h + stride - 1) // stride, (w + stride - 1) // stride
        deep = features[-1][..., :cells_h, :cells_w]  # (B, C, ceil(H/s), ceil(W/s))
        deep = self.reduce(deep)  # (B, r, ceil(H/s), ceil(W/s))
        size = (self.grid, self.grid)
        deep = F.interpolate(deep, size=size, mode="bilinear", align_corners=False)  # (B, r, g, g)
        hidden = self.mlp(deep)  # (B, hidden)
        logits = self.cls_head(hidden)  # (B, K)
        box = torch.sigmoid(self.box_head(hidden))  # (B, 4) or (B, 4K)
        out = {CLS: logits}
        if self.per_class_box:
            out[BOX_ALL] = box.view(-1, self.num_classes, 4)  # (B, K, 4)
            pred = logits.argmax(dim=1)  # (B,), always in range: no check, no host sync
            out[BOX] = out[BOX_ALL][torch.arange(x.shape[0], device=x.device), pred]  # (B, 4)
        else:
            out[BOX] = box  # (B, 4)
        if self.decoder is not None:
            mask = self.seg_head(self.decoder(features[1:]))  # (B, seg_classes, H', W')
            out[OUT] = mask[..., :h, :w]  # (B, seg_classes, H, W)
        return out

"""Class activation maps (Grad-CAM) for segmentation nets and for the localizer's class logits.

Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", ICCV 2017, https://arxiv.org/abs/1610.02391. The map of class y at layer A is
``ReLU(sum_k w_k A_k)`` with ``w_k`` the spatial mean of ``d score_y / d A_k``. For segmentation
the score is the sum of the class's logits over the pixels predicted as that class
(``pytorch-grad-cam``'s ``SemanticSegmentationTarget``); for the localizer it is the class
logit (``ClassifierOutputTarget``). The computation is the library's
(https://github.com/jacobgil/pytorch-grad-cam), not ours; this module only feeds it the right
model output, target and image size.

Alignment: the library resizes the (h, w) map to its input's size. Nets pad their input to a
multiple of their stride internally, so the map covers (h * s, w * s) pixels, not (H, W). The
library is therefore given the image padded to exactly that *canvas*; the wrapped net crops the
canvas back to the image before running, so predictions are unchanged, and the map is cropped
back to (H, W) afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, SemanticSegmentationTarget
from torch import Tensor, nn

from seg.explain.layers import Layer, activations, detached_output
from seg.models import CLS, seg_logits


class CanvasNet(nn.Module):
    """The net seen by the library: a canvas (B, 3, H', W') in, one tensor out.

    The canvas is cropped to the image (H, W) before the net runs; per-pixel logits are
    zero-padded back to (B, K, H', W') so that a target mask of the canvas's size applies.
    With ``classify`` the class logits (B, K) are returned instead.
    """

    def __init__(self, net: nn.Module, size: tuple[int, int], classify: bool) -> None:
        super().__init__()
        self.net, self.size, self.classify = net, size, classify

    def forward(self, canvas: Tensor) -> Tensor:
        h, w = self.size
        out = self.net(canvas[..., :h, :w])
        if self.classify:
            return out[CLS]  # (B, K)
        logits = seg_logits(out)  # (B, K, H, W)
        return F.pad(logits, (0, canvas.shape[-1] - w, 0, canvas.shape[-2] - h))


def canvas_size(net: nn.Module, x: Tensor, layer: Layer) -> tuple[int, int]:
    """(H', W') covered by ``layer``'s output grid for input ``x`` (1, 3, H, W)."""
    with torch.no_grad():
        h, w = activations(net, x, [layer.name])[layer.name].shape[-2:]
    height, width = x.shape[-2:]
    return max(round(h * layer.stride), height), max(round(w * layer.stride), width)


def grad_cam(
    net: nn.Module,
    x: Tensor,
    layer: Layer,
    classes: Sequence[int],
    mask: Tensor | None = None,
) -> np.ndarray:
    """Grad-CAM of each class in ``classes`` on one image.

    Args:
        net: The net, in eval mode, with parameters that need no gradient.
        x: The normalised image (1, 3, H, W) on the net's device.
        layer: The layer whose activations are weighted.
        classes: Class indices.
        mask: The predicted class per pixel (H, W), for per-pixel nets: class y's score is
            summed over the pixels predicted as y. None for class logits (the localizer).

    Returns:
        Maps (len(classes), H, W) float32, each scaled to [0, 1] by the library.
    """
    size = tuple(x.shape[-2:])
    ch, cw = canvas_size(net, x, layer)
    canvas = F.pad(x, (0, cw - size[1], 0, ch - size[0]))  # (1, 3, H', W')
    batch = canvas.expand(len(classes), -1, -1, -1).clone().requires_grad_(True)
    if mask is None:
        targets = [ClassifierOutputTarget(int(c)) for c in classes]
    else:
        full = F.pad(mask.long() + 1, (0, cw - size[1], 0, ch - size[0])) - 1  # -1 off-image
        targets = [
            SemanticSegmentationTarget(int(c), (full == c).float().cpu().numpy()) for c in classes
        ]
    module = net.get_submodule(layer.name)
    cam = GradCAM(model=CanvasNet(net, size, classify=mask is None), target_layers=[module])
    try:
        with detached_output(module):  # registered after the library's hooks: see its docstring
            maps = cam(input_tensor=batch, targets=targets)  # (B, H', W')
    finally:
        cam.activations_and_grads.release()
    return maps[:, : size[0], : size[1]]


def overlay(image: np.ndarray, cam: np.ndarray, weight: float = 0.5) -> np.ndarray:
    """The map as a heat map over the RGB uint8 image (the library's ``show_cam_on_image``)."""
    return show_cam_on_image(image.astype(np.float32) / 255, cam, use_rgb=True, image_weight=weight)

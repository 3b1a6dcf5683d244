"""Segmentation and localization networks: plain ``nn.Module``s returning logits.

**The net-output contract** (the one answer to "what must my net return"). A net maps normalised
images (B, 3, H, W), any H and W, to either

- a tensor (B, C, H, W): per-pixel class logits at the input resolution, or
- a dict (torchvision's convention) with any of
  - ``"out"``: (B, C, H, W) per-pixel class logits, as above;
  - ``"aux"``: (B, C, h, w) auxiliary logits (deep supervision), any resolution;
  - ``"cls"``: (B, K) image class logits (classification + localization);
  - ``"box"``: (B, 4) one box per image, (x, y, w, h) normalised to [0, 1], top-left corner;
  - ``"box_all"``: (B, K, 4) one box per class (per-class regression).

Logits, never probabilities: the LightningModules apply the loss, and :mod:`seg.inference` turns
scores into masks. Everything that consumes a net output (modules, inference, export, receptive
field) reads it through :func:`seg_logits` and the key names below, and nothing else.

The architectures live in the submodules (``seg.models.fcn``, ``unet``, ``dilation``,
``localization``, ``encoders``) and are built by Hydra from ``conf/model/*.yaml``; this package
imports none of them, so reading the contract costs nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from seg.errors import NetOutputError

#: Keys of a dict net output; see the module docstring.
OUT, AUX, CLS, BOX, BOX_ALL = "out", "aux", "cls", "box", "box_all"

NetOutput = Tensor | Mapping[str, Tensor]


def has_seg_logits(out: Any) -> bool:
    """Whether a net output carries per-pixel logits (a tensor, or a dict with ``"out"``)."""
    return isinstance(out, Tensor) or (isinstance(out, Mapping) and OUT in out)


def seg_logits(out: Any) -> Tensor:
    """The per-pixel class logits (B, C, H, W) of a net output.

    Raises:
        NetOutputError: ``out`` is neither a tensor nor a dict with ``"out"``.
    """
    if isinstance(out, Tensor):
        return out
    if isinstance(out, Mapping) and OUT in out:
        return out[OUT]
    keys = sorted(out) if isinstance(out, Mapping) else type(out).__name__
    raise NetOutputError(
        f"the net returned {keys}: per-pixel logits must be a (B, C, H, W) tensor or the "
        f"{OUT!r} entry of a dict (see seg/models/__init__.py)"
    )


__all__ = ["AUX", "BOX", "BOX_ALL", "CLS", "OUT", "NetOutput", "has_seg_logits", "seg_logits"]

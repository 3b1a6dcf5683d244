"""Class-score maximisation: the input a net finds most typical of a class.

Simonyan, Vedaldi & Zisserman, "Deep Inside Convolutional Networks: Visualising Image
Classification Models and Saliency Maps", ICLR 2014 workshop, https://arxiv.org/abs/1312.6034,
Sec. 2: ``argmax_x a_y(x) - lambda ||x||^2`` by gradient ascent from noise, where ``a_y`` is the
unnormalised score of class y. For a segmentation net ``a_y`` is the mean logit of class y over
the image, or over a region of it; for the localizer it is the class logit ``"cls"``. ``x``
lives in the model's input normalisation (the paper's mean-subtracted image); it is shown
de-normalised. Optional regularisers from later work (Yosinski et al. 2015,
https://arxiv.org/abs/1506.06579): random jitter (translate the image before every step) and
a periodic Gaussian blur, both favouring images without high-frequency adversarial noise.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from rich.progress import track
from torch import Tensor, nn
from torchvision.transforms.functional import gaussian_blur

from seg.models import CLS, seg_logits


@dataclass
class Ascent:
    """Options of the gradient ascent (``maximize.*`` in ``conf/explain.yaml``).

    Attributes:
        size: Side of the square image optimised.
        steps: Gradient steps.
        lr: Adam step size, in normalised units.
        l2: lambda; the penalty is lambda times the *mean* of x^2 (so lambda does not depend on
            the image size, as the mean logit does not).
        jitter: Largest random shift (pixels) applied before each step; 0: none.
        blur_every: Blur x every this many steps; 0: never.
        blur_sigma: Standard deviation (pixels) of that blur.
        region: (y0, x0, y1, x1) fractions of the image whose mean logit is maximised; None:
            the whole image. Ignored for class logits.
        noise: Standard deviation of the starting noise.
        seed: Seed of the starting noise and of the jitter.
        clip: Keep x a valid image: after each step, project every value onto the normalised
            image of [0, 1] (needs ``bounds`` in :func:`maximize`). Raw logits grow without
            limit as x leaves the range of images (and so do other classes' logits), and an
            image outside it cannot be displayed as it was optimised.
    """

    size: int = 128
    steps: int = 100
    lr: float = 0.1
    l2: float = 1e-3
    jitter: int = 0
    blur_every: int = 0
    blur_sigma: float = 0.5
    region: Sequence[float] | None = None
    noise: float = 0.1
    seed: int = 0
    clip: bool = True


def class_scores(net: nn.Module, x: Tensor, region: Sequence[float] | None = None) -> Tensor:
    """a(x): (B, 3, H, W) -> (B, K), the class logits or the mean per-pixel logit per class.

    A net with image class logits (the localizer's ``"cls"``) is scored on those; otherwise on
    the per-pixel logits, averaged over ``region`` (fractions y0, x0, y1, x1) or the image.
    """
    out = net(x)
    if isinstance(out, dict) and CLS in out:
        return out[CLS]
    logits = seg_logits(out)  # (B, K, H, W)
    if region is not None:
        h, w = logits.shape[-2:]
        y0, x0, y1, x1 = region
        rows = slice(int(y0 * h), max(int(y0 * h) + 1, round(y1 * h)))
        cols = slice(int(x0 * w), max(int(x0 * w) + 1, round(x1 * w)))
        logits = logits[..., rows, cols]
    return logits.mean(dim=(2, 3))  # (B, K)


def maximize(
    net: nn.Module,
    classes: Sequence[int],
    opts: Ascent,
    bounds: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, dict]:
    """Find, for each class, the input maximising ``a_y(x) - l2 * mean(x^2)``.

    All classes are optimised together as one batch (the net is in eval mode, so the images
    do not interact). The net's parameters are not changed.

    Args:
        net: The net, in eval mode.
        classes: Class indices y, one image each.
        opts: Ascent options.
        bounds: (low, high), each (3,): the normalised values of pixel values 0 and 1, for
            ``opts.clip``; None: [0, 1] (a net fed unnormalised images).

    Returns:
        (x, scores): the images (B, 3, S, S) in the input normalisation, on the CPU, and
        ``{"start": (B, K), "end": (B, K)}`` class scores before and after, on the CPU.
    """
    device = next(net.parameters()).device
    gen = torch.Generator().manual_seed(opts.seed)
    shape = (len(classes), 3, opts.size, opts.size)
    start = (opts.noise * torch.randn(shape, generator=gen)).to(device)
    x = start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=opts.lr)
    target = torch.as_tensor(list(classes), device=device)
    rows = torch.arange(len(classes), device=device)
    low, high = bounds if bounds is not None else (torch.zeros(3), torch.ones(3))
    low, high = low.to(device).view(1, 3, 1, 1), high.to(device).view(1, 3, 1, 1)
    for step in track(
        range(opts.steps), description="Maximising class scores", disable=not sys.stderr.isatty()
    ):
        xs = x
        if opts.jitter:
            dy, dx = torch.randint(-opts.jitter, opts.jitter + 1, (2,), generator=gen).tolist()
            xs = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
        score = class_scores(net, xs, opts.region)[rows, target]  # (B,)
        objective = score - opts.l2 * x.square().mean(dim=(1, 2, 3))
        optimizer.zero_grad(set_to_none=True)
        (-objective.sum()).backward()  # ascent; each image only reaches its own term
        optimizer.step()
        if opts.clip:
            with torch.no_grad():
                x.copy_(torch.maximum(torch.minimum(x, high), low))
        if opts.blur_every and (step + 1) % opts.blur_every == 0:
            kernel = 2 * round(2 * opts.blur_sigma) + 1
            with torch.no_grad():
                x.copy_(gaussian_blur(x, [kernel, kernel], [opts.blur_sigma] * 2))
    with torch.no_grad():
        scores = {
            "start": class_scores(net, start, opts.region).float().cpu(),
            "end": class_scores(net, x, opts.region).float().cpu(),
        }
    return x.detach().cpu(), scores


def summary(classes: Sequence[int], names: Sequence[str], scores: dict) -> list[dict]:
    """Per class: its score at the start and the end, and whether it now beats every other."""
    rows = []
    for i, c in enumerate(classes):
        end = scores["end"][i]
        others = torch.cat([end[:c], end[c + 1 :]])
        rows.append(
            {
                "class": names[c],
                "index": int(c),
                "start": round(float(scores["start"][i, c]), 4),
                "end": round(float(end[c]), 4),
                "best_other": round(float(others.max()), 4) if len(others) else None,
                "top": bool(len(others) == 0 or end[c] > others.max()),
            }
        )
    return rows

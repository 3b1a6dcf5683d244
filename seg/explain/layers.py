"""Which layers of a net can be explained, and how to read their activations.

A *layer* is a dotted name of ``net.named_modules()`` whose module returns a (B, C, h, w) tensor
and runs exactly once per forward pass (a module shared by two call sites, like the ReLU of
VGG's fc6 and fc7, has no single activation to show). :func:`probe` finds them all with one
forward pass on a blank image, with their channels, stride and execution order, and the
*stage ends*: the layers whose outputs are the feature maps the net's encoder returns (the
encoder contract of :mod:`seg.models.encoders`; ``backbone`` for torchvision's models). These
are the default layers of every figure, "the last layer of each encoder stage".
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from seg.errors import ConfigError

#: Side of the blank probe image: a multiple of every model's output stride (32), so that
#: stride = probe side / feature side is exact.
PROBE_SIZE = 256


@dataclass(frozen=True)
class Layer:
    """One explainable layer.

    Attributes:
        name: Dotted module name.
        kind: Module class name.
        channels: C of its (B, C, h, w) output.
        stride: Input pixels per output pixel.
        weight: Name of the last convolution or linear layer run up to this layer with C
            outputs (whose weights make these channels), or None.
    """

    name: str
    kind: str
    channels: int
    stride: float
    weight: str | None


@dataclass
class Catalogue:
    """Every explainable layer of a net, in execution order, and its stage ends.

    Attributes:
        layers: name -> :class:`Layer`, in the order the layers finish in a forward pass.
        stages: Names of the stage ends, shallow to deep.
        first_conv: Name of the first convolution run on the input image, or None.
        shared: Modules that return feature maps but run more than once per forward.
    """

    layers: dict[str, Layer]
    stages: list[str]
    first_conv: str | None
    shared: list[str] = field(default_factory=list)

    def before_classifier(self, num_classes: int) -> str:
        """The last layer whose channels are not class scores: the input of the classifier,
        Grad-CAM's usual layer (Selvaraju et al. use the last convolutional layer)."""
        features = [n for n, lay in self.layers.items() if lay.channels != num_classes]
        return (features or list(self.layers))[-1]

    def resolve(self, names: Sequence[str] | None, key: str = "layers") -> list[str]:
        """Check layer names given on the command line; None gives the stage ends.

        Raises:
            ConfigError: A name is not an explainable layer; the message lists them all.
        """
        if names is None:
            return list(self.stages)
        names = [names] if isinstance(names, str) else [str(n) for n in names]
        bad = [n for n in names if n not in self.layers]
        if bad:
            shared = " (runs more than once per forward)"
            listed = ", ".join(repr(n) + (shared if n in self.shared else "") for n in bad)
            raise ConfigError(
                f"{key}: unknown layer {listed}; available layers: {', '.join(self.layers)}"
            )
        return names


def tensors(out: object) -> list[Tensor]:
    """The tensors of a module output: a tensor, a list / tuple of them, or a dict's values."""
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, list | tuple):
        return [t for t in out if isinstance(t, Tensor)]
    return []


def encoder_of(net: nn.Module) -> nn.Module | None:
    """The module whose output lists the stage features: ``encoder`` (seg) or ``backbone``."""
    for attr in ("encoder", "backbone"):
        module = getattr(net, attr, None)
        if isinstance(module, nn.Module):
            return module
    return None


def _weight_layer(name: str, channels: int, done: list[tuple[str, nn.Module]]) -> str | None:
    """The last conv / linear finished at or before ``name`` with ``channels`` outputs."""
    for other, module in reversed(done):
        out = getattr(module, "out_channels", getattr(module, "out_features", None))
        if isinstance(module, nn.modules.conv._ConvNd | nn.Linear) and out == channels:
            return other
    return None


@torch.no_grad()
def passes(net: nn.Module, name: str) -> bool:
    """Whether module ``name`` hands its input on at inference (an identity or a dropout): never
    a stage end, even when it runs last (the U-Net's dropout at the end of the contracting path)."""
    return isinstance(net.get_submodule(name), nn.Identity | nn.modules.dropout._DropoutNd)


def probe(net: nn.Module, size: int = PROBE_SIZE) -> Catalogue:
    """Find the explainable layers of ``net`` with one forward pass on a blank image.

    Args:
        net: A net following :mod:`seg.models`' contract, in eval mode.
        size: Side of the probe image (a multiple of the net's output stride).

    Returns:
        The :class:`Catalogue`.
    """
    device = next(net.parameters()).device
    calls: Counter[str] = Counter()
    done: list[tuple[str, nn.Module]] = []  # (name, module) in the order the modules finish
    maps: list[tuple[str, Tensor]] = []  # kept alive, so that `is` compares live objects
    features: list[Tensor] = []

    def record(name: str, module: nn.Module):
        def hook(_: nn.Module, __: object, out: object) -> None:
            calls[name] += 1
            done.append((name, module))
            if isinstance(out, Tensor) and out.dim() == 4 and min(out.shape[-2:]) > 1:
                maps.append((name, out))  # a spatial map, not a globally pooled vector

        return hook

    handles = [m.register_forward_hook(record(n, m)) for n, m in net.named_modules() if n]
    encoder = encoder_of(net)
    if encoder is not None:
        handles.append(
            encoder.register_forward_hook(lambda m, a, out: features.extend(tensors(out)))
        )
    try:
        net(torch.zeros(1, 3, size, size, device=device))
    finally:
        for handle in handles:
            handle.remove()
    layers: dict[str, Layer] = {}
    for name, out in maps:
        if calls[name] == 1:
            upto = done[: next(i for i, (n, _) in enumerate(done) if n == name) + 1]
            c = out.shape[1]
            kind = type(net.get_submodule(name)).__name__
            layers[name] = Layer(name, kind, c, size / out.shape[-2], _weight_layer(name, c, upto))
    # In-place ops and identities return their input object: the stage end is the last
    # single-run module that returned the very tensor the encoder returned.
    stages = []
    for feature in features:
        owners = [n for n, out in maps if out is feature and n in layers and not passes(net, n)]
        if owners and owners[-1] not in stages:
            stages.append(owners[-1])
    first_conv = next((n for n, m in done if isinstance(m, nn.Conv2d) and m.in_channels == 3), None)
    shared = sorted({n for n, _ in maps if calls[n] > 1})
    return Catalogue(layers, stages or list(layers)[-1:], first_conv, shared)


class _Stop(Exception):
    """Raised by a hook to end a forward pass once every wanted layer has run."""


def activations(net: nn.Module, x: Tensor, names: Sequence[str]) -> dict[str, Tensor]:
    """The outputs of layers ``names`` for input ``x``; the rest of the net is not run.

    Each output is cloned when its module returns, before any later in-place op (a ReLU) can
    change it, and keeps its autograd graph unless run under ``torch.no_grad``.

    Args:
        net: The net.
        x: Normalised images (B, 3, H, W).
        names: Layer names (see :func:`probe`).

    Returns:
        name -> (B, C, h, w).
    """
    wanted = set(names)
    got: dict[str, Tensor] = {}

    def record(name: str):
        def hook(_: nn.Module, __: object, out: Tensor) -> None:
            got[name] = out.clone()
            if wanted <= got.keys():
                raise _Stop

        return hook

    with contextlib.ExitStack() as stack:
        for name in wanted:
            handle = net.get_submodule(name).register_forward_hook(record(name))
            stack.callback(handle.remove)
        with contextlib.suppress(_Stop):
            net(x)
    return got


class LayerOutput(nn.Module):
    """A net cut after one layer: (B, 3, H, W) -> that layer's output (B, C, h, w).

    What :func:`seg.models.receptive_field.receptive_field` measures for a stage. The layer is
    looked up by name at each call, so a copy of this module (which ``receptive_field`` makes
    and alters) reads its own copy of the layer.
    """

    def __init__(self, net: nn.Module, name: str) -> None:
        super().__init__()
        self.net, self.name = net, name

    def forward(self, x: Tensor) -> Tensor:
        return activations(self.net, x, [self.name])[self.name]


@contextlib.contextmanager
def detached_output(module: nn.Module) -> Iterator[None]:
    """Give the rest of the net a copy of ``module``'s output while hooks registered before
    this one keep the original, so later in-place ops (ReLU) cannot change what they saw."""
    handle = module.register_forward_hook(lambda m, a, out: out.clone())
    try:
        yield
    finally:
        handle.remove()

"""``python explain.py ckpt=PATH input=IMAGES output=DIR``: what a trained net sees.

Loads the checkpoint's net, finds its explainable layers (:mod:`seg.explain.layers`), makes the
figure kinds asked for by ``what`` and writes ``index.json`` (every figure's path, kind, layer,
channels or classes, settings and seconds, plus the timings of each kind). One streaming pass
over the images serves both the patches and the channel statistics. Bad images are reported
and skipped as in ``predict.py``, and make the exit status 1.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from seg.checkpoint import build_net, load_checkpoint
from seg.errors import ConfigError
from seg.explain import kinds as make
from seg.explain import options
from seg.explain.data import Images, Pixels, class_indices, class_names
from seg.explain.fields import measure
from seg.explain.figures import Figure, timer
from seg.explain.layers import Catalogue, Layer, probe
from seg.explain.options import plain
from seg.explain.patches import ChannelTopK, stream
from seg.inference import InferenceConfig
from seg.models import CLS, seg_logits
from seg.utils import write_json

#: Kinds that read images (maximisation starts from noise).
NEEDS_IMAGES = {"filters", "patches", "cam", "receptive_field"}


@dataclass
class Context:
    """What every figure kind needs, built once per run."""

    cfg: DictConfig
    out: Path
    device: torch.device
    net: nn.Module
    catalogue: Catalogue
    layers: list[Layer]
    cam_layers: list[Layer]
    images: Images
    pixels: Pixels
    names: list[str]
    classify: bool
    infer: InferenceConfig
    stats: dict[str, ChannelTopK] | None = None
    fields: dict[tuple[str, bool], dict] = field(default_factory=dict)

    def field_of(self, layer: Layer, geometric: bool) -> dict:
        """:func:`seg.explain.fields.measure` at ``receptive_field.size``, measured once."""
        key = (layer.name, geometric)
        if key not in self.fields:
            size = int(self.cfg.receptive_field.size)
            self.fields[key] = measure(self.net, layer, size, geometric)
        return self.fields[key]


def outputs(net: nn.Module) -> tuple[int, bool]:
    """(K, classify): the net's class count, and whether it is explained through ``"cls"``."""
    device = next(net.parameters()).device
    with torch.no_grad():
        out = net(torch.zeros(1, 3, 64, 64, device=device))
    if isinstance(out, dict) and CLS in out:
        return out[CLS].shape[1], True
    return seg_logits(out).shape[1], False


def build(cfg: DictConfig, what: list[str]) -> Context:
    """Load the net and resolve every name given on the command line."""
    device = options.device(str(cfg.device))
    ckpt = load_checkpoint(cfg.ckpt)
    net = build_net(ckpt, cfg.ckpt).to(device).requires_grad_(False)
    catalogue = probe(net)
    layers = [catalogue.layers[n] for n in catalogue.resolve(plain(cfg.layers))]
    chosen = plain(cfg.patches.channels)
    narrow = [lay for lay in layers if isinstance(chosen, list) and max(chosen) >= lay.channels]
    if narrow:
        raise ConfigError(
            f"patches.channels={chosen}: {narrow[0].name} has only {narrow[0].channels} channels"
        )
    k, classify = outputs(net)
    cam_names = plain(cfg.cam.layers) or [catalogue.before_classifier(k)]
    cam_layers = [catalogue.layers[n] for n in catalogue.resolve(cam_names, "cam.layers")]
    names = class_names(ckpt, k)
    if plain(cfg.maximize.classes) not in ("all", "predicted"):
        class_indices(plain(cfg.maximize.classes), names, "maximize.classes")
    class_indices(plain(cfg.cam.classes), names, "cam.classes")
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    wanted = NEEDS_IMAGES & set(what) or cfg.input is not None
    images = Images.from_config(cfg) if wanted else Images([])
    return Context(
        cfg=cfg,
        out=out,
        device=device,
        net=net,
        catalogue=catalogue,
        layers=layers,
        cam_layers=cam_layers,
        images=images,
        pixels=Pixels(ckpt),
        names=names,
        classify=classify,
        infer=InferenceConfig.from_config(cfg),
    )


def explain(cfg: DictConfig) -> int:
    """Make the figures of ``cfg.what`` (see the module docstring) and write ``index.json``.

    Returns:
        The exit status: 0, or 1 when some image could not be used.

    Raises:
        ConfigError: A bad option, layer or class name, or device.
        CheckpointError: The checkpoint cannot be used.
        InputError, DatasetNotFoundError: No images where they were asked for.
    """
    what = options.check(cfg)
    ctx = build(cfg, what)
    timings: dict[str, float] = {}
    figures: list[Figure] = []
    if {"filters", "patches"} & set(what):
        with timer() as t:
            ctx.stats = stream(ctx.net, ctx.layers, ctx.images, ctx.pixels, int(cfg.patches.k))
        timings["data_pass"] = t["seconds"]
    for kind in what:
        with timer() as t:
            figures += getattr(make, kind)(ctx)
        timings[kind] = t["seconds"]
    index = {
        "checkpoint": str(Path(cfg.ckpt).resolve()),
        "net": type(ctx.net).__name__,
        "device": str(next(ctx.net.parameters()).device),
        "images": {
            "count": len(ctx.images.paths),
            "failed": list(ctx.images.failed.values()),
            "ignored": [str(p) for p in ctx.images.ignored],
        },
        "layers": {
            "chosen": [lay.name for lay in ctx.layers],
            "stages": ctx.catalogue.stages,
            "cam": [lay.name for lay in ctx.cam_layers],
            "available": {n: vars(lay) for n, lay in ctx.catalogue.layers.items()},
        },
        "classes": ctx.names,
        "timings": timings,
        "figures": [f.record() for f in figures],
    }
    write_json(ctx.out / "index.json", index)
    for line in ctx.images.failed.values():
        print(f"failed: {line}", file=sys.stderr)
    made = ", ".join(f"{k} {timings[k]:.1f} s" for k in timings)
    print(
        f"{len(figures)} figures ({made}), {len(ctx.images.paths)} images, "
        f"{len(ctx.images.failed)} failed -> {ctx.out / 'index.json'}"
    )
    return 1 if ctx.images.failed else 0

"""Config checks that run before anything is built, so a bad value fails in a second, not after
the data has loaded and the first epoch has run.

:func:`validate_config` collects every problem into one :class:`ConfigError` whose message names
each offending key with its value and the rule it breaks, on one line; :func:`seg.cli.run`
checks every entry point's config with it before the task starts (exit status 2). Keys a config does not have are not checked
(``evaluate.py`` has no optimizer), so one function serves both entry points.

Unknown group options (``model=nope``) never get here: Hydra refuses them while composing and
lists the available options.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from seg.checkpoint import is_localization_target
from seg.data.batching import plan_batches
from seg.errors import ConfigError
from seg.inference.config import MODES

Check = Callable[[Any], bool]


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _positive(v: Any) -> bool:
    return _num(v) and v > 0


def _non_negative(v: Any) -> bool:
    return _num(v) and v >= 0


def _int_at_least(lo: int) -> Check:
    return lambda v: _int(v) and v >= lo


def _steps(v: Any) -> bool:
    return _int(v) and (v == -1 or v >= 1)


def _triple(v: Any) -> bool:
    return isinstance(v, list | tuple) and len(v) == 3 and all(_num(x) for x in v)


def _scales(v: Any) -> bool:
    return isinstance(v, list | tuple) and len(v) > 0 and all(_positive(x) for x in v)


#: key -> (rule, check). A missing or null key is not checked.
RULES: dict[str, tuple[str, Check]] = {
    "seed": ("must be an integer", _int),
    "optimizer.lr": ("must be > 0", _positive),
    "optimizer.weight_decay": ("must be >= 0", _non_negative),
    "optimizer.momentum": ("must be in [0, 1)", lambda v: _num(v) and 0 <= v < 1),
    "scheduler.power": ("must be > 0", _positive),
    "scheduler.eta_min": ("must be >= 0", _non_negative),
    "scheduler.warmup_fraction": ("must be in [0, 1)", lambda v: _num(v) and 0 <= v < 1),
    "scheduler.start_factor": ("must be in (0, 1]", lambda v: _num(v) and 0 < v <= 1),
    "data.batch_size": ("must be an integer >= 1", _int_at_least(1)),
    "data.micro_batch_size": ("must be an integer >= 1", _int_at_least(1)),
    "data.eval_batch_size": ("must be an integer >= 1", _int_at_least(1)),
    "data.num_workers": ("must be an integer >= 0", _int_at_least(0)),
    "augment.crop_size": ("must be an integer >= 1", _int_at_least(1)),
    "augment.std": ("must be 3 numbers > 0", lambda v: _triple(v) and all(s > 0 for s in v)),
    "augment.mean": ("must be 3 numbers", _triple),
    "model.encoder_lr_mult": ("must be >= 0", _non_negative),
    "model.bias_lr_mult": ("must be >= 0", _non_negative),
    "model.bias_weight_decay": ("must be >= 0", _non_negative),
    "model.loss_reduction": ("must be 'mean' or 'sum'", lambda v: v in ("mean", "sum")),
    "trainer.max_epochs": ("must be an integer >= 1 (or -1: no limit)", _steps),
    "trainer.max_steps": ("must be an integer >= 1 (or -1: no limit)", _steps),
    "trainer.accumulate_grad_batches": ("must be an integer >= 1", _int_at_least(1)),
    "trainer.check_val_every_n_epoch": ("must be an integer >= 1", _int_at_least(1)),
    "trainer.gradient_clip_val": ("must be >= 0", _non_negative),
    "inference.mode": (f"must be one of: {', '.join(MODES)}", lambda v: v in MODES),
    "inference.crop": ("must be an integer >= 1", _int_at_least(1)),
    "inference.stride": ("must be an integer >= 1", _int_at_least(1)),
    "inference.window_batch": ("must be an integer >= 1", _int_at_least(1)),
    "inference.slide_above": ("must be an integer >= 1", _int_at_least(1)),
    "inference.compile": ("must be auto, true or false", lambda v: v in ("auto", True, False)),
    "inference.compile_min_images": ("must be an integer >= 0", _int_at_least(0)),
    "inference.bucket": ("must be an integer >= 1", _int_at_least(1)),
    "tta.scales": ("must be a non-empty list of numbers > 0", _scales),
}

#: Loss weights of the LightningModules: each must be >= 0.
LOSS_WEIGHTS = (
    "dice_weight",
    "lovasz_weight",
    "aux_weight",
    "cls_weight",
    "l2_weight",
    "smooth_l1_weight",
    "giou_weight",
    "seg_weight",
)


def _get(cfg: DictConfig, key: str) -> Any:
    """The resolved value at ``key`` as plain Python (None when missing)."""
    value = OmegaConf.select(cfg, key, default=None)
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _check_rules(cfg: DictConfig) -> Iterator[str]:
    keys = [*RULES, *(f"model.{w}" for w in LOSS_WEIGHTS)]
    for key in keys:
        value = _get(cfg, key)
        rule, check = RULES.get(key, ("must be >= 0", _non_negative))
        if value is not None and not check(value):
            yield f"{key}={value!r} {rule}"


def _check_inference(cfg: DictConfig) -> Iterator[str]:
    crop, stride = _get(cfg, "inference.crop"), _get(cfg, "inference.stride")
    if _int(crop) and _int(stride) and stride > crop:
        yield (
            f"inference.stride={stride} is larger than inference.crop={crop} "
            "(sliding windows would leave pixels unpredicted)"
        )


def _check_crop_vs_pad(cfg: DictConfig, pipeline: str) -> Iterator[str]:
    """A random crop larger than the PadIfNeeded before it fails on small images."""
    transforms = _get(cfg, f"augment.{pipeline}.transforms") or []
    pad: tuple[int, dict[str, Any]] | None = None
    for i, t in enumerate(transforms):
        name = str(t.get("_target_", "")).rsplit(".", 1)[-1] if isinstance(t, dict) else ""
        if name == "PadIfNeeded":
            pad = (i, t)
        elif name == "RandomCrop" and pad is not None and not t.get("pad_if_needed", False):
            j, p = pad
            for side, pad_side in (("height", "min_height"), ("width", "min_width")):
                crop, size = t.get(side), p.get(pad_side)
                if _int(crop) and _int(size) and crop > size:
                    yield (
                        f"augment.{pipeline}.transforms[{i}].{side}={crop} (RandomCrop) is larger "
                        f"than augment.{pipeline}.transforms[{j}].{pad_side}={size} (PadIfNeeded)"
                    )


def _check_global_batch(cfg: DictConfig) -> Iterator[str]:
    """``data.batch_size`` (global) must split over the processes and micro-batches; checked
    here when the process count is known (``trainer.devices`` a number), else at setup."""
    batch, micro = _get(cfg, "data.batch_size"), _get(cfg, "data.micro_batch_size")
    devices, nodes = _get(cfg, "trainer.devices"), _get(cfg, "trainer.num_nodes") or 1
    if not (_int(batch) and batch >= 1 and _int(devices) and devices >= 1 and _int(nodes)):
        return
    if micro is not None and not (_int(micro) and micro >= 1):
        return  # reported by its rule
    try:
        plan_batches(batch, devices * nodes, micro)
    except ConfigError as err:
        yield str(err)


def _class_counts(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Every ``num_classes`` / ``seg_classes`` key under a net config, with its dotted path."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("num_classes", "seg_classes"):
                yield f"{path}.{key}", value
            else:
                yield from _class_counts(value, f"{path}.{key}")


def _check_classes(cfg: DictConfig) -> Iterator[str]:
    """Class counts must match the data's classes (``data.classes``; VOC's 21 by default): C
    per-pixel logits, and K = C - ``model.label_offset`` class logits for localization."""
    target = _get(cfg, "model._target_")
    names = _get(cfg, "data.classes")
    if target is None or names is None:
        return
    c = len(names)
    source = f"the {c} classes of data.classes"
    localization = is_localization_target(target)
    expected = c - (_get(cfg, "model.label_offset") or 0) if localization else c
    module_k = _get(cfg, "model.num_classes")
    if module_k not in (None, expected):
        yield f"model.num_classes={module_k!r} must be {expected} ({source})"
    for key, k in _class_counts(_get(cfg, "model.net"), "model.net"):
        want = expected if localization and key == "model.net.num_classes" else c
        if k != want:
            yield f"{key}={k!r} must be {want} ({source})"
    weights = _get(cfg, "model.class_weights")
    if weights is not None and len(weights) != c:
        yield f"model.class_weights has {len(weights)} entries for {c} classes"


def problems(cfg: DictConfig) -> list[str]:
    """Every problem found in ``cfg``, one short sentence each that names the key."""
    return [
        *_check_rules(cfg),
        *_check_inference(cfg),
        *_check_crop_vs_pad(cfg, "train"),
        *_check_crop_vs_pad(cfg, "eval"),
        *_check_global_batch(cfg),
        *_check_classes(cfg),
    ]


def validate_config(cfg: DictConfig) -> None:
    """Check a composed train / evaluate config before anything is instantiated.

    Raises:
        ConfigError: One line listing every bad key, its value and the rule it breaks.
    """
    found = problems(cfg)
    if found:
        raise ConfigError(f"invalid config: {'; '.join(found)}")

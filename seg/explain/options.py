"""The options of ``explain.py`` checked before anything is loaded (one-line ``ConfigError``).

Generic keys (``inference.*``) are checked by :mod:`seg.validate` like every entry point's;
these are the explain-specific ones. Layer and class names are checked once the net is known
(:meth:`seg.explain.layers.Catalogue.resolve`, :func:`seg.explain.data.class_indices`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from omegaconf import OmegaConf

from seg.errors import ConfigError

#: Figure kinds, in the order they are made.
KINDS = ("filters", "patches", "maximize", "cam", "receptive_field")


def _int_at_least(lo: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _number(check: Callable[[float], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int | float) and not isinstance(v, bool) and check(v)


def _region(v: Any) -> bool:
    if v is None:
        return True
    ok = isinstance(v, list) and len(v) == 4 and all(_number(lambda x: 0 <= x <= 1)(x) for x in v)
    return ok and v[0] < v[2] and v[1] < v[3]


def _channels(v: Any) -> bool:
    many = isinstance(v, list) and len(v) > 0 and all(_int_at_least(0)(c) for c in v)
    return _int_at_least(1)(v) or many


#: key -> (rule, check); every key must be present in ``conf/explain.yaml``.
RULES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "patches.k": ("must be an integer >= 1", _int_at_least(1)),
    "patches.channels": ("must be a count >= 1 or a list of channel indices", _channels),
    "patches.thumb": ("must be an integer >= 8", _int_at_least(8)),
    "maximize.size": ("must be an integer >= 8", _int_at_least(8)),
    "maximize.steps": ("must be an integer >= 1", _int_at_least(1)),
    "maximize.lr": ("must be > 0", _number(lambda v: v > 0)),
    "maximize.l2": ("must be >= 0", _number(lambda v: v >= 0)),
    "maximize.jitter": ("must be an integer >= 0", _int_at_least(0)),
    "maximize.blur_every": ("must be an integer >= 0", _int_at_least(0)),
    "maximize.blur_sigma": ("must be > 0", _number(lambda v: v > 0)),
    "maximize.noise": ("must be >= 0", _number(lambda v: v >= 0)),
    "maximize.region": ("must be null or [y0, x0, y1, x1] fractions, y0 < y1, x0 < x1", _region),
    "cam.images": ("must be an integer >= 1", _int_at_least(1)),
    "cam.alpha": ("must be in [0, 1]", _number(lambda v: 0 <= v <= 1)),
    "receptive_field.size": ("must be an integer >= 16", _int_at_least(16)),
    "max_images": ("must be null or an integer >= 1", lambda v: v is None or _int_at_least(1)(v)),
}


def plain(value: Any) -> Any:
    """A config node as plain Python (lists, dicts); anything else unchanged."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def kinds(cfg: Any) -> list[str]:
    """The figure kinds asked for by ``what``, in :data:`KINDS` order.

    Raises:
        ConfigError: An unknown kind (the message lists the known ones).
    """
    what = plain(cfg.what) if OmegaConf.is_list(cfg.what) else [cfg.what]
    bad = [w for w in what if w not in KINDS]
    if bad:
        raise ConfigError(f"what={what}: unknown {bad}; choose from {list(KINDS)}")
    return [k for k in KINDS if k in what]


def check(cfg: Any) -> list[str]:
    """Check every explain option; return the kinds to make.

    Raises:
        ConfigError: One line naming every bad key, its value and the rule it breaks.
    """
    found = []
    for key, (rule, ok) in RULES.items():
        value = plain(OmegaConf.select(cfg, key))
        if not ok(value):
            found.append(f"{key}={value!r} {rule}")
    if found:
        raise ConfigError(f"invalid config: {'; '.join(found)}")
    return kinds(cfg)


def device(name: str) -> torch.device:
    """``device=``: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        ConfigError: Not a device name, or CUDA asked for where there is none.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"device={name!r} is not a device (auto, cpu, cuda, cuda:N)") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name}: no CUDA device is available here (use device=cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device={name}: only {torch.cuda.device_count()} CUDA device(s)")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={name!r}: explain runs on cpu or cuda")
    return dev

"""Figure plumbing shared by every kind: headless matplotlib, atomic PNG writes, index records."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: explain runs on servers and in tests
import matplotlib.pyplot as plt  # noqa: E402

from seg.utils import atomic_write_bytes  # noqa: E402


@dataclass
class Figure:
    """One entry of ``index.json``.

    Attributes:
        path: PNG path, relative to the output folder.
        kind: ``filters``, ``channel_stats``, ``patches``, ``maximize``, ``cam`` or
            ``receptive_field``.
        seconds: Time taken to compute and draw it (a shared data pass is counted in
            ``index.json``'s ``timings``, not here).
        layer: The layer shown, when there is one.
        channels: The channels shown, when chosen.
        classes: The class names shown, when chosen.
        settings: What else it depends on (options, image, scores).
    """

    path: str
    kind: str
    seconds: float
    layer: str | None = None
    channels: list[int] | None = None
    classes: list[str] | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The JSON record, without empty fields."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def save(fig: plt.Figure, out: Path, rel: str) -> str:
    """Write ``fig`` to ``out / rel`` as a PNG (atomically), close it, and return ``rel``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(out / rel, buf.getvalue())
    return rel


@contextmanager
def timer() -> Iterator[dict[str, float]]:
    """``with timer() as t:`` ... then ``t["seconds"]`` holds the elapsed wall time."""
    result = {"seconds": 0.0}
    start = time.perf_counter()
    try:
        yield result
    finally:
        result["seconds"] = round(time.perf_counter() - start, 3)


def no_ticks(ax: plt.Axes) -> None:
    """Images have no meaningful axes."""
    ax.set_xticks([])
    ax.set_yticks([])

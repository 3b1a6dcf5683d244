"""Shared test helpers and fixtures (import them with ``from conftest import ...``).

- Paths: ``REPO``, ``CONF``, ``SHARED`` and the config names under ``conf/``.
- :func:`compose`: a composed Hydra config, as the entry points compose it.
- :func:`run_entry`: an entry point run as a user runs it (``python train.py ...``).
- :func:`signal_when`: signal a running entry point once something it writes shows progress.
- :func:`fake_checkpoint`: a train.py-style checkpoint with random weights, for any model.
- :func:`load_preset`: an augmentation pipeline of ``conf/augment``.
- Fixtures: the generated sample, and the real VOC files in ``../shared`` (skipped when absent).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import seg  # noqa: F401  (registers the config resolvers)
from seg.data.sample import make_sample

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
#: ``../shared``; ``SEG_SHARED`` points elsewhere (a git worktree has no ``../shared``).
SHARED = Path(os.environ.get("SEG_SHARED", REPO.parent / "shared"))
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def compose(config_name: str = "train", *overrides: str) -> DictConfig:
    """``conf/<config_name>.yaml`` composed with ``overrides`` (``paths.output_dir`` defaults to a
    placeholder, since no Hydra run folder exists outside an app)."""
    if not any(o.startswith("paths.output_dir=") for o in overrides):
        overrides = ("++paths.output_dir=unused", *overrides)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def run_entry(
    script: str, *overrides: str, check: bool = True, timeout: int = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run ``python <script> <overrides>`` in the repo, as a user would (``script`` may be
    ``-m seg.export``). Hydra's run folder goes to a temporary folder unless the overrides name
    one (``hydra.run.dir``), so that the suite leaves nothing in the checkout's ``outputs/``."""
    if not any(o.startswith("hydra.run.dir=") for o in overrides):
        overrides = (*overrides, f"hydra.run.dir={tempfile.mkdtemp(prefix='seg-run-')}")
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore", **(env or {})}
    proc = subprocess.run(
        [sys.executable, *script.split(), *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def signal_when(
    proc: subprocess.Popen,
    ready: Callable[[], bool],
    sig: int = signal.SIGTERM,
    timeout: float = 240.0,
) -> None:
    """Send ``sig`` to ``proc`` as soon as ``ready()`` holds (polled every 10 ms), unless the
    process ends first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if ready():
            proc.send_signal(sig)
            return
        time.sleep(0.01)


def fake_checkpoint(model: str, path: Path, *overrides: str, seed: int = 0) -> Path:
    """A train.py-style checkpoint (config + random weights) for ``model=<model>``."""
    cfg = compose("train", f"model={model}", f"paths.output_dir={path.parent}", *overrides)
    torch.manual_seed(seed)
    net = instantiate(cfg.model.net)
    config = OmegaConf.to_container(cfg, resolve=True)
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    torch.save({"seg_config": config, "state_dict": state}, path)
    return path


def load_preset(name: str = "voc", split: str = "train", crop_size: int | None = None) -> Any:
    """Instantiate the ``train`` or ``eval`` pipeline of ``conf/augment/<name>.yaml``."""
    node = OmegaConf.load(CONF / "augment" / f"{name}.yaml")
    if crop_size is not None:
        node.crop_size = crop_size
    cfg = OmegaConf.create({"augment": node})  # the YAML interpolates ${augment.crop_size}
    return instantiate(cfg.augment[split], _convert_="all")


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic VOC-layout sample (48 train / 16 val), generated once per session."""
    return make_sample(tmp_path_factory.mktemp("sample"), n_train=48, n_val=16, seed=0)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` (read-only real data); the test is skipped when it is absent."""
    if not SHARED.is_dir():
        pytest.skip("../shared is not available")
    return SHARED


@pytest.fixture(scope="session")
def voc_sample_root(shared_dir: Path) -> Path:
    """Folder holding the 7 real VOC 2012 images and masks under ``VOC2012/``."""
    root = shared_dir / "voc-sample"
    if not (root / "VOC2012").is_dir():
        pytest.skip("../shared/voc-sample is not available")
    return root

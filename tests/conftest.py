"""Shared fixtures: the generated sample, the real VOC files in ../shared (skipped when absent),
and a composed Hydra config factory."""

from __future__ import annotations

from pathlib import Path

import pytest

from seg.data.sample import make_sample

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


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

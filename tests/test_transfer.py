"""Transfer learning on the real VOC sample: ImageNet weights beat random init (bench/transfer.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MARGIN = 0.05  # mIoU points (absolute), mean over the paired runs


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_transfer", REPO / "bench" / "transfer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_imagenet_encoder_beats_random_init_on_real_voc() -> None:
    bench = load_bench()
    if not (bench.VOC_ROOT / "VOC2012").is_dir() or not bench.WEIGHTS.is_file():
        pytest.skip("../shared (VOC sample and MobileNetV2 weights) is not available")
    results = bench.compare(seeds=(0,))
    pretrained, random = np.array(results["pretrained"]), np.array(results["random"])
    assert len(pretrained) == len(random) == 2  # 2 folds x 1 seed
    assert np.all(pretrained > random), results  # every paired run
    assert pretrained.mean() > random.mean() + MARGIN, results

"""Compiled inference (``inference.compile``) gives the masks of eager inference.

At the default precision (bf16 where the CPU runs it natively, as a user runs it): inductor
rounds to bf16 where eager does (``emulate_precision_casts``) and the convolutions are the same
kernels, and padding to a shape bucket and cropping back is exact when the bucket is the net's
own padding rule, and both paths run the same net with BatchNorm folded into the bf16
convolutions (``seg.inference.precast``), so the masks are equal, not merely close (real photos
from ../shared when present). Its BatchNorm layers have statistics and affine parameters as
after training: inductor computes an unfolded BatchNorm in another order than eager's kernel,
which flipped a few near-ties (bench/README.md). No timing is asserted.
Each compiled run takes over a minute on 2 cores, so the default suite runs the one through
``predict.py``; the API and ``evaluate.py`` ones are slow.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED, fake_checkpoint, run_entry
from PIL import Image

import seg
from seg.inference import InferenceConfig, prepare_net
from seg.inference.compiled import (
    Bucketed,
    CpuCudaNotice,
    crop_outputs,
    quiet_cuda_notice,
    wants_compile,
)
from seg.inference.precast import Bf16Weights, has_batch_norm

#: The same shape for every photo, not a multiple of 32: one compilation, and padding matters.
SIZE = (333, 500)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, sample_root: Path) -> Path:
    """Real VOC photos and masks from ../shared when present (else the synthetic sample),
    each resized to 500 x 333 so that one compiled shape serves them all: ``<folder>/*.png``
    to predict, and a VOC root ``<folder>/voc`` whose ``val`` split holds them."""
    shared = SHARED / "voc-sample" / "VOC2012"
    source = shared if shared.is_dir() else sample_root / "VOC2012"
    folder = tmp_path_factory.mktemp("photos")
    voc = folder / "voc" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    ids = [p.stem for p in sorted((source / "JPEGImages").glob("*.jpg"))[:4]]
    for i in ids:
        image = Image.open(source / "JPEGImages" / f"{i}.jpg").convert("RGB").resize(SIZE[::-1])
        image.save(folder / f"{i}.png")
        image.save(voc / "JPEGImages" / f"{i}.jpg", quality=95)
        mask = Image.open(source / "SegmentationClass" / f"{i}.png")  # palette indices
        mask.resize(SIZE[::-1], Image.Resampling.NEAREST).save(
            voc / "SegmentationClass" / f"{i}.png"
        )
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    return folder


@pytest.fixture(scope="module")
def inductor_cache(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One on-disk inductor cache for the module, where seg puts it by default
    (``$XDG_CACHE_HOME/seg/inductor``, here in a temporary folder): the tests compile the same
    graph (same net, shape and precision), so every run after the first reads the cached
    kernels."""
    return {"XDG_CACHE_HOME": str(tmp_path_factory.mktemp("cache"))}


def seg_cache(env: dict[str, str]) -> Path:
    """seg's default inductor cache under the ``XDG_CACHE_HOME`` of ``env``."""
    return Path(env["XDG_CACHE_HOME"]) / "seg" / "inductor"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A U-Net / MobileNetV2 checkpoint whose class scores are spread out like a trained net's
    (random weights give near-ties everywhere): the head's weights are scaled up, and each
    BatchNorm gets statistics and an affine map away from its initial identity."""
    path = fake_checkpoint("unet_mobilenetv2", tmp_path_factory.mktemp("ckpt") / "m.ckpt")
    ckpt = torch.load(path, weights_only=False)
    state, gen = ckpt["state_dict"], torch.Generator().manual_seed(0)
    state["net.head.weight"] *= 50
    for key in [k.removesuffix(".running_var") for k in state if k.endswith(".running_var")]:
        c = state[f"{key}.running_var"].shape
        state[f"{key}.running_mean"] = 0.2 * torch.randn(c, generator=gen)
        state[f"{key}.running_var"] = 0.5 + torch.rand(c, generator=gen)
        state[f"{key}.weight"] = 0.5 + torch.rand(c, generator=gen)
        state[f"{key}.bias"] = 0.1 * torch.randn(c, generator=gen)
    torch.save(ckpt, path)
    return path


def test_auto_compiles_only_long_runs() -> None:
    cfg = InferenceConfig(compile="auto", compile_min_images=500)
    assert not wants_compile(cfg, None) and not wants_compile(cfg, 499)
    assert wants_compile(cfg, 500)
    assert wants_compile(InferenceConfig(compile=True), 1)
    assert not wants_compile(InferenceConfig(compile=False), 10**6)
    net = torch.nn.Conv2d(3, 2, 1)
    assert prepare_net(net, InferenceConfig(compile="auto"), 5) is net
    # auto leaves BatchNorm-free nets eager (compiling did not speed the VGG nets up).
    assert not wants_compile(cfg, 10**4, net)
    assert wants_compile(cfg, 10**4, torch.nn.Sequential(net, torch.nn.BatchNorm2d(2)))


def test_the_compiled_module_is_the_eager_one() -> None:
    """Compiled and eager run the same module: under bf16, the copy with BatchNorm folded into
    bf16 convolutions (compiling the net itself flipped near-ties: the slow tests below)."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    cfg = InferenceConfig(compile=True, autocast=True, channels_last=True)
    eager = prepare_net(net, InferenceConfig(compile=False, autocast=True, channels_last=True))
    compiled = prepare_net(net, cfg)  # compiles lazily, at the first call
    assert isinstance(compiled, Bucketed) and type(compiled.compiled._orig_mod) is type(eager)
    assert isinstance(eager, Bf16Weights) and not has_batch_norm(compiled.compiled._orig_mod)
    fp32 = prepare_net(net, InferenceConfig(compile=True, autocast=False))
    assert fp32.compiled._orig_mod is net  # fp32: inductor's freezing folds BatchNorm itself


def test_a_handed_over_net_is_folded_in_place_with_the_same_outputs() -> None:
    """``owned=True`` (what ``seg.load`` and ``predict.py`` pass) makes the bf16 copy of the net
    itself, not of a copy of it; ``auto`` still sees its BatchNorm (asked before the fold), and
    the outputs equal those of the copy made beside the net, bit for bit."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    with torch.no_grad():  # statistics as after training, so that the fold changes the weights
        net[1].running_var.uniform_(0.5, 1.5), net[1].weight.uniform_(0.5, 1.5)
    kept = prepare_net(net, InferenceConfig(autocast=True, channels_last=True))
    x = torch.randn(2, 3, 13, 17)
    want = kept(x.contiguous(memory_format=torch.channels_last))
    cfg = InferenceConfig(compile="auto", compile_min_images=5, autocast=True, channels_last=True)
    same = copy.deepcopy(net)
    assert isinstance(prepare_net(copy.deepcopy(net), cfg, 5, owned=True), Bucketed)
    handed = prepare_net(same, InferenceConfig(autocast=True, channels_last=True), owned=True)
    assert handed.net is same and not has_batch_norm(same) and has_batch_norm(net)
    assert torch.equal(handed(x.contiguous(memory_format=torch.channels_last)), want)


def test_seg_load_compiles_when_told_the_run_is_long(checkpoint: Path) -> None:
    """``seg.load(ckpt, images=N)``, as the README writes it: ``auto`` compiles for a run of at
    least ``compile_min_images`` images (lazily: nothing is compiled here) and not below."""
    short = ["inference.compile_min_images=5"]
    assert isinstance(seg.load(checkpoint, short, device="cpu", images=5).runner, Bucketed)
    assert not isinstance(seg.load(checkpoint, short, device="cpu", images=4).runner, Bucketed)
    assert not isinstance(seg.load(checkpoint, device="cpu").runner, Bucketed)  # count unknown


def test_only_the_cuda_notice_is_dropped_on_a_cpu(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("torch.utils.cpp_extension")
    before = list(logger.filters)  # an earlier compile in this process may have added it
    logger.filters[:] = [f for f in before if not isinstance(f, CpuCudaNotice)]
    try:
        quiet_cuda_notice("cuda")
        assert not any(isinstance(f, CpuCudaNotice) for f in logger.filters)  # news on a GPU
        quiet_cuda_notice("cpu")
        quiet_cuda_notice("cpu")  # added once
        assert sum(isinstance(f, CpuCudaNotice) for f in logger.filters) == 1
        with caplog.at_level(logging.WARNING, logger=logger.name):
            logger.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local")
            logger.warning("something else")
        assert [r.getMessage() for r in caplog.records] == ["something else"]
    finally:
        logger.filters[:] = before


def test_bad_compile_value_is_refused() -> None:
    with pytest.raises(ValueError, match="inference.compile"):
        InferenceConfig(compile="sometimes")
    proc = run_entry(
        "predict.py", "ckpt=x", "input=x", "output=x", "inference.compile=yes", check=False
    )
    assert proc.returncode == 2 and "inference.compile='yes'" in proc.stderr


def test_outputs_are_cropped_back_to_the_input_size() -> None:
    out = {"out": torch.zeros(1, 5, 384, 512), "cls": torch.zeros(1, 5), "box": torch.zeros(1, 4)}
    cropped = crop_outputs(out, 333, 500)
    assert cropped["out"].shape == (1, 5, 333, 500)
    assert cropped["cls"].shape == (1, 5) and cropped["box"].shape == (1, 4)


@pytest.mark.slow  # 80 s; the default suite checks the same through predict.py below
def test_compiled_probabilities_and_masks_equal_eager(
    checkpoint: Path, photos: Path, inductor_cache: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the Python API: the probabilities and every mask, bit for bit."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(seg_cache(inductor_cache)))  # restored
    eager = seg.load(checkpoint, ["inference.compile=false"], device="cpu")
    compiled = seg.load(checkpoint, ["inference.compile=true"], device="cpu")
    assert isinstance(compiled.runner, Bucketed) and not isinstance(eager.runner, Bucketed)
    for png in sorted(photos.glob("*.png")):
        p, q = eager.predict_probs(png), compiled.predict_probs(png)  # (C, H, W)
        assert p.shape == q.shape == (21, *SIZE)
        np.testing.assert_array_equal(p, q)
        np.testing.assert_array_equal(eager.predict(png), compiled.predict(png))


def test_predict_py_compiled_writes_the_eager_masks(
    checkpoint: Path,
    photos: Path,
    inductor_cache: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As the user runs it (default bucket and precision): the PNG masks equal eager's, and the
    compiled kernels land in seg's cache (importing torch._dynamo had pointed inductor at
    /tmp instead, which a reboot wipes)."""
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)  # as in a user's shell
    common = [f"ckpt={checkpoint}", f"input={photos}"]
    run_entry("predict.py", *common, f"output={tmp_path}/eager", "inference.compile=false")
    proc = run_entry(
        "predict.py",
        *common,
        f"output={tmp_path}/compiled",
        "inference.compile=true",
        env=inductor_cache,
    )
    assert "4 written" in proc.stdout
    assert "No CUDA runtime" not in proc.stderr  # torch's notice, noise for a CPU compile
    assert str(seg_cache(inductor_cache)) in proc.stdout + proc.stderr  # the log line says
    assert any(p.is_file() for p in seg_cache(inductor_cache).rglob("*"))
    pngs = sorted((tmp_path / "eager").glob("*.png"))
    assert len(pngs) == 4
    for png in pngs:
        a = np.asarray(Image.open(png))
        b = np.asarray(Image.open(tmp_path / "compiled" / png.name))
        assert a.shape == b.shape == SIZE
        assert (a != b).sum() == 0, f"{png.name}: {(a != b).sum()} pixels differ"


@pytest.mark.slow  # 85 s; evaluate.py runs the net prepare_net returns, as predict.py does
def test_evaluate_py_compiled_scores_as_eager(
    checkpoint: Path,
    photos: Path,
    inductor_cache: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """evaluate.py compiles in its test pass when told (inference.compile=true): same scores."""
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)  # seg's cache, as predict's
    scores = {}
    for mode in ("false", "true"):
        run_entry(
            "evaluate.py",
            f"ckpt={checkpoint}",
            "data=voc",
            f"data.root={photos / 'voc'}",
            f"paths.output_dir={tmp_path}/{mode}",
            "plot=false",
            f"inference.compile={mode}",
            env=inductor_cache,
        )
        scores[mode] = json.loads((tmp_path / mode / "metrics.json").read_text())
    assert scores["true"]["num_images"] == scores["false"]["num_images"] == 4
    for key in ("pixel_accuracy", "mIoU"):
        assert scores["true"][key] == scores["false"][key], key

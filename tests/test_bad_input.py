"""Bad input, end to end (issue #6): images of every kind read as upright RGB uint8, every bad
file gives one line naming it, a predict batch never stops for one file (its summary and exit
status count the failures), and huge images are predicted band by band in bounded memory.
Bad masks and bad training / evaluation samples: ``test_bad_data.py``.

Images are generated with PIL in ``tmp_path``. Predictions come from a checkpoint whose net is a
1x1 convolution that labels pure red pixels "person" (15) and everything else background, so
every expected mask is known exactly.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, compose
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

import seg.inference.masks as I
from seg import api
from seg import predict as P
from seg.cli import run
from seg.data.io import read_image
from seg.errors import BadSampleError
from seg.inference import InferenceConfig, predict_mask_banded, predict_probs, scores_to_mask

PERSON = 15
NORMALIZE = {"_target_": "albumentations.Normalize", "mean": [0, 0, 0], "std": [1, 1, 1]}
TO_TENSOR = {"_target_": "albumentations.pytorch.ToTensorV2"}
EVAL = {"_target_": "albumentations.Compose", "transforms": [NORMALIZE, TO_TENSOR]}


def quadrants(h: int = 24, w: int = 32) -> np.ndarray:
    """(h, w, 3) uint8: red, green / blue, white quadrants."""
    img = np.full((h, w, 3), 255, np.uint8)
    img[: h // 2, : w // 2], img[: h // 2, w // 2 :] = (255, 0, 0), (0, 255, 0)
    img[h // 2 :, : w // 2] = (0, 0, 255)
    return img


def red_mask(image: np.ndarray) -> np.ndarray:
    """The exact mask of the colour net: (H, W) uint8, 15 where the pixel is pure red."""
    return np.where((image == (255, 0, 0)).all(-1), PERSON, 0).astype(np.uint8)


@pytest.fixture(scope="module")
def colour_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A train.py-style checkpoint of the 1x1 "red -> person" colour net."""
    weight = torch.full((21, 3, 1, 1), 0.0)
    bias = torch.full((21,), -100.0)
    weight[PERSON, :, 0, 0] = torch.tensor([10.0, -10.0, -10.0])  # 10 (r - g - b)
    bias[0], bias[PERSON] = 3.0, 0.0
    net = {"_target_": "torch.nn.Conv2d", "in_channels": 3, "out_channels": 21, "kernel_size": 1}
    config = {
        "model": {"_target_": "seg.modules.segmentation.SegmentationModule", "net": net},
        "augment": {"eval": EVAL},
    }
    path = tmp_path_factory.mktemp("ckpt") / "colour.ckpt"
    torch.save({"seg_config": config, "state_dict": {"net.weight": weight, "net.bias": bias}}, path)
    return path


def predict(ckpt: Path, src: Path, out: Path, *overrides: str) -> int:
    """Run ``seg.predict.predict`` as ``predict.py`` does; returns the exit status."""
    cfg = compose("predict", f"ckpt={ckpt}", f"input={src}", f"output={out}", *overrides)
    try:
        run(P.predict, cfg)
    except SystemExit as stop:
        return stop.code
    return 0


def mask_of(out: Path, stem: str) -> np.ndarray:
    return np.array(Image.open(out / f"{stem}.png"))


# ---------------------------------------------------------------- images of every kind


@pytest.mark.parametrize(
    ("mode", "suffix"),
    [("L", "png"), ("LA", "png"), ("P", "png"), ("RGBA", "png"), ("CMYK", "tif"), ("CMYK", "jpg")],
)
def test_every_mode_reads_as_rgb_uint8(tmp_path: Path, mode: str, suffix: str) -> None:
    src = Image.fromarray(quadrants())
    img = src.convert(mode)
    if mode == "RGBA":
        img.putalpha(Image.new("L", img.size, 0))  # fully transparent: colours must survive
    img.save(tmp_path / f"x.{suffix}", quality=95)
    out = read_image(tmp_path / f"x.{suffix}")
    assert out.dtype == np.uint8 and out.shape == (24, 32, 3)
    assert out.flags.writeable  # transforms may work in place
    grey = np.asarray(src.convert("L"))[..., None].repeat(3, 2)
    want = grey if mode in ("L", "LA") else quadrants()
    ys, xs = [6, 6, 18, 18], [8, 24, 8, 24]  # one pixel inside each quadrant
    np.testing.assert_allclose(out[ys, xs], want[ys, xs], atol=3 if suffix == "jpg" else 0)


def test_16bit_grey_is_rescaled_to_8bit(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 257 * 100, 65535]], np.uint16)).save(tmp_path / "wide.png")
    Image.fromarray(np.array([[0, 7, 255]], np.uint16)).save(tmp_path / "narrow.png")
    assert Image.open(tmp_path / "wide.png").mode == "I;16"
    wide, narrow = read_image(tmp_path / "wide.png"), read_image(tmp_path / "narrow.png")
    assert wide.dtype == np.uint8 and wide.shape == (1, 3, 3)
    assert wide[0].tolist() == [[0] * 3, [100] * 3, [255] * 3]
    assert narrow[0, :, 0].tolist() == [0, 7, 255]  # 8-bit data in a 16-bit file is kept


def _corrupt(path: Path, kind: str) -> None:
    good = Image.fromarray(quadrants(64, 64))
    if kind == "truncated jpeg":
        good.save(path, quality=90)
        path.write_bytes(path.read_bytes()[:-300])
    elif kind == "truncated png":
        good.save(path)
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    elif kind == "garbage jpeg":
        path.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 2)
    else:  # empty
        path.write_bytes(b"")


@pytest.mark.parametrize("kind", ["truncated jpeg", "truncated png", "garbage jpeg", "empty"])
def test_corrupt_image_is_one_line_naming_the_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"bad {kind}.{'png' if 'png' in kind else 'jpg'}"
    _corrupt(path, kind)
    with pytest.raises(BadSampleError) as err:
        read_image(path)
    assert str(err.value).startswith(f"{path}: cannot decode") and "\n" not in str(err.value)


ORIENT = {  # EXIF orientation -> what a viewer shows, for an (H, W) array as stored
    1: lambda a: a,
    2: np.fliplr,
    3: lambda a: np.rot90(a, 2),
    4: np.flipud,
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize(("orientation", "suffix"), [*((o, "png") for o in ORIENT), (6, "jpg")])
def test_predict_writes_mask_in_displayed_orientation(colour_ckpt, tmp_path, orientation, suffix):
    stored = np.zeros((48, 80, 3), np.uint8)
    stored[:16, :24] = (255, 0, 0)  # a red block in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / f"photo.{suffix}", exif=exif, quality=98)
    assert predict(colour_ckpt, tmp_path / f"photo.{suffix}", tmp_path / "out") == 0
    mask, want = mask_of(tmp_path / "out", "photo"), ORIENT[orientation](red_mask(stored))
    assert mask.shape == want.shape  # the exif-transposed image's shape
    assert (mask != want).mean() < (0.02 if suffix == "jpg" else 1e-9)


def test_one_pixel_image_with_a_real_net(tmp_path: Path) -> None:
    cfg = compose("train", "model=unet_mobilenetv2")  # stride 32
    net = instantiate(cfg.model.net)
    config = {
        "model": OmegaConf.to_container(cfg, resolve=True)["model"],
        "augment": {"eval": EVAL},
    }
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    ckpt = tmp_path / "unet.ckpt"
    torch.save({"seg_config": config, "state_dict": state}, ckpt)
    Image.new("RGB", (1, 1), (255, 0, 0)).save(tmp_path / "dot.png")
    assert predict(ckpt, tmp_path / "dot.png", tmp_path / "out", "save.overlay=true") == 0
    assert mask_of(tmp_path / "out", "dot").shape == (1, 1)
    assert Image.open(tmp_path / "out" / "dot_overlay.jpg").size == (1, 1)


# ---------------------------------------------------------------- folders and batches


def test_batch_never_stops_for_one_bad_file(colour_ckpt, tmp_path, capsys, monkeypatch):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for name in ("a.png", "d.jpg", "e.png"):
        Image.fromarray(quadrants()).save(src / name)
    _corrupt(src / "b.jpg", "truncated jpeg")
    (src / "c.png").write_text("an image suffix, but text")
    (src / "notes.txt").write_text("not an image")
    (src / "labels.csv").write_text("a,b\n")
    segment = api.predict_mask

    def failing(net, image, *rest):  # the third image to reach inference (e.png) fails
        if failing.calls == 2:
            raise RuntimeError("out of memory\nsecond line")
        failing.calls += 1
        return segment(net, image, *rest)

    failing.calls = 0
    monkeypatch.setattr(api, "predict_mask", failing)
    assert predict(colour_ckpt, src, out) == 1
    std = capsys.readouterr()
    assert "2 written, 0 already done, 3 failed, 2 non-image files ignored" in std.out
    failed = [ln for ln in std.err.splitlines() if ln.startswith("failed: ")]
    assert [ln.split(": ")[1] for ln in failed] == [
        str(src / n) for n in ("b.jpg", "c.png", "e.png")
    ]
    assert "cannot decode" in failed[0] and "RuntimeError: out of memory second line" in failed[2]
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "d.png", "predict_manifest.jsonl"]
    np.testing.assert_array_equal(mask_of(out, "a"), red_mask(quadrants()))
    monkeypatch.setattr(api, "predict_mask", segment)
    assert predict(colour_ckpt, src, out) == 1  # a re-run redoes only what failed
    assert "1 written, 2 already done, 2 failed" in capsys.readouterr().out


@pytest.mark.parametrize("content", [[], ["notes.txt", "README"]])
def test_folder_without_images_is_one_clear_error(colour_ckpt, tmp_path, capsys, content):
    src = tmp_path / "in"
    src.mkdir()
    for name in content:
        (src / name).write_text("x")
    assert predict(colour_ckpt, src, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: input={src}: no image files") and "\n" not in err
    assert f"{len(content)} other files ignored" in err and not (tmp_path / "out").exists()


# ---------------------------------------------------------------- huge images: bounded memory


def conv_net() -> nn.Module:
    """A 3x3-conv net: windows see different contexts, so overlaps matter."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 5, padding=2))


@pytest.mark.parametrize("size", [(150, 230), (1, 1), (40, 100)])
def test_banded_mask_equals_full_slide_probabilities(size: tuple[int, int]) -> None:
    net, x = conv_net().eval(), torch.randn(1, 3, *size)
    cfg = InferenceConfig(mode="slide", crop=48, stride=31, window_batch=3, flip=True)
    seen: list[int] = []

    def rows(y0: int, y1: int) -> torch.Tensor:
        seen.append(y1 - y0)
        return x[:, :, y0:y1]

    mask = predict_mask_banded(net, rows, size, cfg)
    assert mask.dtype == torch.uint8 and mask.shape == size
    assert torch.equal(mask.long(), scores_to_mask(predict_probs(net, x, cfg))[0])
    assert max(seen) <= cfg.crop  # never more than one band of the image at a time


def test_predict_above_slide_above_goes_band_by_band(colour_ckpt, tmp_path, monkeypatch):
    image = np.zeros((300, 500, 3), np.uint8)
    image[37:261, 101:333] = (255, 0, 0)
    Image.fromarray(image).save(tmp_path / "big.png")
    heights: list[int] = []
    rows = I.image_rows
    monkeypatch.setattr(I, "image_rows", lambda *a: heights.append(a[3] - a[2]) or rows(*a))
    monkeypatch.setattr(I, "predict_probs", lambda *a: pytest.fail("full-size probabilities"))
    overrides = ["inference.slide_above=256", "inference.crop=64", "save.overlay=true"]
    assert predict(colour_ckpt, tmp_path / "big.png", tmp_path / "out", *overrides) == 0
    np.testing.assert_array_equal(mask_of(tmp_path / "out", "big"), red_mask(image))
    assert heights and max(heights) <= 64 and sum(heights) >= 300
    assert Image.open(tmp_path / "out" / "big_overlay.jpg").size == (500, 300)


@pytest.mark.slow
def test_10000x8000_image_peak_memory(colour_ckpt: Path, tmp_path: Path) -> None:
    """The full-size case in a fresh process: 21 x 80M float logits alone would be 6.7 GB."""
    image = np.zeros((8000, 10000, 3), np.uint8)
    image[1000:7000:2000] = (255, 0, 0)  # three 1000-row red stripes
    Image.fromarray(image).save(tmp_path / "huge.png", compress_level=1)
    out, log = tmp_path / "out", (tmp_path / "log").open("w")
    cmd = [sys.executable, "predict.py", f"ckpt={colour_ckpt}", f"input={tmp_path / 'huge.png'}"]
    cmd += [f"output={out}", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
    assert os.waitstatus_to_exitcode(status) == 0, (tmp_path / "log").read_text()
    np.testing.assert_array_equal(mask_of(out, "huge"), red_mask(image))
    peak_gb = usage.ru_maxrss / 2**20
    print(f"peak RSS of predict.py on 10000x8000: {peak_gb:.2f} GB")
    assert peak_gb < 2.5

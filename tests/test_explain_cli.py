"""``python explain.py`` as a user runs it, its one-line errors, and every ``conf/model``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import MODELS, compose, fake_checkpoint, run_entry
from PIL import Image

from seg.errors import ConfigError
from seg.explain import explain
from seg.explain.options import KINDS

#: Options that keep a run to seconds: 2 patches of 2 channels, a short ascent, one CAM image.
QUICK = (
    "patches.k=2",
    "patches.channels=2",
    "patches.thumb=16",
    "maximize.size=32",
    "maximize.steps=2",
    "cam.images=1",
    "receptive_field.size=96",
    "device=cpu",
)
#: Models the default suite runs here (the others are slow: VGG16 nets are 134M parameters).
SMALL = {"localizer"}  # the quickstart net is run as a user runs it above


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quickstart architecture (random weights): the figures' plumbing needs no training."""
    return fake_checkpoint("unet_mobilenetv2", tmp_path_factory.mktemp("ckpt") / "q.ckpt")


def some_images(sample_root: Path, folder: Path, n: int = 3) -> Path:
    """``n`` sample images copied into ``folder``."""
    folder.mkdir()
    for path in sorted((sample_root / "VOC2012" / "JPEGImages").glob("*.jpg"))[:n]:
        shutil.copy(path, folder / path.name)
    return folder


def test_explain_writes_every_figure_and_its_index(
    ckpt: Path, sample_root: Path, tmp_path: Path
) -> None:
    src = some_images(sample_root, tmp_path / "in")
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (src / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    proc = run_entry(
        "explain.py",
        f"ckpt={ckpt}",
        f"input={src}",
        f"output={out}",
        *QUICK,
        f"hydra.run.dir={tmp_path / 'run'}",
        check=False,
    )
    assert proc.returncode == 1, proc.stderr  # the broken image, reported and skipped
    assert "broken.jpg" in proc.stderr and "Traceback" not in proc.stderr
    index = json.loads((out / "index.json").read_text())
    assert index["images"]["count"] == 4 and len(index["images"]["failed"]) == 1
    kinds = {f["kind"] for f in index["figures"]}
    assert kinds == {*KINDS, "channel_stats"}
    assert set(index["timings"]) == {*KINDS, "data_pass"}
    for figure in index["figures"]:
        assert Image.open(out / figure["path"]).format == "PNG"
        assert figure["seconds"] >= 0
    patches = [f for f in index["figures"] if f["kind"] == "patches"]
    assert [f["layer"] for f in patches] == index["layers"]["stages"]
    for figure in patches:
        for tops in figure["settings"]["top"].values():
            assert len(tops) == 2 and all(Path(t["image"]).parent == src for t in tops)
    table = json.loads((out / "receptive_field" / "table.json").read_text())
    assert [row["layer"] for row in table] == index["layers"]["stages"]
    assert all(row["theoretical"]["size"] for row in table)


def test_unknown_layer_is_one_line_listing_the_layers(ckpt: Path, tmp_path: Path) -> None:
    proc = run_entry(
        "explain.py",
        f"ckpt={ckpt}",
        "layers=[encoder.nope]",
        "what=[filters]",
        f"output={tmp_path}",
        f"hydra.run.dir={tmp_path}",
        check=False,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "encoder.nope" in line and "available layers" in line and "encoder.features.18" in line


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("what=[filters,nope]", "choose from"),
        ("patches.k=0", "patches.k=0"),
        ("patches.channels=[0,99]", "has only 8 channels"),
        ("maximize.region=[0.5,0,0.2,1]", "maximize.region"),
        ("maximize.classes=[unicorn]", "unknown class"),
        ("cam.layers=[head.nope]", "cam.layers"),
        ("device=cuda:7", "device=cuda:7"),
    ],
)
def test_bad_options_are_config_errors(
    ckpt: Path, tmp_path: Path, override: str, message: str
) -> None:
    cfg = compose("explain", f"ckpt={ckpt}", f"output={tmp_path}", "what=[maximize]", override)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        explain(cfg)


@pytest.mark.parametrize(
    "model", [m if m in SMALL else pytest.param(m, marks=pytest.mark.slow) for m in MODELS]
)
def test_every_model_gets_every_figure(model: str, sample_root: Path, tmp_path: Path) -> None:
    path = fake_checkpoint(model, tmp_path / f"{model}.ckpt")
    src = some_images(sample_root, tmp_path / "in", n=2)
    out = tmp_path / "out"
    cfg = compose("explain", f"ckpt={path}", f"input={src}", f"output={out}", *QUICK)
    assert explain(cfg) == 0
    index = json.loads((out / "index.json").read_text())
    assert {f["kind"] for f in index["figures"]} == {*KINDS, "channel_stats"}
    cams = [f for f in index["figures"] if f["kind"] == "cam"]
    assert cams and all(f["classes"] for f in cams)

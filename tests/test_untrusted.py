"""Untrusted files (issue #6): pickles that would run code are refused before any of it runs,
archives cannot write outside their destination, and output names cannot leave ``output``.

The crafted files carry a ``__reduce__`` that would create a marker file when unpickled; every
test checks that the marker is absent afterwards. One control test shows that the payload is
live, i.e. that ``weights_only=False`` would have run it.
"""

from __future__ import annotations

import builtins
import io
import pickle
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import run_entry
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from seg.callbacks import LoadWeights
from seg.checkpoint import AtomicCheckpointIO, load_checkpoint
from seg.data.archive import safe_extract
from seg.errors import CheckpointError, UnsafeArchiveError
from seg.models.weights import read_state_dict
from seg.predict import safe_stem


class Payload:
    """Unpickles to ``open(marker, "w")``: creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


def evil_checkpoint(path: Path, marker: Path) -> Path:
    """A ``torch.save`` zip that looks like a seg checkpoint, with code in its config."""
    torch.save({"state_dict": {"net.w": torch.ones(2)}, "seg_config": Payload(marker)}, path)
    return path


def evil_pickle(path: Path, marker: Path) -> Path:
    """A plain (legacy, non-zip) pickle whose top-level object is the payload."""
    path.write_bytes(pickle.dumps(Payload(marker), protocol=2))
    return path


@pytest.fixture(params=[evil_checkpoint, evil_pickle], ids=["zip", "legacy-pickle"])
def evil(request, tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    return request.param(tmp_path / "evil.ckpt", marker), marker


def test_the_payload_is_live(tmp_path: Path) -> None:
    marker = tmp_path / "control"
    path = evil_checkpoint(tmp_path / "control.ckpt", marker)
    torch.load(path, weights_only=False)  # what the loaders must never do
    assert marker.exists()


def test_load_checkpoint_refuses_pickled_code(evil: tuple[Path, Path]) -> None:
    path, marker = evil
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "refused" in message
    assert not marker.exists()


def test_lightning_resume_path_refuses_pickled_code(evil: tuple[Path, Path]) -> None:
    """``Trainer.fit(ckpt_path=...)`` and ``validate(ckpt_path=...)`` read through this plugin."""
    path, marker = evil
    with pytest.raises(CheckpointError, match="refused"):
        AtomicCheckpointIO().load_checkpoint(path)
    with pytest.raises(ValueError, match="weights_only=False"):
        AtomicCheckpointIO().load_checkpoint(path, weights_only=False)
    assert not marker.exists()


def test_weight_files_refuse_pickled_code(evil: tuple[Path, Path]) -> None:
    path, marker = evil
    with pytest.raises(CheckpointError, match="refused"):
        read_state_dict(path)  # encoder and VGG16 weights (.pth)
    with pytest.raises(CheckpointError, match="refused"):
        LoadWeights(str(path)).on_fit_start(_NoResume(), None)  # staged recipes
    assert not marker.exists()


class _NoResume:
    ckpt_path = None


@pytest.mark.parametrize("script", ["evaluate.py", "predict.py"])
def test_entry_points_refuse_pickled_code_in_one_line(script: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = evil_checkpoint(tmp_path / "evil.ckpt", marker)
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.png")
    args = [f"ckpt={path}", f"hydra.run.dir={tmp_path / 'run'}"]
    if script == "predict.py":
        args += [f"input={tmp_path / 'photo.png'}", f"output={tmp_path / 'out'}"]
    proc = run_entry(script, *args, check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and "evil.ckpt" in lines[0] and "refused" in lines[0], lines
    assert not marker.exists()


# ------------------------------------------------ archives: the cases tests/test_download.py lacks


def _tar_with(path: Path, info: tarfile.TarInfo, data: bytes = b"") -> None:
    with tarfile.open(path, "w") as tar:
        tar.addfile(tarfile.TarInfo("good.txt"), io.BytesIO(b""))
        tar.addfile(info, io.BytesIO(data))


def test_tar_hardlink_to_an_absolute_path_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    info = tarfile.TarInfo("hard")
    info.type, info.linkname = tarfile.LNKTYPE, str(outside)
    _tar_with(tmp_path / "bad.tar", info)
    with pytest.raises(UnsafeArchiveError, match="'hard'"):
        safe_extract(tmp_path / "bad.tar", tmp_path / "dest")
    assert not (tmp_path / "dest").exists() and outside.read_text() == "secret"


def _zip_with(path: Path, info: zipfile.ZipInfo, data: bytes) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("good.txt", "fine")
        zf.writestr(info, data)


def test_zip_member_with_an_absolute_path_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "outside" / "evil.txt"
    info = zipfile.ZipInfo("placeholder")
    info.filename = str(target)  # ZipInfo() would strip the leading "/"
    _zip_with(tmp_path / "bad.zip", info, b"evil")
    with pytest.raises(UnsafeArchiveError, match="absolute path"):
        safe_extract(tmp_path / "bad.zip", tmp_path / "dest")
    assert not target.exists() and not (tmp_path / "dest").exists()


def test_zip_symlink_member_is_refused(tmp_path: Path) -> None:
    info = zipfile.ZipInfo("link")
    info.external_attr = 0o120777 << 16  # S_IFLNK: the data is the link target
    _zip_with(tmp_path / "bad.zip", info, str(tmp_path).encode())
    with pytest.raises(UnsafeArchiveError, match="symlink"):
        safe_extract(tmp_path / "bad.zip", tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


# ------------------------------------------------------------------ output names (predict.py)


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=40))
def test_safe_stem_never_leaves_the_output_folder(name: str) -> None:
    stem = safe_stem(Path(name))
    assert stem and not stem.startswith(".") and "/" not in stem and "\\" not in stem
    out = Path("/srv/output")
    assert (out / f"{stem}.png").parent == out and ".." not in Path(stem).parts


@pytest.mark.parametrize(
    ("name", "stem"),
    [
        ("../../etc/cron.d/job.jpg", "job"),
        ("..jpg", "image"),
        (".hidden.png", "hidden"),
        ("a b\\..\\c.jpg", "a_b_.._c"),
        ("ümlaut photo.jpg", "_mlaut_photo"),
    ],
)
def test_safe_stem_examples(name: str, stem: str) -> None:
    assert safe_stem(Path(name)) == stem

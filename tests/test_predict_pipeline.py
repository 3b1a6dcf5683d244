"""What overlapping ``predict.py``'s stages could break (:mod:`seg.pipeline`): decoding runs
ahead of the net in threads and writing behind it in one thread, so the order of the outputs,
the reporting of a failure in the writer thread and the draining on SIGTERM are pinned here.

| case | what must hold | test |
|---|---|---|
| reads and writes finishing out of step (some slow) | the output folder, byte for byte (masks, index masks, overlays, ``boxes.jsonl``, ``boxes.json``, the manifest in input order), and the summary equal a run of the stages one after the other | `test_overlapped_run_writes_what_a_sequential_run_writes` |
| a write fails in the writer thread | one line naming the file, exit 1, every other image written and recorded; the re-run writes only that one | `test_a_failed_write_is_one_line_and_the_batch_goes_on` |
| SIGTERM in the middle of a run | exit 143; every image the net finished is written and recorded, every recorded one complete, no temporary file left; the re-run writes exactly the rest | `test_sigterm_leaves_every_recorded_image_complete` |
| Ctrl+C while the writer is behind | exit 130; every image the net finished is written and recorded | `test_ctrl_c_writes_every_image_the_net_finished` (and `test_reliability_predict.py::test_interrupted_run_resumes_from_the_manifest`) |
| the helpers themselves | input order, bounded read-ahead that stops when closed, an error escaping the writer raised in the caller instead of a hang | `test_read_ahead_*`, `test_write_behind_*` |
"""

from __future__ import annotations

import contextlib
import errno
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, signal_when
from PIL import Image
from test_bad_input import colour_ckpt, mask_of, predict, red_mask  # noqa: F401
from test_localization import fixed_box_ckpt  # noqa: F401
from test_reliability_predict import manifest_map, save_photos

from seg import api, outputs, pipeline
from seg.pipeline import WriteBehind, read_ahead


class Inline:
    """A :class:`WriteBehind` that writes in the calling thread, at once: the sequential run."""

    def __init__(self, write, depth: int) -> None:
        self.submit = write

    def __enter__(self) -> Inline:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("ckpt", ["colour_ckpt", "fixed_box_ckpt"])
def test_overlapped_run_writes_what_a_sequential_run_writes(
    ckpt: str, request, tmp_path, monkeypatch, capsys
) -> None:
    src = tmp_path / "in"
    save_photos(src, [f"{i:02d}.png" for i in range(12)] + ["sub/12.png"])
    (src / "05.png").write_bytes(b"not a png")  # a bad input in the middle
    read, write = pipeline.read_image, outputs.PredictionWriter.write

    def slow_read(path):  # every third read is slow: later reads finish first
        time.sleep(0.03 if int(Path(path).stem) % 3 == 0 else 0)
        return read(path)

    def slow_write(self, stem, *args, **kwargs):  # the writer falls behind: the queue fills
        time.sleep(0.02 if int(Path(stem).name) % 4 == 1 else 0)
        return write(self, stem, *args, **kwargs)

    monkeypatch.setattr(pipeline, "read_image", slow_read)
    monkeypatch.setattr(outputs.PredictionWriter, "write", slow_write)
    path = request.getfixturevalue(ckpt)
    args = ("recursive=true", "save.overlay=true", "save.index=true")
    runs = {}
    for name in ("overlapped", "sequential"):
        if name == "sequential":
            sequential = lambda items, load, ahead: (load(item) for item in items)  # noqa: E731
            monkeypatch.setattr(pipeline, "read_ahead", sequential)
            monkeypatch.setattr(pipeline, "WriteBehind", Inline)
        assert predict(path, src, tmp_path / name, *args) == 1
        std = capsys.readouterr()
        runs[name] = (
            std.out.replace(str(tmp_path / name), "OUT"),
            std.err,
            folder_bytes(tmp_path / name),
        )
    assert runs["overlapped"] == runs["sequential"]
    out, err, files = runs["overlapped"]
    assert "12 written, 0 already done, 1 failed" in out and f"failed: {src / '05.png'}" in err
    done = [json.loads(line) for line in files["predict_manifest.jsonl"].splitlines()]
    order = [r["done"] for r in done if "done" in r]
    assert order == [f"{i:02d}" for i in range(12) if i != 5] + ["sub/12"]  # input order


def test_a_failed_write_is_one_line_and_the_batch_goes_on(
    colour_ckpt,  # noqa: F811
    tmp_path,
    monkeypatch,
    capsys,
) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    images = save_photos(src, [f"{i}.png" for i in range(5)])
    atomic_write = outputs.atomic_write_bytes

    def failing(path, data, **kwargs):  # runs in the writer thread
        if Path(path).name == "2.png":
            raise OSError(errno.EIO, "Input/output error\nsecond line")
        return atomic_write(path, data, **kwargs)

    monkeypatch.setattr(outputs, "atomic_write_bytes", failing)
    assert predict(colour_ckpt, src, out) == 1
    std = capsys.readouterr()
    assert "4 written, 0 already done, 1 failed" in std.out
    failed = [line for line in std.err.splitlines() if line.startswith("failed: ")]
    assert failed == [f"failed: {src / '2.png'}: OSError: [Errno 5] Input/output error second line"]
    assert sorted(manifest_map(out).values()) == ["0", "1", "3", "4"]
    assert not (out / "2.png").exists()
    for stem in ("0", "1", "3", "4"):
        np.testing.assert_array_equal(mask_of(out, stem), red_mask(images[f"{stem}.png"]))
    monkeypatch.setattr(outputs, "atomic_write_bytes", atomic_write)
    assert predict(colour_ckpt, src, out) == 0
    assert "1 written, 4 already done, 0 failed" in capsys.readouterr().out


def test_sigterm_leaves_every_recorded_image_complete(colour_ckpt, tmp_path) -> None:  # noqa: F811
    src, out = tmp_path / "in", tmp_path / "out"
    images = save_photos(src, [f"{i:03d}.png" for i in range(300)])
    cmd = [sys.executable, "predict.py", f"ckpt={colour_ckpt}", f"input={src}", f"output={out}"]
    cmd += ["save.overlay=true", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = out / "predict_manifest.jsonl"
    signal_when(proc, lambda: manifest.exists() and manifest.read_text().count('"done"') >= 5)
    assert proc.wait(timeout=120) == 143
    recorded = manifest_map(out)
    assert 5 <= len(recorded) < 300
    for source, stem in recorded.items():  # each complete, and the mask of its own input
        np.testing.assert_array_equal(mask_of(out, stem), red_mask(images[Path(source).name]))
        Image.open(out / f"{stem}_overlay.jpg").load()
    assert {p.stem for p in out.glob("*.png")} == set(recorded.values())  # drained: all recorded
    assert not list(out.glob(".*.tmp"))
    rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert f"{300 - len(recorded)} written, {len(recorded)} already done" in rerun.stdout


def test_ctrl_c_writes_every_image_the_net_finished(colour_ckpt, tmp_path, monkeypatch):  # noqa: F811
    src, out = tmp_path / "in", tmp_path / "out"
    images = save_photos(src, [f"{i}.png" for i in range(6)])
    segment, write = api.predict_mask, outputs.PredictionWriter.write

    def interrupted(*args):  # Ctrl+C in the net, on the fifth image
        if interrupted.calls == 4:
            raise KeyboardInterrupt
        interrupted.calls += 1
        return segment(*args)

    def slow_write(*args, **kwargs):  # the writer is behind: images wait in its queue
        time.sleep(0.2)
        return write(*args, **kwargs)

    interrupted.calls = 0
    monkeypatch.setattr(api, "predict_mask", interrupted)
    monkeypatch.setattr(outputs.PredictionWriter, "write", slow_write)
    assert predict(colour_ckpt, src, out) == 130
    assert sorted(manifest_map(out).values()) == ["0", "1", "2", "3"]  # all four, drained
    for stem in ("0", "1", "2", "3"):
        np.testing.assert_array_equal(mask_of(out, stem), red_mask(images[f"{stem}.png"]))


def test_read_ahead_keeps_the_order_and_stops_when_closed() -> None:
    started: list[int] = []

    def load(n: int) -> int:
        started.append(n)
        time.sleep(0.02 if n % 2 == 0 else 0)  # odd items finish first
        return 10 * n

    reads = read_ahead(range(100), load, ahead=3)
    with contextlib.closing(reads):
        assert [next(reads) for _ in range(5)] == [0, 10, 20, 30, 40]
    count = len(started)
    assert count <= 5 + 3  # never more than `ahead` beyond what was taken
    time.sleep(0.05)
    assert len(started) == count  # closed: nothing more starts


def test_write_behind_keeps_the_order_and_raises_what_escapes_the_writer() -> None:
    written: list[int] = []

    def write(n: int) -> None:
        time.sleep(0.002 * (n % 3))
        written.append(n)

    with WriteBehind(write, depth=2) as writes:
        for n in range(20):
            writes.submit(n)
    assert written == list(range(20))  # all of them, once left

    def broken(n: int) -> None:
        raise SystemExit(n)  # not an Exception: escapes a write function that reports those

    writes = WriteBehind(broken, depth=1)
    with pytest.raises(SystemExit):  # raised in the caller, never a hang on a full queue
        for n in range(10):
            writes.submit(n)
    with pytest.raises(SystemExit):
        writes.close()

"""Reliability, round two (issue #16): ``predict.py`` never destroys or drops a file.

Predictions come from the 1x1 "red -> person" colour net of ``test_bad_input.py`` (every mask is
known exactly) and the fixed-box localizer of ``test_localization.py``; each input image has its
own red area, so a mask written for the wrong input, or overwritten by another, shows.

| case | what the user now sees | test |
|---|---|---|
| `input=DIR output=DIR` (one folder) with PNG photos | no photo is touched; a mask whose name is an input's gets another (`a.png` -> `a_png.png`); a re-run leaves predict's own outputs out (no `*_overlay_overlay.jpg`) and finds everything done | `test_same_folder_never_overwrites_or_rereads` |
| `cat.jpg` + `cat.png`, `my photo.jpg` + `my_photo.jpg`, two non-Latin names, one name in two subfolders of a `**` glob | every input gets its own mask (`cat_jpg.png`, `my_photo_png.png`, `__png.png`, `a/dog.png` + `b/dog.png`), each logged once; the manifest maps input -> output | `test_colliding_names_each_get_their_own_mask` |
| "already done" | decided by `predict_manifest.jsonl` (input path, size, mtime, outputs), not by `<stem>.png` existing: a file predict did not write is never overwritten nor counted as done; a changed input is redone; `overwrite=true` redoes | `test_done_is_decided_by_the_manifest` |
| `recursive=true`; an output folder inside the input folder | nested folders are walked and mirrored under `output`; nothing under the output folder is an input | `test_recursive_walks_and_mirrors_the_tree` |
| interrupted run (Ctrl+C), then the same command | the finished images are recorded as done (exit 130); the re-run writes only the rest | `test_interrupted_run_resumes_from_the_manifest` |
| SIGTERM during a localization predict | every finished box is in `boxes.json` and recorded in the manifest | `test_localization.py::test_sigterm_keeps_every_finished_box` |
| decoding, the net and writing overlapping (threads) | outputs and manifest byte for byte those of a sequential run; a failed write is one line; SIGTERM and Ctrl+C leave every image the net finished written, recorded and complete | `test_predict_pipeline.py` |
| two predicts into one folder at once, names colliding | both runs' boxes in `boxes.json`, each input its own name (claims in the manifest, first line wins) | `test_concurrent_predicts_into_one_folder_keep_both`, `test_concurrent_claims_never_share_a_name` |
| corrupt `boxes.json`, torn or foreign `boxes.jsonl` lines | `boxes.json` rebuilt from the valid lines; a warning per skipped line | `test_corrupt_boxes_files_are_rebuilt` |
| `output=` an existing file | exit 2 before the checkpoint is read: `error: output=<file>: <file> is a file, not a folder; ...` | `test_output_that_is_a_file_is_one_line` |
| `inference.mode=sliding` | exit 2 before anything runs: `error: invalid config: inference.mode='sliding' must be one of: whole, slide` | `test_unknown_inference_mode_lists_the_modes` |
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, compose
from PIL import Image
from test_bad_input import colour_ckpt, mask_of, predict, quadrants, red_mask  # noqa: F401
from test_localization import fixed_box_ckpt  # noqa: F401

from seg import api
from seg import predict as P
from seg.cli import run
from seg.manifest import NAME as MANIFEST
from seg.manifest import Manifest


def photo(i: int) -> np.ndarray:
    """(24, 32, 3) uint8: white with a red square whose place depends on ``i``."""
    img = np.full((24, 32, 3), 255, np.uint8)
    img[2 + i % 5 * 4 : 6 + i % 5 * 4, 2 + i * 3 % 28 : 5 + i * 3 % 28] = (255, 0, 0)
    return img


def save_photos(folder: Path, names: list[str]) -> dict[str, np.ndarray]:
    """One distinct photo per name (PNG and lossless WebP keep red exactly); name -> pixels."""
    images = {}
    for i, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        images[name] = photo(i)
        options = {"quality": 100} if name.endswith((".jpg", ".jpeg")) else {}
        Image.fromarray(images[name]).save(folder / name, **options)
    return images


def manifest_map(out: Path) -> dict[str, str]:
    """Input path -> the stem of its latest done record."""
    records = [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]
    return {r["input"]: r["done"] for r in records if "done" in r}


def test_same_folder_never_overwrites_or_rereads(colour_ckpt, tmp_path, capsys):  # noqa: F811
    folder = tmp_path / "photos"
    folder.mkdir()
    save_photos(folder, ["a.png", "b.png", "c.bmp"])
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert predict(colour_ckpt, folder, folder, "save.overlay=true") == 0
    assert "3 written" in capsys.readouterr().out
    assert all((folder / name).read_bytes() == data for name, data in before.items())
    stems = manifest_map(folder)
    assert sorted(stems.values()) == ["a_png", "b_png", "c"]
    for name in before:
        expected = red_mask(np.array(Image.open(folder / name).convert("RGB")))
        np.testing.assert_array_equal(mask_of(folder, stems[str(folder / name)]), expected)
    assert predict(colour_ckpt, folder, folder, "save.overlay=true") == 0
    out = capsys.readouterr().out
    assert "0 written, 3 already done" in out and "outputs of predict left out" in out
    assert not list(folder.glob("*overlay_overlay*")) and not list(folder.glob("*_png_png*"))


def test_colliding_names_each_get_their_own_mask(colour_ckpt, tmp_path, capsys, caplog):  # noqa: F811
    src, out = tmp_path / "in", tmp_path / "out"
    names = ["cat.jpg", "cat.png", "my photo.png", "my_photo.png", "ü.png", "ä.png"]
    names += ["a/dog.png", "b/dog.png"]
    images = save_photos(src, names)
    assert predict(colour_ckpt, f"{src}/**/*.png", out) == 0  # a recursive glob
    assert predict(colour_ckpt, f"{src}/*.jpg", out) == 0
    stems = manifest_map(out)
    assert len(stems) == len(names) and len(set(stems.values())) == len(names)
    assert stems[str(src / "a/dog.png")] == "a/dog" and stems[str(src / "b/dog.png")] == "b/dog"
    assert stems[str(src / "cat.png")] == "cat" and stems[str(src / "cat.jpg")] == "cat_jpg"
    assert stems[str(src / "my_photo.png")] == "my_photo_png"
    for name, image in images.items():
        if name.endswith(".png"):  # lossless: the exact mask of that input, nobody else's
            np.testing.assert_array_equal(mask_of(out, stems[str(src / name)]), red_mask(image))
    assert caplog.text.count("is taken, writing") == 3
    assert predict(colour_ckpt, f"{src}/**/*", out) == 0
    assert "0 written, 8 already done" in capsys.readouterr().out


def test_done_is_decided_by_the_manifest(colour_ckpt, tmp_path, capsys):  # noqa: F811
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    save_photos(src, ["x.png", "y.png"])
    (out / "x.png").write_bytes(b"the user's own file")  # not predict's: never "done"
    assert predict(colour_ckpt, src, out) == 0
    assert "2 written, 0 already done" in capsys.readouterr().out
    assert (out / "x.png").read_bytes() == b"the user's own file"
    assert manifest_map(out)[str(src / "x.png")] == "x_png"
    Image.fromarray(quadrants()).save(src / "y.png")  # changed: predicted again
    assert predict(colour_ckpt, src, out) == 0
    assert "1 written, 1 already done" in capsys.readouterr().out
    np.testing.assert_array_equal(mask_of(out, "y"), red_mask(quadrants()))
    (out / "x_png.png").unlink()  # an output gone: predicted again
    assert predict(colour_ckpt, src, out) == 0
    assert "1 written, 1 already done" in capsys.readouterr().out
    assert predict(colour_ckpt, src, out, "overwrite=true") == 0
    assert "2 written, 0 already done" in capsys.readouterr().out
    assert (out / "x.png").read_bytes() == b"the user's own file"


def test_recursive_walks_and_mirrors_the_tree(colour_ckpt, tmp_path, capsys):  # noqa: F811
    src = tmp_path / "in"
    images = save_photos(src, ["top.png", "a/b/deep.png", "a/c d/x.png", "masks/old.png"])
    out = src / "masks"
    assert predict(colour_ckpt, src, out, "recursive=true") == 0
    assert "3 written" in capsys.readouterr().out
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert written == ["a/b/deep.png", "a/c_d/x.png", "old.png", "top.png"]
    np.testing.assert_array_equal(mask_of(out, "a/b/deep"), red_mask(images["a/b/deep.png"]))
    assert predict(colour_ckpt, src, tmp_path / "flat") == 0  # not recursive: the top only
    assert "1 written" in capsys.readouterr().out


def test_interrupted_run_resumes_from_the_manifest(colour_ckpt, tmp_path, monkeypatch, capsys):  # noqa: F811
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    save_photos(src, [f"{i}.png" for i in range(5)])
    segment = api.predict_mask

    def interrupted(*args):
        if interrupted.calls == 2:
            raise KeyboardInterrupt
        interrupted.calls += 1
        return segment(*args)

    interrupted.calls = 0
    monkeypatch.setattr(api, "predict_mask", interrupted)
    assert predict(colour_ckpt, src, out) == 130
    assert sorted(manifest_map(out).values()) == ["0", "1"]
    monkeypatch.setattr(api, "predict_mask", segment)
    assert predict(colour_ckpt, src, out) == 0
    assert "3 written, 2 already done" in capsys.readouterr().out


def test_concurrent_claims_never_share_a_name(tmp_path: Path) -> None:
    """Two runs plan at once (each read the manifest before the other claimed): the earlier
    claim line wins, the other run takes a new name."""
    first, second = (Manifest(tmp_path, [".png"]) for _ in range(2))
    assert first.assign([("/a/cat.jpg", "cat", "jpg")]) == {"/a/cat.jpg": "cat"}
    assert second.assign([("/b/cat.jpg", "cat", "jpg")]) == {"/b/cat.jpg": "cat_jpg"}
    assert first.assign([("/a/cat.jpg", "cat", "jpg")]) == {"/a/cat.jpg": "cat"}  # kept


def test_concurrent_predicts_into_one_folder_keep_both(fixed_box_ckpt, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    runs = []
    for part in ("a", "b"):
        save_photos(tmp_path / part, [f"{part}{i}.png" for i in range(6)] + ["cat.png"])
        args = [f"ckpt={fixed_box_ckpt}", f"input={tmp_path / part}", f"output={out}"]
        args.append(f"hydra.run.dir={tmp_path / f'run-{part}'}")
        runs.append(subprocess.Popen([sys.executable, "predict.py", *args], cwd=REPO))
    assert [proc.wait(timeout=600) for proc in runs] == [0, 0]
    boxes = json.loads((out / "boxes.json").read_text())
    assert len(boxes) == 14 and {"cat", "cat_png"} <= set(boxes)
    assert {boxes["cat"]["file"], boxes["cat_png"]["file"]} == {
        str(tmp_path / "a/cat.png"),
        str(tmp_path / "b/cat.png"),
    }
    assert len(set(manifest_map(out).values())) == 14


def test_corrupt_boxes_files_are_rebuilt(fixed_box_ckpt, tmp_path, caplog):  # noqa: F811
    src, out = tmp_path / "in", tmp_path / "out"
    save_photos(src, ["a.png", "b.png"])
    out.mkdir()
    (out / "boxes.json").write_text('{"truncated": ')
    (out / "boxes.jsonl").write_text('[1, 2]\n{"torn": tru')
    assert predict(fixed_box_ckpt, src, out) == 0
    assert sorted(json.loads((out / "boxes.json").read_text())) == ["a", "b"]
    assert caplog.text.count("unreadable line skipped") >= 2


def test_output_that_is_a_file_is_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "masks").write_text("a file")
    monkeypatch.setattr(api, "load_checkpoint", lambda path: pytest.fail("the checkpoint was read"))
    code = predict(tmp_path / "x.ckpt", tmp_path, tmp_path / "masks" / "sub")
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith(f"error: output={tmp_path / 'masks/sub'}: {tmp_path / 'masks'} is a file")


def test_unknown_inference_mode_lists_the_modes(tmp_path, capsys):
    cfg = compose("predict", "ckpt=x", f"input={tmp_path}", "output=y", "inference.mode=sliding")
    with pytest.raises(SystemExit) as stop:
        run(P.predict, cfg)
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "error: invalid config: inference.mode='sliding' must be one of: whole, slide"
    )

"""Tests for seg.data.download: local HTTP servers only, never the internet."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import subprocess
import sys
import tarfile
import threading
import zipfile
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import REPO

from seg.data.download import (
    MARKER,
    VOC2012,
    Resource,
    download,
    md5sum,
    missing_dataset_message,
    prepare,
    safe_extract,
)
from seg.errors import DownloadError, UnsafeArchiveError

IMAGE = bytes(range(256)) * 1200  # 300 KiB, so a resume point falls mid-file
SPLIT = b"2007_000032\n2007_000039\n"


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", **fields) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in fields.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data))


def _voc_archive(path: Path) -> bytes:
    """Write a tiny VOC-layout tar (or .tgz) at ``path`` and return its bytes."""
    with tarfile.open(path, "w:gz" if path.suffix == ".tgz" else "w") as tar:
        _add(tar, "VOCdevkit/VOC2012/JPEGImages/2007_000032.jpg", IMAGE)
        _add(tar, "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt", SPLIT)
    return path.read_bytes()


def _resource(payload: bytes, urls: list[str], filename: str = "toy.tar") -> Resource:
    md5 = hashlib.md5(payload).hexdigest()
    return Resource("toy VOC", filename, md5, tuple(urls), "VOCdevkit/VOC2012", len(payload))


def _closed_url(name: str = "toy.tar") -> str:
    """A URL on a 127.0.0.1 port nobody listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/{name}"


def _handler(files: dict[str, bytes], mode: str, seen: list):
    """Handler serving ``files``; mode: range, norange, truncate, 404 or 500."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            seen.append((self.path, self.headers.get("Range")))
            body = files.get(self.path)
            if mode in ("404", "500") or body is None:
                self.send_error(int(mode) if mode in ("404", "500") else 404)
                return
            range_header = self.headers.get("Range")
            start = int(range_header[6:].split("-")[0]) if range_header and mode == "range" else 0
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            end = start + (len(body) - start) // 2 if mode == "truncate" else len(body)
            self.wfile.write(body[start:end])

    return Handler


@pytest.fixture
def serve():
    """Start local HTTP servers: ``serve(files, mode) -> (base_url, seen_requests)``."""
    running = []

    def start(files: dict[str, bytes], mode: str = "range"):
        seen: list[tuple[str, str | None]] = []
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(files, mode, seen))
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        running.append((server, thread))
        return f"http://127.0.0.1:{server.server_port}", seen

    yield start
    for server, thread in running:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize("filename", ["toy.tar", "toy.tgz"])
def test_prepare_downloads_verifies_and_extracts(tmp_path, serve, filename):
    payload = _voc_archive(tmp_path / filename)
    base, seen = serve({f"/{filename}": payload})
    data = tmp_path / "data"
    out = prepare(_resource(payload, [f"{base}/{filename}"], filename), data, quiet=True)
    assert out == data / "VOCdevkit" / "VOC2012"
    assert (out / "JPEGImages" / "2007_000032.jpg").read_bytes() == IMAGE
    assert (out / "ImageSets" / "Segmentation" / "train.txt").read_bytes() == SPLIT
    assert (out / MARKER).is_file()
    assert (data / filename).read_bytes() == payload
    assert not (data / f"{filename}.part").exists()
    assert sorted(p.name for p in data.iterdir()) == sorted([filename, "VOCdevkit"])
    assert seen == [(f"/{filename}", None)]


def test_checksum_mismatch_falls_through_to_next_good_mirror(tmp_path, serve):
    payload = _voc_archive(tmp_path / "toy.tar")
    bad_base, bad_seen = serve({"/toy.tar": payload[:-1] + b"x"})
    good_base, good_seen = serve({"/toy.tar": payload})
    res = _resource(payload, [f"{bad_base}/toy.tar", f"{good_base}/toy.tar"])
    assert download(res, tmp_path / "data", quiet=True).read_bytes() == payload
    assert len(bad_seen) == 1
    assert good_seen == [("/toy.tar", None)]  # restarted from 0: the bad bytes were deleted


def test_checksum_mismatch_everywhere_raises_and_leaves_no_file(tmp_path, serve):
    payload = _voc_archive(tmp_path / "toy.tar")
    corrupt = payload[:-1] + b"x"
    base, _ = serve({"/toy.tar": corrupt})
    res = _resource(payload, [f"{base}/toy.tar"])
    with pytest.raises(DownloadError) as info:
        download(res, tmp_path / "data", quiet=True)
    assert res.md5 in str(info.value) and hashlib.md5(corrupt).hexdigest() in str(info.value)
    assert list((tmp_path / "data").iterdir()) == []


def test_resume_sends_range_and_appends(tmp_path, serve):
    payload = _voc_archive(tmp_path / "toy.tar")
    base, seen = serve({"/toy.tar": payload})
    data = tmp_path / "data"
    data.mkdir()
    (data / "toy.tar.part").write_bytes(payload[:100_000])
    assert md5sum(download(_resource(payload, [f"{base}/toy.tar"]), data, quiet=True)) == (
        hashlib.md5(payload).hexdigest()
    )
    assert seen == [("/toy.tar", "bytes=100000-")]
    assert not (data / "toy.tar.part").exists()


def test_resume_restarts_when_server_ignores_range(tmp_path, serve):
    payload = _voc_archive(tmp_path / "toy.tar")
    base, seen = serve({"/toy.tar": payload}, mode="norange")
    data = tmp_path / "data"
    data.mkdir()
    (data / "toy.tar.part").write_bytes(payload[:100_000])
    assert download(_resource(payload, [f"{base}/toy.tar"]), data, quiet=True).read_bytes() == (
        payload
    )
    assert seen == [("/toy.tar", "bytes=100000-")]  # asked, got a 200 and started over


def test_complete_part_is_verified_when_server_answers_416(tmp_path, serve):
    payload = _voc_archive(tmp_path / "toy.tar")
    base, seen = serve({"/toy.tar": payload})
    data = tmp_path / "data"
    data.mkdir()
    (data / "toy.tar.part").write_bytes(payload)
    assert download(_resource(payload, [f"{base}/toy.tar"]), data, quiet=True).is_file()
    assert seen == [("/toy.tar", f"bytes={len(payload)}-")]


def test_interrupted_transfer_resumes_on_next_mirror(tmp_path, serve):
    payload = _voc_archive(tmp_path / "toy.tar")
    cut_base, _ = serve({"/toy.tar": payload}, mode="truncate")
    good_base, good_seen = serve({"/toy.tar": payload})
    res = _resource(payload, [f"{cut_base}/toy.tar", f"{good_base}/toy.tar"])
    assert download(res, tmp_path / "data", quiet=True).read_bytes() == payload
    assert good_seen == [("/toy.tar", f"bytes={len(payload) // 2}-")]


@pytest.mark.parametrize("dead", ["closed", "404", "500"])
def test_mirror_fallback_after_dead_url(tmp_path, serve, dead):
    payload = _voc_archive(tmp_path / "toy.tar")
    dead_url = _closed_url() if dead == "closed" else f"{serve({}, mode=dead)[0]}/toy.tar"
    good_base, good_seen = serve({"/toy.tar": payload})
    res = _resource(payload, [dead_url, f"{good_base}/toy.tar"])
    assert download(res, tmp_path / "data", quiet=True).read_bytes() == payload
    assert len(good_seen) == 1


def test_existing_verified_file_skips_network(tmp_path):
    (tmp_path / "data").mkdir()
    payload = _voc_archive(tmp_path / "data" / "toy.tar")
    res = _resource(payload, [_closed_url()])
    assert download(res, tmp_path / "data", quiet=True) == tmp_path / "data" / "toy.tar"


def test_existing_file_with_wrong_md5_is_replaced(tmp_path, serve):
    payload = _voc_archive(tmp_path / "toy.tar")
    base, seen = serve({"/toy.tar": payload})
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "toy.tar").write_bytes(b"not the archive")
    res = _resource(payload, [f"{base}/toy.tar"])
    assert download(res, tmp_path / "data", quiet=True).read_bytes() == payload
    assert seen == [("/toy.tar", None)]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["toy.tar"]  # replaced


def test_existing_file_with_wrong_md5_is_kept_offline(tmp_path, caplog):
    """Offline nothing can replace a hand-placed archive: it is renamed, never deleted."""
    (tmp_path / "data").mkdir()
    placed = tmp_path / "data" / "toy.tar"
    placed.write_bytes(b"an older copy")
    kept = placed.with_name(f"toy.tar.md5-{hashlib.md5(b'an older copy').hexdigest()}")
    res = _resource(_voc_archive(tmp_path / "good.tar"), [_closed_url()])
    with pytest.raises(DownloadError) as err:
        download(res, tmp_path / "data", quiet=True)
    assert kept.read_bytes() == b"an older copy" and not placed.exists()
    assert f"(kept as {kept})" in str(err.value) and "kept it as" in caplog.text


def test_marker_skips_download_and_extraction(tmp_path):
    out = tmp_path / "data" / "VOCdevkit" / "VOC2012"
    out.mkdir(parents=True)
    (out / MARKER).write_text("done\n")
    assert prepare(_resource(b"x", [_closed_url()]), tmp_path / "data", quiet=True) == out


def test_half_extracted_tree_without_marker_is_unpacked_again(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    payload = _voc_archive(data / "toy.tar")
    half = data / "VOCdevkit" / "VOC2012" / "JPEGImages"
    half.mkdir(parents=True)
    (half / "2007_000032.jpg").write_bytes(IMAGE[:10])  # truncated by an interrupted unpack
    out = prepare(_resource(payload, [_closed_url()]), data, quiet=True)
    assert (out / "JPEGImages" / "2007_000032.jpg").read_bytes() == IMAGE
    assert (out / MARKER).is_file()


def _bad_tar(path: Path, outside: Path, kind: str) -> str:
    """Write a tar whose first member is harmless and whose second is ``kind``; return its name."""
    bad = {
        "dotdot": ("../evil", {}),
        "absolute": (str(outside / "evil"), {}),
        "symlink": ("link", {"type": tarfile.SYMTYPE, "linkname": "../outside"}),
        "abs_symlink": ("link", {"type": tarfile.SYMTYPE, "linkname": str(outside)}),
        "hardlink": ("hard", {"type": tarfile.LNKTYPE, "linkname": "../outside/evil"}),
        "device": ("dev", {"type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}),
        "fifo": ("fifo", {"type": tarfile.FIFOTYPE}),
    }
    with tarfile.open(path, "w") as tar:
        _add(tar, "good.txt", b"fine")
        if kind == "symlink_chain":  # a -> . is inside, but a/.. is the parent of dest
            _add(tar, "a", type=tarfile.SYMTYPE, linkname=".")
            _add(tar, "a/evil", b"x")
            return "a/evil"
        name, fields = bad[kind]
        _add(tar, name, b"evil" if not fields else b"", **fields)
    return name


@pytest.mark.parametrize(
    "kind",
    ["dotdot", "absolute", "symlink", "abs_symlink", "hardlink", "device", "fifo", "symlink_chain"],
)
def test_safe_extract_refuses_unsafe_members_and_writes_nothing(tmp_path, kind):
    outside, dest = tmp_path / "outside", tmp_path / "work" / "dest"
    outside.mkdir()
    member = _bad_tar(tmp_path / "bad.tar", outside, kind)
    with pytest.raises(UnsafeArchiveError, match="member") as info:
        safe_extract(tmp_path / "bad.tar", dest)
    assert repr(member) in str(info.value)
    assert not dest.exists()
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tar", "outside"]


def test_safe_extract_keeps_links_that_stay_inside(tmp_path):
    with tarfile.open(tmp_path / "ok.tar", "w") as tar:
        _add(tar, "dir/file.txt", b"data")
        _add(tar, "dir/link.txt", type=tarfile.SYMTYPE, linkname="file.txt")
        _add(tar, "hard.txt", type=tarfile.LNKTYPE, linkname="dir/file.txt")
    dest = safe_extract(tmp_path / "ok.tar", tmp_path / "dest")
    assert (dest / "dir" / "link.txt").is_symlink()
    assert (dest / "dir" / "link.txt").read_bytes() == b"data"
    assert (dest / "hard.txt").read_bytes() == b"data"
    assert sorted(p.name for p in dest.iterdir()) == ["dir", "hard.txt"]  # no staging left


def test_safe_extract_zip(tmp_path):
    with zipfile.ZipFile(tmp_path / "ok.zip", "w") as zf:
        zf.writestr("a/b.txt", "hello")
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as zf:
        zf.writestr("ok.txt", "fine")
        zf.writestr("../evil.txt", "evil")
    assert (safe_extract(tmp_path / "ok.zip", tmp_path / "d1") / "a" / "b.txt").read_text() == (
        "hello"
    )
    with pytest.raises(UnsafeArchiveError, match="evil.txt"):
        safe_extract(tmp_path / "bad.zip", tmp_path / "d2")
    assert not (tmp_path / "d2").exists() and not (tmp_path / "evil.txt").exists()


def test_safe_extract_rejects_non_archives(tmp_path):
    (tmp_path / "x.tar").write_bytes(b"plain text, not an archive" * 40)
    with pytest.raises(ValueError, match="not a tar"):
        safe_extract(tmp_path / "x.tar", tmp_path / "dest")


def test_offline_error_is_one_actionable_paragraph(tmp_path):
    urls = [_closed_url(VOC2012.filename), _closed_url(VOC2012.filename)]
    with pytest.raises(DownloadError) as info:
        download(replace(VOC2012, urls=tuple(urls)), tmp_path / "data", timeout=5, quiet=True)
    message = str(info.value)
    assert "\n" not in message
    for needle in [VOC2012.filename, VOC2012.md5, "2.0 GB", *urls, "experiment=quickstart"]:
        assert needle in message
    assert str(tmp_path / "data" / VOC2012.filename) in message
    assert f"--data-dir {tmp_path / 'data'}" in message


def test_cli_offline_exits_1_without_traceback(tmp_path):
    env = {**os.environ, "SEG_VOC_URLS": f"{_closed_url()} {_closed_url()}"}
    cmd = [sys.executable, "-m", "seg.data.download", "--data-dir", str(tmp_path), "--timeout", "5"]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert "Traceback" not in output
    assert VOC2012.filename in output and "experiment=quickstart" in output


def test_missing_dataset_message(tmp_path):
    root = tmp_path / "data" / "VOCdevkit"
    message = missing_dataset_message(root)
    assert str(root / "VOC2012") in message
    assert f"python -m seg.data.download --data-dir {tmp_path / 'data'}`" in message
    assert str(tmp_path / "data" / VOC2012.filename) in message
    assert "python train.py experiment=quickstart" in message and "\n" not in message
    with_sbd = missing_dataset_message(root, sbd=True)
    assert "--sbd" in with_sbd and str(tmp_path / "data" / "benchmark.tgz") in with_sbd
    assert str(tmp_path / "data" / "benchmark_RELEASE" / "dataset") in with_sbd
    elsewhere = missing_dataset_message(tmp_path / "voc")  # not named VOCdevkit
    assert f"--data-dir {tmp_path}`" in elsewhere and str(tmp_path / "VOCdevkit") in elsewhere

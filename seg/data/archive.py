"""Safe unpacking of tar, tar.gz/tgz and zip archives: the only unpacker in seg.

Every member is checked before anything is written. Absolute paths, ``..`` escapes, links that
point outside the destination (or through an archived symlink), and device files or FIFOs are
refused with :class:`UnsafeArchiveError`, which names the member.
"""

from __future__ import annotations

import posixpath
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path

from seg.errors import UnsafeArchiveError


def _is_inside(relative: str) -> bool:
    """Whether a slash-separated path stays inside the folder it is relative to."""
    norm = posixpath.normpath(relative)
    return not (posixpath.isabs(norm) or norm == ".." or norm.startswith("../"))


def _through_link(path: str, links: set[str]) -> bool:
    """Whether ``path`` or any of its prefixes (``a``, ``a/b``, ...) is an archived symlink."""
    parts = path.split("/")
    return any(posixpath.normpath("/".join(parts[:i])) in links for i in range(1, len(parts) + 1))


def _tar_member_problem(member: tarfile.TarInfo, links: set[str]) -> str | None:
    """Return why ``member`` is unsafe (or None); records symlinks in ``links``."""
    name = posixpath.normpath(member.name)
    if posixpath.isabs(member.name):
        return "has an absolute path"
    if not _is_inside(name):
        return "escapes the destination with '..'"
    if _through_link(member.name, links):
        return "goes through a symlink in the archive"
    if member.issym() or member.islnk():
        kind = "symlink" if member.issym() else "hard link"
        base = posixpath.dirname(name) if member.issym() else ""
        target = posixpath.join(base, member.linkname)
        if posixpath.isabs(member.linkname) or not _is_inside(target):
            return f"is a {kind} to {member.linkname!r}, outside the destination"
        if _through_link(target, links):
            return f"is a {kind} to {member.linkname!r}, through a symlink in the archive"
        if member.issym():
            links.add(name)
    elif not (member.isfile() or member.isdir()):
        return "is a device file, FIFO or other special file"
    return None


def _zip_member_problem(info: zipfile.ZipInfo) -> str | None:
    """Return why a zip member is unsafe, or None."""
    if posixpath.isabs(info.filename):
        return "has an absolute path"
    if not _is_inside(info.filename):
        return "escapes the destination with '..'"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "is a symlink"
    return None


def _refuse(archive: Path, name: str, problem: str | None) -> None:
    if problem is not None:
        raise UnsafeArchiveError(
            f"Refusing to unpack {archive}: member {name!r} {problem}. Nothing was extracted."
        )


def _merge_move(src: Path, dst: Path) -> None:
    """Move the contents of ``src`` into ``dst``, merging folders that already exist."""
    for entry in src.iterdir():
        target = dst / entry.name
        if entry.is_dir() and not entry.is_symlink() and target.is_dir():
            _merge_move(entry, target)
            continue
        if target.is_dir() and not target.is_symlink():
            raise IsADirectoryError(f"cannot replace folder {target} with a file from the archive")
        if target.is_symlink() or target.exists():
            target.unlink()
        shutil.move(str(entry), str(target))


def safe_extract(archive_path: str | Path, dest_dir: str | Path) -> Path:
    """Unpack a tar, tar.gz/tgz or zip archive into ``dest_dir``, refusing unsafe members.

    All members are checked before anything is written: absolute paths, ``..`` escapes, links to
    outside ``dest_dir`` or through an archived symlink, and device files or FIFOs are refused.
    Tars are also unpacked with ``filter="data"``. Members go to a staging folder inside
    ``dest_dir`` and are then moved into place, merging with existing folders.

    Args:
        archive_path: The archive; its type is detected from its content, not its name.
        dest_dir: Destination folder, created if needed.

    Returns:
        ``dest_dir`` as a Path.

    Raises:
        UnsafeArchiveError: A member is unsafe; the message names it. Nothing is extracted.
        ValueError: The file is not a tar or zip archive.
    """
    archive, dest = Path(archive_path), Path(dest_dir)
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive, "r:*") as tar:
            links: set[str] = set()
            for member in tar.getmembers():
                _refuse(archive, member.name, _tar_member_problem(member, links))
            _staged(archive, dest, lambda tmp: _extract_tar(archive, tar, tmp))
    elif zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                _refuse(archive, info.filename, _zip_member_problem(info))
            _staged(archive, dest, zf.extractall)
    else:
        raise ValueError(f"{archive} is not a tar, tar.gz/tgz or zip archive")
    return dest


def _extract_tar(archive: Path, tar: tarfile.TarFile, tmp: Path) -> None:
    """Unpack ``tar`` into ``tmp`` with the "data" filter where Python has it (3.10.12+)."""
    kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    try:
        tar.extractall(tmp, **kwargs)
    except tarfile.FilterError as err:
        _refuse(archive, getattr(err.tarinfo, "name", "?"), f"was rejected ({err})")


def _staged(archive: Path, dest: Path, extract) -> None:
    """Run ``extract(tmp)`` into a staging folder inside ``dest``, then move the result in."""
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / f".{archive.name}.extracting"
    shutil.rmtree(tmp, ignore_errors=True)  # left over from an interrupted run
    tmp.mkdir()
    try:
        extract(tmp)
        _merge_move(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

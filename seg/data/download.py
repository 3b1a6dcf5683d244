"""Download, verify and unpack PASCAL VOC 2012 (and, optionally, SBD).

Usage::

    python -m seg.data.download [--data-dir data] [--sbd] [--no-extract]

The VOC tar unpacks to ``<data-dir>/VOCdevkit/VOC2012`` and SBD's ``benchmark.tgz`` to
``<data-dir>/benchmark_RELEASE/dataset``. Downloads go to ``<file>.part`` and resume with an HTTP
``Range`` request; each URL (official first, then mirrors) is tried in turn and a file is kept only
when its md5 matches. The environment variables ``SEG_VOC_URLS`` and ``SEG_SBD_URLS``
(whitespace-separated URLs) replace the built-in URL lists, e.g. to use a local mirror. Offline,
put the archive into ``<data-dir>`` by hand and run the same command: it verifies and unpacks it.
An archive already there with a wrong md5 is renamed to ``<file>.md5-<its md5>``, and deleted
only once a download has replaced it.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import logging
import os
import shlex
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.error import HTTPError
from urllib.request import Request, urlopen

from rich import progress as rp
from rich.console import Console
from rich.text import Text

from seg.data.archive import safe_extract
from seg.errors import DownloadError

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
MARKER = ".seg_complete"
QUICKSTART = "python train.py experiment=quickstart"


@dataclass(frozen=True)
class Resource:
    """One downloadable dataset archive.

    Attributes:
        name: Human-readable name used in messages.
        filename: Archive file name inside the data dir.
        md5: Expected md5 hex digest of the archive.
        urls: URLs tried in order: the official one first, then mirrors.
        extract_to: Folder, relative to the data dir, that unpacking the archive into the data dir
            creates. It holds the completion marker.
        size_bytes: Approximate archive size, for messages only.
        cli_flag: CLI flag that selects this resource ("" when it is always fetched).
    """

    name: str
    filename: str
    md5: str
    urls: tuple[str, ...]
    extract_to: str
    size_bytes: int = 0
    cli_flag: str = ""


VOC2012 = Resource(
    name="PASCAL VOC 2012 trainval",
    filename="VOCtrainval_11-May-2012.tar",
    md5="6cd6e144f989b92b3379bac3b3de84fd",
    urls=(
        "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
        "https://thor.robots.ox.ac.uk/datasets/pascal-voc/voc2012/VOCtrainval_11-May-2012.tar",
        "https://pjreddie.com/media/files/VOCtrainval_11-May-2012.tar",
    ),
    extract_to="VOCdevkit/VOC2012",
    size_bytes=1_999_639_040,
)
SBD = Resource(
    name="SBD (Semantic Boundaries Dataset)",
    filename="benchmark.tgz",
    md5="82b4d87ceb2ed10f6038a1cba92111cb",
    urls=(
        "http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/"
        "benchmark.tgz",
    ),
    extract_to="benchmark_RELEASE/dataset",
    size_bytes=1_419_539_633,
    cli_flag="--sbd",
)


def md5sum(path: str | Path, chunk_size: int = CHUNK_SIZE) -> str:
    """Return the md5 hex digest of a file, read in chunks of ``chunk_size`` bytes."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def _progress(quiet: bool) -> rp.Progress:
    """A bytes / speed / ETA progress bar on stderr, shown only on a terminal."""
    console = Console(stderr=True)
    columns = (rp.DownloadColumn(), rp.TransferSpeedColumn(), rp.TimeRemainingColumn())
    bar = (rp.TextColumn("{task.description}"), rp.BarColumn())
    return rp.Progress(*bar, *columns, console=console, disable=quiet or not console.is_terminal)


def _fetch(url: str, part: Path, timeout: float, quiet: bool) -> None:
    """Write ``url``'s body to ``part``, resuming from the bytes ``part`` already holds.

    Raises:
        OSError: On a network failure, HTTP error or short read. ``part`` is kept for resuming.
    """
    start = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "seg-downloader", **({"Range": f"bytes={start}-"} if start else {})}
    try:
        response = urlopen(Request(url, headers=headers), timeout=timeout)
    except HTTPError as err:
        if err.code == 416 and start:  # nothing past `start`: `part` may be complete already
            return
        raise
    with response, _progress(quiet) as progress:
        if response.status == 206:
            content_range = response.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {start}-"):
                raise OSError(f"asked for bytes {start}- but got Content-Range {content_range!r}")
        else:  # 200: the server ignored the Range header, so start over
            start = 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length else None
        task = progress.add_task(part.name.removesuffix(".part"), total=total, completed=start)
        with open(part, "ab" if start else "wb") as f:
            while block := response.read(CHUNK_SIZE):
                f.write(block)
                progress.advance(task, len(block))
    size = part.stat().st_size
    if total is not None and size < total:
        raise OSError(f"connection closed after {size} of {total} bytes")


def _try_url(resource: Resource, url: str, final: Path, timeout: float, quiet: bool) -> str | None:
    """Fetch ``url`` into ``final`` if its md5 matches; return why it failed, or None."""
    part = final.with_name(final.name + ".part")
    log.info("Downloading %s from %s", resource.filename, url)
    try:
        _fetch(url, part, timeout, quiet)
    except (OSError, ValueError, http.client.HTTPException) as err:  # ValueError: bad URL
        reason = str(err if isinstance(err, HTTPError) else getattr(err, "reason", err))
        return f"{url} ({reason or type(err).__name__})"
    actual = md5sum(part)
    if actual != resource.md5:
        part.unlink()
        return f"{url} (delivered a file with md5 {actual}, expected {resource.md5}; deleted it)"
    os.replace(part, final)
    return None


def download(
    resource: Resource, data_dir: str | Path, *, timeout: float = 30.0, quiet: bool = False
) -> Path:
    """Download ``resource`` into ``data_dir`` unless a file with the right md5 is already there.

    A file there with a wrong md5 is kept as ``<file>.md5-<md5>`` until a download replaces it.

    Args:
        resource: What to fetch; its URLs are tried in order.
        data_dir: Folder that receives ``resource.filename`` (created if needed).
        timeout: Seconds to wait for a connection or for each read.
        quiet: Never show a progress bar (it is only shown on a terminal anyway).

    Returns:
        The verified archive, ``<data_dir>/<resource.filename>``.

    Raises:
        DownloadError: Every URL failed; the message is a paragraph for a person.
    """
    data_dir = Path(data_dir).expanduser().absolute()
    data_dir.mkdir(parents=True, exist_ok=True)
    final = data_dir / resource.filename
    problems, kept = [], None
    if final.exists():
        actual = md5sum(final)
        if actual == resource.md5:
            log.info("%s is already present and its md5 matches", final)
            return final
        kept = final.with_name(f"{final.name}.md5-{actual}")  # never deleted unless replaced
        os.replace(final, kept)
        problems.append(f"the existing {final} had md5 {actual}, expected {resource.md5}")
        log.warning("%s; kept it as %s until a download replaces it", problems[0], kept.name)
    for url in resource.urls:
        problem = _try_url(resource, url, final, timeout, quiet)
        if problem is None:
            if kept is not None:
                kept.unlink()
            return final
        problems.append(problem)
    if kept is not None:
        problems[0] += f" (kept as {kept})"
    raise DownloadError(_failure_message(resource, data_dir, problems))


def _command(data_dir: Path, flag: str = "") -> str:
    command = f"python -m seg.data.download --data-dir {shlex.quote(str(data_dir))} {flag}"
    return command.rstrip()


def _describe(resource: Resource) -> str:
    size = f"about {resource.size_bytes / 1e9:.1f} GB, " if resource.size_bytes else ""
    return f"{resource.filename} ({resource.name}, {size}md5 {resource.md5})"


def _failure_message(resource: Resource, data_dir: Path, problems: list[str]) -> str:
    return (
        f"Could not download {_describe(resource)}. Tried: {'; '.join(problems)}. "
        f"To install it by hand, download that file on a machine with internet access, put it at "
        f"{data_dir / resource.filename} and re-run `{_command(data_dir, resource.cli_flag)}`, "
        f"which verifies its md5 and unpacks it. To try the pipeline without the dataset, train "
        f"on the bundled synthetic sample instead: `{QUICKSTART}`."
    )


def missing_dataset_message(root: str | Path, sbd: bool = False) -> str:
    """Return the paragraph a dataset raises when ``<root>/VOC2012`` (or SBD) is missing.

    Args:
        root: The VOCdevkit folder, i.e. the folder that should contain ``VOC2012/``.
        sbd: Whether the dataset also needs SBD (expected at ``<root>/../benchmark_RELEASE``).

    Returns:
        One paragraph: what is missing, how to fetch it, where to drop the archives by hand, and
        how to train on the bundled synthetic sample instead.
    """
    root = Path(root).expanduser().absolute()
    data_dir = root.parent
    resources = (VOC2012, SBD) if sbd else (VOC2012,)
    expected = f"PASCAL VOC 2012 at {root / 'VOC2012'}"
    if sbd:
        expected += f" and SBD at {data_dir / SBD.extract_to}"
    note = "" if root.name == "VOCdevkit" else f" (it unpacks into {data_dir / 'VOCdevkit'})"
    drops = " and ".join(f"{_describe(r)} at {data_dir / r.filename}" for r in resources)
    return (
        f"Dataset not found: this needs {expected}. Fetch it with "
        f"`{_command(data_dir, SBD.cli_flag if sbd else '')}`{note}. Without internet, download "
        f"{drops} by hand, then run that command to verify and unpack it. To train offline on the "
        f"bundled synthetic sample instead, run `{QUICKSTART}`."
    )


def prepare(
    resource: Resource,
    data_dir: str | Path,
    *,
    extract: bool = True,
    timeout: float = 30.0,
    quiet: bool = False,
) -> Path:
    """Download ``resource`` (see `download`) and unpack it into ``data_dir`` unless done before.

    A tree holding the completion marker is left alone without network access; a tree without it
    (an interrupted unpack) is unpacked again. ``timeout`` and ``quiet`` are passed to `download`.

    Args:
        resource: What to fetch.
        data_dir: Folder for the archive and its unpacked tree.
        extract: Whether to unpack the archive after downloading it.

    Returns:
        ``<data_dir>/<resource.extract_to>``, or the archive when ``extract`` is False.

    Raises:
        DownloadError: The archive could not be downloaded or lacks the expected folder.
        UnsafeArchiveError: The archive holds an unsafe member.
    """
    data_dir = Path(data_dir).expanduser().absolute()
    target = data_dir / resource.extract_to
    if extract and (target / MARKER).is_file():
        log.info("%s is already unpacked at %s", resource.name, target)
        return target
    archive = download(resource, data_dir, timeout=timeout, quiet=quiet)
    if not extract:
        return archive
    log.info("Unpacking %s into %s", archive.name, data_dir)
    safe_extract(archive, data_dir)
    if not target.is_dir():
        raise DownloadError(f"Unpacked {archive}, but it did not contain {resource.extract_to}/.")
    (target / MARKER).write_text(f"{resource.md5}\n")
    return target


def _with_env_urls(resource: Resource, variable: str) -> Resource:
    """Replace ``resource.urls`` by the whitespace-separated URLs in ``$variable`` if set."""
    urls = os.environ.get(variable, "").split()
    return replace(resource, urls=tuple(urls)) if urls else resource


def fetch(args: argparse.Namespace) -> None:
    """Download, verify and unpack what ``args`` asks for (the ``python -m seg.data.download``
    task); disk errors become a :class:`DownloadError` naming the archive."""
    console = Console(stderr=True)
    resources = [_with_env_urls(VOC2012, "SEG_VOC_URLS")]
    if args.sbd:
        resources.append(_with_env_urls(SBD, "SEG_SBD_URLS"))
    for resource in resources:
        try:
            path = prepare(
                resource, args.data_dir, extract=not args.no_extract, timeout=args.timeout
            )
        except OSError as err:
            raise DownloadError(f"{resource.filename}: {err}") from err
        except KeyboardInterrupt:
            console.print("Interrupted; run the same command again to resume the download.")
            raise
        console.print(Text(f"{resource.name}: {path}"), soft_wrap=True)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: errors and Ctrl+C become exit statuses in :mod:`seg.cli`."""
    from seg.cli import run

    parser = argparse.ArgumentParser(
        prog="python -m seg.data.download",
        description="Download, verify (md5) and unpack PASCAL VOC 2012 and optionally SBD.",
        epilog="SEG_VOC_URLS / SEG_SBD_URLS (whitespace-separated) replace the built-in URLs.",
    )
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="default: ./data")
    parser.add_argument("--sbd", action="store_true", help="also fetch SBD (benchmark.tgz)")
    parser.add_argument("--no-extract", action="store_true", help="download and verify only")
    parser.add_argument("--timeout", type=float, default=30.0, help="network timeout, seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    run(fetch, args, validate=False)


if __name__ == "__main__":
    main()

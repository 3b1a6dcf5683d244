"""The record of what ``predict.py`` wrote into an output folder: ``predict_manifest.jsonl``.

One JSON object per line, each appended with a single ``write`` on an ``O_APPEND`` file (as
``boxes.jsonl``), so two runs into one folder never interleave lines and a kill loses nothing
finished. Claims are fsynced; a done record is appended only once the files it names are on
the disk, and fsynced with the others when the run ends (:meth:`Manifest.done`):

- ``{"claim": STEM, "input": PATH}``: the input file (absolute path) writes its outputs under
  ``STEM``, a path relative to the folder without suffix (``sub/cat`` -> ``sub/cat.png``).
  Claims are appended before any image is predicted. Of two inputs claiming one stem (compared
  case-insensitively) the earlier line wins, and the other takes another name.
- ``{"done": STEM, "input": PATH, "size": N, "mtime_ns": T, "outputs": [...]}``: every output of
  that input is written. A later run skips the input while its size and modification time are
  unchanged, it keeps its stem, and the outputs it asks for are still there.

Files of the folder that no claim names are not predict's: they are never overwritten (a new
name is taken instead) and never taken as inputs when they are predict's own outputs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seg.utils import append_lines, fsync_path, read_lines

NAME = "predict_manifest.jsonl"


@dataclass(frozen=True)
class Source:
    """An input file as predict read it: absolute path, size and modification time."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> Source:
        stat = path.stat()
        return cls(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


class Manifest:
    """The manifest of one output folder (see the module docstring).

    Args:
        folder: The output folder.
        suffixes: Every file name suffix an output of a stem can have (``.png``, ...), so that a
            stem whose files exist but are not predict's is never taken.
    """

    def __init__(self, folder: Path, suffixes: Iterable[str]) -> None:
        self.folder, self.path = folder, folder / NAME
        self.suffixes = tuple(suffixes)
        self.reload()

    def reload(self) -> None:
        """Read the file again (another run may have appended to it)."""
        self.owner: dict[str, str] = {}  # stem.casefold() -> input
        self.stem_of: dict[str, str] = {}  # input -> its latest winning stem
        self.done_of: dict[str, dict[str, Any]] = {}  # input -> its latest done record
        for record in read_lines(self.path, "input"):
            source = str(record["input"])
            if "claim" in record:
                stem = str(record["claim"])
                if self.owner.setdefault(stem.casefold(), source) == source:
                    self.stem_of[source] = stem
            elif "done" in record:
                self.done_of[source] = record

    def own_files(self) -> set[Path]:
        """Every path an output of a claimed stem has (resolved): predict's, never inputs."""
        folder = self.folder.resolve()
        return {folder / f"{stem}{sfx}" for stem in self.stem_of.values() for sfx in self.suffixes}

    def is_done(self, source: Source, stem: str, outputs: list[str]) -> bool:
        """Whether ``source`` was predicted as it is now, under ``stem``, with ``outputs``."""
        done = self.done_of.get(source.path)
        return (
            done is not None
            and done["done"] == stem
            and (done.get("size"), done.get("mtime_ns")) == (source.size, source.mtime_ns)
            and set(outputs) <= set(done.get("outputs", ()))
            and all((self.folder / name).is_file() for name in outputs)
        )

    def done(self, source: Source, stem: str, outputs: list[str]) -> None:
        """Record that every output of ``source`` is written (after the files, never before).

        The caller has fsynced the outputs (and their folder's entries) already, so the record
        can never reach the disk before the files it names. The record itself is not fsynced
        here: losing it to a power cut only means a re-run predicts that input again, and one
        fsync per image was a large part of writing a small mask. :meth:`sync` flushes them all
        at the end of a run.
        """
        record = {"done": stem, "input": source.path, "size": source.size}
        record |= {"mtime_ns": source.mtime_ns, "outputs": outputs}
        append_lines(self.path, [record], sync=False)
        self.done_of[source.path] = record

    def sync(self) -> None:
        """Flush the records appended so far to the disk."""
        if self.path.is_file():
            fsync_path(self.path)

    def _free(self, stem: str, source: str, taken: set[str]) -> bool:
        if stem.casefold() in taken:
            return False
        owner = self.owner.get(stem.casefold())
        if owner is not None:
            return owner == source
        return not any((self.folder / f"{stem}{sfx}").exists() for sfx in self.suffixes)

    def _choose(self, source: str, preferred: str, extension: str, taken: set[str]) -> str:
        own = self.stem_of.get(source)
        same_folder = own is not None and Path(own).parent == Path(preferred).parent
        if same_folder and own.casefold() not in taken:
            return own  # the name it had before: a re-run keeps it
        candidates = [preferred, f"{preferred}_{extension}" if extension else preferred]
        for stem in candidates:
            if self._free(stem, source, taken):
                return stem
        n = 2
        while not self._free(f"{candidates[-1]}_{n}", source, taken):
            n += 1
        return f"{candidates[-1]}_{n}"

    def assign(self, wanted: list[tuple[str, str, str]]) -> dict[str, str]:
        """Give every input a stem of its own, claimed in the manifest before any work.

        Args:
            wanted: ``(input, preferred stem, extension)`` per input, in order; an input whose
                preferred stem is taken gets ``<stem>_<extension>``, then ``..._2``, ``..._3``.

        Returns:
            input -> stem, no two inputs sharing a stem (case-insensitively), none on a file
            that predict did not write.
        """
        while True:
            taken: set[str] = set()
            stems: dict[str, str] = {}
            for source, preferred, extension in wanted:
                stem = self._choose(source, preferred, extension, taken)
                taken.add(stem.casefold())
                stems[source] = stem
            claims = [
                {"claim": stem, "input": source}
                for source, stem in stems.items()
                if self.owner.get(stem.casefold()) != source
            ]
            if not claims:
                return stems
            self.folder.mkdir(parents=True, exist_ok=True)
            append_lines(self.path, claims)
            self.reload()  # a concurrent run may have claimed a stem first: choose again

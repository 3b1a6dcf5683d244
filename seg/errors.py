"""Every exception seg raises on purpose, each with the exit status its entry point returns.

:func:`seg.cli.run` is the one place that turns them into a line on stderr and an exit code; the
messages name the file or config key at fault, so that one line is enough. Exit statuses:

- 0: success.
- 1: the task ran and something failed on the way (a bad sample, a non-finite loss, an image
  predict could not read, an export that fails its parity check).
- 2: nothing ran: a bad config, a missing or refused checkpoint, missing data or weights, an
  unusable input path.
- 130 / 143: interrupted by SIGINT / SIGTERM (see :mod:`seg.cli`).

This module imports nothing from seg, so every stage can raise these without an import cycle.
"""

from __future__ import annotations

from os import PathLike


class SegError(Exception):
    """Base class: a failure a user can act on, described in one line.

    Attributes:
        exit_code: The process exit status for this failure.
        hint: What to do about it, appended to the line when the message lacks it.
    """

    exit_code: int = 1
    hint: str = ""


class ConfigError(SegError, ValueError):
    """An invalid config value. The message names every bad key, on one line."""

    exit_code = 2


class CheckpointError(SegError, ValueError):
    """A checkpoint or weights file is missing, unreadable, refused (pickled code), not written by
    train.py, or does not fit the model it is loaded into."""

    exit_code = 2


class DatasetNotFoundError(SegError, FileNotFoundError):
    """The dataset folder, or a required part of it, is missing.

    The message says what is missing, how to fetch it and how to train on the bundled sample.
    """

    exit_code = 2


class PretrainedWeightsNotFoundError(SegError, FileNotFoundError):
    """Pretrained weights were asked for but cannot be read (offline, or a wrong path)."""

    exit_code = 2


class DatasetError(SegError, ValueError):
    """The dataset is there but unusable as a whole: an empty or malformed split list, a split
    that does not exist, overlapping training and evaluation lists, an unreadable folder, or a
    class count that differs from the model's. Nothing ran."""

    exit_code = 2


class InputError(SegError, FileNotFoundError):
    """An input or output path given on the command line cannot be used (``predict.py input=``,
    ``output=``; ``seg.export output=``)."""

    exit_code = 2


class BadSampleError(SegError, ValueError):
    """One sample is unusable (corrupt image, size mismatch, bad label, missing file, ...).

    The message names the offending file and the problem. With ``skip_bad=True`` datasets log
    it and skip the sample instead of raising.
    """

    exit_code = 1
    hint = "data.skip_bad=true skips such samples"


class NonFiniteLossError(SegError, RuntimeError):
    """The training loss became NaN or infinite; the run stopped before the optimizer step."""

    exit_code = 1


class NetOutputError(SegError, TypeError):
    """A net's output does not follow the contract of :mod:`seg.models`."""

    exit_code = 1


class ExportError(SegError, RuntimeError):
    """An exported model failed its parity check against PyTorch (nothing was kept)."""

    exit_code = 1


class DownloadError(SegError, RuntimeError):
    """No URL delivered an archive with the right md5. The message says what to do by hand."""

    exit_code = 1


class UnsafeArchiveError(SegError, ValueError):
    """An archive member could write outside the destination or is a special file."""

    exit_code = 1


class DiskFullError(SegError, OSError):
    """A write failed for lack of disk space (or quota); whatever was written before is intact."""

    exit_code = 1
    hint = "free some disk space"


class WorkerDiedError(SegError, RuntimeError):
    """A DataLoader worker process died (killed by the out-of-memory killer, or a crash)."""

    exit_code = 1
    hint = "often out of memory: fewer data.num_workers or a smaller data.batch_size help"


#: errno values of a full disk or an exhausted quota.
DISK_FULL = (28, 122)  # ENOSPC, EDQUOT (Linux)


def as_seg_error(err: BaseException) -> SegError | None:
    """The :class:`SegError` that a foreign exception really is, or None.

    A full disk (``OSError`` ENOSPC / EDQUOT, wherever it is raised) and a dead DataLoader worker
    (PyTorch's ``RuntimeError: DataLoader worker (pid ...) is killed by signal``) are failures a
    user can act on; they deserve one line, not a traceback.
    """
    if isinstance(err, SegError):
        return err
    if isinstance(err, OSError) and err.errno in DISK_FULL:
        where = f"{err.filename}: " if err.filename else ""
        return DiskFullError(f"{where}{err.strerror or 'No space left on device'}")
    text = " ".join(str(err).split())
    if isinstance(err, RuntimeError) and text.startswith("DataLoader worker (pid"):
        return WorkerDiedError(text.split(". ")[0].rstrip("."))
    return None


def failure_line(path: str | PathLike[str], err: BaseException) -> str:
    """One line that names the file and the problem (a batch's report of one failed file)."""
    text = " ".join(str(err).split())
    if not isinstance(err, BadSampleError):
        text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if text.startswith(str(path)) else f"{path}: {text}"

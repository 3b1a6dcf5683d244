"""Errors raised by the data layer. Each message names the file and the problem."""

from __future__ import annotations


class DatasetNotFoundError(FileNotFoundError):
    """The dataset folder (or a required part of it) is missing.

    The message is a short paragraph for a person: what is missing, where to put it, and how to
    train on the bundled sample instead. Entry points print it without a traceback.
    """


class BadSampleError(ValueError):
    """One sample is unusable (corrupt image, size mismatch, bad label, missing file, ...).

    The message names the offending file and the problem. With ``skip_bad=True`` datasets log
    it and skip the sample instead of raising.
    """

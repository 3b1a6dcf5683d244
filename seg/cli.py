"""Where errors become exit codes: the one wrapper every entry point runs its task through.

``train.py``, ``evaluate.py``, ``predict.py`` and ``python -m seg.export`` compose their Hydra
config and call :func:`run`; they hold no ``try``/``except`` of their own. :func:`run` checks the
config (:func:`seg.validate.validate_config`), runs the task, and turns what it raises into one
line on stderr, ``error: <file or key>: <what is wrong> [<what to do>]``, and the exit status of
the exception's class (:mod:`seg.errors`): 2 when nothing ran, 1 when the task failed on the
way. SIGINT and SIGTERM end with the conventional 130 and 143 (128 + the signal number):
Lightning itself exits 1 after Ctrl+C and 0 after SIGTERM, which job schedulers take for
success. A task may return an ``int``, its own exit status (``predict.py`` returns 1 when some
images failed).
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

from seg.errors import SegError, as_seg_error

#: Exit status after each signal: 128 + the signal number, as shells report a killed process.
EXIT_CODES = {signal.SIGINT: 128 + signal.SIGINT, signal.SIGTERM: 128 + signal.SIGTERM}


def error_line(err: BaseException) -> str:
    """One line for ``err``: its message (DataLoader workers wrap the original error in a
    traceback whose last line is the original message), plus the class's hint if any."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    wrapped = any("Traceback (most recent call last)" in ln for ln in lines)
    text = (lines[-1] if wrapped else " ".join(lines)) if lines else type(err).__name__
    text = text.removeprefix(f"{type(err).__module__}.{type(err).__name__}: ")
    hint = getattr(err, "hint", "")
    return f"{text} ({hint})" if hint and hint not in text else text


def _is_sigterm(stop: SystemExit) -> bool:
    """Lightning turns SIGTERM into ``SIGTERMException``, a ``SystemExit`` with status 0."""
    if "lightning" not in sys.modules:  # no trainer ran: nothing turned a signal into an exit
        return False
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    return isinstance(stop, SIGTERMException)


def run(task: Callable[[Any], Any], cfg: Any, validate: bool = True) -> Any:
    """Run ``task(cfg)`` as an entry point: config check, one-line errors, exit statuses.

    Args:
        task: The stage's function (``seg.train.train``, ``seg.evaluate.evaluate``, ...).
        cfg: Its composed Hydra config.
        validate: Check the config before anything runs.

    Returns:
        The task's result, when it succeeded with status 0; otherwise the process exits.
    """
    from seg.validate import validate_config

    # Library warnings go to the run's log (Hydra's: the console and <run>/<task>.log), so that
    # stderr carries nothing but the error line of a failure.
    logging.captureWarnings(True)
    try:
        if validate:
            validate_config(cfg)
        result = task(cfg)
    except (SegError, OSError, RuntimeError) as err:
        failure = as_seg_error(err)
        if failure is None:
            raise
        print(f"error: {error_line(failure)}", file=sys.stderr)
        sys.exit(failure.exit_code)
    except KeyboardInterrupt:
        sys.exit(EXIT_CODES[signal.SIGINT])
    except SystemExit as stop:
        if _is_sigterm(stop):
            sys.exit(EXIT_CODES[signal.SIGTERM])
        if isinstance(stop.__context__, KeyboardInterrupt):  # Lightning's exit after Ctrl+C
            sys.exit(EXIT_CODES[signal.SIGINT])
        raise
    if isinstance(result, int) and not isinstance(result, bool) and result:
        sys.exit(result)
    return result

"""Command-line plumbing shared by the scripts (``scripts/*.py``).

* :func:`check_number` -- the range checks of every numeric flag, used in the
  flag dataclasses' ``__post_init__`` (so they run at parse time and in the
  Python API alike); the message names the flag, the value and the range
  (defined in :mod:`seqenv.checks`, which the envs use too; re-exported here).
* :func:`parse_flags` -- ``tyro.cli`` whose rejected values (a ``ValueError``
  from a ``__post_init__``, an unconvertible value) become a
  :class:`FlagError` that :func:`run_cli` reports on one line, instead of
  tyro's boxed message.
* :func:`run_cli` -- the one top-level handler: a user error
  (:data:`USER_ERRORS`) exits with status 2 and one line ``error: ...`` on
  stderr; ``--debug`` (anywhere in the arguments) re-raises it with its
  traceback instead. An interrupted run (:class:`TrainingInterrupted`,
  Ctrl-C) prints one line and exits with status 130.
* :func:`check_output_path` -- an output file is checked before the work,
  and never equals or lies inside an input (checkpoint, corpus).
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import tyro

# tyro's parse-error hook is private (``tyro._errors``, no public equivalent in tyro 1.0): pyproject.toml pins
# tyro to the range it is tested on (>=1.0.17,<1.1); tests/test_run_safety.py checks the one-line errors it gives
from tyro import _errors as _tyro_errors
from tyro._errors import InstantiationFailure as _InstantiationFailure
from tyro._errors import on_parse_error as _on_parse_error

from seqenv.checks import check_number as check_number  # re-exported: the one range check

from .checkpoint import CheckpointError

T = TypeVar("T")

#: upper bounds of counts (flags are checked at parse time: no run starts that would never end or overflow)
MAX_STEPS = 10**9
MAX_SAMPLES = 10**6
MAX_SEED = 2**31 - 1
#: sampling temperatures below this make ``logits / T`` overflow to inf (NaN probabilities); above it they are
#: greedy in effect already
MIN_TEMPERATURE = 1e-3
#: learning rates above this overflow float32 in the optimiser (AdamW's ``lr * weight_decay``, ``lr * update``)
MAX_LR = 1e6


class FlagError(ValueError):
    """A flag's value was rejected while parsing (message: flag, value, expected range)."""


class RunDirectoryError(ValueError):
    """The run directory (``--logdir``) holds another run or is in use by another process."""


class TrainingInterrupted(Exception):
    """A run stopped on SIGINT/SIGTERM after writing its checkpoint (message: the step, how to resume).

    :func:`run_cli` prints the message on one line and exits with status 130.
    """


#: exceptions reported as one line with exit status 2 (CheckpointError, FlagError and
#: RunDirectoryError are ValueErrors; MissingTaskDataError is a FileNotFoundError)
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    CheckpointError,
)


def _flag_names(message: str, sections: Mapping[str, str]) -> str:
    """``MLEConfig.backspace_p`` -> ``--mle.backspace-p`` for each ``{class name: section}`` in ``sections``."""
    for cls_name, section in sections.items():
        message = re.sub(
            rf"\b{re.escape(cls_name)}\.(\w+)",
            lambda m, section=section: f"--{section}.{m.group(1).replace('_', '-')}",
            message,
        )
    return message


def parse_flags(
    cls: type[T],
    argv: Sequence[str],
    description: str | None = None,
    default: T | None = None,
    sections: Mapping[str, str] = {},
) -> T:
    """``tyro.cli(cls, args=argv)`` with one-line errors for rejected values.

    :param default: an instance whose values are the defaults (e.g. a saved run's config).
    :param sections: ``{config class name: flag prefix}`` (``{"MLEConfig": "mle"}``): a
        nested section's message ``MLEConfig.backspace_p ...`` is reported as
        ``--mle.backspace-p ...``.
    :raises FlagError: when a value is rejected (a ``__post_init__`` check or an
        unconvertible value) and for tyro's own parse errors (unknown flags,
        bad choices, missing required flags), each as one line.
    """
    kwargs = {"args": list(argv), "description": description}
    if default is not None:
        kwargs["default"] = default

    def hook(event) -> None:
        if isinstance(event, _InstantiationFailure):
            message = _flag_names(str(event.message), sections)
            arg = getattr(event, "argument", None)
            names = getattr(getattr(arg, "lowered", None), "name_or_flags", None)
            if names:
                message = f"{'/'.join(names)}: {message}"
            raise FlagError(message)
        raise FlagError(_parse_error_line(event))

    with _on_parse_error(hook):
        return tyro.cli(cls, **kwargs)


def _arg_name(arg) -> str:
    names = getattr(getattr(arg, "lowered", None), "name_or_flags", None)
    return "/".join(names) if names else str(getattr(arg, "display_name", lambda: "argument")())


def _parse_error_line(event) -> str:
    """One line for a tyro parse-error event (unknown flag, bad choice, missing flag, ...)."""
    e = _tyro_errors
    if isinstance(event, e.UnrecognizedArgs):
        return f"unrecognized arguments: {' '.join(event.tokens)} (see --help for the flags)"
    if isinstance(event, e.InvalidChoice):
        return (
            f"{_arg_name(event.argument)}: invalid choice {event.value!r}; expected one of {', '.join(event.choices)}"
        )
    if isinstance(event, e.MissingArgs):
        missing = ", ".join(_arg_name(a.arg) for a in event.missing_arguments)
        return f"missing required flags: {missing} (see --help)"
    if isinstance(event, e.BadValue):
        what = f"takes no value, got {event.offending_value!r}" if event.reason == "fixed" else "needs a value"
        return f"{_arg_name(event.argument)} {what}"
    if isinstance(event, e.MutexConflict):
        return f"{event.first_token} and {event.second_token} cannot be given together"
    return f"bad command line ({type(event).__name__}); see --help"


def check_output_path(
    path: str | os.PathLike, flag: str = "--out", inputs: Sequence[str | os.PathLike | None] = ()
) -> None:
    """Check that a file can be written at ``path`` (before any work is done); ``-`` (stdout) passes.

    :param inputs: the command's input paths (checkpoints, corpora, model
        directories): ``path`` may neither be one of them nor lie inside one.
    :raises ValueError: if ``path`` is an input or lies inside one.
    :raises IsADirectoryError: if ``path`` is a directory.
    :raises FileNotFoundError: if its parent directory does not exist.
    :raises PermissionError: if the file or its directory is not writable.
    """
    if str(path) == "-":
        return
    p = Path(path).expanduser()
    if not str(path).strip():
        raise ValueError(f"{flag} must name a file, got {str(path)!r}")
    target = p.resolve()
    for source in inputs:
        if source is None or not str(source).strip():
            continue
        src = Path(str(source)[5:] if str(source).startswith("file:") else source).expanduser()
        if not src.exists():
            continue
        src = src.resolve()
        if target == src or src in target.parents:
            raise ValueError(f"{flag} {str(path)!r} would overwrite the input {str(source)!r}; give another path")
    parent = p.parent
    if p.is_dir():
        raise IsADirectoryError(f"{flag} {str(path)!r} is a directory; give a file path")
    if not parent.is_dir():
        raise FileNotFoundError(f"{flag} {str(path)!r}: directory {str(parent)!r} does not exist")
    if p.exists() and not os.access(p, os.W_OK):
        raise PermissionError(f"{flag} {str(path)!r} is not writable")
    if not p.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"{flag} {str(path)!r}: directory {str(parent)!r} is not writable")


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {' '.join(str(message).split())}", file=sys.stderr if file is None else file, flush=True)


def run_cli(
    main: Callable[[list[str]], T],
    argv: Sequence[str] | None = None,
    extra_errors: tuple[type[BaseException], ...] = (),
) -> T:
    """Run ``main(argv)``; a user error exits with status 2 and one line ``error: ...`` on stderr.

    :param argv: the arguments (default ``sys.argv[1:]``); ``--debug`` is removed
        from them and makes a user error propagate with its traceback.
    :param extra_errors: further exception types to report as user errors.
    :raises SystemExit: ``2`` on a user error (:data:`USER_ERRORS` + ``extra_errors``);
        ``130`` on :class:`TrainingInterrupted` or ``KeyboardInterrupt``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    previous_term = None
    if threading.current_thread() is threading.main_thread():  # SIGTERM ends the script like Ctrl-C
        previous_term = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        with warnings.catch_warnings():
            if not debug:  # "warning: ..." on one line, not "path:line: UserWarning: ..." and the source line
                warnings.showwarning = _one_line_warning
            return main(argv)
    except (*USER_ERRORS, *extra_errors) as e:
        if debug:
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except TrainingInterrupted as e:
        print(" ".join(str(e).split()), file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)

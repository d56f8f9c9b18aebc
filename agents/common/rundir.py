"""Run directories (``--logdir``): never lose or mix a run.

* :class:`RunLock` -- an exclusive ``fcntl.flock`` on ``<logdir>/.lock`` held
  for the run's life, the holder's PID written in the file; a second process
  on the same directory fails at once naming that PID. The lock file is left
  in place (deleting it would let two processes lock two different files).
* :func:`prepare_run_directory` -- a fresh run refuses a directory that holds
  a run (:data:`RUN_FILES`, TensorBoard event files) unless told to
  overwrite it (then the old run's files are deleted first); ``resume`` needs
  its checkpoint; stale checkpoint temp files (``checkpoint.pt.*.tmp``, left
  by a kill during a save) are deleted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock
    fcntl = None

from .cli import RunDirectoryError

#: files that make a directory hold a run (besides ``events.out.tfevents.*``)
RUN_FILES = ("checkpoint.pt", "config.json", "metrics.json", "initial_metrics.json")
EVENTS_GLOB = "events.out.tfevents.*"
TEMP_GLOB = "checkpoint.pt.*.tmp"
LOCK_NAME = ".lock"


def run_files(logdir: "str | os.PathLike") -> list[Path]:
    """The files of a run in ``logdir`` (:data:`RUN_FILES` and TensorBoard event files), sorted."""
    logdir = Path(logdir)
    if not logdir.is_dir():
        return []
    found = [logdir / n for n in RUN_FILES if (logdir / n).exists()]
    return sorted(found + [p for p in logdir.glob(EVENTS_GLOB) if p.is_file()])


class RunLock:
    """Exclusive lock of a run directory for the life of a run (create the directory if needed).

    :raises RunDirectoryError: if another process holds the lock (names its PID).
    :raises NotADirectoryError: if ``logdir`` exists and is not a directory.
    """

    def __init__(self, logdir: "str | os.PathLike"):
        self.logdir = Path(logdir)
        if self.logdir.exists() and not self.logdir.is_dir():
            raise NotADirectoryError(f"--logdir {str(self.logdir)!r} is a file, not a directory")
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.path = self.logdir / LOCK_NAME
        self._fd: Optional[int] = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is None:  # pragma: no cover
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(self._fd)
            self._fd = None
            raise RunDirectoryError(
                f"run directory {str(self.logdir)!r} is in use by another run (process {holder}, lock file "
                f"{str(self.path)!r}); wait for it to finish or use another --logdir"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode("ascii"), 0)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Release the lock (idempotent); the file stays."""
        if self._fd is not None:
            if fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __del__(self):
        self.release()


def prepare_run_directory(logdir: "str | os.PathLike", resume: bool, overwrite: bool) -> list[Path]:
    """Check ``logdir`` for a new or resumed run and clean it; call with its :class:`RunLock` held.

    * fresh run (``resume`` False) in a directory holding a run: refused unless
      ``overwrite``, which deletes the old run's files (:func:`run_files`);
    * ``resume``: ``checkpoint.pt`` must exist;
    * stale ``checkpoint.pt.*.tmp`` files are deleted.

    :return: the files deleted.
    :raises RunDirectoryError: a fresh run in a directory holding a run, without ``overwrite``.
    :raises FileNotFoundError: ``resume`` without ``checkpoint.pt``.
    """
    logdir = Path(logdir)
    old = run_files(logdir)
    if resume:
        if not (logdir / "checkpoint.pt").is_file():
            hint = ("the run stopped before its first checkpoint; start it again with --overwrite" if old
                    else "drop --resume to start a new run")
            raise FileNotFoundError(f"cannot resume: {str(logdir / 'checkpoint.pt')!r} does not exist ({hint})")
        old = []
    elif old and not overwrite:
        names = ", ".join(p.name for p in old[:4]) + (f", ... ({len(old)} files)" if len(old) > 4 else "")
        raise RunDirectoryError(
            f"run directory {str(logdir)!r} already holds a run ({names}); pass --resume to continue it, "
            f"--overwrite to delete it and start a new one, or choose another --logdir"
        )
    removed = old + sorted(logdir.glob(TEMP_GLOB))
    for p in removed:
        p.unlink(missing_ok=True)
    return removed

"""Run directories (``--logdir``): never lose or mix a run.

The one guard every script that writes a run directory goes through
(``train.py``, ``ppo_critic.py``, the main job's stages, the benchmarks):

* :class:`RunLock` -- an exclusive ``fcntl.flock`` on ``<logdir>/.lock`` held
  for the run's life, the holder's PID written in the file; a second process
  on the same directory fails at once naming that PID. The lock file is left
  in place (deleting it would let two processes lock two different files).
* :class:`RunDirectory` -- the lock plus the checks, in two phases:

  1. ``RunDirectory(logdir, resume=..., overwrite=..., script=...)`` locks and
     checks, touching no file: a fresh run refuses a directory that holds a
     run unless ``overwrite``; ``overwrite`` refuses a directory whose files
     no run of ours wrote (no :data:`MARKER`: e.g. a Hugging Face model folder
     with its own ``config.json``); ``resume`` needs ``checkpoint.pt`` and a run
     written by the same script.
  2. :meth:`RunDirectory.start`, called once the new run's inputs (``--init``
     checkpoint, corpus, ...) are read and validated: deletes the old run's
     files (``overwrite``; only :func:`run_files`, never anything else) and
     stale ``checkpoint.pt.*.tmp`` files, and writes the marker.

  So ``--init R/checkpoint.pt --logdir R --overwrite`` reads the checkpoint
  before it is replaced, and a rejected flag or input leaves ``R`` as it was.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock
    fcntl = None

from .cli import RunDirectoryError

#: files that make a directory hold a run (besides ``events.out.tfevents.*``)
RUN_FILES = (
    "checkpoint.pt",
    "checkpoint.prev.pt",
    "checkpoint.diverged.pt",
    "config.json",
    "metrics.json",
    "initial_metrics.json",
)
EVENTS_GLOB = "events.out.tfevents.*"
TEMP_GLOB = "checkpoint.pt.*.tmp"
LOCK_NAME = ".lock"
#: our marker: every run directory we write holds it (JSON ``{"writer": "seqenv", "script": ...}``)
MARKER = ".seqenv-run"
#: sub-directories a run of ours writes: the HF export and SB3's TensorBoard folders (``ppo_1``, ...)
RUN_SUBDIRS = ("hf", "ppo_*")


def run_files(logdir: str | os.PathLike) -> list[Path]:
    """The files (and sub-directories) a run of ours writes in ``logdir``, present there, sorted.

    :data:`RUN_FILES`, TensorBoard event files and :data:`RUN_SUBDIRS`; not the
    lock file, not the marker, nothing else.
    """
    logdir = Path(logdir)
    if not logdir.is_dir():
        return []
    found = [logdir / n for n in RUN_FILES if (logdir / n).exists()]
    found += [p for p in logdir.glob(EVENTS_GLOB) if p.is_file()]
    for pattern in RUN_SUBDIRS:
        found += [p for p in logdir.glob(pattern) if p.is_dir()]
    return sorted(set(found))


#: keys every train.py ``config.json`` has: how a run written before the marker existed is recognised
LEGACY_CONFIG_KEYS = frozenset({"agent", "task", "logdir", "init", "resume", "seed", "max_steps", "ckpt_every"})


def run_marker(logdir: str | os.PathLike) -> dict | None:
    """The marker of ``logdir`` (``{"writer": "seqenv", "script": ...}``), or None if it has none.

    A train.py run written before the marker existed is recognised by its
    ``config.json``'s content (every key of :data:`LEGACY_CONFIG_KEYS`), never by the file name alone.
    """
    path = Path(logdir) / MARKER
    if not path.is_file():
        try:
            config = json.loads((Path(logdir) / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if isinstance(config, dict) and LEGACY_CONFIG_KEYS <= set(config):
            return {"writer": "seqenv", "script": "train.py", "legacy": True}
        return None
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return {"writer": "seqenv", "script": None}
    return marker if isinstance(marker, dict) else {"writer": "seqenv", "script": None}


def check_logdir_path(logdir: str | os.PathLike | None, flag: str = "--logdir") -> Path:
    """``logdir`` as a Path, refusing an empty value and an existing file.

    :raises ValueError: for ``''`` (would write the run into the current directory).
    :raises NotADirectoryError: if it exists and is not a directory.
    """
    if logdir is None or not str(logdir).strip():
        raise ValueError(f"{flag} must name a directory, got {'' if logdir is None else str(logdir)!r}")
    path = Path(logdir).expanduser()
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{flag} {str(logdir)!r} is a file, not a directory")
    return path


class RunLock:
    """Exclusive lock of a run directory for the life of a run (create the directory if needed).

    :raises RunDirectoryError: if another process holds the lock (names its PID).
    :raises NotADirectoryError: if ``logdir`` exists and is not a directory.
    :raises PermissionError: if the directory cannot be created or written.
    """

    def __init__(self, logdir: str | os.PathLike):
        self._fd: int | None = None
        self.logdir = check_logdir_path(logdir)
        try:
            self.logdir.mkdir(parents=True, exist_ok=True)
        except PermissionError:
            raise PermissionError(f"--logdir {str(self.logdir)!r} cannot be created (permission denied)") from None
        if not os.access(self.logdir, os.W_OK | os.X_OK):
            raise PermissionError(f"--logdir {str(self.logdir)!r} is not writable")
        self.path = self.logdir / LOCK_NAME
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError:
            raise PermissionError(
                f"--logdir {str(self.logdir)!r}: its lock file {str(self.path)!r} is not writable"
            ) from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                raise RunDirectoryError(
                    f"run directory {str(self.logdir)!r} is in use by another run (process {holder}, lock file "
                    f"{str(self.path)!r}); wait for it to finish or use another --logdir"
                ) from None
        self._fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)

    @property
    def held(self) -> bool:
        return getattr(self, "_fd", None) is not None

    def release(self) -> None:
        """Release the lock (idempotent); the file stays."""
        fd = getattr(self, "_fd", None)
        if fd is not None:
            self._fd = None
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __del__(self):
        self.release()


def _names(paths: list[Path]) -> str:
    return ", ".join(p.name for p in paths[:4]) + (f", ... ({len(paths)} files)" if len(paths) > 4 else "")


class RunDirectory:
    """The run-directory guard: lock, check (no file touched), then :meth:`start` (clean, mark).

    :param logdir: the run directory (created if missing).
    :param resume: continue the run in ``logdir``: its ``checkpoint.pt`` must
        exist, and a marked directory must have been written by ``script``.
    :param overwrite: a fresh run may replace the run in ``logdir`` (its files
        are deleted by :meth:`start`, not before).
    :param script: the writer's name, stored in the marker (``train.py``,
        ``ppo_critic.py``, ``benchmarks/...``); ``--resume`` refuses another script's run.
    :param resumable: whether ``script`` can resume at all (``ppo_critic.py`` cannot).

    :raises ValueError: an empty ``logdir``.
    :raises RunDirectoryError: ``logdir`` holds a run (fresh, no ``overwrite``);
        holds files no run of ours wrote (``overwrite``); holds another
        script's run (``resume``); or is locked by another process.
    :raises FileNotFoundError: ``resume`` without ``checkpoint.pt``.
    :raises PermissionError, NotADirectoryError: an unwritable or non-directory ``logdir``.
    """

    def __init__(
        self,
        logdir: str | os.PathLike,
        *,
        resume: bool = False,
        overwrite: bool = False,
        script: str = "train.py",
        resumable: bool = True,
    ):
        self.logdir = check_logdir_path(logdir)
        self.script = script
        self.resume = resume
        old = run_files(self.logdir)
        marker = run_marker(self.logdir)
        if resume:  # checked before taking the lock: a missing run directory is not created
            self._check_resume(old, marker, resumable)
        self.created = not self.logdir.exists()
        self.lock_existed = (self.logdir / LOCK_NAME).exists()
        self.started = False
        self.lock = RunLock(self.logdir)
        try:
            self.to_delete: list[Path] = [] if resume else self._check_fresh(old, marker, overwrite)
        except BaseException:
            self.release()
            raise

    def _check_resume(self, old: list[Path], marker: dict | None, resumable: bool) -> None:
        ckpt = self.logdir / "checkpoint.pt"
        if not resumable:
            raise RunDirectoryError(
                f"{self.script} cannot resume a run; start a new one (another --logdir, or --overwrite)"
            )
        if marker is not None and marker.get("script") not in (None, self.script):
            raise RunDirectoryError(
                f"cannot resume: run directory {str(self.logdir)!r} holds a "
                f"{marker.get('script')} run, not a {self.script} run"
            )
        if not ckpt.is_file():
            hint = (
                "the run stopped before its first checkpoint; start it again with --overwrite"
                if old
                else "drop --resume to start a new run"
            )
            raise FileNotFoundError(f"cannot resume: {str(ckpt)!r} does not exist ({hint})")

    def _check_fresh(self, old: list[Path], marker: dict | None, overwrite: bool) -> list[Path]:
        if not old:
            return []
        if marker is None:
            raise RunDirectoryError(
                f"directory {str(self.logdir)!r} holds files that no seqenv run wrote there ({_names(old)}; no "
                f"{MARKER} marker); nothing was deleted: choose another --logdir, or move those files away"
            )
        if not overwrite:
            raise RunDirectoryError(
                f"run directory {str(self.logdir)!r} already holds a run ({_names(old)}); pass --resume to "
                f"continue it, --overwrite to delete it and start a new one, or choose another --logdir"
            )
        return old

    def start(self) -> list[Path]:
        """Delete the old run's files (``overwrite``) and stale checkpoint temp files; write the marker.

        Call once the new run's inputs are read and validated (idempotent).

        :return: the paths deleted.
        """
        if self.started:
            return []
        removed = self.to_delete + sorted(self.logdir.glob(TEMP_GLOB))
        for p in removed:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        self.to_delete = []
        marker = run_marker(self.logdir)
        if marker is None or marker.get("legacy") or marker.get("script") != self.script:
            (self.logdir / MARKER).write_text(
                json.dumps({"writer": "seqenv", "script": self.script}) + "\n", encoding="utf-8"
            )
        self.started = True
        return removed

    @property
    def held(self) -> bool:
        return self.lock.held

    def release(self) -> None:
        """Release the lock (idempotent). A guard whose run never started leaves no trace: the lock file it
        created is removed, and the directory if it created that too."""
        if not self.lock.held:
            return
        self.lock.release()
        if not self.started and not self.lock_existed:
            self.lock.path.unlink(missing_ok=True)
        if self.created and not self.started:
            try:
                self.logdir.rmdir()
            except OSError:
                pass

    def __enter__(self) -> RunDirectory:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def open_run_directory(
    logdir: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    script: str = "train.py",
    resumable: bool = True,
) -> RunDirectory:
    """:class:`RunDirectory` (lock and check); call its ``start()`` once the inputs are read, ``release()`` at the end."""
    return RunDirectory(logdir, resume=resume, overwrite=overwrite, script=script, resumable=resumable)

"""Provenance of a results file: code version, library versions, machine, corpus identity.

Recorded at the start of every invocation of the runner (``python -m benchmarks run``), so a results file
says which commit (and whether the working tree had uncommitted changes) produced which cells, on which
machine under which load, against which corpus (:attr:`seqenv.tasks.Task.corpus_hash`, a SHA-256 of the
splits' texts; ``python-lines`` and ``pydoc-text`` are read from the running interpreter's standard
library, so the corpus can change with the Python version).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state() -> dict:
    """``dict(commit=40-hex or None, dirty=bool or None)``; ``dirty``: uncommitted changes or untracked
    files (not git-ignored) outside ``benchmarks/results`` (what the runner itself writes)."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--", ".", ":(exclude)benchmarks/results")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def device_name(device: str) -> str:
    """A human name of the device: the CUDA device's name, else the CPU model (``/proc/cpuinfo``)."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str = "cpu") -> dict:
    """Machine and load: ``dict(device, device_name, cpu_count, load_average=[1, 5, 15 min], platform)``."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "device": device,
        "device_name": device_name(device),
        "cpu_count": os.cpu_count(),
        "load_average": load,
        "platform": platform.platform(),
    }


def provenance(device: str = "cpu", corpus_hashes: dict | None = None) -> dict:
    """Everything :mod:`benchmarks.provenance` records for one invocation.

    :param corpus_hashes: ``{task name: Task.corpus_hash}`` of the tasks the invocation runs.
    """
    return {
        "time_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **git_state(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "numpy": _version("numpy"),
        "machine": machine_info(device),
        "corpus_hashes": dict(corpus_hashes or {}),
        "argv": [os.path.basename(sys.executable), *sys.argv],
    }

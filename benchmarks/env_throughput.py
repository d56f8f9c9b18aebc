"""Environment steps per second: the batched torch env against per-env vectorisers.

Every configuration plays random legal actions (uniform over each env's action
mask, drawn for the whole batch at once) on the default task (``python-lines``:
vocab 100, max_length 64, reward "none") and counts env steps per second of
wall time, action sampling included:

* ``SeqGenVectorEnv`` (one batched torch state) at num_envs 1, 64, 1024, 16384
  on CPU (and CUDA when available), in the settings of ``SETTINGS``: ``fast``
  (``validate_actions=False, copy_obs=False``: illegal actions are no-ops and
  observations are the state tensors themselves), ``copy`` (``validate_actions=False``,
  fresh observation tensors, the default ``copy_obs=True``), ``default``
  (validation on as well: the constructor defaults) and, on CPU, ``fast-torch``
  (``fast`` with torch ops instead of the CPU's numpy backend);
* baselines over the single ``SeqGenEnv``: Gymnasium ``SyncVectorEnv``,
  ``AsyncVectorEnv`` (one process per env) and SB3 ``DummyVecEnv`` at num_envs
  1, 64, 1024. 16384 is skipped for them (one Python env step per env: their
  steps/s is flat beyond 64 envs); ``AsyncVectorEnv`` is also skipped at 1024
  (1024 worker processes). Their actions come from the same uniform legal sampler,
  in numpy, from the stacked ``info["action_mask"]`` (``DummyVecEnv``: from the
  observation, whose ``length > prompt_length`` is exactly the backspace bit of
  the mask of the state after its same-step reset).

Ratios are against ``SyncVectorEnv`` at the same num_envs. Every configuration
is built and warmed up first, then timed in ``--repeats`` rounds of one
window of about ``--budget`` seconds each, round-robin (so that a change of
load on a shared machine hits every configuration); the best window counts.

    python benchmarks/env_throughput.py            # full run, writes benchmarks/results/env_throughput.{md,json}
    python benchmarks/env_throughput.py --quick    # short run, writes env_throughput_quick.{md,json}
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import stable_baselines3
import torch
from stable_baselines3.common.vec_env import DummyVecEnv

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from seqenv.env import SeqGenEnv  # noqa: E402
from seqenv.tasks import make_task  # noqa: E402
from seqenv.tokenizers import BACKSPACE_ID  # noqa: E402
from seqenv.vector_env import SeqGenVectorEnv  # noqa: E402

VECTOR_SIZES = (1, 64, 1024, 16384)
SETTINGS = {  # SeqGenVectorEnv arguments of each setting
    "fast": dict(validate_actions=False, copy_obs=False),
    "copy": dict(validate_actions=False),
    "default": {},
    "fast-torch": dict(validate_actions=False, copy_obs=False, backend="torch"),
}
BASELINE_SIZES = (1, 64, 1024)
ASYNC_SIZES = (1, 64)
RESULTS = Path(__file__).resolve().parent / "results"


def legal_actions_numpy(can_backspace: np.ndarray, vocab_size: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform legal actions for a batch (numpy twin of ``SeqGenVectorEnv.sample_legal_actions``).

    Legal ids: ``eos`` (2), ``backspace`` (3) iff ``can_backspace``, and 4..V-1.
    """
    can = can_backspace.astype(np.int64)
    r = (rng.random(len(can)) * (vocab_size - 3 + can)).astype(np.int64)
    return np.where(r == 0, 2, np.where((can == 1) & (r == 1), BACKSPACE_ID, r + 3 - can))


@dataclass
class Runner:
    """One configuration: ``step()`` plays one batched step (action sampling included)."""

    env: str
    device: str
    setting: str
    num_envs: int
    step: Callable[[], None]
    close: Callable[[], None] = lambda: None
    sync: Callable[[], None] = lambda: None
    calls: int = 1  # steps per timed window (calibrated)
    best: float = 0.0  # best steps/s so far


def vector_runner(num_envs: int, device: str, setting: str) -> Runner:
    kwargs = SETTINGS[setting]
    venv = SeqGenVectorEnv(num_envs=num_envs, device=device, **kwargs)
    venv.reset(seed=0)
    gen = torch.Generator(device=device).manual_seed(0)

    def step():
        venv.step(venv.sample_legal_actions(gen))

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    return Runner("SeqGenVectorEnv", device, setting, num_envs, step, venv.close, sync)


def gym_runner(kind: str, num_envs: int) -> Runner:
    cls = gym.vector.SyncVectorEnv if kind == "sync" else gym.vector.AsyncVectorEnv
    venv = cls([SeqGenEnv for _ in range(num_envs)])
    vocab = venv.single_action_space.n
    rng = np.random.default_rng(0)
    state = {}
    _, state["info"] = venv.reset(seed=0)

    def step():
        actions = legal_actions_numpy(state["info"]["action_mask"][:, BACKSPACE_ID], vocab, rng)
        state["info"] = venv.step(actions)[4]

    return Runner(cls.__name__, "cpu", "-", num_envs, step, venv.close)


def dummy_runner(num_envs: int) -> Runner:
    venv = DummyVecEnv([SeqGenEnv for _ in range(num_envs)])
    vocab = venv.action_space.n
    rng = np.random.default_rng(0)
    venv.seed(0)
    state = {"obs": venv.reset()}

    def step():
        obs = state["obs"]
        actions = legal_actions_numpy(obs["length"] > obs["prompt_length"], vocab, rng)
        state["obs"] = venv.step(actions)[0]

    return Runner("DummyVecEnv", "cpu", "-", num_envs, step, venv.close)


def calibrate(r: Runner, budget_s: float) -> None:
    """Warm up, then set the number of steps of a window of about ``budget_s`` seconds."""
    for _ in range(3):
        r.step()
    r.sync()
    t0 = time.perf_counter()
    r.step()
    r.sync()
    r.calls = max(1, int(budget_s / max(time.perf_counter() - t0, 1e-6)))


def window(r: Runner) -> None:
    """Time one window; keep the best steps/s."""
    t0 = time.perf_counter()
    for _ in range(r.calls):
        r.step()
    r.sync()
    r.best = max(r.best, r.calls * r.num_envs / (time.perf_counter() - t0))


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gymnasium": gym.__version__,
        "stable_baselines3": stable_baselines3.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        info["load_average_1min"] = os.getloadavg()[0]
    except OSError:
        pass
    return info


def fmt(x: float) -> str:
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.1f}k"


def write_results(rows: list[dict], meta: dict, out_dir: Path, name: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    sync = {r["num_envs"]: r["steps_per_s"] for r in rows if r["env"] == "SyncVectorEnv"}
    lines = [
        "# Environment throughput",
        "",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}  ",
        f"Machine: {meta['machine']['cpu']}, {meta['machine']['cpu_count']} cores "
        f"(torch threads {meta['machine']['torch_threads']}, 1-min load average at start "
        f"{meta['machine'].get('load_average_1min', float('nan')):.2f}), {meta['machine']['platform']}  ",
        f"Software: Python {meta['machine']['python']}, torch {meta['machine']['torch']}, "
        f"gymnasium {meta['machine']['gymnasium']}, stable-baselines3 {meta['machine']['stable_baselines3']}"
        + (f", CUDA device {meta['machine']['cuda']}" if meta["machine"]["cuda"] else ", no CUDA device")
        + "  ",
        f"Task: `{meta['task']}` (vocab {meta['vocab_size']}, max_length {meta['max_length']}), reward none, "
        "random legal actions (uniform over each env's mask, sampling included in the time); "
        f"best of {meta['repeats']} windows of {meta['budget_s']} s.",
        "",
        "Settings of `SeqGenVectorEnv`: **fast** = `validate_actions=False, copy_obs=False` (illegal actions are "
        "no-ops, observations are the state tensors, valid until the next step); **copy** = "
        "`validate_actions=False` with fresh observation tensors each step; **default** = the constructor "
        "defaults (validation on, fresh tensors). On CPU the step runs numpy ops on the tensors' memory "
        '(`backend="auto"`); **fast-torch** = fast with `backend="torch"`, the torch ops that run on '
        "accelerators, here on CPU.",
        "",
        "| env | device | setting | num_envs | steps/s | × SyncVectorEnv |",
        "|-----|--------|---------|---------:|--------:|----------------:|",
    ]
    for r in rows:
        base = sync.get(r["num_envs"])
        ratio = f"{r['steps_per_s'] / base:.1f}" if base else "–"
        cells = [r["env"], r["device"], r["setting"], str(r["num_envs"]), fmt(r["steps_per_s"]), ratio]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Skipped: the per-env baselines at 16384 envs (their steps/s is flat beyond 64 envs: one Python env "
        "step per env), AsyncVectorEnv at 1024 (one worker process per env). Timings on a shared machine vary "
        "from run to run; the round-robin windows keep the ratios comparable.",
        "",
    ]
    (out_dir / f"{name}.md").write_text("\n".join(lines))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short windows (0.2 s, 1 repeat)")
    ap.add_argument("--budget", type=float, default=None, help="seconds per timed window (default 2, quick 0.2)")
    ap.add_argument("--repeats", type=int, default=None, help="timed windows per configuration (default 3, quick 1)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    ap.add_argument(
        "--out",
        type=Path,
        default=RESULTS,
        help="output directory (files env_throughput.{md,json}; env_throughput_quick.* with --quick)",
    )
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    start_machine = machine()
    budget = args.budget if args.budget is not None else (0.2 if args.quick else 2.0)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    task = make_task("python-lines")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

    runners = []
    for n in BASELINE_SIZES:
        runners.append(gym_runner("sync", n))
        if n in ASYNC_SIZES:
            runners.append(gym_runner("async", n))
        runners.append(dummy_runner(n))
    for device in devices:
        for setting in SETTINGS if device == "cpu" else ("fast", "copy", "default"):
            runners += [vector_runner(n, device, setting) for n in VECTOR_SIZES]
    for r in runners:
        calibrate(r, budget)
    for i in range(repeats):  # round-robin: a load change on a shared machine hits every configuration
        for r in runners:
            window(r)
        print(f"round {i + 1}/{repeats} done", flush=True)
    for r in runners:
        r.close()
    rows = [
        {"env": r.env, "device": r.device, "setting": r.setting, "num_envs": r.num_envs, "steps_per_s": r.best}
        for r in runners
    ]
    for row in rows:
        print(
            f"{row['env']:16s} {row['device']:5s} {row['setting']:8s} {row['num_envs']:6d} "
            f"{fmt(row['steps_per_s']):>9s} steps/s"
        )

    meta = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + list(sys.argv[1:] if argv is None else argv)),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": start_machine,
        "task": task.name,
        "vocab_size": task.tokenizer.vocab_size,
        "max_length": task.max_length,
        "budget_s": budget,
        "repeats": repeats,
        "quick": args.quick,
    }
    name = "env_throughput_quick" if args.quick else "env_throughput"
    write_results(rows, meta, args.out, name)
    print(f"wrote {args.out / name}.md and .json")


if __name__ == "__main__":
    main()

"""Training and generation throughput of the policy, with and without the KV-cache.

    python benchmarks/train_throughput.py                 # full run; writes benchmarks/results/train_throughput.{md,json}
    python benchmarks/train_throughput.py --quick         # a short run (a minute or two on a laptop CPU)

For each model size (``small`` = the main job's 4 layers x 4 heads x 128,
``medium`` = 6 x 8 x 256, or ``LxHxE`` for any other) and each device (CPU,
and CUDA when present) it measures, in a fresh subprocess:

* **training tokens/s** -- MLE steps exactly as :class:`agents.trainer.Trainer`
  runs them: draw ``--train-batch`` demonstrations of the task
  (:class:`agents.common.trajectory.DemoSampler`), :meth:`agents.mle.MLELearner.loss`
  (collate, forward, cross-entropy in nats), backward, gradient clipping,
  AdamW step (:func:`agents.trainer._optimizer`) and the trainer's lr
  schedule (linear warm-up of :class:`~agents.trainer.TrainConfig`). Tokens are the
  predicted action tokens (the demonstration's characters and its ``eos``).
  ``--train-warmup`` steps are run first and not timed. On CUDA a second
  measurement uses bf16 autocast, as the trainer does.
* **generation tokens/s** -- one full episode in each of ``B`` environments of
  :class:`seqenv.vector_env.SeqGenVectorEnv`, with the KV-cache
  (:func:`agents.common.rollout.rollout`, what users get) and without it
  (``rollout(..., use_kv_cache=False)``: at every step a full forward pass
  ``policy(tokens)`` over ``[bos, state so far]``, same sampling, same env
  steps). Tokens are the actions taken (``backspace`` and ``eos`` included).
  Both run on the policy as trained by the training measurement, with the
  same seeds, interleaved (cache, no cache, cache, ...) so that a change in the
  machine's load hits both; the ratio cache / no-cache comes from that one
  run. The first episode batch of each mode is a warm-up (not timed) and is
  where the peak memory of the mode is measured.
* **peak memory** of each phase, in MiB *above what the process held when the
  phase started* (the model's weights are already resident; the optimiser
  state, activations, gradients, KV-cache and env state are counted). CUDA:
  ``torch.cuda.max_memory_allocated`` minus ``memory_allocated`` at the start
  (peak statistics reset). CPU: ``resource.getrusage(RUSAGE_SELF).ru_maxrss``
  at the end minus the resident set size (``VmRSS``) at the start, after
  ``gc.collect()``, glibc ``malloc_trim(0)`` and a reset of the kernel's RSS
  high-water mark (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0); if that
  reset is refused, the JSON says ``"hwm_reset": false`` and the figure is an
  upper bound (the process's lifetime peak, task loading included).

The no-cache baseline feeds the *state* (the trajectory with its backspaces
applied, as the env holds it) rather than the raw action history: the policy's
logits are the same by construction (``agents/model.py``, backspace layout),
and the state is the cheaper input (no backspace layout, shorter), so the
reported speed-up of the cache is conservative. The benchmark checks the two
modes agree: with the same seed they must produce the same episodes
(``same_episodes`` = fraction of rows whose action lists are equal; float
round-off may flip a rare sample).

``--policy hf:PATH`` (a Hugging Face causal LM directory; ``--make-llama PATH``
writes a random ~10M-parameter Llama with a byte-level BPE tokenizer trained on
the task) measures that model instead, in this process, on the task tokenized
by its tokenizer: training tokens/s as above, and per batch size our rollout
through the vector env (KV-cache, backspace allowed) against
``model.generate()`` of the same model (sampling, ``max_new_tokens =
min_new_tokens =`` the rollout's number of steps, KV-cache), interleaved.
Both are counted in *slot tokens*: batch x decode steps (the work done; rows
of the rollout that ended early still ride along), and the ratio is rollout /
generate(). Results go to ``train_throughput_hf.{md,json}``.

Results go to ``<out-dir>/train_throughput.md`` and ``.json`` with the command,
the machine (CPU model, cores, threads, torch version, load average before and
after) and the date.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import functools
import gc
import json
import os
import platform
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from agents.common.demos import DemoSampler  # noqa: E402
from agents.common.distributed import resolve_device  # noqa: E402
from agents.common.learner import LearnerContext  # noqa: E402
from agents.common.rollout import RolloutResult, make_vector_env, rollout  # noqa: E402
from agents.mle import MLEConfig, MLELearner  # noqa: E402
from agents.policies.hf import HFPolicy  # noqa: E402
from agents.policies.transformer import PolicyConfig, TransformerPolicy  # noqa: E402
from agents.trainer import TrainConfig, _optimizer, lr_lambda  # noqa: E402
from seqenv.tasks import make_task  # noqa: E402

SIZES = {"small": (4, 4, 128), "medium": (6, 8, 256)}  # (n_layer, n_head, n_embd)
MIB = 2**20


@dataclass
class BenchConfig:
    """What to measure.

    :param sizes: model sizes: ``small``, ``medium`` or ``LxHxE`` (n_layer x
        n_head x n_embd, e.g. ``1x2x32``).
    :param device: ``cpu``, ``cuda`` or ``auto`` (CPU, and CUDA too when available).
    :param task: task name (the policy's ``block_size`` is ``task.max_length + 1``).
    :param train_batch: demonstrations per training step.
    :param train_warmup: untimed training steps before the timed ones.
    :param train_steps: timed training steps.
    :param gen_batches: numbers of environments (episodes per batch) for generation.
    :param gen_repeats: timed episode batches per mode and batch size (after one warm-up).
    :param threads: ``torch.set_num_threads`` in the workers (None = torch's default).
    :param seed: seeds the model init, the demonstrations and the episodes.
    :param isolate: run each (size, device) in a fresh subprocess (False: in
        this process; the CPU memory figures then share one allocator).
    :raises ValueError: on an unknown size, a non-positive count, or an unknown device.
    """

    sizes: tuple[str, ...] = ("small", "medium")
    device: str = "auto"
    task: str = "python-lines"
    train_batch: int = 64
    train_warmup: int = 5
    train_steps: int = 40
    gen_batches: tuple[int, ...] = (64, 256)
    gen_repeats: int = 2
    threads: int | None = None
    seed: int = 0
    isolate: bool = True

    def __post_init__(self):
        self.sizes = tuple(self.sizes)
        self.gen_batches = tuple(self.gen_batches)
        for s in self.sizes:
            parse_size(s)
        for name in ("train_batch", "train_steps", "gen_repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.train_warmup < 0:
            raise ValueError(f"train_warmup must be >= 0, got {self.train_warmup}")
        if not self.sizes or not self.gen_batches or min(self.gen_batches) < 1:
            raise ValueError(f"need at least one size and gen batch sizes >= 1, got {self.sizes}, {self.gen_batches}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {self.threads}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")


def parse_size(name: str) -> tuple[int, int, int]:
    """``(n_layer, n_head, n_embd)`` of a size name (``small``, ``medium``, ``LxHxE``).

    :raises ValueError: on anything else, naming the accepted forms.
    """
    if name in SIZES:
        return SIZES[name]
    m = re.fullmatch(r"(\d+)x(\d+)x(\d+)", name)
    if m is None or min(map(int, m.groups())) < 1:
        raise ValueError(f"unknown model size {name!r}; expected one of {sorted(SIZES)} or LxHxE such as '6x8x256'")
    return tuple(int(g) for g in m.groups())


def devices(name: str) -> list[str]:
    """The devices to measure: ``auto`` -> ``["cpu"]`` plus ``"cuda"`` when available.

    :raises ValueError: for ``cuda`` when CUDA is not available.
    """
    if name == "auto":
        return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    return [str(resolve_device(name))]


# --------------------------------------------------------------------------
# measuring
# --------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_bytes() -> int:
    """Current resident set size of this process (``VmRSS``), bytes."""
    with open("/proc/self/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1)) * 1024


def _reset_rss_peak() -> bool:
    """Reset the kernel's RSS high-water mark (``ru_maxrss``) to the current RSS; False if refused."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap back first, so RSS is what is in use
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """``with PeakMemory(device) as m: ...`` then ``m.peak_mib``: peak memory of the block.

    ``peak_mib`` (float, MiB) is the peak above the level at entry: CUDA
    allocated memory, or CPU resident set size (see the module docstring);
    ``hwm_reset`` tells whether the CPU high-water mark could be reset.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.hwm_reset = True

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.hwm_reset = _reset_rss_peak()
            self.start = _rss_bytes()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        self.peak_mib = max(0, self.peak - self.start) / MIB
        self.total_peak_mib = self.peak / MIB


def measure_training(policy, task, device: torch.device, cfg: BenchConfig, bf16: bool = False) -> dict:
    """Time MLE training steps (see the module docstring); trains ``policy`` in place.

    :return: ``tokens_per_s`` (predicted action tokens per second over the
        timed steps), ``step_ms``, ``tokens_per_step``, ``loss_first`` and
        ``loss_last`` (nats per token, a sanity check that it learns),
        ``peak_mib``, ``total_peak_mib`` (process-wide peak) and ``precision``.
    """
    tcfg = TrainConfig(batch_size=cfg.train_batch, max_steps=cfg.train_warmup + cfg.train_steps)
    sampler = DemoSampler(task, "train", torch.Generator().manual_seed(cfg.seed))
    gens = {"noise": torch.Generator().manual_seed(cfg.seed)}
    ctx = LearnerContext(
        model=policy, policy=policy, task=task, device=device, generators=gens, batch_size=cfg.train_batch
    )
    learner = MLELearner(ctx, MLEConfig())
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    policy.train()
    with PeakMemory(device) as mem:
        optimizer = _optimizer(learner.parameters(), tcfg)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tcfg))
        losses, tokens = [], 0
        for step in range(cfg.train_warmup + cfg.train_steps):
            if step == cfg.train_warmup:
                _sync(device)
                t0, tokens = time.perf_counter(), 0
            demos = sampler.sample(cfg.train_batch)
            with autocast:
                loss, metrics = learner.loss(demos, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), tcfg.grad_clip)
            optimizer.step()
            scheduler.step()
            tokens += metrics["train/tokens"]
            losses.append(metrics["loss/mle"])
        _sync(device)
        elapsed = time.perf_counter() - t0
    return {
        "precision": "bf16-autocast" if bf16 else "fp32",
        "batch": cfg.train_batch,
        "timed_steps": cfg.train_steps,
        "tokens_per_s": tokens / elapsed,
        "step_ms": 1000 * elapsed / cfg.train_steps,
        "tokens_per_step": tokens / cfg.train_steps,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "peak_mib": mem.peak_mib,
        "total_peak_mib": mem.total_peak_mib,
        "hwm_reset": mem.hwm_reset,
    }


def measure_generation(policy, task, device: torch.device, batch: int, cfg: BenchConfig) -> dict:
    """Time full-episode generation with and without the KV-cache, interleaved.

    :return: per mode (``cache``, ``no_cache``): ``tokens_per_s`` (actions per
        second over the timed batches), ``peak_mib`` (warm-up batch); and
        ``ratio`` = cache / no-cache tokens/s, ``mean_actions`` per episode,
        ``same_episodes`` (fraction of rows with equal action lists in the two
        modes, same seeds).
    """
    venv = make_vector_env(task, batch, device)
    runners = {"cache": rollout, "no_cache": functools.partial(rollout, use_kv_cache=False)}

    def run(mode: str, seed: int) -> tuple[RolloutResult, float]:
        gen = torch.Generator(device=device).manual_seed(seed)
        _sync(device)
        t0 = time.perf_counter()
        res = runners[mode](policy, venv, seed=seed, generator=gen)
        _sync(device)
        return res, time.perf_counter() - t0

    out = {mode: {"tokens": 0, "seconds": 0.0} for mode in runners}
    for mode in runners:  # warm-up, and the peak memory of each mode
        with PeakMemory(device) as mem:
            run(mode, cfg.seed)
        out[mode].update(peak_mib=mem.peak_mib, total_peak_mib=mem.total_peak_mib, hwm_reset=mem.hwm_reset)
    same, rows = 0, 0
    for r in range(cfg.gen_repeats):
        seed = cfg.seed + 1 + r * batch
        results = {}
        for mode in runners:
            res, dt = run(mode, seed)
            out[mode]["tokens"] += int(res.num_actions.sum())
            out[mode]["seconds"] += dt
            results[mode] = res.action_lists()
        same += sum(a == b for a, b in zip(results["cache"], results["no_cache"]))
        rows += batch
    venv.close()
    for mode in runners:
        out[mode]["tokens_per_s"] = out[mode]["tokens"] / out[mode]["seconds"]
    out.update(
        batch=batch,
        repeats=cfg.gen_repeats,
        ratio=out["cache"]["tokens_per_s"] / out["no_cache"]["tokens_per_s"],
        mean_actions=out["cache"]["tokens"] / rows,
        same_episodes=same / rows,
    )
    return out


def measure(size: str, device: str, cfg: BenchConfig) -> dict:
    """All measurements for one model size on one device, in this process.

    :return: dict with ``size``, ``device``, ``n_layer``/``n_head``/``n_embd``,
        ``params``, ``threads``, ``train`` (list: fp32, and bf16 autocast on
        CUDA), ``generation`` (one entry per batch size), ``wall_s`` and
        ``cpu_cores_used`` (CPU seconds / wall seconds of the measurements: well
        below ``threads`` on CPU means the cores were shared with other work).
    """
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    dev = resolve_device(device)
    n_layer, n_head, n_embd = parse_size(size)
    task = make_task(cfg.task)
    torch.manual_seed(cfg.seed)
    pcfg = PolicyConfig(
        vocab_size=task.tokenizer.vocab_size,
        block_size=task.max_length + 1,
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
    )
    policy = TransformerPolicy(pcfg).to(dev)
    wall0, cpu0 = time.perf_counter(), _cpu_seconds()
    train = [measure_training(policy, task, dev, cfg)]
    if dev.type == "cuda":
        train.append(measure_training(policy, task, dev, cfg, bf16=True))
    generation = [measure_generation(policy, task, dev, b, cfg) for b in cfg.gen_batches]
    wall = time.perf_counter() - wall0
    return {
        "size": size,
        "device": dev.type,
        "device_name": _device_name(dev),
        "n_layer": n_layer,
        "n_head": n_head,
        "n_embd": n_embd,
        "params": policy.num_parameters(),
        "block_size": pcfg.block_size,
        "vocab_size": pcfg.vocab_size,
        "threads": torch.get_num_threads(),
        "wall_s": wall,
        "cpu_cores_used": (_cpu_seconds() - cpu0) / wall,
        "loadavg_end": list(os.getloadavg()),
        "train": train,
        "generation": generation,
    }


def _cpu_seconds() -> float:
    """User + system CPU time of this process so far, seconds."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _device_name(dev: torch.device) -> str:
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_model()


def _measure_in_subprocess(size: str, device: str, cfg: BenchConfig) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        spec = json.dumps({"size": size, "device": device, "config": dataclasses.asdict(cfg)})
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--worker", spec, "--worker-out", str(out)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"benchmark worker for size={size!r} device={device!r} failed "
                f"(exit {proc.returncode}):\n{proc.stderr[-4000:]}"
            )
        return json.loads(out.read_text())


# --------------------------------------------------------------------------
# the machine and the report
# --------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
        return m.group(1).strip() if m else platform.processor() or "unknown"
    except OSError:
        return platform.processor() or "unknown"


def machine_info() -> dict:
    """CPU model, core counts, torch/Python versions, CUDA device, git commit, load average."""
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
            ).stdout.strip()
            or None
        )
    except OSError:
        commit = None
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads_default": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git_commit": commit,
        "loadavg_start": list(os.getloadavg()),
    }


def _fmt(x: float | None, digits: int = 0) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def to_markdown(report: dict) -> str:
    """The results as a Markdown page (summary table, details, how it was measured)."""
    m, cfg = report["machine"], report["config"]
    lines = [
        "# Training and generation throughput",
        "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}  ",
        f"Machine: {m['cpu_model']}, {m['cpus_available']} CPU cores available ({m['cpu_count']} reported), "
        f"CUDA: {m['cuda'] or 'none'}; torch {m['torch']} (default threads {m['torch_threads_default']}), "
        f"Python {m['python']}; git {m['git_commit']}  ",
        f"Load average (1, 5, 15 min) at start {', '.join(f'{x:.2f}' for x in m['loadavg_start'])}, "
        f"at end {', '.join(f'{x:.2f}' for x in m['loadavg_end'])} (this benchmark's own threads included; "
        "'CPU cores used' below is CPU time / wall time of each measurement)."
        + (
            " The machine was shared with other jobs: absolute figures are noisy, the cache/no-cache "
            "ratio less so (both modes interleaved in one run)."
            if report.get("shared")
            else ""
        ),
        *([] if not report.get("note") else ["", f"Note: {report['note']}"]),
        "",
        f"Task `{cfg['task']}`; training batch {cfg['train_batch']} demonstrations, {cfg['train_warmup']} warm-up + "
        f"{cfg['train_steps']} timed steps; generation: {cfg['gen_repeats']} timed episode batch(es) per mode after "
        "one warm-up batch.",
        "",
        "| size | device | threads | train tok/s (fp32) | train tok/s (bf16) | gen batch | gen tok/s, KV-cache "
        "| gen tok/s, no cache | cache / no cache | peak MiB: train | peak MiB: gen cache | peak MiB: gen no cache |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        fp32 = next(t for t in r["train"] if t["precision"] == "fp32")
        bf16 = next((t for t in r["train"] if t["precision"] != "fp32"), None)
        for g in r["generation"]:
            lines.append(
                f"| {r['size']} | {r['device']} | {r['threads']} | {_fmt(fp32['tokens_per_s'])} | "
                f"{_fmt(bf16 and bf16['tokens_per_s'])} | {g['batch']} | {_fmt(g['cache']['tokens_per_s'])} | "
                f"{_fmt(g['no_cache']['tokens_per_s'])} | {g['ratio']:.1f}x | {_fmt(fp32['peak_mib'], 1)} | "
                f"{_fmt(g['cache']['peak_mib'], 1)} | {_fmt(g['no_cache']['peak_mib'], 1)} |"
            )
    lines += [
        "",
        "Details:",
        "",
        "| size | layers x heads x width | params | device | CPU cores used | train: precision, ms/step, "
        "tokens/step, loss first -> last (nats/token), peak MiB | gen batch: mean actions/episode, "
        "same episodes in both modes |",
        "|---|---|---:|---|---:|---|---|",
    ]
    for r in report["results"]:
        train = "; ".join(
            f"{t['precision']} {t['step_ms']:.1f} ms, {t['tokens_per_step']:.0f} tok, "
            f"{t['loss_first']:.2f} -> {t['loss_last']:.2f}, {t['peak_mib']:.1f} MiB"
            for t in r["train"]
        )
        gen = "; ".join(
            f"B={g['batch']}: {g['mean_actions']:.1f}, {100 * g['same_episodes']:.0f}%" for g in r["generation"]
        )
        lines.append(
            f"| {r['size']} | {r['n_layer']}x{r['n_head']}x{r['n_embd']} | {r['params']:,} | "
            f"{r['device_name']} | {r['cpu_cores_used']:.2f} | {train} | {gen} |"
        )
    lines += [
        "",
        "How it is measured (`benchmarks/train_throughput.py`, module docstring):",
        "",
        "- **train tok/s**: predicted action tokens (characters + `eos`) per second of MLE steps as the trainer runs "
        "them: sample demonstrations, collate, forward, cross-entropy, backward, gradient clipping, AdamW, lr "
        "schedule (the trainer's defaults, so the lr is still warming up). "
        "Warm-up steps excluded. bf16 = `torch.autocast` bf16 (CUDA only).",
        "- **gen tok/s**: actions taken per second while generating one full episode in each of `gen batch` "
        "vector-env environments (env reset and prefill included). KV-cache = `agents.common.rollout.rollout`; no cache = "
        "a full `policy(tokens)` forward over `[bos, state]` at every step, same sampling and env steps. The two "
        "modes run interleaved with the same seeds on the same (briefly trained) policy; the ratio is from this run.",
        "- **peak MiB**: peak memory of the phase above what the process held when it started (model weights "
        "excluded; optimiser state, activations, KV-cache included). CPU: `ru_maxrss` after the phase minus `VmRSS` "
        "before it, with the RSS high-water mark reset via `/proc/self/clear_refs` and `malloc_trim` first; "
        "one fresh process per (size, device). CUDA: `torch.cuda.max_memory_allocated` minus `memory_allocated` "
        "at the start. Generation peaks are from the warm-up batch of each mode. RSS counts what the allocator "
        "holds (freed-but-kept blocks, per-shape scratch of the no-cache loop's growing inputs), so CPU figures "
        "are above the live tensors' size.",
    ]
    if any(
        not x.get("hwm_reset", True)
        for r in report["results"]
        for x in r["train"] + [g[k] for g in r["generation"] for k in ("cache", "no_cache")]
    ):
        lines.append("- WARNING: the RSS high-water mark could not be reset; CPU peaks are upper bounds.")
    return "\n".join(lines) + "\n"


def run(cfg: BenchConfig, out_dir: str | Path, command: str = "", note: str = "") -> dict:
    """Measure every (size, device) and write ``train_throughput.md`` and ``.json`` into ``out_dir``.

    :return: the report (what the JSON holds).
    :raises ValueError: for ``device="cuda"`` without CUDA.
    :raises RuntimeError: if a worker subprocess fails (its stderr is quoted).
    """
    devs = devices(cfg.device)
    machine = machine_info()
    results = []
    for device in devs:
        for size in cfg.sizes:
            t0 = time.perf_counter()
            r = _measure_in_subprocess(size, device, cfg) if cfg.isolate else measure(size, device, cfg)
            results.append(r)
            g = r["generation"][-1]
            print(
                f"{size:>8} {device:>4}: train {r['train'][0]['tokens_per_s']:,.0f} tok/s; gen B={g['batch']} "
                f"cache {g['cache']['tokens_per_s']:,.0f} tok/s, no cache {g['no_cache']['tokens_per_s']:,.0f} "
                f"tok/s ({g['ratio']:.1f}x)  [{time.perf_counter() - t0:.0f} s]",
                flush=True,
            )
    machine["loadavg_end"] = list(os.getloadavg())
    shared = machine["loadavg_start"][0] > 0.5  # other jobs were running when it started
    report = {
        "command": command,
        "note": note,
        "shared": shared,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine,
        "config": dataclasses.asdict(cfg),
        "results": results,
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "train_throughput.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "train_throughput.md").write_text(to_markdown(report))
    return report


QUICK = dict(train_warmup=2, train_steps=5, gen_batches=(64,), gen_repeats=1)


def main(argv: list[str] | None = None) -> dict:
    """Command line (``--help``). :return: the report written (see :func:`run`)."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help=f"short run: {QUICK} unless given explicitly")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (CPU, plus CUDA when available)")
    p.add_argument("--sizes", nargs="+", default=list(BenchConfig.sizes), help="small, medium or LxHxE")
    p.add_argument("--task", default=BenchConfig.task)
    p.add_argument("--train-batch", type=int, default=BenchConfig.train_batch)
    p.add_argument("--train-warmup", type=int)
    p.add_argument("--train-steps", type=int)
    p.add_argument("--gen-batches", type=int, nargs="+")
    p.add_argument("--gen-repeats", type=int)
    p.add_argument("--threads", type=int, help="torch.set_num_threads in the workers (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--in-process", action="store_true", help="no subprocess per (size, device)")
    p.add_argument("--note", default="", help="free text written under the machine description")
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--policy", default="transformer", help="transformer (sizes above) or hf:PATH")
    p.add_argument("--make-llama", help="write a random ~10M-parameter Llama + tokenizer to this directory and exit")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.make_llama:
        make_llama(args.make_llama, args.task)
        return {"model": args.make_llama}
    if args.worker is not None:  # a subprocess of _measure_in_subprocess
        spec = json.loads(args.worker)
        result = measure(spec["size"], spec["device"], BenchConfig(**spec["config"]))
        Path(args.worker_out).write_text(json.dumps(result))
        return result

    defaults = {f.name: f.default for f in dataclasses.fields(BenchConfig)}
    if args.quick:
        defaults.update(QUICK)
    given = {
        "train_warmup": args.train_warmup,
        "train_steps": args.train_steps,
        "gen_batches": args.gen_batches,
        "gen_repeats": args.gen_repeats,
    }
    cfg = BenchConfig(
        sizes=tuple(args.sizes),
        device=args.device,
        task=args.task,
        train_batch=args.train_batch,
        threads=args.threads,
        seed=args.seed,
        isolate=not args.in_process,
        **{k: (defaults[k] if v is None else v) for k, v in given.items()},
    )
    command = "python benchmarks/train_throughput.py" + "".join(
        " " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    if args.policy.startswith("hf:"):
        return run_hf(args.policy[3:], cfg, args.out_dir, command, args.note)
    return run(cfg, args.out_dir, command, args.note)


# ----------------------------------------------------------------------------- HF policies


def make_llama(
    path: str | Path,
    task_name: str = "python-lines",
    hidden: int = 384,
    layers: int = 6,
    vocab: int = 1024,
    seed: int = 0,
) -> Path:
    """Write a random Llama (``hidden`` x ``layers``, ~10M parameters by default) and a byte-level BPE
    tokenizer of ``vocab`` ids trained on the task's train split to ``path`` (nothing downloaded)."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = make_task(task_name).splits["train"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts,
        trainer=trainers.BpeTrainer(
            vocab_size=vocab,
            special_tokens=["<unk>", "<s>", "</s>"],
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    hf_tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=len(hf_tok),
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=hf_tok.bos_token_id,
        eos_token_id=hf_tok.eos_token_id,
    )
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(path)
    hf_tok.save_pretrained(path)
    return Path(path)


def measure_hf_generation(policy: HFPolicy, task, device: torch.device, batch: int, cfg: BenchConfig) -> dict:
    """Our rollout (vector env, backspace, per-row KV) vs ``model.generate()``, interleaved; slot tokens/s."""
    venv = make_vector_env(task, batch, device)
    model = policy.lm
    ids = policy.special_ids
    out = {"rollout": {"tokens": 0, "actions": 0, "seconds": 0.0}, "generate": {"tokens": 0, "seconds": 0.0}}

    def one(seed: int, timed: bool) -> None:
        gen = torch.Generator(device=device).manual_seed(seed)
        _sync(device)
        t0 = time.perf_counter()
        res = rollout(policy, venv, seed=seed, generator=gen)
        _sync(device)
        dt = time.perf_counter() - t0
        steps = res.actions.shape[1]
        torch.manual_seed(seed)
        bos = torch.full((batch, 1), ids["bos"], dtype=torch.long, device=device)
        _sync(device)
        t1 = time.perf_counter()
        with torch.no_grad():
            model.generate(
                input_ids=bos,
                attention_mask=torch.ones_like(bos),
                do_sample=True,
                top_k=0,
                max_new_tokens=steps,
                min_new_tokens=steps,
                pad_token_id=ids["pad"],
            )
        _sync(device)
        dg = time.perf_counter() - t1
        if timed:
            out["rollout"]["tokens"] += batch * steps
            out["rollout"]["actions"] += int(res.num_actions.sum())
            out["rollout"]["seconds"] += dt
            out["generate"]["tokens"] += batch * steps
            out["generate"]["seconds"] += dg

    policy.eval()
    one(cfg.seed, timed=False)  # warm-up
    for r in range(cfg.gen_repeats):
        one(cfg.seed + 1 + r * batch, timed=True)
    venv.close()
    for mode in out:
        out[mode]["tokens_per_s"] = out[mode]["tokens"] / out[mode]["seconds"]
    out["rollout"]["actions_per_s"] = out["rollout"]["actions"] / out["rollout"]["seconds"]
    out.update(
        batch=batch, repeats=cfg.gen_repeats, ratio=out["rollout"]["tokens_per_s"] / out["generate"]["tokens_per_s"]
    )
    return out


def run_hf(path: str, cfg: BenchConfig, out_dir: str | Path, command: str = "", note: str = "") -> dict:
    """Measure the HF model at ``path`` (module docstring) and write ``train_throughput_hf.{md,json}``."""
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    dev = resolve_device("cpu" if cfg.device == "auto" else cfg.device)
    machine = machine_info()
    task = make_task(cfg.task, tokenizer=f"hf:{path}")
    policy = HFPolicy.from_pretrained(path, device=dev)
    params = sum(p.numel() for p in policy.parameters())
    train = measure_training(policy, task, dev, cfg)
    generation = [measure_hf_generation(policy, task, dev, b, cfg) for b in cfg.gen_batches]
    machine["loadavg_end"] = list(os.getloadavg())
    report = {
        "command": command,
        "note": note,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine,
        "config": dataclasses.asdict(cfg),
        "model": str(path),
        "params": params,
        "device": dev.type,
        "device_name": _device_name(dev),
        "threads": torch.get_num_threads(),
        "vocab_size": policy.vocab_size,
        "max_length": task.max_length,
        "train": train,
        "generation": generation,
    }
    lines = [
        f"# HF policy throughput ({report['date']})",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine.get('cpu', '')} ({json.dumps({k: machine[k] for k in machine if k != 'cpu'})})",
        "",
        f"Model: {path}, {params / 1e6:.1f}M parameters, vocab {policy.vocab_size}, device "
        f"{report['device_name']}, {report['threads']} threads, task {cfg.task} (max_length {task.max_length}). "
        + note,
        "",
        f"Training (MLE, batch {cfg.train_batch}): {train['tokens_per_s']:,.0f} tokens/s "
        f"(loss {train['loss_first']:.2f} -> {train['loss_last']:.2f})",
        "",
        "| batch | steps x batch | rollout (vector env, backspace) slot tok/s | rollout actions/s "
        "| model.generate() tok/s | rollout / generate |",
        "|---|---|---|---|---|---|",
    ]
    for g in generation:
        lines.append(
            f"| {g['batch']} | {g['rollout']['tokens'] // g['repeats']} | {g['rollout']['tokens_per_s']:,.0f} "
            f"| {g['rollout']['actions_per_s']:,.0f} | {g['generate']['tokens_per_s']:,.0f} "
            f"| {g['ratio']:.2f} |"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "train_throughput_hf.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "train_throughput_hf.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-len(generation) - 4 :]))
    return report


if __name__ == "__main__":
    main()

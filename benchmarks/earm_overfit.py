"""E-ARM in the regime where the paper sees its gain: overfitting (issue 11, items 6-7).

The E-ARM paper (Wang et al., arXiv 2206.12840, appendix D.3) reports the
baseline's test cross-entropy rising after about 50 epochs while E-ARM's stays
flat. Protocol here, per seed (every run a process with one torch thread,
``--jobs`` at a time):

1. Corpus: the first ``--lines`` lines of ``python-lines``' train split and
   the first ``--heldout`` of its valid and test splits written to a file
   (``file:`` task, whose md5 split puts them back in train / valid / test).
2. MLE from scratch for ``--steps`` optimiser steps (many epochs; constant
   learning rate after warm-up), held-out NLL (the ``valid`` split, nats per
   token, teacher forcing) every ``--eval-every`` steps; a checkpoint at each
   start step of the sweep. This is the "continued MLE" arm.
3. E-ARM arms fork that run at a start step S (model, optimiser, schedule,
   random streams carried over) and run the same remaining ``--steps - S``
   steps with ``--agent earm`` (λ from the sweep), held-out NLL on the same
   schedule; the negative phase's importance-weight ESS and log-normaliser
   spread (``earm/ess``, ``earm/log_tilt_std``) are averaged over the arm's steps.

Verdict per arm: best (minimum over the curve) and final held-out NLL,
mean ± std over seeds, against continued MLE on the same seeds.

    python benchmarks/earm_overfit.py --seeds 0 1 2 3 4 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # this checkout's agents/, not an installed copy
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


def write_corpus(path: Path, lines: int, heldout: int = 300) -> str:
    """The first ``lines`` train lines of python-lines plus its first ``heldout`` valid and test
    lines, one per line; returns the ``file:`` task name. (python-lines is split by the same md5
    buckets as ``file:`` corpora, so its train lines all land in the file's train split and its
    valid / test lines in the file's valid / test splits.)"""
    from seqenv.tasks import make_task

    src = make_task("python-lines").splits
    texts = src["train"][:lines] + src["valid"][:heldout] + src["test"][:heldout]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(t.replace("\n", " ") for t in texts) + "\n", encoding="utf-8")
    return f"file:{path}"


def _config(agent, task, seed, logdir, args, lam=0.0, start=0, fork_from=None):
    from agents.earm import EARMConfig
    from agents.trainer import ModelConfig, TrainConfig

    return TrainConfig(
        agent=agent,
        task=task,
        seed=seed,
        max_steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        min_lr_ratio=1.0,
        warmup_steps=50,
        logdir=logdir,
        device="cpu",
        progress=False,
        eval_samples=64,
        ckpt_every=10**9,
        log_every=10,
        model=ModelConfig(n_layer=args.size[0], n_head=args.size[1], n_embd=args.size[2], dropout=args.dropout),
        earm=EARMConfig(lam=lam, start_step=start),
        fork_from=fork_from,
    )


def _curve_callback(every: int, curve: list, stats: list):
    from agents.common.evaluation import heldout_nll
    from agents.trainer import Callback

    class Curve(Callback):
        def on_step_end(self, trainer, metrics):
            if "earm/ess" in metrics:
                stats.append(
                    {
                        k: metrics[k]
                        for k in ("earm/ess", "earm/ess_min", "earm/log_tilt_std", "earm/log_tilt_range")
                        if k in metrics
                    }
                )
            if trainer.step % every == 0 or trainer.step == trainer.cfg.max_steps:
                h = heldout_nll(trainer.policy, trainer.task, "valid", device="cpu")
                curve.append((trainer.step, h["nll"]))

    return Curve()


def run_mle(task, seed, logdir, starts, args_d) -> dict:
    """Continued-MLE arm; saves a fork checkpoint at every start step."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from agents.common.checkpoint import save_checkpoint
    from agents.trainer import Trainer

    args = argparse.Namespace(**args_d)
    curve, stats = [], []
    t0 = time.perf_counter()
    trainer = Trainer(
        _config("mle", task, seed, logdir, args), callbacks=[_curve_callback(args.eval_every, curve, stats)]
    )
    try:
        for s in sorted(starts):
            trainer.train(stop_at=s)
            save_checkpoint(trainer.checkpoint_state(), Path(logdir) / f"fork_{s}.pt")
        trainer.train()
    finally:
        trainer.close()
    return {"curve": curve, "wall_s": time.perf_counter() - t0}


def run_earm(task, seed, logdir, fork, lam, start, args_d) -> dict:
    """E-ARM arm from the MLE run's checkpoint at ``start``."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from agents.trainer import Trainer

    args = argparse.Namespace(**args_d)
    curve, stats = [], []
    t0 = time.perf_counter()
    # the MLE run's model, AdamW moments, step and random streams (TrainConfig.fork_from)
    trainer = Trainer(
        _config("earm", task, seed, logdir, args, lam=lam, start=start, fork_from=fork),
        callbacks=[_curve_callback(args.eval_every, curve, stats)],
    )
    try:
        trainer.train()
    finally:
        trainer.close()
    agg = {k: statistics.mean(s[k] for s in stats if k in s) for k in stats[0]} if stats else {}
    return {"curve": curve, "negative_phase": agg, "wall_s": time.perf_counter() - t0}


def _ms(values, digits=3):
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    m = statistics.mean(values)
    return f"{m:.{digits}f} ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else f"{m:.{digits}f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--sweep-seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--lines", type=int, default=2000)
    ap.add_argument("--heldout", type=int, default=300)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--size", type=int, nargs=3, default=[2, 4, 64], metavar=("LAYERS", "HEADS", "WIDTH"))
    ap.add_argument("--lam", type=float, default=0.05, help="λ of the main arm")
    ap.add_argument("--start", type=int, default=550, help="start step of the main arm (≈ 37 %% of --steps)")
    ap.add_argument("--sweep-lams", type=float, nargs="*", default=[0.5])
    ap.add_argument("--sweep-starts", type=int, nargs="*", default=[300])
    ap.add_argument("--workdir", default="runs/earm_overfit")
    ap.add_argument("--out", default=str(RESULTS / "earm_overfit"))
    ap.add_argument("--from-json", default=None, help="only rewrite the report from a finished run's json")
    args = ap.parse_args(argv)
    if args.from_json:
        return report(json.loads(Path(args.from_json).read_text()), Path(args.out))
    t_start, load = time.time(), os.getloadavg()
    work = Path(args.workdir)
    task = write_corpus(work / "corpus.txt", args.lines, args.heldout)
    from seqenv.tasks import make_task

    t = make_task(task)
    corpus = {k: len(v) for k, v in t.splits.items()}
    train_tokens = sum(len(x) + 1 for x in t.encoded("train"))
    epoch_steps = train_tokens / (args.batch_size * (train_tokens / corpus["train"]))
    arms = _arms(args)
    starts = sorted({a[1] for a in arms})
    args_d = vars(args)
    pool = ProcessPoolExecutor(args.jobs)
    mle = {s: pool.submit(run_mle, task, s, str(work / f"seed{s}" / "mle"), starts, args_d) for s in args.seeds}
    mle = {s: f.result() for s, f in mle.items()}
    print(f"[earm_overfit] MLE done at {time.time() - t_start:.0f} s", flush=True)
    jobs = {}
    for lam, start, seeds in arms:
        for s in seeds:
            jobs[lam, start, s] = pool.submit(
                run_earm,
                task,
                s,
                str(work / f"seed{s}" / f"earm_l{lam}_s{start}"),
                str(work / f"seed{s}" / "mle" / f"fork_{start}.pt"),
                lam,
                start,
                args_d,
            )
    earm = {k: f.result() for k, f in jobs.items()}
    pool.shutdown()
    wall = time.time() - t_start
    print(f"[earm_overfit] done at {wall:.0f} s", flush=True)

    import torch

    meta = {
        "command": "python benchmarks/earm_overfit.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads_per_run": 1,
            "jobs": args.jobs,
            "load_average_at_start": load,
            "python": platform.python_version(),
        },
        "args": args_d,
        "wall_s": wall,
        "corpus": corpus,
        "train_tokens": train_tokens,
        "steps_per_epoch": epoch_steps,
        "arms": arms,
    }
    js = {
        "meta": meta,
        "mle": {str(s): v for s, v in mle.items()},
        "earm": {f"{l}/{st}/{s}": v for (l, st, s), v in earm.items()},
    }
    report(js, Path(args.out))


def _arms(args) -> list:
    """``(λ, start, seeds)`` of every E-ARM arm: the main one, then the λ × start sweep without it."""
    arms = [(args.lam, args.start, list(args.seeds))]
    for lam in [args.lam, *args.sweep_lams]:
        for start in [args.start, *args.sweep_starts]:
            if (lam, start) != (args.lam, args.start):
                arms.append((lam, start, list(args.sweep_seeds)))
    return arms


def _best_final(curve, from_step):
    pts = [(st, v) for st, v in curve if st >= from_step]
    return min(v for _, v in pts), pts[-1][1]


def report(js: dict, out: Path) -> None:
    """Summary (best / final held-out NLL per arm, paired differences, negative-phase statistics),
    ``out``.json / .md / .png from the runs' curves. An E-ARM arm's curve starts with the MLE run's
    value at its start step (the shared fork point), so that both arms' "best" range over the same steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta = js["meta"]
    args = argparse.Namespace(**{"heldout": None, **meta["args"]})
    arms = [tuple(a) for a in meta.get("arms", _arms(args))]
    corpus, train_tokens, epoch_steps, wall = (
        meta["corpus"],
        meta["train_tokens"],
        meta["steps_per_epoch"],
        meta["wall_s"],
    )
    load, machine = meta["machine"]["load_average_at_start"], meta["machine"]
    mle = {int(s): v for s, v in js["mle"].items()}

    def earm_curve(lam, start, s):
        fork = [(st, v) for st, v in mle[s]["curve"] if st == start]
        return fork + [tuple(p) for p in js["earm"][f"{lam}/{start}/{s}"]["curve"]]

    rows = []
    for lam, start, seeds in arms:
        r = {
            k: []
            for k in (
                "mle_best",
                "mle_final",
                "earm_best",
                "earm_final",
                "diff_best",
                "diff_final",
                "ess",
                "ess_min",
                "log_tilt_std",
                "log_tilt_range",
            )
        }
        for s in seeds:
            mb, mf = _best_final(mle[s]["curve"], start)
            eb, ef = _best_final(earm_curve(lam, start, s), start)
            neg = js["earm"][f"{lam}/{start}/{s}"]["negative_phase"]
            for k, v in (
                ("mle_best", mb),
                ("mle_final", mf),
                ("earm_best", eb),
                ("earm_final", ef),
                ("diff_best", eb - mb),
                ("diff_final", ef - mf),
                ("ess", neg.get("earm/ess")),
                ("ess_min", neg.get("earm/ess_min")),
                ("log_tilt_std", neg.get("earm/log_tilt_std")),
                ("log_tilt_range", neg.get("earm/log_tilt_range")),
            ):
                r[k].append(v)
        rows.append(dict(lam=lam, start=start, seeds=list(seeds), **r))
    seeds_main = arms[0][2]
    mle_min_steps = [min(mle[s]["curve"], key=lambda p: p[1])[0] for s in seeds_main]
    js = {**js, "summary": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(js, indent=1) + "\n")

    fig, ax = plt.subplots(figsize=(7, 4.5))

    def band(curves, label, color):
        n = min(len(c) for c in curves)
        steps = [st for st, _ in curves[0]][:n]
        mean = [statistics.mean(c[i][1] for c in curves) for i in range(n)]
        sd = [statistics.stdev(c[i][1] for c in curves) if len(curves) > 1 else 0.0 for i in range(n)]
        ax.plot(steps, mean, label=label, color=color)
        ax.fill_between(
            steps, [m - d for m, d in zip(mean, sd)], [m + d for m, d in zip(mean, sd)], color=color, alpha=0.2
        )

    band([mle[s]["curve"] for s in seeds_main], f"MLE (continued), {len(seeds_main)} seeds", "black")
    colors = ["tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple"]
    for i, (lam, start, seeds) in enumerate(arms):
        band(
            [earm_curve(lam, start, s) for s in seeds],
            f"E-ARM λ={lam} from step {start}, {len(seeds)} seeds",
            colors[i % len(colors)],
        )
    ax.set_xlabel(f"optimiser step (batch {args.batch_size}; {epoch_steps:.0f} steps per epoch)")
    ax.set_ylabel("held-out NLL (valid split, nats/token)")
    ax.set_title(f"E-ARM vs MLE on {corpus['train']} python-lines (mean ± std)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)

    L = [
        "# E-ARM in the overfitting regime (issue 11)\n",
        f"Generated by `benchmarks/earm_overfit.py` in {wall / 60:.1f} min.\n",
        "```\n" + meta["command"] + "\n```\n",
        f"**Machine**: {machine['cpu']}, {machine['cores']} cores shared with other jobs (load "
        f"average at start {load[0]:.1f}), torch {machine['torch']} CPU, 1 thread per run, {args.jobs} runs at a time.\n",
        f"**Budget**: corpus = first {args.lines} train lines of python-lines + {args.heldout} of its valid and "
        f"test lines as a `file:` task (splits {corpus}; {train_tokens} training tokens incl. eos, ≈ "
        f"{epoch_steps:.0f} steps per epoch); policy {args.size[0]} layers × {args.size[1]} heads × "
        f"{args.size[2]} wide, dropout {args.dropout}; {args.steps} optimiser steps × {args.batch_size} lines "
        f"(≈ {args.steps / epoch_steps:.0f} epochs), AdamW lr {args.lr} constant after 50 warm-up steps; "
        f"held-out NLL on the valid split every {args.eval_every} steps. E-ARM arms fork the MLE run of the same "
        f"seed at the start step (model, optimiser, schedule, random streams) and run the remaining steps (same "
        f"total budget in steps). Main arm seeds {seeds_main}; sweep seeds {args.sweep_seeds}.\n",
        f"MLE's held-out NLL minimum at step {_ms(mle_min_steps, 0)} (mean ± std over the main seeds).\n",
        f"![curves]({out.with_suffix('.png').name})\n",
        "| λ | start | seeds | MLE best | E-ARM best | Δ best (E-ARM − MLE) | MLE final | E-ARM final | "
        "Δ final | weight ESS / n (mean; min) | log-normaliser std (nats) | log-normaliser max−min (nats) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        L.append(
            f"| {r['lam']} | {r['start']} | {len(r['seeds'])} | {_ms(r['mle_best'])} | {_ms(r['earm_best'])} | "
            f"{_ms(r['diff_best'])} | {_ms(r['mle_final'])} | {_ms(r['earm_final'])} | {_ms(r['diff_final'])} | "
            f"{_ms(r['ess'])}; {_ms(r['ess_min'])} | {_ms(r['log_tilt_std'])} | {_ms(r['log_tilt_range'])} |"
        )
    L.append(
        "\nNLL in nats per token. Best = minimum of the held-out curve from the start step on (the fork point "
        "included for both arms); Δ are paired per seed (negative = E-ARM better). ESS / n (1 = uniform "
        "weights) and the log-normaliser spread are averages over the arm's steps of the per-step values "
        "logged by `earm_loss` (`earm/ess`, `earm/ess_min`, `earm/log_tilt_std`, `earm/log_tilt_range`)."
    )
    out.with_suffix(".md").write_text("\n".join(L) + "\n")
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()

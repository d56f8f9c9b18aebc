"""Residual-EBM critic against a fixed policy, and reranking with it (issue 11, items 1-3).

Protocol, per task and seed (every run a process with one torch thread,
``--jobs`` at a time):

1. MLE policies: ``converged`` (``--policy-steps``) and ``weak`` (a tenth of
   that budget, its own cosine schedule).
2. Critics (``scripts/train.py --agent nce`` with the policy frozen): the
   default recipe -- critic initialised from the policy trunk, a fixed set of
   ``--pool`` policy samples drawn once (one per training example on a paired
   task), held-out evaluation every ``--eval-every`` steps on the ``valid``
   split against as many fresh samples, early stopping (``--patience``)
   keeping the best critic -- against both policies; on the converged policy
   also two ablations: ``scratch`` (no trunk init) and ``fresh`` (fresh
   samples every step instead of the fixed set).
3. Reranking: for ``n`` in ``--candidates``, ``--rerank-samples`` outputs per
   (policy, n), each one of ``n`` policy samples of the same prompt resampled
   ∝ ``exp(-E)`` (``agents.generation.generate_reranked``; ``n = 1`` is raw
   sampling of the same prompts). Metrics: validity (``arithmetic``: exact
   answer accuracy), oracle NLL (``oracle-hmm``), distinct-2, mean ESS of the
   weights.

    python benchmarks/critic_rerank.py --tasks arithmetic oracle-hmm --seeds 0 1 2 --jobs 2

On a GPU (``--device cuda``) the ``--jobs`` processes share it;
``--critic-max-minutes`` caps each critic's wall time (the run then ends
with its best critic and reports the steps it ran).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
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


def _setup():
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


def train_policy(
    task: str, seed: int, steps: int, logdir: str, size: tuple, batch_size: int, lr: float, device: str = "cpu"
) -> dict:
    """One MLE run; returns its final metrics and wall time."""
    _setup()
    from agents.trainer import ModelConfig, TrainConfig, Trainer

    if (Path(logdir) / "metrics.json").exists():
        return {"metrics": json.loads((Path(logdir) / "metrics.json").read_text()), "wall_s": None, "reused": True}
    t0 = time.perf_counter()
    cfg = TrainConfig(
        agent="mle",
        task=task,
        seed=seed,
        max_steps=steps,
        batch_size=batch_size,
        lr=lr,
        warmup_steps=min(50, steps // 5),
        logdir=logdir,
        device=device,
        progress=False,
        eval_samples=256,
        ckpt_every=10**9,
        model=ModelConfig(n_layer=size[0], n_head=size[1], n_embd=size[2]),
    )
    trainer = Trainer(cfg)
    try:
        metrics = trainer.train()
    finally:
        trainer.close()
    return {"metrics": metrics, "wall_s": time.perf_counter() - t0}


def train_critic(
    task: str,
    seed: int,
    policy_ckpt: str,
    logdir: str,
    steps: int,
    batch_size: int,
    lr: float,
    nce_kwargs: dict,
    device: str = "cpu",
    warmup: int = 50,
    max_minutes: float | None = None,
) -> dict:
    """One ``--agent nce`` run against the frozen policy; returns held-out critic metrics + curve.

    ``max_minutes``: a wall-clock cap (a safety net on a time-limited
    machine): the run stops after the first step past it, evaluates and
    keeps the best critic as at ``max_steps``; ``steps_run`` says where.
    """
    _setup()
    from agents.nce import NCEConfig
    from agents.trainer import Callback, TrainConfig, Trainer

    class TimeLimit(Callback):
        def on_step_end(self, trainer, metrics):
            if max_minutes is not None and time.perf_counter() - t0 > 60 * max_minutes:
                trainer.request_stop()

    t0 = time.perf_counter()
    cfg = TrainConfig(
        agent="nce",
        task=task,
        seed=seed,
        init=policy_ckpt,
        max_steps=steps,
        batch_size=batch_size,
        lr=lr,
        warmup_steps=warmup,
        logdir=logdir,
        device=device,
        progress=False,
        eval_samples=64,
        ckpt_every=10**9,
        nce=NCEConfig(**nce_kwargs),
    )
    trainer = Trainer(cfg, callbacks=[TimeLimit()])
    try:
        metrics = trainer.train()
    finally:
        trainer.close()
    learner = trainer.learner
    out = {
        k: metrics.get(k)
        for k in ("critic_accuracy", "critic_loss", "critic_auc", "critic_weight_ess", "critic_best_step")
    }
    out.update(steps_run=trainer.step, wall_s=time.perf_counter() - t0, curve=learner.eval_history)
    return out


def rerank_eval(
    task_name: str,
    seed: int,
    policy_ckpt: str,
    critic_ckpt: str,
    candidates: list[int],
    num_samples: int,
    device: str = "cpu",
) -> dict:
    """Metrics of reranked generation for each n."""
    _setup()

    from agents.common.checkpoint import load_policy
    from agents.common.evaluation import evaluate_samples
    from agents.critic import load_critic
    from agents.generation import generate_reranked

    policy, task, _ = load_policy(policy_ckpt, device)
    critic = load_critic(critic_ckpt, device, task)
    out = {}
    for n in candidates:
        t0 = time.perf_counter()
        g = generate_reranked(
            policy,
            task,
            num_samples,
            rerank="critic" if n > 1 else "none",
            candidates=n,
            critic=critic,
            seed=1000 + seed,
            device=device,
            batch_size=max(1, 4096 // n),
        )
        prompts = [task.tokenizer.decode(p) for p in g.prompts] if task.prompts is not None else None
        m = evaluate_samples(task, g.sequences, prompts=prompts, seed=seed)
        out[str(n)] = {
            "validity": m["validity"],
            "oracle_nll": m["oracle_nll"],
            "oracle_support": m["oracle_support"],
            "distinct_2": m["distinct_2"],
            "mean_length": m["mean_length"],
            "ess": float(g.ess.mean()) if g.ess is not None else 1.0,
            "wall_s": time.perf_counter() - t0,
        }
    return out


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _fmt(values, digits=3):
    m, s = _mean_std(values)
    if m is None:
        return "–"
    return f"{m:.{digits}f} ± {s:.{digits}f}" if len(values) > 1 else f"{m:.{digits}f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=["arithmetic", "oracle-hmm"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--policy-steps", type=int, default=800)
    ap.add_argument("--weak-fraction", type=float, default=0.1)
    ap.add_argument("--policy-size", type=int, nargs=3, default=[2, 4, 128], metavar=("LAYERS", "HEADS", "WIDTH"))
    ap.add_argument("--batch-size", type=int, default=64, help="policies' batch size")
    ap.add_argument(
        "--critic-batch-size",
        type=int,
        default=None,
        help="critics' real sequences per step (as many samples); default --batch-size",
    )
    ap.add_argument("--critic-warmup", type=int, default=50)
    ap.add_argument(
        "--critic-max-minutes",
        type=float,
        default=None,
        help="wall-clock cap per critic run (stops early, keeps the best critic; steps run are reported)",
    )
    ap.add_argument("--policy-lr", type=float, default=2e-3)
    ap.add_argument("--critic-steps", type=int, default=1500)
    ap.add_argument("--critic-lr", type=float, default=3e-4)
    ap.add_argument("--pool", type=int, default=5000)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--patience", type=int, default=5)
    ap.add_argument(
        "--ablations",
        nargs="*",
        default=["scratch", "fresh"],
        choices=["scratch", "fresh"],
        help="critic variants trained against the converged policy besides the default",
    )
    ap.add_argument(
        "--critic-policies",
        nargs="+",
        default=["converged", "weak"],
        choices=["converged", "weak"],
        help="the policies that get critics (and reranking); both are trained",
    )
    ap.add_argument("--device", default="cpu", help="cpu or cuda (one GPU shared by --jobs processes)")
    ap.add_argument("--candidates", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--rerank-samples", type=int, default=256)
    ap.add_argument("--workdir", default="runs/critic_rerank")
    ap.add_argument("--out", default=str(RESULTS / "critic_rerank"))
    args = ap.parse_args(argv)
    t_start = time.time()
    load = os.getloadavg()
    work = Path(args.workdir)
    weak_steps = max(1, round(args.policy_steps * args.weak_fraction))
    critic_bs = args.critic_batch_size or args.batch_size
    # spawned workers (CUDA cannot be used in a forked child of a process that touched it)
    pool = ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"))

    # 1. policies
    pol = {}
    for task in args.tasks:
        for seed in args.seeds:
            for kind, steps in (("converged", args.policy_steps), ("weak", weak_steps)):
                d = work / task.replace(":", "_") / f"seed{seed}" / f"mle_{kind}"
                pol[task, seed, kind] = (
                    str(d / "checkpoint.pt"),
                    pool.submit(
                        train_policy,
                        task,
                        seed,
                        steps,
                        str(d),
                        tuple(args.policy_size),
                        args.batch_size,
                        args.policy_lr,
                        args.device,
                    ),
                )
    policies = {k: {"ckpt": c, **f.result()} for k, (c, f) in pol.items()}
    print(f"[critic_rerank] policies done at {time.time() - t_start:.0f} s", flush=True)

    # 2. critics
    default = dict(
        noise_pool=args.pool, init_from_policy=True, eval_every=args.eval_every, eval_size=512, patience=args.patience
    )
    variants = {"default": default}
    ablations = {"scratch": {**default, "init_from_policy": False}, "fresh": {**default, "noise_pool": 0}}
    variants.update({name: ablations[name] for name in args.ablations})
    jobs = {}
    for task in args.tasks:
        for seed in args.seeds:
            for kind in args.critic_policies:
                for name, kw in variants.items():
                    if kind == "weak" and name != "default":
                        continue
                    d = work / task.replace(":", "_") / f"seed{seed}" / f"critic_{kind}_{name}"
                    jobs[task, seed, kind, name] = (
                        str(d / "checkpoint.pt"),
                        pool.submit(
                            train_critic,
                            task,
                            seed,
                            policies[task, seed, kind]["ckpt"],
                            str(d),
                            args.critic_steps,
                            critic_bs,
                            args.critic_lr,
                            kw,
                            args.device,
                            args.critic_warmup,
                            args.critic_max_minutes,
                        ),
                    )
    critics = {k: {"ckpt": c, **f.result()} for k, (c, f) in jobs.items()}
    print(f"[critic_rerank] critics done at {time.time() - t_start:.0f} s", flush=True)

    # 3. reranking with the default critic
    rj = {}
    for task in args.tasks:
        for seed in args.seeds:
            for kind in args.critic_policies:
                rj[task, seed, kind] = pool.submit(
                    rerank_eval,
                    task,
                    seed,
                    policies[task, seed, kind]["ckpt"],
                    critics[task, seed, kind, "default"]["ckpt"],
                    args.candidates,
                    args.rerank_samples,
                    args.device,
                )
    reranks = {k: f.result() for k, f in rj.items()}
    pool.shutdown()
    wall = time.time() - t_start
    print(f"[critic_rerank] done at {wall:.0f} s", flush=True)

    import torch

    gpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None
    meta = {
        "command": "python benchmarks/critic_rerank.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "gpu": gpu,
            "torch": torch.__version__,
            "torch_threads_per_run": 1,
            "jobs": args.jobs,
            "load_average_at_start": load,
            "python": platform.python_version(),
        },
        "args": vars(args),
        "wall_s": wall,
        "weak_steps": weak_steps,
    }
    js = {
        "meta": meta,
        "policies": {"/".join(map(str, k)): {kk: v[kk] for kk in ("metrics", "wall_s")} for k, v in policies.items()},
        "critics": {
            "/".join(map(str, k)): {kk: vv for kk, vv in v.items() if kk != "ckpt"} for k, v in critics.items()
        },
        "rerank": {"/".join(map(str, k)): v for k, v in reranks.items()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(js, indent=1) + "\n")

    # markdown
    L = [
        "# Residual-EBM critic against a fixed policy, and reranking (issue 11)\n",
        f"Generated by `benchmarks/critic_rerank.py` in {wall / 60:.1f} min.\n",
        "```\n" + meta["command"] + "\n```\n",
        f"**Machine**: {meta['machine']['cpu']}, {meta['machine']['cores']} cores "
        f"(load average at start {load[0]:.1f}), torch {torch.__version__}, "
        + (f"one {gpu} shared by the runs" if gpu else "CPU")
        + f", 1 torch thread per run, "
        f"{args.jobs} runs at a time.\n",
        f"**Budget**: policies {args.policy_size[0]} layers × {args.policy_size[1]} heads × {args.policy_size[2]} "
        f"wide, MLE, batch {args.batch_size}, lr {args.policy_lr}: converged = {args.policy_steps} steps, "
        f"weak = {weak_steps} steps. Critics: same trunk size, batch {critic_bs} real + {critic_bs} "
        f"samples, lr {args.critic_lr} ({args.critic_warmup} warm-up, cosine), at most {args.critic_steps} steps, "
        f"held-out evaluation every {args.eval_every} steps (valid split vs as many fresh samples, ≤ 512 each), "
        + (f"early stopping with patience {args.patience} evaluations" if args.patience else "no early stopping")
        + ", best critic (lowest held-out loss) kept. Default critic: trunk from the policy, "
        + (f"fixed set of {args.pool} samples" if args.pool else "fresh policy samples every step")
        + f". Reranking: {args.rerank_samples} outputs "
        f"per (policy, n). Seeds {args.seeds}; cells mean ± std over seeds (ddof 1).\n",
    ]
    L.append("## Critic held-out accuracy (real valid texts vs fresh policy samples)\n")
    L.append(
        "| task | policy | critic | accuracy | AUC | loss (nats; flat 1.386) | weight ESS/n | best step | steps run | wall s |"
    )
    L.append("|---|---|---|---|---|---|---|---|---|---|")
    for task in args.tasks:
        for kind in ("weak", "converged"):
            for name in variants:
                rows = [critics.get((task, s, kind, name)) for s in args.seeds]
                rows = [r for r in rows if r]
                if not rows:
                    continue
                L.append(
                    f"| {task} | {kind} | {name} | {_fmt([r['critic_accuracy'] for r in rows])} | "
                    f"{_fmt([r['critic_auc'] for r in rows])} | {_fmt([r['critic_loss'] for r in rows])} | "
                    f"{_fmt([r['critic_weight_ess'] for r in rows])} | "
                    f"{_fmt([r['critic_best_step'] for r in rows], 0)} | {_fmt([r['steps_run'] for r in rows], 0)} | "
                    f"{_fmt([r['wall_s'] for r in rows], 0)} |"
                )
    L.append("\n## Policies\n")
    L.append("| task | policy | validity | oracle_nll | nll (test) | distinct_2 |")
    L.append("|---|---|---|---|---|---|")
    for task in args.tasks:
        for kind in ("weak", "converged"):
            ms = [policies[task, s, kind]["metrics"] for s in args.seeds]
            L.append(
                f"| {task} | {kind} | {_fmt([m.get('validity') for m in ms])} | "
                f"{_fmt([m.get('oracle_nll') for m in ms])} | {_fmt([m.get('nll') for m in ms])} | "
                f"{_fmt([m.get('distinct_2') for m in ms])} |"
            )
    L.append("\n## Reranking ∝ exp(−E) with the default critic, against n candidates per prompt\n")
    L.append("| task | policy | n | validity | oracle_nll | oracle_support | distinct_2 | mean ESS of weights |")
    L.append("|---|---|---|---|---|---|---|---|")
    for task in args.tasks:
        for kind in [k for k in ("weak", "converged") if k in args.critic_policies]:
            for n in args.candidates:
                ms = [reranks[task, s, kind][str(n)] for s in args.seeds]
                L.append(
                    f"| {task} | {kind} | {n} | {_fmt([m['validity'] for m in ms])} | "
                    f"{_fmt([m['oracle_nll'] for m in ms])} | {_fmt([m['oracle_support'] for m in ms])} | "
                    f"{_fmt([m['distinct_2'] for m in ms])} | {_fmt([m['ess'] for m in ms], 2)} |"
                )
    out.with_suffix(".md").write_text("\n".join(L) + "\n")
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()

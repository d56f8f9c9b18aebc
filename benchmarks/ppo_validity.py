"""PPO with the verifiable reward on a task: does β restrain it, and is a validity gain more than shorter
texts? (issue 25, item 4 (a), with ``reward="validity"`` as the score instead of an NCE critic).

For each arm and seed, MaskablePPO (``agents/sb3/critic_reward.py``, ``--critic validity``: the env pays
1 when the task's checker accepts the final text, k1 KL term to π0 in the per-token reward, no reward
normalisation) fine-tunes the start policy ``--init`` for ``--steps`` env steps; then the start and each result
are measured on ``--eval-samples`` fresh samples (:func:`benchmarks.grpo_backspace.measure`): validity, KL(π‖π0)
(mean ``Σ_t log π/π0``, nats per sequence), mean length (characters), backspace rate, and validity by length
bucket, from which the tuned policy's validity *standardised to the start policy's lengths*
(:func:`benchmarks.length_stratified_validity.standardised`, as ``length_stratified_validity.py`` does).
Arms: fixed β ∈ ``--betas`` and the adaptive controller (start β = 1) toward each of ``--targets``.
Paired differences over seeds against the start (:mod:`benchmarks.stats`, verdict words generated).

    python benchmarks/ppo_validity.py --init runs/mle-py/checkpoint.pt --seeds 0 1 --steps 16384 \\
        --out benchmarks/results/ppo_validity_python_lines

One process, the runs one after the other; results in ``OUT.json`` and ``OUT.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from agents.common.checkpoint import load_policy
from agents.sb3 import critic_reward as cr
from benchmarks.grpo_backspace import measure
from benchmarks.length_stratified_validity import standardised
from benchmarks.provenance import provenance
from benchmarks.stats import fmt_diff, fmt_mean_sd, paired, verdict

KEYS = ("validity", "validity_std", "kl_to_init", "mean_length", "backspace_rate", "final_beta", "train_kl_last")


def run_arm(args, arm: dict, seed: int, reference, state, task) -> tuple[dict, object]:
    """Train one arm at one seed; return the training summary and the tuned actor."""
    cfg = cr.PPOCriticConfig(
        checkpoint=args.init,
        critic=cr.VALIDITY,
        beta=arm["beta"],
        kl_target=arm.get("target"),
        kl_horizon=args.kl_horizon,
        num_envs=args.num_envs,
        n_steps=args.n_steps,
        batch_size=args.batch_size,
        n_epochs=args.n_epochs,
        learning_rate=args.lr,
        target_kl=args.target_kl,
        total_timesteps=args.steps,
        seed=seed,
        logdir=str(Path(args.workdir) / f"{arm['name']}_s{seed}"),
        progress=False,
    )
    ppo, reward, callback = cr.make_ppo(cfg, reference, state["policy"]["config"], None, task, "cpu")
    kls = []

    class Track(cr.RewardTermsCallback):  # the training rollouts' KL, for the record
        def _on_rollout_end(self):
            if self._kl:
                kls.append(float(sum(self._kl) / len(self._kl)))
            super()._on_rollout_end()

    track = Track(reward, callback.kl_target, callback.horizon)
    ppo.learn(args.steps, callback=track)
    ppo.env.close()
    return {"final_beta": reward.beta, "train_kl_last": kls[-1] if kls else float("nan")}, ppo.policy.actor


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--init", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--betas", type=float, nargs="*", default=[0.1, 1.0, 10.0])
    p.add_argument("--targets", type=float, nargs="*", default=[0.5, 2.0])
    p.add_argument("--steps", type=int, default=16384)
    p.add_argument("--num-envs", type=int, default=32)
    p.add_argument("--n-steps", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--n-epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--target-kl", type=float, default=0.02)
    p.add_argument("--kl-horizon", type=int, default=4096)
    p.add_argument("--eval-samples", type=int, default=512)
    p.add_argument("--workdir", default="runs/ppo_validity")
    p.add_argument("--out", default="benchmarks/results/ppo_validity")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t_start = time.time()
    reference, task, state = load_policy(args.init, "cpu")
    arms = [{"name": f"beta={b:g}", "beta": b} for b in args.betas]
    arms += [{"name": f"adaptive KL*={t:g}", "beta": 1.0, "target": t} for t in args.targets]
    rows = {"start": [measure(reference, reference, task, args.eval_samples, 10_000 + s) for s in args.seeds]}
    for m in rows["start"]:
        m.update(validity_std=m["validity"], final_beta=float("nan"), train_kl_last=0.0)
    for arm in arms:
        rows[arm["name"]] = []
        for i, seed in enumerate(args.seeds):
            t0 = time.time()
            summary, actor = run_arm(args, arm, seed, reference, state, task)
            m = measure(actor.eval(), reference, task, args.eval_samples, 10_000 + seed)
            m.update(summary, wall_s=time.time() - t0)
            m["validity_std"] = (
                standardised(rows["start"][i]["lengths"], m["lengths"]) if m["lengths"] else m["validity"]
            )
            rows[arm["name"]].append(m)
            print(arm["name"], seed, {k: round(v, 4) for k, v in m.items() if isinstance(v, float)}, flush=True)
    out = {
        "command": "python benchmarks/ppo_validity.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "args": vars(args),
        "rows": rows,
        "wall_s": time.time() - t_start,
        "provenance": provenance("cpu", {task.name: task.corpus_hash}),
    }
    Path(args.out + ".json").write_text(json.dumps(out, indent=2) + "\n")
    md = render(out)
    Path(args.out + ".md").write_text(md)
    print(md)


def render(out: dict) -> str:
    """``OUT.md``'s tables from the JSON: mean ± sd over seeds, and paired differences against the start."""
    rows, seeds = out["rows"], out["args"]["seeds"]

    lines = [
        f"`{out['command']}`",
        "",
        f"Seeds {seeds}; mean ± sd (ddof 1) over seeds; {out['args']['eval_samples']} samples per measurement; "
        f"wall {out['wall_s'] / 60:.1f} min. `validity_std`: validity standardised to the start policy's "
        "length distribution (same seed); `train_kl_last`: KL to π0 of the last training rollout's episodes.",
        "",
        "| arm | " + " | ".join(KEYS) + " |",
        "|---" * (len(KEYS) + 1) + "|",
    ]
    lines += [
        f"| {name} | " + " | ".join(fmt_mean_sd([m[k] for m in ms]) for k in KEYS) + " |" for name, ms in rows.items()
    ]
    lines += [
        "",
        "| arm − start | metric | paired difference [95 % t-interval] | verdict |",
        "|---|---|---|---|",
    ]
    for name, ms in rows.items():
        if name == "start":
            continue
        for key, direction in (("validity", +1), ("validity_std", +1), ("mean_length", 0)):
            arm = {s: m[key] for s, m in zip(seeds, ms)}
            control = {s: m["validity" if key == "validity_std" else key] for s, m in zip(seeds, rows["start"])}
            cmp = paired(arm, control)
            word = verdict(cmp, direction) if direction else "(no direction)"
            lines.append(f"| {name} | {key} | {fmt_diff(cmp)} | {word} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

"""GRPO on arithmetic with reward="validity": backspace allowed vs masked off (issue 25, item 4 (b)).

For each seed and arm, ``--agent grpo`` fine-tunes the same start policy (an MLE checkpoint) for
``--steps`` optimiser steps, then both the start and the result are measured on the *test* questions:

The masked arm is measured with backspace masked off too (as it is trained and used); the start policy both
ways.

* ``validity``: exact-answer rate of fresh samples (one per test question, cycled to ``--eval-samples``);
* ``kl_to_init``: mean ``Σ_t log π(a_t|s_t) - log π0(a_t|s_t)`` over those episodes (nats per sequence,
  both masked to the legal actions; a Monte Carlo estimate of KL(π‖π0));
* ``backspace_rate``: backspaces per action;
* ``bs_after_error``: P(the next action is backspace | the generated text just became a non-prefix of the
  correct answer), i.e. does the policy back out of its own errors;
* ``bs_after_correct``: P(backspace | the generated text is a prefix of the correct answer) (needless deletes);
* ``mean_actions``: actions per episode.

    python benchmarks/grpo_backspace.py --init runs/mle-arith/checkpoint.pt --seeds 0 1 2 --steps 60 \\
        --out benchmarks/results/grpo_backspace

One process, the runs one after the other; results in ``OUT.json`` and ``OUT.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from agents.common.checkpoint import load_policy
from agents.common.rollout import make_vector_env, rollout
from agents.grpo import GRPOConfig
from agents.trainer import TrainConfig, Trainer
from benchmarks.provenance import provenance


@torch.no_grad()
def measure(policy, reference, task, num_samples: int, seed: int, allow_backspace: bool = True) -> dict:
    """The metrics of the module docstring on ``num_samples`` episodes over the test questions
    (``allow_backspace=False``: sampled with backspace masked off, as the masked arm is trained and used)."""
    prompts, answers = task.split_prompts["test"], task.splits["test"]
    idx = [i % len(prompts) for i in range(num_samples)]
    venv = make_vector_env(task, num_samples, "cpu")
    res = rollout(
        policy,
        venv,
        seed=seed,
        generator=torch.Generator().manual_seed(seed),
        store_masks=True,
        reset_options={"prompt": [prompts[i] for i in idx]},
        allow_backspace=allow_backspace,
    )
    tok = task.tokenizer
    valid = [
        bool(t) and task.is_valid(prompts[i] + tok.decode(s))
        for i, s, t in zip(idx, res.sequences(), res.terminated.tolist())
    ]
    # KL: log π (stored) minus log π0 over the same actions and masks
    batch = res.to_batch()
    S = res.actions.shape[1]
    live = torch.arange(S)[None] < res.num_actions[:, None]
    masks = torch.zeros(*batch.tokens.shape, res.action_masks.shape[-1], dtype=torch.bool)
    masks[batch.is_action] = res.action_masks[live]
    logits = reference(batch.tokens).float()[:, :-1].masked_fill(~masks[:, 1:], -math.inf)
    log_ref = F.log_softmax(logits, -1).gather(-1, batch.tokens[:, 1:, None]).squeeze(-1)
    log_ref = torch.where(batch.is_action[:, 1:], log_ref, torch.zeros_like(log_ref)).sum(1)
    kl = (res.log_probs.sum(1) - log_ref).tolist()
    # backspace after an error / after a correct prefix
    bs = res.ids.backspace
    err_next, err_bs, ok_next, ok_bs = 0, 0, 0, 0
    for i, actions in zip(idx, res.action_lists()):
        answer, text = answers[i], ""
        for a in actions:
            if text:  # a state with generated text: is it still a prefix of the answer?
                if answer.startswith(text):
                    ok_next += 1
                    ok_bs += a == bs
                else:
                    err_next += 1
                    err_bs += a == bs
            if a == bs:
                text = text[:-1]
            elif a != res.ids.eos:
                text += tok.decode([a])
    n_actions = int(res.num_actions.sum())
    return {
        "validity": sum(valid) / len(valid),
        "kl_to_init": sum(kl) / len(kl),
        "backspace_rate": float((res.actions == bs).sum()) / n_actions,
        "bs_after_error": err_bs / err_next if err_next else float("nan"),
        "bs_after_correct": ok_bs / ok_next if ok_next else float("nan"),
        "error_states": err_next,
        "mean_actions": n_actions / num_samples,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--init", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--num-prompts", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--beta", type=float, default=0.04)
    p.add_argument("--advantage", default="grpo")
    p.add_argument("--eval-samples", type=int, default=400)
    p.add_argument("--workdir", default="runs/grpo_backspace")
    p.add_argument("--out", default="benchmarks/results/grpo_backspace")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    start = time.time()
    reference, task, _ = load_policy(args.init, "cpu")
    rows = {
        "start": [measure(reference, reference, task, args.eval_samples, seed) for seed in args.seeds],
        "start (backspace masked)": [
            measure(reference, reference, task, args.eval_samples, seed, False) for seed in args.seeds
        ],
    }
    for arm, allow in (("grpo_backspace", True), ("grpo_no_backspace", False)):
        rows[arm] = []
        for seed in args.seeds:
            t0 = time.time()
            cfg = TrainConfig(
                agent="grpo",
                task="arithmetic",
                init=args.init,
                seed=seed,
                logdir=os.path.join(args.workdir, f"{arm}_s{seed}"),
                overwrite=True,
                max_steps=args.steps,
                lr=args.lr,
                warmup_steps=0,
                min_lr_ratio=1.0,
                ckpt_every=args.steps,
                log_every=5,
                eval_samples=64,
                progress=False,
                device="cpu",
                grpo=GRPOConfig(
                    group_size=args.group_size,
                    num_prompts=args.num_prompts,
                    beta=args.beta,
                    allow_backspace=allow,
                    advantage=args.advantage,
                ),
            )
            trainer = Trainer(cfg)
            trainer.train()
            trainer.close()
            m = measure(trainer.policy, reference, task, args.eval_samples, seed, allow)
            m["wall_s"] = time.time() - t0
            rows[arm].append(m)
            print(arm, seed, {k: round(v, 4) for k, v in m.items()}, flush=True)
    out = {
        "args": vars(args),
        "rows": rows,
        "wall_s": time.time() - start,
        "provenance": provenance("cpu", {task.name: task.corpus_hash}),
    }
    Path(args.out + ".json").write_text(json.dumps(out, indent=2) + "\n")
    keys = ("validity", "kl_to_init", "backspace_rate", "bs_after_error", "bs_after_correct", "mean_actions")

    def cell(vals):
        vals = [v for v in vals if not math.isnan(v)]
        if not vals:
            return "n/a"
        return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}" if len(vals) > 1 else f"{vals[0]:.3f}"

    lines = ["| policy | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for arm, ms in rows.items():
        lines.append(f"| {arm} | " + " | ".join(cell([m[k] for m in ms]) for k in keys) + " |")
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""GRPO with reward="validity": backspace allowed vs masked off, beside MLE + backspace and SequenceMatch
continued from the same start (issue 25, item 4 (b)).

For each seed and arm, the learner fine-tunes the same start policy (an MLE checkpoint, ``--init``) for
``--steps`` optimiser steps (``--compare-steps`` for the two imitation arms), then the start and every result
are measured on fresh samples (conditional tasks: the *test* prompts, cycled to ``--eval-samples``). Arms
(``--arms``): ``grpo_backspace`` (GRPO, backspace allowed), ``grpo_no_backspace`` (masked off in training
and measurement), ``mle_backspace`` (MLE with backspace demonstrations, ``--mle.backspace-p`` 0.05) and
``sequencematch`` (its defaults) on the task's data, to compare at their KL to the same start policy.

* ``validity``: rate of accepted final texts (arithmetic: the exact answer);
* ``kl_to_init``: mean ``Σ_t log π(a_t|s_t) - log π0(a_t|s_t)`` over those episodes (nats per sequence,
  both masked to the legal actions; a Monte Carlo estimate of KL(π‖π0));
* ``backspace_rate``: backspaces per action;
* ``bs_after_deleted``: P(the next action is backspace | the text so far is not a prefix of the episode's
  *final* text), i.e. right after a token the final text does not contain: how promptly the policy deletes;
  ``bs_after_kept``: the same where the text so far is a prefix of the final text (deletes that are retyped);
* ``bs_after_error`` / ``bs_after_correct`` (conditional tasks with a reference answer): the same
  conditioned on the text being / not being a prefix of the correct answer: does the policy back out of its
  own errors;
* ``mean_actions``: actions per episode; ``mean_length``: characters of the final text.

Paired comparisons over seeds (:mod:`benchmarks.stats`: the mean difference and its 95 % t-interval, verdict
words generated from it) against the start policy and between the GRPO arms are written to ``OUT.md``.

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
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from agents.common.checkpoint import load_policy
from agents.common.rollout import make_vector_env, rollout
from agents.grpo import GRPOConfig
from agents.mle import MLEConfig
from agents.trainer import TrainConfig, Trainer
from benchmarks.length_stratified_validity import bucket_validity, standardised
from benchmarks.provenance import provenance
from benchmarks.stats import fmt_diff, fmt_mean_sd, paired, verdict

ARMS = ("grpo_backspace", "grpo_no_backspace", "mle_backspace", "sequencematch")
KEYS = (
    "validity",
    "kl_to_init",
    "mean_length",
    "backspace_rate",
    "bs_after_deleted",
    "bs_after_kept",
    "bs_after_error",
    "bs_after_correct",
    "mean_actions",
)


def _rate(hits: int, n: int) -> float:
    return hits / n if n else float("nan")


def backspace_counts(action_lists, finals, answers, decode, ids) -> dict:
    """Counts of the states with generated text, and of backspaces taken there, by kind.

    ``del``: the text so far is not a prefix of the episode's final text (a token the final text does not
    contain was just written, or is still there); ``kept``: it is a prefix. With reference ``answers``
    (conditional tasks) also ``err`` / ``ok``: not a prefix / a prefix of the answer.

    :param action_lists: each episode's actions (ints; backspace ``ids.backspace``, ``eos`` ``ids.eos``).
    :param finals: each episode's final generated text.
    :param answers: the reference answers, or None.
    :param decode: token ids -> text.
    :return: ``{"del_n", "del_bs", "kept_n", "kept_bs", "err_n", "err_bs", "ok_n", "ok_bs"}`` (ints).
    """
    c = dict.fromkeys(("del_n", "del_bs", "kept_n", "kept_bs", "err_n", "err_bs", "ok_n", "ok_bs"), 0)
    for e, (final, actions) in enumerate(zip(finals, action_lists)):
        text = ""
        for a in actions:
            if text:  # a state with generated text
                kinds = ["kept" if final.startswith(text) else "del"]
                if answers is not None:
                    kinds.append("ok" if answers[e].startswith(text) else "err")
                for kind in kinds:
                    c[f"{kind}_n"] += 1
                    c[f"{kind}_bs"] += int(a == ids.backspace)
            if a == ids.backspace:
                text = text[:-1]
            elif a != ids.eos:
                text += decode([a])
    return c


@torch.no_grad()
def measure(policy, reference, task, num_samples: int, seed: int, allow_backspace: bool = True) -> dict:
    """The metrics of the module docstring on ``num_samples`` episodes (conditional tasks: over the test
    prompts; ``allow_backspace=False``: sampled with backspace masked off, as the masked arm is trained and
    used). ``lengths``: ``{bucket: [count, validity]}`` by final-text length
    (:func:`benchmarks.length_stratified_validity.bucket_validity`)."""
    conditional = task.prompts is not None
    if conditional:
        prompts, answers = task.split_prompts["test"], task.splits["test"]
        idx = [i % len(prompts) for i in range(num_samples)]
        options = {"prompt": [prompts[i] for i in idx]}
    else:
        prompts, answers, idx, options = None, None, [None] * num_samples, None
    venv = make_vector_env(task, num_samples, "cpu")
    res = rollout(
        policy,
        venv,
        seed=seed,
        generator=torch.Generator().manual_seed(seed),
        store_masks=True,
        reset_options=options,
        allow_backspace=allow_backspace,
    )
    tok = task.tokenizer
    texts = [tok.decode(s) for s in res.sequences()]
    full = [(prompts[i] if conditional else "") + t for i, t in zip(idx, texts)]
    valid = [bool(term) and task.is_valid(f) for f, term in zip(full, res.terminated.tolist())]
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
    c = backspace_counts(
        res.action_lists(), texts, [answers[i] for i in idx] if conditional else None, tok.decode, res.ids
    )
    n_actions = int(res.num_actions.sum())
    lengths = bucket_validity(task, texts) if not conditional else None
    return {
        "validity": sum(valid) / len(valid),
        "kl_to_init": sum(kl) / len(kl),
        "mean_length": statistics.mean(len(t) for t in texts),
        "backspace_rate": float((res.actions == res.ids.backspace).sum()) / n_actions,
        "bs_after_deleted": _rate(c["del_bs"], c["del_n"]),
        "bs_after_kept": _rate(c["kept_bs"], c["kept_n"]),
        "bs_after_error": _rate(c["err_bs"], c["err_n"]) if conditional else float("nan"),
        "bs_after_correct": _rate(c["ok_bs"], c["ok_n"]) if conditional else float("nan"),
        "deleted_states": c["del_n"],
        "error_states": c["err_n"],
        "mean_actions": n_actions / num_samples,
        "lengths": lengths,
    }


def train_config(args, arm: str, seed: int) -> TrainConfig:
    """The run of one arm and seed, forked from ``--init`` (constant lr, no warm-up)."""
    common = dict(
        task=args.task,
        init=args.init,
        seed=seed,
        logdir=os.path.join(args.workdir, f"{arm}_s{seed}"),
        overwrite=True,
        warmup_steps=0,
        min_lr_ratio=1.0,
        log_every=5,
        eval_samples=64,
        progress=False,
        device="cpu",
    )
    if arm.startswith("grpo"):
        return TrainConfig(
            agent="grpo",
            max_steps=args.steps,
            lr=args.lr,
            ckpt_every=args.steps,
            grpo=GRPOConfig(
                group_size=args.group_size,
                num_prompts=args.num_prompts,
                beta=args.beta,
                allow_backspace=arm == "grpo_backspace",
                advantage=args.advantage,
            ),
            **common,
        )
    agent = {"mle_backspace": "mle", "sequencematch": "sequencematch"}[arm]
    return TrainConfig(
        agent=agent,
        max_steps=args.compare_steps,
        lr=args.compare_lr,
        ckpt_every=args.compare_steps,
        mle=MLEConfig(backspace_p=0.05),
        **common,
    )


def comparisons(rows: dict, seeds: list[int]) -> list[str]:
    """Paired rows (per-seed differences, 95 % t-interval, generated verdict) of every arm against the start it
    is measured like, of backspace allowed against masked (the GRPO arms and the start policy), and, where
    length buckets were measured, of the validity standardised to the start's lengths (``validity_std``)
    against the start's validity."""

    def control_of(arm):
        return "start (backspace masked)" if arm == "grpo_no_backspace" else "start"

    def by_seed(arm, key):
        if key == "validity_std":
            if arm.startswith("start"):
                return by_seed(arm, "validity")
            ctl = rows[control_of(arm)]
            if not all(m.get("lengths") for m in ctl + rows[arm]):
                return {}
            return {s: standardised(c["lengths"], m["lengths"]) for s, c, m in zip(seeds, ctl, rows[arm])}
        return {s: m[key] for s, m in zip(seeds, rows[arm]) if not math.isnan(m[key])}

    out = [
        "| comparison | metric | paired difference [95 % t-interval] | verdict |",
        "|---|---|---|---|",
    ]
    pairs = [(arm, control_of(arm)) for arm in rows if not arm.startswith("start")]
    if "grpo_backspace" in rows and "grpo_no_backspace" in rows:
        pairs += [("grpo_backspace", "grpo_no_backspace"), ("start", "start (backspace masked)")]
    for arm, control in pairs:
        for key, direction in (("validity", +1), ("validity_std", +1), ("kl_to_init", 0), ("mean_length", 0)):
            a, c = by_seed(arm, key), by_seed(control, "validity" if key == "validity_std" else key)
            if not a or (key == "validity_std" and (arm.startswith("start") or control != control_of(arm))):
                continue  # standardised only against the arm's own start
            cmp = paired(a, c)
            word = verdict(cmp, direction) if direction else "(no direction)"
            out.append(f"| {arm} − {control} | {key} | {fmt_diff(cmp)} | {word} |")
    return out


def render(out: dict) -> str:
    """``OUT.md``'s tables from the JSON (mean ± sd over seeds; paired comparisons)."""
    rows, seeds = out["rows"], out["args"]["seeds"]
    keys = [k for k in KEYS if any(not math.isnan(m[k]) for ms in rows.values() for m in ms)]

    lines = [
        f"`{out['command']}`",
        "",
        f"Seeds {seeds}; mean ± sd (ddof 1) over seeds; {out['args']['eval_samples']} episodes per measurement; "
        f"wall {out['wall_s'] / 60:.1f} min.",
        "",
        "| policy | " + " | ".join(keys) + " |",
        "|---" * (len(keys) + 1) + "|",
    ]
    for arm, ms in rows.items():
        lines.append(f"| {arm} | " + " | ".join(fmt_mean_sd([m[k] for m in ms]) for k in keys) + " |")
    if all(m.get("lengths") for m in rows["start"]):
        lines += ["", "Validity standardised to the start policy's length distribution (per seed, then mean ± sd):", ""]
        lines += ["| policy | validity | standardised to the start's lengths |", "|---|---|---|"]
        for arm, ms in rows.items():
            if arm.startswith("start"):
                continue
            control = rows["start (backspace masked)" if arm == "grpo_no_backspace" else "start"]
            std = [standardised(c["lengths"], m["lengths"]) for c, m in zip(control, ms)]
            lines.append(f"| {arm} | {fmt_mean_sd([m['validity'] for m in ms])} | {fmt_mean_sd(std)} |")
    lines += ["", *comparisons(rows, seeds)]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--init", help="the start policy (an MLE checkpoint; required unless --render)")
    p.add_argument("--task", default="arithmetic")
    p.add_argument("--arms", nargs="+", default=["grpo_backspace", "grpo_no_backspace"], choices=ARMS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--num-prompts", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--beta", type=float, default=0.04)
    p.add_argument("--advantage", default="grpo")
    p.add_argument("--compare-steps", type=int, default=100, help="steps of the mle_backspace / sequencematch arms")
    p.add_argument("--compare-lr", type=float, default=2e-4)
    p.add_argument("--eval-samples", type=int, default=400)
    p.add_argument("--workdir", default="runs/grpo_backspace")
    p.add_argument("--out", default="benchmarks/results/grpo_backspace")
    p.add_argument("--render", metavar="JSON", help="only rewrite JSON's .md beside it from the JSON (no runs)")
    args = p.parse_args(argv)
    if args.render:
        path = Path(args.render)
        path.with_suffix(".md").write_text(render(json.loads(path.read_text())))
        return
    if not args.init:
        p.error("--init is required (the start policy)")
    torch.set_num_threads(1)
    start = time.time()
    reference, task, _ = load_policy(args.init, "cpu")
    if task.name != args.task:
        p.error(f"--init is a {task.name!r} policy, expected one on --task {args.task!r}")
    rows = {"start": [measure(reference, reference, task, args.eval_samples, seed) for seed in args.seeds]}
    if "grpo_no_backspace" in args.arms:
        rows["start (backspace masked)"] = [
            measure(reference, reference, task, args.eval_samples, seed, False) for seed in args.seeds
        ]
    for arm in args.arms:
        rows[arm] = []
        for seed in args.seeds:
            t0 = time.time()
            trainer = Trainer(train_config(args, arm, seed))
            trainer.train()
            trainer.close()
            m = measure(trainer.policy, reference, task, args.eval_samples, seed, arm != "grpo_no_backspace")
            m["wall_s"] = time.time() - t0
            rows[arm].append(m)
            print(arm, seed, {k: round(v, 4) for k, v in m.items() if isinstance(v, float)}, flush=True)
    out = {
        "command": "python benchmarks/grpo_backspace.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "args": vars(args),
        "rows": rows,
        "wall_s": time.time() - start,
        "provenance": provenance("cpu", {task.name: task.corpus_hash}),
    }
    Path(args.out + ".json").write_text(json.dumps(out, indent=2) + "\n")
    md = render(out)
    Path(args.out + ".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()

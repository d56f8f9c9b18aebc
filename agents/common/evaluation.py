"""Evaluating a policy: generate through the vector env, then score (DESIGN.md, "Quality of generation").

- :func:`evaluate_policy` -- ``num_samples`` episodes scored by every metric
  of :mod:`agents.common.metrics` (the keys of ``metrics.json``), plus the
  held-out NLL;
- :func:`recovery` -- the exposure-bias probe (a wrong token injected into a
  data prefix; does the policy delete it?).

The metrics themselves live in :mod:`agents.common.metrics` and the tables in
:mod:`agents.common.report`; their public names are re-exported here, where
scripts, benchmarks and user code have imported them from.
"""

from __future__ import annotations

import torch

from seqenv.oracle import pad_sequences
from seqenv.tokenizers import NUM_SPECIAL, SpecialIds

from .metrics import (
    BLEU_MAX_REFERENCES,
    BLEU_MAX_SAMPLES,
    NLL_MAX_LOGITS,
    ORACLE_NLL_MIN_CAP,
    Samples,
    _check_nonempty,
    backspace_rate,
    bleu4,
    distinct_n,
    evaluate_samples,
    heldout_nll,
    length_stats,
    oracle_nll,
    self_bleu4,
    validity_rate,
)
from .report import SUMMARY_COLUMNS, comparison_line, format_episode, format_metrics_table
from .rollout import generate, make_vector_env, rollout

__all__ = [
    "BLEU_MAX_REFERENCES",
    "BLEU_MAX_SAMPLES",
    "NLL_MAX_LOGITS",
    "ORACLE_NLL_MIN_CAP",
    "SUMMARY_COLUMNS",
    "Samples",
    "backspace_rate",
    "bleu4",
    "comparison_line",
    "distinct_n",
    "evaluate_policy",
    "evaluate_samples",
    "format_episode",
    "format_metrics_table",
    "heldout_nll",
    "length_stats",
    "oracle_nll",
    "recovery",
    "self_bleu4",
    "validity_rate",
]


# --------------------------------------------------------------------------
# A whole policy: generate, then score
# --------------------------------------------------------------------------
def evaluate_policy(
    policy,
    task,
    num_samples: int = 512,
    device=None,
    seed: int = 0,
    temperature: float = 1.0,
    batch_size: int = 256,
    max_sequences: int | None = None,
) -> dict:
    """Generate ``num_samples`` episodes through the vector env and score them.

    :param max_sequences: bound of the evaluation: at most this many episodes
        generated (``min(num_samples, max_sequences)``) and held-out texts
        scored (:func:`heldout_nll`); ``None`` = ``num_samples`` and the whole split.

    On a paired task (``arithmetic``) the episodes start from the ``test``
    split's prompts (drawn with replacement by the env's seeded hash),
    ``validity`` is the exact-answer accuracy and ``nll`` is that of the test
    answers given their questions.

    :return: :func:`evaluate_samples`'s keys, plus ``nll`` / ``perplexity``
        (held-out ``test`` split, :func:`heldout_nll`; ``None`` on unpaired
        conditional tasks) and ``terminated_rate`` (fraction of episodes ended by ``eos``
        rather than truncated). Deterministic for a given ``seed``.
    """
    device = device if device is not None else next(policy.parameters()).device
    env_kwargs = {"prompts": task.split_prompts["test"]} if task.paired else None
    if max_sequences is not None:
        num_samples = min(num_samples, max_sequences)
    results = generate(
        policy,
        task,
        num_samples,
        batch_size=batch_size,
        device=device,
        seed=seed,
        temperature=temperature,
        env_kwargs=env_kwargs,
    )
    seqs = [s for r in results for s in r.sequences()]
    actions = [a for r in results for a in r.action_lists()]
    prompts = [task.tokenizer.decode(p) for r in results for p in r.prompts()] if task.prompts is not None else None
    metrics = evaluate_samples(task, seqs, action_histories=actions, seed=seed, prompts=prompts)
    metrics["terminated_rate"] = float(torch.cat([r.terminated for r in results]).float().mean())
    if task.prompts is None or task.paired:
        h = heldout_nll(policy, task, "test", batch_size=batch_size, device=device, max_sequences=max_sequences)
        metrics.update(nll=h["nll"], perplexity=h["perplexity"])
    else:
        metrics.update(nll=None, perplexity=None)
    return metrics


def recovery(
    policy,
    task,
    num_samples: int = 256,
    device=None,
    seed: int = 0,
    temperature: float = 1.0,
    split: str = "test",
) -> dict:
    """Exposure-bias probe: inject a wrong token into a data prefix and let the policy go on.

    For ``num_samples`` held-out sequences ``x`` (drawn with ``seed``), a cut
    ``k`` uniform in ``[0, len(x) - 1]`` and a wrong token ``w`` uniform over
    the ordinary tokens other than ``x_k``, the episode is forced through the
    env with the actions ``x_<k, w`` (all deletable: no prompt), then the
    policy samples the rest (our protocol [recon]; METHODS.md §1 asks for
    "recovery after an injected wrong token").

    :return: ``recovery_backspace``: fraction whose first free action is
        ``backspace``; ``recovery_deleted``: fraction whose final sequence no
        longer holds ``w`` at position ``k`` (deleted, possibly re-typed
        otherwise); ``recovery_validity``: validity of the final sequences
        (``None`` without a checker).
    :raises ValueError: on a conditional task (prompts) or an empty split.
    """
    if task.prompts is not None:
        raise ValueError(f"recovery is defined for unconditional tasks; task {task.name!r} has prompts")
    seqs = [s for s in task.encoded(split) if 1 <= len(s) < task.max_length]
    _check_nonempty(seqs, f"{split!r} sequences")
    device = device if device is not None else next(policy.parameters()).device
    g = torch.Generator().manual_seed(seed)
    V = task.tokenizer.vocab_size
    sp = SpecialIds.of(task)
    ordinary = sp.ordinary_ids(V)  # rank -> id; the fixed ids give NUM_SPECIAL + rank
    rank = {t: r for r, t in enumerate(ordinary)}
    forced, cuts, wrong = [], [], []
    for i in torch.randint(len(seqs), (num_samples,), generator=g).tolist():
        x = seqs[i]
        k = int(torch.randint(len(x), (1,), generator=g))
        r = int(torch.randint(NUM_SPECIAL, NUM_SPECIAL + len(ordinary) - 1, (1,), generator=g)) - NUM_SPECIAL
        w = ordinary[r + 1 if r >= rank.get(x[k], -1) else r]  # uniform over ordinary tokens != x_k
        forced.append(x[:k] + [w])
        cuts.append(k)
        wrong.append(w)
    actions, counts = pad_sequences(forced)
    venv = make_vector_env(task, num_samples, device)
    gen = torch.Generator(device=device).manual_seed(seed)
    res = rollout(
        policy,
        venv,
        seed=seed,
        temperature=temperature,
        generator=gen,
        forced_actions=(actions.to(device), counts.to(device)),
    )
    venv.close()
    acts = res.action_lists()
    finals = res.sequences()
    first_free = [a[c] if len(a) > c else None for a, c in zip(acts, counts.tolist())]
    texts = [task.tokenizer.decode(s) for s in finals]
    return {
        "recovery_backspace": sum(f == sp.backspace for f in first_free) / num_samples,
        "recovery_deleted": sum(not (len(s) > k and s[k] == w) for s, k, w in zip(finals, cuts, wrong)) / num_samples,
        "recovery_validity": validity_rate(task, texts),
    }

"""Probes of a trained policy that :mod:`agents.common.evaluation` does not cover.

:func:`prompted_recovery`: the recovery probe (inject a wrong token, let the policy go on) on a paired
(prompted) task such as ``arithmetic``, where :func:`agents.common.evaluation.recovery` refuses.
Used by the experiment runner (``recovery_samples``) and ``benchmarks/sequencematch_gradients.py``.
"""

from __future__ import annotations

import torch

from agents.common.rollout import make_vector_env, rollout
from agents.sequencematch import PromptedReset
from seqenv.oracle import pad_sequences
from seqenv.tokenizers import SpecialIds


def prompted_recovery(policy, task, num_samples: int = 256, seed: int = 0, temperature: float = 1.0) -> dict:
    """The recovery probe of :func:`agents.common.evaluation.recovery` on a paired (prompted) task [recon].

    For ``num_samples`` test questions (drawn with ``seed``) with answer ``x``,
    a cut ``k`` uniform in ``[0, len(x) - 1]`` and a wrong token ``w``
    uniform over the ordinary tokens other than ``x_k``: the episode starts
    from the question, is forced through ``x_<k, w``, then the policy samples.

    :return: ``recovery_backspace`` (first free action is ``backspace``),
        ``recovery_deleted`` (the final answer no longer holds ``w`` at ``k``),
        ``recovery_validity`` (exact answers after the injection).
    """
    g = torch.Generator().manual_seed(seed)
    prompts, answers = task.split_prompts["test"], task.encoded("test")
    sp = SpecialIds.of(task)
    ordinary = sp.ordinary_ids(task.tokenizer.vocab_size)
    chosen, forced, cuts, wrong = [], [], [], []
    for i in torch.randint(len(answers), (num_samples,), generator=g).tolist():
        x = answers[i]
        k = int(torch.randint(len(x), (1,), generator=g))
        others = [t for t in ordinary if t != x[k]]
        w = others[int(torch.randint(len(others), (1,), generator=g))]
        chosen.append(prompts[i])
        forced.append(x[:k] + [w])
        cuts.append(k)
        wrong.append(w)
    actions, counts = pad_sequences(forced)
    device = next(policy.parameters()).device
    venv = PromptedReset(make_vector_env(task, num_samples, device))
    venv.prompts = chosen
    res = rollout(
        policy,
        venv,
        seed=seed,
        temperature=temperature,
        generator=torch.Generator().manual_seed(seed),
        forced_actions=(actions, counts),
    )
    venv.close()
    acts, finals = res.action_lists(), res.sequences()
    first_free = [a[c] if len(a) > c else None for a, c in zip(acts, counts.tolist())]
    texts = [p + task.tokenizer.decode(s) for p, s in zip(chosen, finals)]
    return {
        "recovery_backspace": sum(f == sp.backspace for f in first_free) / num_samples,
        "recovery_deleted": sum(not (len(s) > k and s[k] == w) for s, k, w in zip(finals, cuts, wrong)) / num_samples,
        "recovery_validity": sum(bool(task.validity(t)) for t in texts) / num_samples,
    }

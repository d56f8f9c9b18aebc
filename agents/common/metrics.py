"""Quality-of-generation metrics (DESIGN.md, "Quality of generation").

Where they are used: :mod:`agents.common.evaluation` generates with a policy
and scores it with these; :mod:`agents.common.report` prints them as tables.

Pure, batched functions; each returns plain Python numbers so that the result
can go straight into ``metrics.json`` and TensorBoard (``eval/<key>``). The
``metrics.json`` keys and their meaning are fixed by DESIGN.md:

==================  ==========================================================
key                 meaning
==================  ==========================================================
``validity``        fraction of samples the task's checker accepts
``nll``             teacher-forced nats per predicted token (ordinary tokens
                    and ``eos``) on the held-out split; :func:`heldout_nll`
``perplexity``      ``exp(nll)``
``oracle_nll``      ``E_model[-log p_oracle(x)]``, nats per sequence, oracle
                    tasks only; out-of-support samples at a cap, with
                    ``oracle_support`` beside it; :func:`oracle_nll`
``bleu4``           BLEU-4 of samples against held-out references, 0--1
``self_bleu4``      BLEU-4 of each sample against the other samples, 0--1
                    (higher = less diverse)
``distinct_2``      unique / total token bigrams over all samples
``mean_length``     mean sample length in task tokens (``eos`` excluded)
``backspace_rate``  fraction of agent actions that are ``backspace``
==================  ==========================================================

Metrics that are undefined for the given input (no validity checker, no
oracle, no action histories, no n-gram long enough) are ``None``, shown as
"–" by :func:`agents.common.report.format_metrics_table`. An empty input list is a caller error
(``ValueError``).

Sources: oracle NLL and held-out NLL of oracle samples follow SeqGAN (Yu et
al., AAAI 2017) and Texygen (Zhu et al., SIGIR 2018); BLEU / Self-BLEU follow
Texygen (each sample scored against a whole reference set, averaged); BLEU is
Papineni et al. (ACL 2002) as computed by ``sacrebleu``; distinct-n is Li et
al. (NAACL 2016). The out-of-support cap of :func:`oracle_nll`, the
legal-action mask in :func:`heldout_nll` and the reference/sample subsets of
the BLEU metrics are our choices [recon].
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F

from seqenv.oracle import pad_sequences
from seqenv.tokenizers import NUM_SPECIAL, SpecialIds

Samples = Sequence[str] | Sequence[Sequence[int]]

#: smallest cap (nats per sequence) for out-of-support samples in :func:`oracle_nll`
ORACLE_NLL_MIN_CAP = 100.0
#: heldout_nll's memory bound: logits values per forward pass and per float64 log-softmax chunk (2^24)
NLL_MAX_LOGITS = 1 << 24
#: defaults of the BLEU subsets (Texygen-style scoring, kept to seconds)
BLEU_MAX_SAMPLES = 200
BLEU_MAX_REFERENCES = 500


def _check_nonempty(items, name: str) -> None:
    if items is None or len(items) == 0:
        raise ValueError(f"{name} must be a non-empty sequence, got {items!r}")


# --------------------------------------------------------------------------
# validity
# --------------------------------------------------------------------------
def validity_rate(task, texts: Sequence[str]) -> float | None:
    """Fraction of ``texts`` the task's validity checker accepts.

    :param task: a :class:`seqenv.tasks.Task`.
    :param texts: decoded samples (backspaces applied).
    :return: a float in ``[0, 1]``, or ``None`` when ``task.validity is None``.
    :raises ValueError: if ``texts`` is empty.
    """
    _check_nonempty(texts, "texts")
    if task.validity is None:
        return None
    return sum(bool(task.validity(t)) for t in texts) / len(texts)


# --------------------------------------------------------------------------
# held-out NLL (teacher forcing)
# --------------------------------------------------------------------------
def heldout_nll(
    policy: torch.nn.Module,
    task,
    split: str = "test",
    batch_size: int = 256,
    device: str | torch.device | None = None,
    max_sequences: int | None = None,
    action_mask: bool = True,
    max_logits: int = NLL_MAX_LOGITS,
) -> dict:
    """Teacher-forced negative log-likelihood of a held-out split under the policy.

    Each text ``x_1..x_n`` becomes the input row ``[bos, x_1..x_n]`` (right
    padded); the logits at index ``i`` predict target ``i`` of
    ``[x_1..x_n, eos]``, so every sequence contributes ``n + 1`` predicted
    tokens, ``eos`` included::

        nll = - sum_seq sum_{i=1..n+1} log pi(y_i | bos, y_<i)  /  sum_seq (n + 1)

    This is the token-averaged cross-entropy of MLE, in nats.

    On an oracle task (``task.oracle`` is not None) the splits are exact
    samples of the oracle, so this is the SeqGAN/Texygen "held-out NLL of
    oracle samples under the model"; ``nll_per_sequence`` then estimates
    ``H(p_oracle) + KL(p_oracle || p_model)`` (nats per sequence), whose first
    term ``task.oracle.entropy_estimate(task.encoded(split))`` gives.

    With a backspace-capable policy this scores only the direct path (no
    backspace) to each text, so ``nll_per_sequence`` is an upper bound on
    ``-log p_model(x)``: paths that reach ``x`` through backspaces also carry
    probability. It is exact for models without backspace (DESIGN.md).

    :param policy: a module whose ``forward(tokens: LongTensor[B, T])``
        returns logits ``FloatTensor[B, T, V]`` (an :class:`agents.policies.Policy`)
        with ``V = task.tokenizer.vocab_size``. Run under ``torch.no_grad`` in
        ``eval()`` mode; its previous train/eval mode is restored afterwards.
    :param task: an unconditional :class:`seqenv.tasks.Task`.
    :param split: ``"train"``, ``"valid"`` or ``"test"``.
    :param batch_size: at most this many sequences per forward pass.
    :param device: where to run; default the policy's parameters' device (CPU
        for a parameterless module).
    :param max_sequences: score only the first ``max_sequences`` texts of the
        split (deterministic); ``None`` = all.
    :param action_mask: [recon] if True, the log-softmax runs over the legal
        actions of the environment (``pad`` and ``bos`` never; ``backspace``
        not at the empty state, i.e. at index 0), which is the distribution a
        masked sampler draws from; if False, over all ``V`` ids (the plain MLE
        cross-entropy).
    :param max_logits: memory bound: a forward pass covers at most
        ``max(1, max_logits // (T * V))`` sequences of padded length ``T``
        (fewer than ``batch_size`` when the vocabulary is large), and the
        log-softmax runs over chunks of positions whose float64 copy holds at
        most ``max_logits`` values (at least one position of the batch), so
        neither the logits nor their log-softmax hold ``batch_size x T x V``
        values at once (SmolLM2, V = 49,154: the default 2^24 values are 64 MB
        in float32, where batch 256 took 8.2 GB).
    :return: ``dict(nll=float nats/token, perplexity=exp(nll),
        nll_per_sequence=float nats/sequence, tokens=int predicted tokens,
        sequences=int scored, skipped=int)``. Texts longer than
        ``task.max_length - 1`` tokens leave no room for the ``eos`` step in
        the environment; they are skipped and counted in ``skipped`` (the
        built-in tasks have none: they drop such texts at construction).
    :raises ValueError: on a conditional task (``task.prompts`` is set: the
        splits hold no pairing of texts with prompts), a bad ``split``,
        ``batch_size < 1``, ``max_sequences < 1``, no sequence left to score,
        a policy whose ``max_state_length`` cannot hold the longest state, or logits
        whose last dimension is not the tokenizer's ``vocab_size``.
    """
    if task.prompts is not None and not task.paired:
        raise ValueError(
            f"heldout_nll needs an unconditional or paired task; task {task.name!r} has prompts "
            f"and its splits do not pair texts with prompts"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_sequences is not None and max_sequences < 1:
        raise ValueError(f"max_sequences must be >= 1 or None, got {max_sequences}")
    pairs = task.encoded_pairs(split)  # raises ValueError on a bad split name; prompts [] unless paired
    if max_sequences is not None:
        pairs = pairs[:max_sequences]
    kept_pairs = [(p + s, len(p)) for p, s in pairs if len(p) + len(s) <= task.max_length - 1]
    kept = [x for x, _ in kept_pairs]
    starts = [n for _, n in kept_pairs]  # prompt tokens: conditioned on, not scored
    skipped = len(pairs) - len(kept)
    if not kept:
        raise ValueError(
            f"split {split!r} of task {task.name!r} has no sequence of at most "
            f"max_length - 1 = {task.max_length - 1} tokens to score ({skipped} skipped)"
        )
    block_size = getattr(policy, "max_state_length", None)
    longest = max(len(s) for s in kept) + 1  # bos + x_1..x_n
    if block_size is not None and longest > block_size:
        raise ValueError(
            f"policy max_state_length={block_size} cannot hold a state of {longest} tokens "
            f"(bos + the longest text of split {split!r}); expected max_state_length >= {longest}"
        )
    if device is None:
        param = next(iter(policy.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
    V = task.tokenizer.vocab_size
    sp = SpecialIds.of(task)

    order = sorted(range(len(kept)), key=lambda i: len(kept[i]))  # similar lengths share a batch
    total_nll, total_tokens = 0.0, 0
    was_training = policy.training
    policy.eval()
    try:
        with torch.no_grad():
            start = 0
            while start < len(order):
                T = len(kept[order[min(start + batch_size, len(order)) - 1]]) + 1  # the longest row it could take
                rows = order[start : start + max(1, min(batch_size, max_logits // (T * V)))]
                start += len(rows)
                batch = [kept[i] for i in rows]
                inputs, lengths = pad_sequences([[sp.bos] + s for s in batch], pad_id=sp.pad)  # [B, T]
                targets, _ = pad_sequences([s + [sp.eos] for s in batch], pad_id=sp.pad)  # [B, T]
                inputs, targets, lengths = inputs.to(device), targets.to(device), lengths.to(device)
                logits = policy(inputs)  # [B, T, V]
                if logits.dim() != 3 or logits.shape[-1] != V:
                    raise ValueError(
                        f"policy logits must be [B, T, {V}] (task vocab_size={V}), got shape {tuple(logits.shape)}"
                    )
                idx = torch.arange(targets.shape[1], device=device)[None, :]
                first = torch.tensor([starts[i] for i in rows], device=device)[:, None]
                predicted = (idx < lengths[:, None]) & (idx >= first)  # [B, T]
                step = max(1, max_logits // (logits.shape[0] * V))  # positions per float64 chunk
                for t0 in range(0, logits.shape[1], step):
                    chunk = logits[:, t0 : t0 + step].double()  # [B, <= step, V]
                    if action_mask:
                        chunk = _mask_illegal_actions(chunk, sp, first_index=t0)
                    nll = F.cross_entropy(chunk.transpose(1, 2), targets[:, t0 : t0 + step], reduction="none")
                    keep = predicted[:, t0 : t0 + step]
                    total_nll += float(torch.where(keep, nll, torch.zeros_like(nll)).sum())
                del logits
                total_tokens += int(predicted.sum())
    finally:
        policy.train(was_training)
    nll = total_nll / total_tokens
    return dict(
        nll=nll,
        perplexity=_exp(nll),
        nll_per_sequence=total_nll / len(kept),
        tokens=total_tokens,
        sequences=len(kept),
        skipped=skipped,
    )


def _mask_illegal_actions(logits: torch.Tensor, ids: SpecialIds | None = None, first_index: int = 0) -> torch.Tensor:
    """Set the env's illegal actions to -inf in ``logits`` [B, T, V] (a copy); position ``t`` is state
    index ``first_index + t`` (index 0 = empty state, where backspace is illegal)."""
    ids = SpecialIds.of(ids)
    logits = logits.clone()
    logits[..., list(ids.never_legal)] = -math.inf
    if first_index == 0:
        logits[:, 0, ids.backspace] = -math.inf
    return logits


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


# --------------------------------------------------------------------------
# oracle NLL
# --------------------------------------------------------------------------
def oracle_nll(task, samples: Samples, min_cap: float = ORACLE_NLL_MIN_CAP) -> dict:
    """Oracle NLL ``E_model[-log p_oracle(x)]`` of model samples, nats per sequence.

    SeqGAN (Yu et al. 2017, Sec. 5) / Texygen's "NLL-oracle": the exact
    oracle log-likelihood (``task.oracle.log_prob``, ``eos`` included)
    averaged over model samples. Lower is better; the oracle's entropy
    (``oracle.entropy_estimate`` of oracle samples) is the value a perfect
    model reaches *in expectation* -- a model collapsed onto likely sequences
    can go below it.

    Out of support [recon]. A sample the oracle cannot emit -- empty, longer
    than ``oracle.max_length``, or holding a token that is not an oracle symbol
    (a character outside the tokenizer, ``unk``) -- has ``-log p = inf``, so
    the honest oracle NLL of a model that ever emits one is infinite. We
    report three numbers:

    * ``oracle_support``: fraction of samples in the support (read it first);
    * ``oracle_nll_in_support``: mean over in-support samples only;
    * ``oracle_nll``: mean over *all* samples, each out-of-support sample
      scored at ``cap = max(min_cap, 2 * worst in-support value)``. The cap
      is never below the worst in-support sample, so emitting an impossible
      sequence never scores better than emitting the worst possible one we
      saw; it is a finite stand-in for ``inf``, not a likelihood, and depends
      on the batch. Compare agents on ``oracle_support`` and
      ``oracle_nll_in_support`` whenever ``oracle_support < 1``.

    :param task: a :class:`seqenv.tasks.Task` with an oracle.
    :param samples: decoded texts (encoded with ``task.tokenizer``; a text it
        cannot encode is out of support) or final token-id lists (backspaces
        applied, no ``eos``).
    :param min_cap: smallest cap in nats per sequence (default 100).
    :return: ``dict(oracle_nll, oracle_nll_in_support (None if no sample is
        in support), oracle_support, oracle_nll_cap, num_samples)``; floats in
        nats per sequence except the fraction and the count.
    :raises ValueError: if the task has no oracle, ``samples`` is empty,
        ``min_cap`` is not positive, or a token list holds ``pad``, ``bos``,
        ``eos`` or ``backspace`` (pass final sequences, see
        :func:`seqenv.tokenizers.apply_backspaces`).
    """
    if task.oracle is None:
        raise ValueError(f"task {task.name!r} has no oracle; oracle_nll needs an oracle task such as 'oracle-hmm'")
    if not min_cap > 0:
        raise ValueError(f"min_cap must be > 0 nats, got {min_cap}")
    _check_nonempty(samples, "samples")
    oracle = task.oracle
    symbols = range(NUM_SPECIAL, NUM_SPECIAL + oracle.num_symbols)
    seqs: list[list[int] | None] = []
    for s in samples:
        ids = _encode_or_none(task.tokenizer, s) if isinstance(s, str) else _check_final_ids(s)
        ok = ids is not None and 1 <= len(ids) <= oracle.max_length and all(i in symbols for i in ids)
        seqs.append(ids if ok else None)
    in_support = [s for s in seqs if s is not None]
    nll_in = []
    if in_support:
        nll_in = (-oracle.log_prob(*pad_sequences(in_support))).tolist()
    finite = [v for v in nll_in if math.isfinite(v)]
    n_out = len(seqs) - len(finite)
    cap = max(float(min_cap), 2.0 * max(finite, default=0.0))
    return dict(
        oracle_nll=(sum(finite) + n_out * cap) / len(seqs),
        oracle_nll_in_support=sum(finite) / len(finite) if finite else None,
        oracle_support=len(finite) / len(seqs),
        oracle_nll_cap=cap,
        num_samples=len(seqs),
    )


def _encode_or_none(tokenizer, text: str) -> list[int] | None:
    try:
        return tokenizer.encode(text)
    except ValueError:  # a character outside the char tokenizer's vocabulary
        return None


def _check_final_ids(ids: Sequence[int], tokenizer=None) -> list[int]:
    ids = [int(i) for i in ids]
    special = SpecialIds.of(tokenizer).non_writing
    bad = [i for i in ids if i in special]
    if bad:
        raise ValueError(
            f"a sample holds special id {bad[0]} (pad/bos/eos/backspace); expected a final "
            f"sequence of ordinary tokens: apply seqenv.tokenizers.apply_backspaces first"
        )
    return ids


# --------------------------------------------------------------------------
# BLEU and Self-BLEU (Texygen-style, sacrebleu statistics)
# --------------------------------------------------------------------------
def bleu4(
    samples: Sequence[str],
    references: Sequence[str],
    max_samples: int | None = BLEU_MAX_SAMPLES,
    max_references: int | None = BLEU_MAX_REFERENCES,
    tokenize: str = "13a",
    seed: int = 0,
) -> float:
    """Texygen-style BLEU-4: each sample against the whole reference set, averaged.

    Each sample is scored by multi-reference sentence BLEU (Papineni et al.
    2002) against every reference at once: n-gram matches are clipped by the
    largest count of that n-gram in any single reference, the brevity penalty
    uses the reference length closest to the sample's (ties: the shorter).
    Orders 1..4 with uniform weights; zero-match orders are floored at 0.1
    matches ("floor" = Chen & Cherry 2014 method 1, Texygen's NLTK
    ``SmoothingFunction().method1``); orders longer than the sample are left
    out (sacrebleu's ``effective_order``). The score is on a 0--1 scale
    (sacrebleu's 0--100 divided by 100) and equals the mean over samples of
    ``sacrebleu.BLEU(tokenize=tokenize, smooth_method="floor",
    effective_order=True).sentence_score(sample, references).score / 100``;
    we compute the same statistics with the reference n-gram maxima built once,
    so 200 samples x 500 references take well under a second.

    Tokenization: sacrebleu's ``"13a"`` (mteval: words, with punctuation and
    brackets split off), suited to both Python code (``foo(a, b)`` ->
    ``foo ( a , b )``) and English prose; ``"char"`` for texts without word
    structure (the oracle tasks' letter strings). Any sacrebleu tokenizer name
    is accepted.

    Subsets [recon]: at most ``max_samples`` samples and ``max_references``
    references, each a uniform subset without replacement drawn with
    ``random.Random(seed)`` (deterministic; ``None`` = all).

    :param samples: generated texts.
    :param references: held-out texts (e.g. ``task.splits["test"]``).
    :return: mean sentence BLEU-4 in ``[0, 1]``.
    :raises ValueError: on an empty ``samples`` or ``references``, or a subset
        size below 1.
    """
    _check_nonempty(samples, "samples")
    _check_nonempty(references, "references")
    bleu = _bleu_metric(tokenize)
    samples = _subset(samples, max_samples, seed, "max_samples")
    references = _subset(references, max_references, seed + 1, "max_references")
    ref_stats = [_ngram_stats(bleu, r) for r in references]
    ref_max: dict = {}
    for ngrams, _ in ref_stats:
        for g, c in ngrams.items():
            if c > ref_max.get(g, 0):
                ref_max[g] = c
    ref_lens = sorted({n for _, n in ref_stats})
    scores = []
    for s in samples:
        ngrams, hyp_len = _ngram_stats(bleu, s)
        scores.append(_sentence_bleu(ngrams, hyp_len, lambda g: ref_max.get(g, 0), ref_lens))
    return sum(scores) / len(scores)


def self_bleu4(
    samples: Sequence[str],
    max_samples: int | None = BLEU_MAX_SAMPLES,
    tokenize: str = "13a",
    seed: int = 0,
) -> float | None:
    """Self-BLEU-4 (Texygen, Zhu et al. 2018): each sample against all the others.

    :func:`bleu4` with sample ``i`` as hypothesis and the other samples (of the
    same ``max_samples`` subset) as references, averaged over ``i``. Higher
    means less diverse; identical samples give 1.

    :param samples: generated texts.
    :return: mean BLEU-4 in ``[0, 1]``, or ``None`` for fewer than 2 samples.
    :raises ValueError: on empty ``samples`` or ``max_samples < 1``.
    """
    _check_nonempty(samples, "samples")
    bleu = _bleu_metric(tokenize)
    samples = _subset(samples, max_samples, seed, "max_samples")
    if len(samples) < 2:
        return None
    stats = [_ngram_stats(bleu, s) for s in samples]
    # per n-gram: the largest count, the sample holding it, the second largest
    # -> the largest count among the *other* samples in O(1)
    top: dict = {}
    for j, (ngrams, _) in enumerate(stats):
        for g, c in ngrams.items():
            best, owner, second = top.get(g, (0, -1, 0))
            if c > best:
                top[g] = (c, j, best)
            elif c > second:
                top[g] = (best, owner, c)
    len_count = Counter(n for _, n in stats)
    scores = []
    for i, (ngrams, hyp_len) in enumerate(stats):

        def max_other(g, i=i):
            best, owner, second = top[g]
            return second if owner == i else best

        others = len_count.copy()
        others[hyp_len] -= 1
        ref_lens = sorted(n for n, c in others.items() if c > 0)
        scores.append(_sentence_bleu(ngrams, hyp_len, max_other, ref_lens))
    return sum(scores) / len(scores)


def _bleu_metric(tokenize: str):
    from sacrebleu.metrics.bleu import BLEU

    try:
        return BLEU(tokenize=tokenize, smooth_method="floor", smooth_value=0.1, effective_order=True)
    except KeyError:  # sacrebleu's lookup of an unknown tokenizer name
        raise ValueError(f"unknown sacrebleu tokenizer {tokenize!r}; expected e.g. '13a', 'char', 'none'") from None


def _ngram_stats(bleu, text: str) -> tuple[Counter, int]:
    """(Counter of word n-grams of orders 1..4, word count) of ``text`` after sacrebleu's tokenizer."""
    from sacrebleu.metrics.helpers import extract_all_word_ngrams

    return extract_all_word_ngrams(bleu.tokenizer(text.rstrip()), 1, bleu.max_ngram_order)


def _sentence_bleu(ngrams: Counter, hyp_len: int, ref_count, ref_lens: list[int]) -> float:
    """Sentence BLEU (0--1) from the hypothesis n-grams, a clip function and the sorted reference lengths."""
    from sacrebleu.metrics.bleu import BLEU

    correct, total = [0] * 4, [0] * 4
    for g, c in ngrams.items():
        total[len(g) - 1] += c
        correct[len(g) - 1] += min(c, ref_count(g))
    ref_len = min(ref_lens, key=lambda r: (abs(hyp_len - r), r))  # closest; ties -> shorter (sacrebleu)
    score = (
        BLEU.compute_bleu(
            correct, total, hyp_len, ref_len, smooth_method="floor", smooth_value=0.1, effective_order=True
        ).score
        / 100.0
    )
    return min(score, 1.0)  # sacrebleu's 0--100 scale can round a perfect match to 1.0000000000000004


def _subset(items: Sequence, k: int | None, seed: int, name: str) -> list:
    """At most ``k`` items, a uniform subset in original order drawn with ``random.Random(seed)``."""
    if k is not None and k < 1:
        raise ValueError(f"{name} must be >= 1 or None, got {k}")
    items = list(items)
    if k is None or len(items) <= k:
        return items
    keep = sorted(random.Random(seed).sample(range(len(items)), k))
    return [items[i] for i in keep]


# --------------------------------------------------------------------------
# diversity, length, backspace statistics
# --------------------------------------------------------------------------
def distinct_n(samples: Samples, n: int = 2) -> float | None:
    """Distinct-n (Li et al., NAACL 2016): unique n-grams / total n-grams, pooled over samples.

    N-grams are taken within each sample (never across two) over its units:
    token ids for id lists, characters for strings (= task tokens of a
    character tokenizer). Example: ``[[1, 2, 3], [1, 2, 4]]`` has bigrams
    ``(1,2) (2,3) (1,2) (2,4)``: distinct-2 = 3 / 4.

    :param samples: token-id lists or strings.
    :param n: n-gram order, >= 1.
    :return: a float in ``(0, 1]``, or ``None`` if no sample has ``n`` units.
    :raises ValueError: on empty ``samples`` or ``n < 1``.
    """
    _check_nonempty(samples, "samples")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    seen: set = set()
    total = 0
    for s in samples:
        units = list(s) if isinstance(s, str) else [int(t) for t in s]
        grams = [tuple(units[i : i + n]) for i in range(len(units) - n + 1)]
        seen.update(grams)
        total += len(grams)
    return len(seen) / total if total else None


def length_stats(token_lists: Sequence[Sequence[int]]) -> dict:
    """Length statistics of final sequences, in tokens (``eos`` not counted).

    :param token_lists: final token-id lists (backspaces applied).
    :return: ``dict(mean_length, std_length, min_length, max_length)``; the
        standard deviation is the population one (ddof = 0).
    :raises ValueError: on an empty list.
    """
    _check_nonempty(token_lists, "token_lists")
    lengths = [len(t) for t in token_lists]
    mean = sum(lengths) / len(lengths)
    std = math.sqrt(sum((x - mean) ** 2 for x in lengths) / len(lengths))
    return dict(mean_length=mean, std_length=std, min_length=min(lengths), max_length=max(lengths))


def backspace_rate(action_histories: Sequence[Sequence[int]], ids=None) -> float | None:
    """Fraction of the agent's actions that are ``backspace``, pooled over episodes.

    Every id is one action, ``eos`` included; ``pad`` (id 0) is never an
    action and is ignored, so a right-padded ``LongTensor[B, T]`` of action
    histories works too. A prompt is not part of the history.

    :param action_histories: per episode, the action ids in order.
    :param ids: special ids (anything ``SpecialIds.of`` takes; default the fixed ids).
    :return: a float in ``[0, 1]``, or ``None`` if there is no action at all.
    :raises ValueError: on an empty list.
    """
    _check_nonempty(action_histories, "action_histories")
    sp = SpecialIds.of(ids)
    actions = backspaces = 0
    for h in action_histories:
        ids = [int(a) for a in h]
        actions += sum(a != sp.pad for a in ids)
        backspaces += sum(a == sp.backspace for a in ids)
    return backspaces / actions if actions else None


# --------------------------------------------------------------------------
# bundle
# --------------------------------------------------------------------------
def evaluate_samples(
    task,
    samples: Samples,
    action_histories: Sequence[Sequence[int]] | None = None,
    references_split: str = "test",
    max_bleu_samples: int | None = BLEU_MAX_SAMPLES,
    max_references: int | None = BLEU_MAX_REFERENCES,
    bleu_tokenize: str | None = None,
    seed: int = 0,
    prompts: Sequence[str] | None = None,
) -> dict:
    """All sample-based metrics of one set of generations, under the standard keys.

    :param task: the :class:`seqenv.tasks.Task` the samples were generated for.
    :param samples: final sequences, as decoded texts (encoded with
        ``task.tokenizer`` for the token metrics) or token-id lists
        (backspaces applied, no ``eos``; decoded for the text metrics).
    :param action_histories: the agents' action ids per episode (with
        backspaces and ``eos``), for ``backspace_rate``; ``None`` -> ``None``.
    :param references_split: split whose texts are the BLEU references.
    :param max_bleu_samples, max_references, seed: BLEU subsets (:func:`bleu4`).
    :param bleu_tokenize: sacrebleu tokenizer; default ``"char"`` on oracle
        tasks (letter strings without words), ``"13a"`` otherwise.
    :param prompts: the prompt text of each sample (conditional tasks): the
        validity checker reads ``prompt + sample`` (e.g. ``arithmetic``:
        question + answer); the other metrics read the samples alone.
    :return: ``dict`` with ``validity``, ``bleu4``, ``self_bleu4``,
        ``distinct_2`` (over task tokens), ``mean_length``, ``std_length``,
        ``min_length``, ``max_length`` (task tokens), ``backspace_rate``,
        ``oracle_nll``, ``oracle_nll_in_support``, ``oracle_support``,
        ``num_samples``; a key is ``None`` where it does not apply.
    :raises ValueError: on empty ``samples``, a bad ``references_split``, a
        text the tokenizer cannot encode, or a token list holding special ids.
    """
    _check_nonempty(samples, "samples")
    tok = task.tokenizer
    texts: list[str]
    if isinstance(samples[0], str):
        texts = list(cast("Sequence[str]", samples))
        ids = [tok.encode(t) for t in texts]
    else:
        ids = [_check_final_ids(s, tok) for s in cast("Sequence[Sequence[int]]", samples)]
        texts = [tok.decode(s) for s in ids]
    references = task.splits.get(references_split)
    if not references:
        raise ValueError(
            f"references_split {references_split!r} is not a non-empty split of task "
            f"{task.name!r}; expected one of {sorted(task.splits)}"
        )
    if bleu_tokenize is None:
        bleu_tokenize = "char" if task.oracle is not None else "13a"
    out = dict(
        validity=validity_rate(task, texts if prompts is None else [p + t for p, t in zip(prompts, texts)]),
        bleu4=bleu4(texts, references, max_bleu_samples, max_references, bleu_tokenize, seed),
        self_bleu4=self_bleu4(texts, max_bleu_samples, bleu_tokenize, seed),
        distinct_2=distinct_n(ids, 2),
        **length_stats(ids),
        backspace_rate=backspace_rate(action_histories, tok) if action_histories is not None else None,
        oracle_nll=None,
        oracle_nll_in_support=None,
        oracle_support=None,
        num_samples=len(ids),
    )
    if task.oracle is not None:
        o = oracle_nll(task, ids)
        out.update(
            oracle_nll=o["oracle_nll"],
            oracle_nll_in_support=o["oracle_nll_in_support"],
            oracle_support=o["oracle_support"],
        )
    return out

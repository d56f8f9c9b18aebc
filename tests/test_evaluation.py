import math

import pytest
import torch
import torch.nn as nn
from sacrebleu.metrics.bleu import BLEU

from agents.common.evaluation import (
    backspace_rate,
    bleu4,
    comparison_line,
    distinct_n,
    evaluate_samples,
    format_metrics_table,
    heldout_nll,
    length_stats,
    oracle_nll,
    self_bleu4,
    validity_rate,
)
from agents.policies.transformer import PolicyConfig, TransformerPolicy
from seqenv.tasks import Task, make_task, python_is_valid
from seqenv.tokenizers import BACKSPACE_ID, EOS_ID, CharTokenizer

ABCD = CharTokenizer("abcd")  # ids a=5 b=6 c=7 d=8, vocab_size 9


def small_task(test=("ab", "c", "dab"), max_length=6, validity=None, prompts=None):
    splits = {"train": ["abc", "dd"], "valid": ["a"], "test": list(test)}
    return Task(name="abcd", tokenizer=ABCD, splits=splits, max_length=max_length, validity=validity, prompts=prompts)


@pytest.fixture(scope="module")
def oracle_task():
    return make_task("oracle-hmm", num_train=50, num_eval=300)


# --------------------------------------------------------------------------- validity
def test_validity_rate_python_lines():
    task = small_task(validity=python_is_valid)
    texts = ["x = f(1)", "def f(:", "print('hi')", "", "for x in"]
    assert validity_rate(task, texts) == pytest.approx(2 / 5)
    assert validity_rate(small_task(), texts) is None  # no checker
    with pytest.raises(ValueError, match="non-empty"):
        validity_rate(task, [])


# --------------------------------------------------------------------------- held-out NLL
class ConstantLogits(nn.Module):
    """Logits 0 everywhere except ``bonus`` on eos; records the mode it ran in."""

    def __init__(self, vocab_size, bonus=2.0):
        super().__init__()
        self.vocab_size, self.bonus, self.modes = vocab_size, bonus, []

    def forward(self, tokens):
        self.modes.append(self.training)
        logits = torch.zeros(*tokens.shape, self.vocab_size)
        logits[..., EOS_ID] = self.bonus
        return logits


def test_heldout_nll_uniform_logits_is_log_vocab():
    task = small_task()  # test texts of 2, 1, 3 tokens -> 3 + 2 + 4 = 9 predicted tokens (eos included)
    policy = TransformerPolicy(PolicyConfig(vocab_size=9, block_size=8, n_layer=1, n_head=1, n_embd=8))
    with torch.no_grad():
        for p in policy.parameters():
            p.zero_()  # logits = lm_head(ln_f(x)) = 0: uniform over the 9 ids
    out = heldout_nll(policy, task, action_mask=False)
    assert out["tokens"] == 9 and out["sequences"] == 3 and out["skipped"] == 0
    assert out["nll"] == pytest.approx(math.log(9), abs=1e-9)
    assert out["perplexity"] == pytest.approx(9.0, abs=1e-7)
    assert out["nll_per_sequence"] == pytest.approx(3 * math.log(9), abs=1e-9)
    # legal-action mask: pad, bos never (7 legal ids); backspace not at the empty state (6 legal ids)
    masked = heldout_nll(policy, task)
    expected = (3 * math.log(6) + 6 * math.log(7)) / 9
    assert masked["nll"] == pytest.approx(expected, abs=1e-9)
    assert masked["perplexity"] == pytest.approx(math.exp(expected), abs=1e-9)


def test_heldout_nll_counts_eos_with_its_own_probability():
    task = small_task()
    policy = ConstantLogits(9, bonus=2.0).train()
    out = heldout_nll(policy, task, action_mask=False)
    log_z = math.log(math.exp(2.0) + 8)
    # 6 ordinary tokens at -log p = log Z, 3 eos at log Z - 2
    assert out["nll"] == pytest.approx((9 * log_z - 3 * 2.0) / 9, abs=1e-9)
    assert out["nll_per_sequence"] == pytest.approx((9 * log_z - 6.0) / 3, abs=1e-9)
    assert policy.modes and not any(policy.modes)  # forward ran in eval mode
    assert policy.training  # ... and the previous mode is restored


def test_heldout_nll_padding_and_batching_match_per_sequence_forward():
    torch.manual_seed(0)
    task = small_task(test=("ab", "c", "dab", "abcd", "ddd"), max_length=6)
    policy = TransformerPolicy(PolicyConfig(vocab_size=9, block_size=8, n_layer=1, n_head=2, n_embd=16)).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for ids in task.encoded("test"):
            logits = policy(torch.tensor([[1] + ids]))[0].double()
            target = torch.tensor(ids + [EOS_ID])
            total += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
            count += len(target)
    for bs in (1, 2, 256):
        out = heldout_nll(policy, task, batch_size=bs, action_mask=False)
        assert out["nll"] == pytest.approx(total / count, abs=1e-6)
        assert out["tokens"] == count
    assert not policy.training
    assert heldout_nll(policy, task, max_sequences=2, action_mask=False)["tokens"] == 3 + 2


def test_heldout_nll_skips_too_long_and_rejects_bad_input():
    task = small_task(test=("ab", "abcd"), max_length=4)  # "abcd" (4 tokens) leaves no room for eos
    out = heldout_nll(ConstantLogits(9, 0.0), task, action_mask=False)
    assert out["skipped"] == 1 and out["sequences"] == 1 and out["tokens"] == 3
    with pytest.raises(ValueError, match="prompts"):
        heldout_nll(ConstantLogits(9), small_task(prompts=["a"]))
    with pytest.raises(ValueError, match=r"\[B, T, 9\]"):
        heldout_nll(ConstantLogits(12), small_task())
    small = TransformerPolicy(PolicyConfig(vocab_size=9, block_size=3, n_layer=1, n_head=1, n_embd=8))
    with pytest.raises(ValueError, match="max_state_length=3"):
        heldout_nll(small, small_task())  # "dab" needs bos + 3 tokens
    with pytest.raises(ValueError, match="split"):
        heldout_nll(ConstantLogits(9), small_task(), split="dev")


# --------------------------------------------------------------------------- oracle NLL
def test_oracle_nll_on_oracle_samples_is_the_entropy_estimate(oracle_task):
    ids = oracle_task.encoded("test")
    expected = oracle_task.oracle.entropy_estimate(ids)
    for samples in (ids, oracle_task.splits["test"]):
        out = oracle_nll(oracle_task, samples)
        assert out["oracle_support"] == 1.0 and out["num_samples"] == 300
        assert out["oracle_nll"] == pytest.approx(expected, rel=1e-12)
        assert out["oracle_nll_in_support"] == pytest.approx(expected, rel=1e-12)


def test_oracle_nll_caps_out_of_support_samples(oracle_task):
    good = oracle_task.splits["test"][:5]
    too_long = "a" * (oracle_task.oracle.max_length + 1)
    out = oracle_nll(oracle_task, good + ["", too_long, "abz"])  # empty, too long, foreign character
    good_nll = (-oracle_task.oracle.log_prob(*_pad(oracle_task.encoded("test")[:5]))).tolist()
    cap = max(100.0, 2 * max(good_nll))
    assert out["oracle_support"] == pytest.approx(5 / 8)
    assert out["oracle_nll_cap"] == pytest.approx(cap)
    assert out["oracle_nll"] == pytest.approx((sum(good_nll) + 3 * cap) / 8)
    assert out["oracle_nll_in_support"] == pytest.approx(sum(good_nll) / 5)
    none = oracle_nll(oracle_task, [""], min_cap=50.0)
    assert none["oracle_support"] == 0.0 and none["oracle_nll"] == 50.0 and none["oracle_nll_in_support"] is None
    with pytest.raises(ValueError, match="apply_backspaces"):
        oracle_nll(oracle_task, [[5, 6, EOS_ID]])
    with pytest.raises(ValueError, match="no oracle"):
        oracle_nll(small_task(), ["ab"])


def _pad(seqs):
    from seqenv.oracle import pad_sequences

    return pad_sequences(seqs)


# --------------------------------------------------------------------------- BLEU
def test_bleu4_hand_computed_values():
    refs = ["a b c d e", "x = f ( 1 )", "print ( x )"]
    assert bleu4(refs, refs) == 1.0
    assert bleu4(["zz qq ww vv"], refs) == 0.0
    # p1 = 3/4, p2 = 2/3, p3 = 1/2, p4 = 0 -> floor 0.1/1; equal lengths: BP = 1
    assert bleu4(["a b c d"], ["a b c e"]) == pytest.approx((0.75 * (2 / 3) * 0.5 * 0.1) ** 0.25, abs=1e-12)
    # 2 words: effective order 2, both precisions 1; closest ref length 4 -> BP = exp(1 - 4/2)
    assert bleu4(["a b"], ["a b c d", "q r s t u v w"]) == pytest.approx(math.exp(-1.0), abs=1e-12)
    # clipping by the largest count in ONE reference: "a a a" vs refs with one and two "a"
    # p1 = 2/3, p2 = 1/2, p3 = 0 -> 0.1/1, no 4-gram (effective order 3); closest ref length 2 < 3: BP = 1
    assert bleu4(["a a a"], ["a", "a a"]) == pytest.approx((2 / 3 * 1 / 2 * 0.1) ** (1 / 3), abs=1e-12)


def test_bleu4_and_self_bleu4_equal_sacrebleu_sentence_scores():
    texts = ["x = f(a, b)", "y = f(a)", "return x + y", "x = g(b, a)", "print(x)", "if x: return y"]
    metric = BLEU(tokenize="13a", smooth_method="floor", smooth_value=0.1, effective_order=True)
    hyps, refs = texts[:3], texts[2:]
    expected = sum(metric.sentence_score(h, refs).score for h in hyps) / 100 / len(hyps)
    assert bleu4(hyps, refs) == pytest.approx(expected, abs=1e-12)
    expected_self = (
        sum(metric.sentence_score(h, texts[:i] + texts[i + 1 :]).score for i, h in enumerate(texts)) / 100 / len(texts)
    )
    assert self_bleu4(texts) == pytest.approx(expected_self, abs=1e-12)
    assert 0.0 < expected_self < 1.0


def test_self_bleu4_identical_and_degenerate():
    assert self_bleu4(["a b c d e"] * 4) == 1.0
    assert self_bleu4(["a b c d e"]) is None
    # one duplicated pair among distinct strings: the duplicates score 1, the others 0
    assert self_bleu4(["a b c d", "a b c d", "e f g h", "i j k l"]) == pytest.approx(0.5)


def test_bleu_subsets_are_deterministic_and_bounded():
    refs = [f"w{i} w{i + 1} w{i + 2}" for i in range(50)]
    a = bleu4(refs[:20], refs, max_samples=5, max_references=10, seed=3)
    assert a == bleu4(refs[:20], refs, max_samples=5, max_references=10, seed=3)
    assert 0.0 <= a <= 1.0
    with pytest.raises(ValueError, match="max_references"):
        bleu4(refs, refs, max_references=0)
    with pytest.raises(ValueError, match="tokenizer"):
        bleu4(refs, refs, tokenize="no-such-tokenizer")


# --------------------------------------------------------------------------- diversity, length, backspace
def test_distinct_n_exact():
    assert distinct_n([[1, 2, 3], [1, 2, 4]], 2) == 0.75
    assert distinct_n([[1, 2, 3], [1, 2, 4]], 1) == 4 / 6
    assert distinct_n(["abab", "ba"], 2) == 0.5  # ab ba ab | ba: 2 unique of 4
    assert distinct_n([[1, 2], [3]], 3) is None
    with pytest.raises(ValueError, match="n must be >= 1"):
        distinct_n([[1]], 0)


def test_length_stats_exact():
    out = length_stats([[5, 6], [5, 6, 7, 8], []])
    assert out == {"mean_length": 2.0, "std_length": pytest.approx(math.sqrt(8 / 3)), "min_length": 0, "max_length": 4}


def test_backspace_rate_exact():
    b, e = BACKSPACE_ID, EOS_ID
    assert backspace_rate([[5, b, 6, e], [5, e]]) == pytest.approx(1 / 6)
    assert backspace_rate(torch.tensor([[5, b, 6, e], [5, e, 0, 0]])) == pytest.approx(1 / 6)  # pads ignored
    assert backspace_rate([[5, b, b, 7]]) == 0.5
    assert backspace_rate([[]]) is None
    with pytest.raises(ValueError, match="non-empty"):
        backspace_rate([])


# --------------------------------------------------------------------------- bundle and table
def test_evaluate_samples_oracle_task(oracle_task):
    ids = oracle_task.encoded("valid")[:40]
    histories = [s[:1] + [BACKSPACE_ID] + s + [EOS_ID] for s in ids]
    out = evaluate_samples(oracle_task, ids, action_histories=histories)
    assert out["validity"] is None and out["num_samples"] == 40
    assert out["oracle_support"] == 1.0
    assert out["oracle_nll"] == pytest.approx(oracle_task.oracle.entropy_estimate(ids))
    assert out["distinct_2"] == distinct_n(ids, 2)
    assert out["mean_length"] == pytest.approx(sum(map(len, ids)) / 40)
    n_actions = sum(len(s) + 3 for s in ids)
    assert out["backspace_rate"] == pytest.approx(40 / n_actions)
    texts = [oracle_task.tokenizer.decode(s) for s in ids]
    assert out["bleu4"] == pytest.approx(bleu4(texts, oracle_task.splits["test"], tokenize="char"))
    assert out == evaluate_samples(oracle_task, texts, action_histories=histories)


def test_evaluate_samples_text_task():
    splits = {"train": ["c = a"], "valid": ["c = b"], "test": ["a = b", "b = c"]}
    task = Task(name="py", tokenizer=CharTokenizer("abc =("), splits=splits, max_length=8, validity=python_is_valid)
    out = evaluate_samples(task, ["a = b", "a = (", "a = b"])
    assert out["validity"] == pytest.approx(2 / 3)
    assert out["bleu4"] == pytest.approx(bleu4(["a = b", "a = (", "a = b"], ["a = b", "b = c"]))
    assert out["self_bleu4"] == pytest.approx(self_bleu4(["a = b", "a = (", "a = b"]))
    assert out["distinct_2"] == pytest.approx(5 / 12)  # "a ", " =", "= ", " b" | ... " (": 5 unique of 12
    assert out["backspace_rate"] is None and out["oracle_nll"] is None and out["oracle_support"] is None
    with pytest.raises(ValueError, match="references_split"):
        evaluate_samples(task, ["a = b"], references_split="dev")


def test_format_metrics_table_exact():
    rows = {
        "mle": {"nll": 1.23456, "validity": None, "num_samples": 200},
        "sm": {"nll": (1.5, 0.25), "bleu4": 0.5},
    }
    assert format_metrics_table(rows) == (
        "| run | nll | validity | num_samples | bleu4 |\n"
        "|---|---|---|---|---|\n"
        "| mle | 1.235 | – | 200 | – |\n"
        "| sm | 1.500 ± 0.250 | – | – | 0.500 |"
    )
    assert format_metrics_table(rows, columns=["bleu4"], digits=1) == (
        "| run | bleu4 |\n|---|---|\n| mle | – |\n| sm | 0.5 |"
    )
    with pytest.raises(ValueError, match="at least one row"):
        format_metrics_table({})


def test_format_metrics_table_drops_columns_without_values_and_comparison_line():
    rows = {"mle": {"validity": 0.5, "oracle_nll": None, "nll": 1.0}, "sm": {"validity": 0.625, "oracle_nll": None}}
    table = format_metrics_table(rows, columns=("validity", "oracle_nll", "nll"), drop_empty=True)
    assert table.splitlines()[0] == "| run | validity | nll |"
    assert table.splitlines()[3] == "| sm | 0.625 | – |"  # nll has a value in one row: kept
    assert "oracle_nll" in format_metrics_table(rows, columns=("validity", "oracle_nll"))  # default keeps all
    assert comparison_line(rows, control="mle", num_seeds=1) == (
        "Best validity: sm, 0.625, +0.125 against mle (0.500; 1 seed)."
    )
    rows["mle"]["validity"] = 0.75
    assert comparison_line(rows, control="mle", num_seeds=3) == (
        "Best validity: mle (the control), 0.750; sm is 0.125 lower (3 seeds)."
    )
    assert comparison_line({"sm": {"validity": 0.1}}, control="mle") is None

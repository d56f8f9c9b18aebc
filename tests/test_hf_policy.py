"""Tests for agents/policies/hf.py: any HF causal LM as a backspace policy.

Tiny random Llama / Qwen2 / GPT-2 configs with a word-level tokenizer built
here, written with ``save_pretrained`` to a temp dir and loaded by path;
nothing is downloaded.
"""

import json
import random

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from tolerances import rounding_atol, transformer_chain_length  # noqa: E402

from agents.policies.hf import BACKSPACE_TOKEN, PAD_TOKEN, HFPolicy, LoraSettings  # noqa: E402
from agents.policies.transformer import backspace_layout  # noqa: E402
from seqenv.tokenizers import HFTokenizer, tokenizer_from_dict  # noqa: E402

WORDS = [f"w{i}" for i in range(24)]
# Special-token setups modelled on the real tokenizers: Llama (bos/eos/unk, no pad),
# Qwen2 base (no bos, pad == eos), GPT-2 (one token for bos/eos/unk, no pad).
SPECIALS = {
    "llama": dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>"),
    "qwen2": dict(eos_token="<|endoftext|>", pad_token="<|endoftext|>"),
    "gpt2": dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"),
}


def make_tokenizer(arch: str):
    """Word-level for Llama/GPT-2 setups; byte-level BPE for Qwen2 (transformers rebuilds Qwen2Tokenizer from
    vocab + merges, so a word-level model would encode nothing)."""
    specials = list(dict.fromkeys(SPECIALS[arch].values()))
    if arch == "qwen2":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=300,
            min_frequency=1,
            special_tokens=specials,
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tok.train_from_iterator([" ".join(WORDS)] * 4, trainer=trainer)
    else:
        vocab = {tok: i for i, tok in enumerate(specials + WORDS)}
        tok = Tokenizer(models.WordLevel(vocab, unk_token=SPECIALS[arch].get("unk_token")))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIALS[arch])


def ordinary_ids(policy: HFPolicy, n: int = 24) -> list[int]:
    """The first ``n`` ids that are not special."""
    special = set(policy.special_ids.values())
    return [i for i in range(policy.vocab_size) if i not in special][:n]


def make_config(arch: str, vocab_size: int):
    # initializer_range 0.3: logits of order 1, so a wrong mask moves them far beyond the rounding tolerance (logits_atol)
    common = dict(vocab_size=vocab_size, initializer_range=0.3)
    if arch == "gpt2":
        return transformers.GPT2Config(
            n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0, **common
        )  # <|endoftext|> is id 0 in our tokenizer
    cls = transformers.LlamaConfig if arch == "llama" else transformers.Qwen2Config
    return cls(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        **common,
    )


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    dirs = {}
    for arch in SPECIALS:
        torch.manual_seed(0)
        tokenizer = make_tokenizer(arch)
        model = transformers.AutoModelForCausalLM.from_config(make_config(arch, len(tokenizer)))
        path = tmp_path_factory.mktemp(arch)
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        dirs[arch] = path
    return dirs


def load(model_dirs, arch, attn="sdpa", **kw) -> HFPolicy:
    return HFPolicy.from_pretrained(model_dirs[arch], dtype=torch.float32, attn_implementation=attn, **kw).eval()


def logits_atol(policy: HFPolicy, logits: torch.Tensor, seq_len: int) -> float:
    """Rounding tolerance for two evaluations of these logits in another operation order (tests/tolerances.py):
    float32, reduction chain of the model's blocks at ``seq_len`` positions, scale = the largest |logit|."""
    c = policy.lm.config
    d = c.hidden_size
    d_ff = getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * d
    n = transformer_chain_length(c.num_hidden_layers, d, d_ff, d // c.num_attention_heads, seq_len)
    return rounding_atol(logits.dtype, n, logits.abs().max().item())


def reduce(row: list[int], bs: int, pad: int) -> list[int]:
    state = []
    for tok in row:
        if tok == bs:
            state.pop()
        elif tok != pad:
            state.append(tok)
    return state


def reference_logits(policy: HFPolicy, state: list[int]) -> torch.Tensor:
    """Plain causal forward of one state, no mask and default positions (not our code path)."""
    with torch.no_grad():
        return policy.lm(input_ids=torch.tensor([state])).logits[0, -1, : policy.vocab_size]


def trajectories(policy: HFPolicy, seed: int = 0) -> list[list[int]]:
    ids = policy.special_ids
    bos, bs = ids["bos"], ids["backspace"]
    w = ordinary_ids(policy)
    rows = [
        [bos, w[0], w[1], bs, bs, w[2], bs, w[3], w[4], w[5], bs, w[6]],  # back to bos-only twice
        [bos, *w[7:13], bs, bs, bs, bs, bs, bs, w[13], w[13]],  # deep stack, long run of backspaces
    ]
    rng = random.Random(seed)
    for _ in range(3):
        row, depth = [bos], 1
        for _ in range(rng.randrange(5, 20)):
            if depth > 1 and rng.random() < 0.45:
                row.append(bs)
                depth -= 1
            else:
                row.append(rng.choice(w))
                depth += 1
        rows.append(row)
    return rows


def pad_rows(rows: list[list[int]], pad: int) -> torch.Tensor:
    T = max(len(r) for r in rows)
    return torch.tensor([r + [pad] * (T - len(r)) for r in rows])


# ---------------------------------------------------------------- vocabulary and loading


@pytest.mark.parametrize("arch", list(SPECIALS))
def test_special_tokens_added_and_mean_initialised(model_dirs, arch):
    base = transformers.AutoModelForCausalLM.from_pretrained(model_dirs[arch])
    policy = load(model_dirs, arch)
    n_words = len(make_tokenizer(arch))
    ids = policy.special_ids
    assert policy.vocab_size == n_words + 2  # backspace + a new pad in all three setups
    assert ids["backspace"] == policy.tokenizer.convert_tokens_to_ids(BACKSPACE_TOKEN)
    assert ids["pad"] == policy.tokenizer.convert_tokens_to_ids(PAD_TOKEN) != ids["eos"]
    assert {ids["pad"], ids["backspace"]} == {n_words, n_words + 1}
    expected_bos = {"llama": "<s>", "qwen2": "<|endoftext|>", "gpt2": "<|endoftext|>"}[arch]
    assert ids["bos"] == policy.tokenizer.convert_tokens_to_ids(expected_bos)
    # AutoTokenizer picks Qwen2Tokenizer from config.json, whose default unk is <|endoftext|> as in the real one
    expected_unk = {"llama": "<unk>", "qwen2": "<|endoftext|>", "gpt2": "<|endoftext|>"}[arch]
    assert ids["unk"] == policy.tokenizer.convert_tokens_to_ids(expected_unk)
    emb = policy.lm.get_input_embeddings().weight
    old = base.get_input_embeddings().weight
    torch.testing.assert_close(emb[:n_words], old, atol=0, rtol=0)
    # a mean of n_words float32 rows, possibly summed in another order: 2 gamma_{n_words} max|w| (tests/tolerances.py)
    atol = rounding_atol(torch.float32, n_words, old.abs().max().item())
    torch.testing.assert_close(emb[n_words:], old.mean(0).expand(2, -1), atol=atol, rtol=0)
    if arch != "gpt2":  # untied head: its new rows are the mean of its old rows too
        out = policy.lm.get_output_embeddings().weight
        atol = rounding_atol(torch.float32, n_words, base.lm_head.weight.abs().max().item())
        torch.testing.assert_close(out[n_words:], base.lm_head.weight.mean(0).expand(2, -1), atol=atol, rtol=0)
    assert policy.max_state_length == 64


def test_flash_attention_refused(model_dirs):
    for impl in ("flash_attention_2", "flash_attention_3", "flex_attention"):
        with pytest.raises(ValueError, match=f"attn_implementation '{impl}' is not supported.*4D"):
            HFPolicy.from_pretrained(model_dirs["llama"], attn_implementation=impl)


# ---------------------------------------------------------------- one-pass forward


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", list(SPECIALS))
def test_one_pass_logits_equal_per_state_recomputation(model_dirs, arch, attn):
    policy = load(model_dirs, arch, attn)
    bs, pad = policy.special_ids["backspace"], policy.special_ids["pad"]
    rows = trajectories(policy)
    tokens = pad_rows(rows, pad)
    with torch.no_grad():
        logits = policy(tokens)
    assert logits.shape == (*tokens.shape, policy.vocab_size) and logits.dtype == torch.float32
    worst, n_checked, n_empty = 0.0, 0, 0
    for b, row in enumerate(rows):
        for i in range(len(row)):
            state = reduce(row[: i + 1], bs, pad)
            n_empty += row[i] == bs and len(state) == 1
            worst = max(worst, (logits[b, i] - reference_logits(policy, state)).abs().max().item())
            n_checked += 1
    # ~5e-4 here (logits up to ~7); measured 4e-6 (Intel Xeon) and 1.24e-5 (AMD EPYC), a wrong mask moves > 1e-2
    assert worst <= logits_atol(policy, logits, tokens.shape[1])
    assert n_checked == sum(len(r) for r in rows) and n_empty >= 2
    # different states give clearly different logits (so the equality above can fail)
    assert (logits[0, 1] - logits[0, 0]).abs().max() > 0.1


def test_we_pass_an_additive_float_mask_and_a_bool_mask_would_be_wrong(model_dirs):
    """Pins the eager trap: a boolean 4D mask is added as 0/1 to the scores."""
    eager, sdpa = load(model_dirs, "llama", "eager"), load(model_dirs, "llama", "sdpa")
    seen = []
    hook = eager.lm.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["attention_mask"]), with_kwargs=True)
    tokens = pad_rows(trajectories(eager)[:2], eager.special_ids["pad"])
    with torch.no_grad():
        logits_eager = eager(tokens)
        logits_sdpa = sdpa(tokens)
    hook.remove()
    (mask,) = seen
    B, T = tokens.shape
    assert mask.shape == (B, 1, T, T) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) == {0.0, torch.finfo(torch.float32).min}
    assert (logits_eager - logits_sdpa).abs().max() <= logits_atol(eager, logits_eager, T)
    with torch.no_grad():
        bool_mask = mask == 0
        input_ids, position_ids, _ = backspace_layout(tokens, eager.special_ids["backspace"], eager.special_ids["pad"])
        wrong = eager.lm(input_ids=input_ids, attention_mask=bool_mask, position_ids=position_ids).logits
    assert (wrong[..., : eager.vocab_size] - logits_eager).abs().max() > 1e-2


def test_forward_errors(model_dirs):
    policy = load(model_dirs, "gpt2")
    ids = policy.special_ids
    bos, bs, pad, V = ids["bos"], ids["backspace"], ids["pad"], policy.vocab_size
    w = ordinary_ids(policy)[3]
    with pytest.raises(ValueError, match=rf"tokens\[0, 1\] = {V} is not a token id"):
        policy(torch.tensor([[bos, V]]))
    with pytest.raises(ValueError, match="row 0, position 3"):
        policy(torch.tensor([[bos, w, bs, bs]]))
    with pytest.raises(ValueError, match="pads are allowed only at the end"):
        policy(torch.tensor([[bos, pad, w]]))
    with pytest.raises(ValueError, match="exceeds max_state_length=64"):
        policy(torch.tensor([[bos] + [w] * 64]))


# ---------------------------------------------------------------- per-row KV decoding


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", list(SPECIALS))
def test_kv_decoding_equals_recomputation(model_dirs, arch, attn):
    policy = load(model_dirs, arch, attn)
    ids = policy.special_ids
    bos, BS, pad = ids["bos"], ids["backspace"], ids["pad"]
    w = ordinary_ids(policy)
    prompts = [[bos], [bos, w[4], w[5], w[6]], [bos, w[7], w[8]]]
    cache, logits = policy.prefill(pad_rows(prompts, pad), torch.tensor([len(p) for p in prompts]))
    states = [list(p) for p in prompts]
    worst = 0.0

    def check(logits):
        nonlocal worst
        for b, state in enumerate(states):
            worst = max(worst, (logits[b] - reference_logits(policy, state)).abs().max().item())
        assert cache.lengths.tolist() == [len(s) for s in states]

    check(logits)
    # rows backspace at different steps; row 0 returns to bos-only once, row 1 twice; one all-backspace step
    schedule = [
        ([w[5], BS, w[9]], [1, 1, 1]),
        ([BS, BS, w[10]], [1, 1, 1]),
        ([w[6], BS, w[11]], [1, 1, 0]),  # row 1 -> [bos]
        ([w[7], w[4], w[11]], [1, 1, 1]),
        ([BS, BS, BS], [1, 1, 1]),  # row 1 -> [bos]
        ([BS, w[9], w[5]], [0, 1, 1]),
        ([w[8], w[10], BS], [1, 0, 1]),
        ([w[9], w[5], w[6]], [0, 0, 0]),  # nothing active: no model call
        ([BS, w[6], BS], [1, 1, 1]),
        ([w[10], BS, w[7]], [1, 1, 1]),
    ]
    for actions, active in schedule:
        logits = policy.decode_step(cache, torch.tensor(actions), torch.tensor(active, dtype=torch.bool))
        for b, (a, on) in enumerate(zip(actions, active)):
            if on and a == BS:
                states[b].pop()
            elif on:
                states[b].append(a)
        check(logits)
    assert states == [[bos, w[6], w[10]], [bos, w[9]], [bos, w[7], w[8], w[9], w[7]]]
    assert worst <= logits_atol(policy, logits, cache.live.shape[1])
    assert cache.live.shape[1] == 4 + 9  # prefill slots + one per step with an active row
    assert cache.live.sum(1).tolist() == [len(s) for s in states]


def test_decode_errors_leave_cache_unchanged(model_dirs):
    policy = load(model_dirs, "qwen2")
    ids = policy.special_ids
    bos, BS, V = ids["bos"], ids["backspace"], policy.vocab_size
    w = ordinary_ids(policy)[1]
    cache, first = policy.prefill(torch.tensor([[bos, w], [bos, ids["pad"]]]), torch.tensor([2, 1]))
    with pytest.raises(ValueError, match="row 1: backspace would delete bos"):
        policy.decode_step(cache, torch.tensor([BS, BS]))
    with pytest.raises(ValueError, match="row 0: action id outside"):
        policy.decode_step(cache, torch.tensor([V, w]))
    with pytest.raises(ValueError, match="must not contain backspace"):
        policy.prefill(torch.tensor([[bos, BS]]), torch.tensor([2]))
    assert cache.lengths.tolist() == [2, 1] and cache.live.shape == (2, 2)
    assert torch.equal(cache.logits, first)


# ---------------------------------------------------------------- LoRA and saving


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # untied and tied LM head
def test_lora_trains_only_adapters_and_new_token_rows(model_dirs, arch):
    policy = load(model_dirs, arch, lora=LoraSettings(r=4, alpha=8.0)).train()
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all(("lora_" in n) or ("trainable_tokens_delta" in n) for n in trainable)
    deltas = [n for n in trainable if "trainable_tokens_delta" in n]
    assert len(deltas) == (2 if arch == "llama" else 1)  # embedding (+ untied head); tied head shares it
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    ids = policy.special_ids
    new_ids = sorted([ids["backspace"], ids["pad"]])
    embed = policy.lm.get_input_embeddings()  # peft's wrapper: base rows + trainable deltas
    all_ids = torch.arange(policy.vocab_size)
    with torch.no_grad():
        emb_before = embed(all_ids).clone()
    tokens = pad_rows(trajectories(policy)[:3], ids["pad"])
    opt = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=0.5)
    logp = policy(tokens).log_softmax(-1)
    loss = -(logp[:, :-1].gather(-1, tokens[:, 1:, None]).mean() + logp[..., ids["backspace"]].mean())
    loss.backward()
    opt.step()
    changed = {n for n, p in policy.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= trainable
    assert any("lora_B" in n for n in changed) and set(deltas) <= changed
    # through the wrapped embedding: no original row moved. (The backspace input row gets a gradient only
    # through a tied head: the layout never feeds backspace as an input; pad is fed at pad positions.)
    with torch.no_grad():
        moved = ((embed(all_ids) - emb_before).abs().amax(-1) > 0).nonzero().flatten().tolist()
    assert moved == (new_ids if arch == "gpt2" else [ids["pad"]])


def test_save_pretrained_loads_with_plain_transformers(model_dirs, tmp_path):
    policy = load(model_dirs, "llama")
    policy.save_pretrained(tmp_path)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    lm = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    assert tok.convert_tokens_to_ids(BACKSPACE_TOKEN) == policy.special_ids["backspace"]
    assert tok.pad_token == PAD_TOKEN
    assert tok.encode(f"w1 {BACKSPACE_TOKEN} w2", add_special_tokens=False) == [
        tok.convert_tokens_to_ids("w1"),
        policy.special_ids["backspace"],
        tok.convert_tokens_to_ids("w2"),
    ]
    state = [policy.special_ids["bos"], tok.convert_tokens_to_ids("w3"), policy.special_ids["backspace"]]
    with torch.no_grad():
        ref = reference_logits(policy, state)
        torch.testing.assert_close(
            lm(input_ids=torch.tensor([state])).logits[0, -1, : policy.vocab_size],
            ref,
            atol=logits_atol(policy, ref, len(state)),
            rtol=0,
        )
    again = HFPolicy.from_pretrained(tmp_path, dtype=torch.float32)
    assert again.policy_spec()["config"]["added_tokens"] == []
    assert again.special_ids == policy.special_ids and again.vocab_size == policy.vocab_size
    spec = policy.policy_spec()
    assert spec["family"] == "hf" and spec["config"]["added_tokens"] == [PAD_TOKEN, BACKSPACE_TOKEN]


def test_lora_save_pretrained_loads_with_peft(model_dirs, tmp_path):
    """The documented recipe: base model, resize to the tokenizer, PeftModel.from_pretrained(adapter dir)."""
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    policy = load(model_dirs, "llama", lora=LoraSettings(r=4)).train()
    ids = policy.special_ids
    opt = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=0.5)
    tokens = torch.tensor([[ids["bos"], 5, 6, ids["backspace"], 7]])
    for _ in range(3):
        loss = -policy(tokens).log_softmax(-1)[..., ids["backspace"]].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    policy.eval().save_pretrained(tmp_path)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    base = transformers.AutoModelForCausalLM.from_pretrained(model_dirs["llama"], dtype=torch.float32)
    untrained = base.lm_head.weight.clone()
    base.resize_token_embeddings(len(tok))
    loaded = peft.PeftModel.from_pretrained(base, tmp_path).eval()
    state = torch.tensor([[ids["bos"], 5, 6]])
    with torch.no_grad():
        ours = policy.lm(input_ids=state).logits[0, -1, : policy.vocab_size]
        theirs = loaded(input_ids=state).logits[0, -1, : policy.vocab_size]
        plain = torch.nn.functional.linear(
            transformers.AutoModelForCausalLM.from_pretrained(model_dirs["llama"]).model(state).last_hidden_state,
            untrained,
        )[0, -1]
    torch.testing.assert_close(theirs, ours, atol=logits_atol(policy, ours, state.shape[1]), rtol=0)
    assert (ours[: plain.shape[0]] - plain).abs().max() > 1e-3  # training changed the model


def test_gradient_checkpointing_gives_the_same_gradients(model_dirs):
    plain = load(model_dirs, "qwen2").train()
    ckpt = load(model_dirs, "qwen2", gradient_checkpointing=True).train()
    flag = (
        "is_activation_checkpointing"
        if hasattr(ckpt.lm, "is_activation_checkpointing")
        else "is_gradient_checkpointing"
    )
    assert getattr(ckpt.lm, flag) and not getattr(plain.lm, flag)
    tokens = pad_rows(trajectories(plain)[:2], plain.special_ids["pad"])
    for policy in (plain, ckpt):
        policy(tokens).logsumexp(-1).mean().backward()
    g_plain = plain.lm.model.layers[0].self_attn.q_proj.weight.grad
    g_ckpt = ckpt.lm.model.layers[0].self_attn.q_proj.weight.grad
    assert g_plain.abs().max() > 0
    # backward: the forward chain once more in reverse plus the sum over the B*T positions of the weight gradient
    c = plain.lm.config
    n = (
        2
        * transformer_chain_length(
            c.num_hidden_layers,
            c.hidden_size,
            c.intermediate_size,
            c.hidden_size // c.num_attention_heads,
            tokens.shape[1],
        )
        + tokens.numel()
    )
    torch.testing.assert_close(
        g_ckpt, g_plain, atol=rounding_atol(torch.float32, n, g_plain.abs().max().item()), rtol=0
    )


# ---------------------------------------------------------------- seqenv HFTokenizer adapter


@pytest.mark.parametrize("arch", list(SPECIALS))
def test_hf_tokenizer_matches_policy_and_round_trips(model_dirs, arch):
    tok = HFTokenizer(str(model_dirs[arch]))
    policy = load(model_dirs, arch)
    assert tok.special_ids == policy.special_ids == policy.seq_tokenizer.special_ids
    assert tok.vocab_size == policy.vocab_size == len(make_tokenizer(arch)) + 2
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.backspace_id, tok.unk_id) == tuple(
        policy.special_ids[k] for k in ("pad", "bos", "eos", "backspace", "unk")
    )
    text = "w1 w2 w5"
    assert tok.decode(tok.encode(text)) == text and len(tok.encode(text)) >= 3
    ids = tok.special_ids
    # every special is skipped; backspaces are not applied by decode
    seq = [ids["bos"], *tok.encode("w1"), ids["backspace"], *tok.encode(" w2"), ids["eos"], ids["pad"]]
    assert tok.decode(seq) == "w1 w2"
    assert tok.token_str(ids["backspace"]) == "<backspace>" and tok.token_str(tok.encode("w5")[-1]).endswith("5")
    with pytest.raises(ValueError, match=rf"token ids \[{tok.vocab_size}\] are out of range"):
        tok.decode([tok.vocab_size])
    d = json.loads(json.dumps(tok.to_dict()))
    start = {"llama": "<s>", "qwen2": "<|endoftext|>", "gpt2": "<|endoftext|>"}[arch]
    # byte-level Qwen2 encodes "\n" as one token (Ċ): the end of a line; word-level GPT-2 has none
    end = {"llama": "</s>", "qwen2": "Ċ", "gpt2": "<|endoftext|>"}[arch]
    assert d == {
        "type": "hf",
        "path": str(model_dirs[arch]),
        "vocab_size": tok.vocab_size,
        "special_ids": tok.special_ids,
        "start_token": start,
        "end_token": end,
    }
    again = tokenizer_from_dict(d)
    assert isinstance(again, HFTokenizer) and again == tok


def test_hf_tokenizer_from_dict_detects_a_changed_directory(model_dirs, tmp_path):
    make_tokenizer("gpt2").save_pretrained(tmp_path)
    d = HFTokenizer(str(tmp_path)).to_dict()
    make_tokenizer("llama").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="start token '<\\|endoftext\\|>' is not a token.*the directory changed"):
        tokenizer_from_dict(d)  # its start/end tokens are gone
    old = {k: v for k, v in d.items() if k not in ("start_token", "end_token")}  # saved before issue 21
    with pytest.raises(ValueError, match="vocab_size 29, but the stored one is 27"):
        tokenizer_from_dict(old)

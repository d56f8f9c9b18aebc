"""The tiny objects the tests share: a policy, a training config, a Hugging Face model directory, the command-line
run and the run-directory helpers. ``tests/conftest.py`` serves them as fixtures (``tiny_task``, ``tiny_policy``,
``tiny_hf_dir``, ``finished_run``); a test module that needs them at import time (a module-level constant, a
factory called with other arguments) imports them from here, as it imports ``tolerances``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agents.emo import EMOConfig
from agents.mixce import MixCEConfig
from agents.policies.transformer import PolicyConfig, TransformerPolicy
from agents.scheduled_sampling import ScheduledSamplingConfig
from agents.tailr import TaiLrConfig
from agents.trainer import ModelConfig, TrainConfig
from agents.unlikelihood import UnlikelihoodConfig
from seqenv.tasks import Task

#: the tiny transformer of most tests: 1 layer, 2 heads, width 32 (a few thousand parameters, ~ms per step on a CPU)
TINY_MODEL = ModelConfig(n_layer=1, n_head=2, n_embd=32)

#: the same model as train.py / generate.py / evaluate.py flags, on the CPU without a progress bar
TINY_FLAGS = ["--model.n-layer", "1", "--model.n-head", "2", "--model.n-embd", "32", "--no-progress", "--device", "cpu"]

#: a train.py command line (without --max-steps and --logdir): oracle-hmm, batch 4, a checkpoint every step
TINY_RUN = [
    "--task",
    "oracle-hmm",
    "--batch-size",
    "4",
    "--eval-samples",
    "4",
    "--warmup-steps",
    "1",
    "--ckpt-every",
    "1",
    *TINY_FLAGS,
]

#: the config section of each exposure-bias baseline in the tests' short runs (backspace augmentation on)
BASELINE_CASES = {
    "unlikelihood": {"unlikelihood": UnlikelihoodConfig(backspace_p=0.1)},
    "tailr": {"tailr": TaiLrConfig(backspace_p=0.1)},
    "mixce": {"mixce": MixCEConfig(backspace_p=0.1)},
    "emo": {"emo": EMOConfig(backspace_p=0.1)},
    "scheduled_sampling": {
        "scheduled_sampling": ScheduledSamplingConfig(schedule="constant", p_max=0.5, backspace_p=0.1)
    },
}

#: words and lines of the tiny HF model's tokenizer and of its training corpus
HF_WORDS = ["red", "green", "blue", "cat", "dog", "runs", "sits", "the", "a", "big"]
HF_LINES = [f"the {a} {b} {c}" for a in ("red", "big", "blue") for b in ("cat", "dog") for c in ("runs", "sits")]


def corpus_run_flags(corpus: Path, logdir: Path, batch_size: int = 4) -> list[str]:
    """train.py flags for one step of the tiny model on ``file:{corpus}`` into ``logdir`` (2 evaluation samples)."""
    flags = ["--task", f"file:{corpus}", "--max-steps", "1", "--batch-size", str(batch_size), "--eval-samples", "2"]
    return [*flags, "--logdir", str(logdir), *TINY_FLAGS]


def make_tiny_policy(
    task: Task, seed: int = 0, *, n_layer: int = 1, n_head: int = 2, n_embd: int = 32, block_size: int | None = None
) -> TransformerPolicy:
    """A freshly initialised (``torch.manual_seed(seed)``) transformer policy for ``task``'s vocabulary.

    :param block_size: positions; default ``task.max_length + 1`` (BOS plus the longest sequence).
    """
    torch.manual_seed(seed)
    config = PolicyConfig(
        vocab_size=task.tokenizer.vocab_size,
        block_size=task.max_length + 1 if block_size is None else block_size,
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
    )
    return TransformerPolicy(config)


def tiny_train_config(tmp_path: Path, name: str, **kw) -> TrainConfig:
    """A :class:`TrainConfig` for a short CPU run of the tiny model on oracle-hmm in ``tmp_path / name``.

    Defaults: 6 steps of batch 8, a checkpoint every 3 steps, logs every 2, 8 evaluation samples, 2 warmup steps;
    ``kw`` overrides any field (a section may be given as a dict, as in :meth:`TrainConfig.from_dict`).
    """
    base = dict(
        task="oracle-hmm",
        logdir=str(tmp_path / name),
        max_steps=6,
        batch_size=8,
        ckpt_every=3,
        log_every=2,
        eval_samples=8,
        warmup_steps=2,
        progress=False,
        device="cpu",
        model=TINY_MODEL,
    )
    base.update(kw)
    return TrainConfig.from_dict(base)


def make_tiny_hf_dir(path: Path, seed: int = 0) -> Path:
    """Write a tiny random Llama (2 layers, width 32) and a byte-level BPE tokenizer with ``<s>``, ``</s>``,
    ``<unk>`` (no pad) to ``path`` with ``save_pretrained``; nothing is downloaded. Skips the calling test when
    transformers or tokenizers is missing.

    :returns: ``path``.
    """
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        min_frequency=1,
        special_tokens=["<unk>", "<s>", "</s>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(HF_LINES * 4 + [" ".join(HF_WORDS)] * 4, trainer=trainer)
    hf_tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=len(hf_tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        bos_token_id=hf_tok.bos_token_id,
        eos_token_id=hf_tok.eos_token_id,
    )
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
    hf_tok.save_pretrained(path)
    return path


def snapshot(run_dir: Path, *, lock: bool = True) -> dict[str, bytes]:
    """``{file name: bytes}`` of the files directly in ``run_dir`` (``lock=False`` leaves out ``.lock``)."""
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir()) if p.is_file() and (lock or p.name != ".lock")}


def error_line(capsys, main, argv, code: int = 2) -> str:
    """Run a script's ``main(argv)``, expect ``SystemExit(code)`` and exactly one stderr line (``warning:`` lines
    aside); return that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == code
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not line.startswith("warning: ")]
    assert len(lines) == 1, lines
    return lines[0]

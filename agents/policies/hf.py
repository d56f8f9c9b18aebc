"""Any Hugging Face causal LM as a backspace policy (issue 12).

:class:`HFPolicy` wraps a ``transformers`` ``AutoModelForCausalLM`` loaded from
a local directory (or a hub id, which this module never needs) and gives it
the Policy protocol of ``agents/model.py``'s ``TransformerPolicy``: ONE forward
pass over trajectories with backspaces, and incremental decoding in which
every row may backspace independently.

Vocabulary
----------
The tokenizer gets a ``backspace`` special token (:data:`BACKSPACE_TOKEN`) and,
when it has no pad token or its pad token is its eos token, a ``pad`` token
(:data:`PAD_TOKEN`); a pad equal to eos would make "stop" and "padding"
indistinguishable. The new ids are ``len(tokenizer)`` onwards. The embedding
matrix is resized only when it has fewer rows than the grown tokenizer (many
checkpoints, e.g. Qwen2, already carry unused padding rows); the new tokens'
input rows (and output rows and bias when the LM head is untied) are set to
the **mean** of the original tokens' rows [recon: the issue asks for mean
initialisation; transformers' own ``mean_resizing`` samples from a Gaussian
around the mean instead, so we write the mean ourselves]. A checkpoint that
already has both tokens (e.g. a directory written by
:meth:`HFPolicy.save_pretrained`) is loaded as is. The tokenizer side lives in
``seqenv.tokenizers`` (:func:`~seqenv.tokenizers.add_backspace_tokens`,
:func:`~seqenv.tokenizers.hf_special_ids`, :class:`~seqenv.tokenizers.HFTokenizer`)
so that the env and the policy derive the same ids from one directory.

Action ids are token ids. :attr:`HFPolicy.vocab_size` is ``len(tokenizer)``
after the additions, and the logits are sliced to it: embedding rows beyond
the tokenizer's length (padding rows) never appear as actions, so callers
need no extra mask. ``special_ids``: ``pad``, ``eos`` and ``backspace`` as
above; ``bos`` is the tokenizer's bos token, or its eos token when it has
none (GPT-2 and Qwen2 start documents after ``<|endoftext|>``; [recon]);
``unk`` is present only when the tokenizer has an unk token.

One forward pass [layout: METHODS.md §1, recon in agents/model.py]
--------------------------------------------------------------------
:func:`agents.model.backspace_layout` turns the trajectory into input ids,
position ids and a boolean ``[B, T, T]`` attention pattern. We pass that
pattern as a 4D **additive float** mask ``[B, 1, T, T]`` (0 where attended,
``torch.finfo(dtype).min`` elsewhere) plus explicit ``position_ids``;
transformers returns a 4D mask unchanged to the attention kernel. Pinned
traps: under ``attn_implementation="eager"`` a *boolean* 4D mask is added to
the scores as 0/1 and gives wrong logits silently; without a mask and with
batch 1, non-monotonic position ids make transformers assume packed
sequences; flash-attention kernels ignore 4D masks, so only ``"eager"`` and
``"sdpa"`` are accepted (anything else raises ``ValueError``).

Per-row KV decoding (:class:`HFDecodeCache`)
--------------------------------------------
A ``transformers`` ``DynamicCache`` of full-attention layers grows by one
*slot* per model call, for all rows at once. Per row we keep which slots are
live (hold a token of the row's current state), the stack of live slots in
state order and the state's token ids. Each :meth:`HFPolicy.decode_step` makes
at most one model call with one query per row, and the query attends to the
row's live slots through a 4D additive mask ``[B, 1, 1, S+1]``, at position id
``state length - 1``:

* a pushed token is written to the new slot and becomes the top;
* a **backspace** kills the top slot and re-feeds the new top token at its
  own position id, attending to the state minus its old slot plus the new
  slot -- exactly the backspace row of the forward layout, so its keys,
  values and logits equal those the token had when it was pushed; the old
  slot of the new top is killed and the new slot takes its place;
* an inactive row writes a dead slot and keeps its stored logits.

Why not ``DynamicCache.crop``: it crops every row alike (rows backspace at
different steps) and its meaning changed across versions. Why recompute the
new top instead of returning stored logits: a stack of logits per state costs
``B x length x V`` floats (e.g. 256 x 512 x 151k x 4 B = 79 GB for Qwen2),
while the re-fed token rides in the same batched call that the pushing rows
need anyway; a step costs a model call only if some active row exists. The
price: the cache holds ``prefill length + number of decode steps`` slots, not
the state length (a rollout of N steps holds at most ``T + N`` slots).
Sliding-window layers are treated as full attention (the dynamic cache is
built without the config): exact while every state fits in the window, so
:attr:`HFPolicy.max_state_length` is capped by the window.

LoRA (:class:`LoraSettings`) goes through ``peft``: ``LoraConfig`` with
``trainable_token_indices`` on the input embedding (and on an untied output
embedding) for the added tokens, so adapters and the new token rows are the
only trainable parameters.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import shutil
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
import torch.nn as nn

if TYPE_CHECKING:  # transformers is optional (the `hf` extra): imported where a policy is built
    from transformers import PreTrainedModel

from seqenv.checks import check_number
from seqenv.pretrained import PRETRAINED_NAMES, file_sha256, pretrained_dir, pretrained_sha256
from seqenv.tokenizers import BACKSPACE_TOKEN, HF_PAD_TOKEN, HFTokenizer

from .base import check_decode_step, check_prefill, check_token_ids
from .transformer import backspace_layout

PAD_TOKEN = HF_PAD_TOKEN
ALLOWED_ATTENTION = ("eager", "sdpa")
_SPEC_FILE = "seqenv_policy.json"


def _require_transformers():
    try:
        import transformers  # noqa: F401
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "HFPolicy needs the optional dependencies: pip install 'seqenv[hf]' (transformers, peft)"
        ) from e
    return transformers


def _dtype_from(value: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """``None`` -> bfloat16 on CUDA, float32 elsewhere; strings like ``"bfloat16"`` -> torch dtypes."""
    if value is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(value, torch.dtype):
        return value
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if value not in names:
        raise ValueError(f"dtype must be a torch dtype or one of {sorted(names)}, got {value!r}")
    return names[value]


@dataclass
class LoraSettings:
    """LoRA hyperparameters for :meth:`HFPolicy.from_pretrained` (``peft.LoraConfig``).

    :param r: adapter rank (> 0). The SequenceMatch paper's Llama-2-7B runs use
        r = 64, alpha = 16 (METHODS.md §1).
    :param alpha: LoRA scaling numerator ``lora_alpha`` (> 0); updates are
        scaled by ``alpha / r``.
    :param dropout: dropout on the adapter input, in ``[0, 1)``.
    :param target_modules: peft's ``target_modules``; ``"all-linear"`` targets
        every Linear layer except the LM head.
    :raises ValueError: on a non-positive ``r``/``alpha`` or a dropout outside ``[0, 1)``.
    """

    r: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"

    def __post_init__(self) -> None:
        check_number("LoraSettings.r", self.r, ge=1, integer=True)
        if not self.alpha > 0:
            raise ValueError(f"LoraSettings.alpha must be > 0, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoraSettings.dropout must be in [0, 1), got {self.dropout!r}")

    def to_dict(self) -> dict:
        """JSON-able form (for :meth:`HFPolicy.policy_spec`)."""
        return dataclasses.asdict(self)


@dataclass
class HFDecodeCache:
    """Per-row decoding state of :class:`HFPolicy` (opaque to callers; mutated in place).

    :param kv: ``transformers.DynamicCache`` with ``S`` slots per layer (keys
        ``[B, heads, S, head_dim]``); which slot means what is per row.
    :param live: BoolTensor[B, S], slot holds a token of the row's current state.
    :param stack: LongTensor[B, S], ``stack[b, i]`` = slot of the ``i``-th token
        of row ``b``'s state (entries ``>= lengths[b]`` are stale).
    :param state: LongTensor[B, S], ``state[b, i]`` = token id of that token.
    :param lengths: LongTensor[B], state length (bos included, ``>= 1``).
    :param logits: FloatTensor[B, V], logits of each row's current state.
    """

    kv: object
    live: torch.Tensor
    stack: torch.Tensor
    state: torch.Tensor
    lengths: torch.Tensor
    logits: torch.Tensor


class HFPolicy(nn.Module):
    """A ``transformers`` causal LM as a backspace-aware policy (see module doc).

    Build it with :meth:`from_pretrained`. Logits are soft Q-values, as for
    ``TransformerPolicy``. Call ``eval()`` before decoding if the model has
    dropout.

    :param model: an ``AutoModelForCausalLM`` (or a ``peft`` model around one)
        whose embeddings already have rows for every tokenizer id.
    :param tokenizer: its tokenizer, already holding :data:`BACKSPACE_TOKEN`
        and a pad token different from eos.
    :param spec_config: the ``config`` part of :meth:`policy_spec`.
    :raises ValueError: on an attention implementation other than eager/sdpa,
        a tokenizer without the backspace token, eos, or with pad = eos, an
        embedding smaller than the tokenizer, or a model with layer types
        other than full or sliding-window attention.
    """

    family = "hf"

    def __init__(self, model: nn.Module, tokenizer, spec_config: dict | None = None):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self._spec_config = dict(spec_config or {})
        #: dtype the model computes in when it differs from its parameters' (FSDP mixed precision keeps
        #: float32 master weights and gathers them in bfloat16: ``agents.common.distributed.shard_hf_policy``)
        self.compute_dtype: torch.dtype | None = None
        lm = self.lm
        impl = getattr(lm.config, "_attn_implementation", None)
        if impl not in ALLOWED_ATTENTION:
            raise ValueError(_attention_error(impl))
        layer_types = set(getattr(lm.config, "layer_types", None) or ["full_attention"])
        if not layer_types <= {"full_attention", "sliding_attention"}:
            raise ValueError(
                f"HFPolicy supports decoders whose layers are full or sliding-window attention, "
                f"got layer_types {sorted(layer_types)}"
            )
        #: seqenv's Tokenizer for the same vocabulary and start/end tokens (the env's: pass it as ``tokenizer=``)
        self.seq_tokenizer = HFTokenizer(
            self._spec_config.get("path", tokenizer.name_or_path),
            hf_tokenizer=tokenizer,
            start_token=self._spec_config.get("start_token"),
            end_token=self._spec_config.get("end_token"),
            pretrained=self._spec_config.get("pretrained"),
        )
        self.special_ids = dict(self.seq_tokenizer.special_ids)
        self._spec_config.update(start_token=self.seq_tokenizer.start_token, end_token=self.seq_tokenizer.end_token)
        self.vocab_size = len(tokenizer)
        rows = _weight(lm.get_input_embeddings()).shape[0]
        if rows < self.vocab_size:
            raise ValueError(f"input embedding has {rows} rows, fewer than the tokenizer's {self.vocab_size} ids")
        config = lm.config.get_text_config(decoder=True)
        longest = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        if longest is None:
            raise ValueError("model config has neither max_position_embeddings nor n_positions")
        if "sliding_attention" in layer_types or getattr(config, "use_sliding_window", False):
            window = getattr(config, "sliding_window", None)
            if window:
                longest = min(longest, int(window))
        self.max_state_length = int(longest)
        params = inspect.signature(type(lm).forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        # what a LoRA state dict holds: the parameters peft made trainable (adapters, added-token rows), fixed
        # here so that a frozen copy (a learner's reference policy) keeps the same keys
        self._adapter_names = [n for n, p in self.named_parameters() if p.requires_grad] if self.uses_lora else []

    # ------------------------------------------------------------ construction

    @property
    def lm(self) -> PreTrainedModel:
        """The ``transformers`` model (the peft base model when LoRA is on; LoRA layers live inside it)."""
        get_base = getattr(self.model, "get_base_model", None)
        return cast("PreTrainedModel", get_base() if get_base is not None else self.model)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        dtype: torch.dtype | str | None = None,
        attn_implementation: str = "sdpa",
        lora: LoraSettings | dict | None = None,
        gradient_checkpointing: bool = False,
        device: torch.device | str = "cpu",
        start_token: str | None = None,
        end_token: str | None = None,
    ) -> HFPolicy:
        """Load a causal LM and its tokenizer from ``path`` and make it a policy.

        :param path: a local directory written by ``save_pretrained`` (model
            and tokenizer), a hub id (downloads; never used by tests), or a
            named pretrained model (``"smollm2"``: converted once from the
            installed wheel into the cache, :mod:`seqenv.pretrained`; a
            ``bfloat16`` dtype uses a bfloat16 conversion).
        :param dtype: parameter dtype; ``None`` = bfloat16 on CUDA, float32
            otherwise; also ``"float32"``, ``"bfloat16"``, ``"float16"``.
        :param attn_implementation: ``"sdpa"`` (default) or ``"eager"``.
        :param lora: ``None`` trains every parameter; a :class:`LoraSettings`
            (or its dict) wraps the model with peft LoRA adapters plus
            trainable rows for the added tokens.
        :param gradient_checkpointing: recompute activations in backward
            (non-reentrant checkpointing) to save memory.
        :param device: where to put the model.
        :param start_token: the start token (``bos``) of every state; default
            ``<|endoftext|>`` when the vocabulary has it, else the tokenizer's
            bos (:func:`seqenv.tokenizers.hf_boundary_tokens`).
        :param end_token: the token that ends an episode (``eos``); default the
            newline token when ``"\\n"`` is one token, else ``<|endoftext|>``, else eos.
        :raises ValueError: on flash/flex or unknown attention
            implementations (before loading anything), a bad dtype, a start or
            end token outside the vocabulary, or the conditions of the class.
        :raises ImportError: without ``transformers`` (or ``peft`` with LoRA);
            :class:`seqenv.pretrained.PretrainedUnavailableError` (an
            ``ImportError`` naming the install line) for ``"smollm2"`` without its wheel.
        """
        if attn_implementation not in ALLOWED_ATTENTION:
            raise ValueError(_attention_error(attn_implementation))
        transformers = _require_transformers()
        device = torch.device(device)
        torch_dtype = _dtype_from(dtype, device)
        if isinstance(lora, dict):
            lora = LoraSettings(**lora)
        pretrained = str(path) if str(path) in PRETRAINED_NAMES else None
        if pretrained:
            path = pretrained_dir(pretrained, "bfloat16" if torch_dtype == torch.bfloat16 else "float32")
        seq_tokenizer = HFTokenizer(str(path), start_token=start_token, end_token=end_token)  # adds backspace, pad
        tokenizer = seq_tokenizer.hf
        model = transformers.AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype, attn_implementation=attn_implementation
        )
        new_ids = seq_tokenizer.added_ids
        init_new_token_rows(model, len(tokenizer) - len(new_ids), new_ids)
        model.config.pad_token_id = tokenizer.pad_token_id
        # transformers types the loaded model as its generation mixin, on which pyright cannot bind nn.Module.to
        model.to(device)  # pyright: ignore[reportArgumentType]
        if gradient_checkpointing:  # transformers >= 5.24 renamed it; the old name warns and goes in v6
            if hasattr(model, "activation_checkpointing_enable"):
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if lora is not None:
            model = _wrap_lora(model, tokenizer, lora)
        spec = {
            "path": str(path),
            "dtype": str(torch_dtype).removeprefix("torch."),
            "attn_implementation": attn_implementation,
            "lora": None if lora is None else lora.to_dict(),
            "gradient_checkpointing": bool(gradient_checkpointing),
            "added_tokens": [tokenizer.convert_ids_to_tokens(i) for i in new_ids],
            "start_token": seq_tokenizer.start_token,
            "end_token": seq_tokenizer.end_token,
            "pretrained": pretrained,
            # identity of the base weights: a LoRA checkpoint holds only the adapters and refuses another base
            "base_sha256": base_sha256(path, pretrained) if lora is not None else None,
        }
        return cls(model, tokenizer, spec)

    @classmethod
    def from_spec(cls, spec: dict, device: torch.device | str = "cpu") -> HFPolicy:
        """Rebuild an (untrained-weights) policy from :meth:`policy_spec`; load a state dict after it.

        :raises ValueError: if ``spec["family"]`` is not ``"hf"``, or (LoRA) the
            base model at the spec's path is not the one the spec was made with
            (its ``base_sha256`` differs): the adapters would be applied to other weights.
        """
        if spec.get("family") != cls.family:
            raise ValueError(f"policy spec family must be 'hf', got {spec.get('family')!r}")
        c = spec["config"]
        path = c.get("pretrained") or c["path"]
        policy = cls.from_pretrained(
            path,
            dtype=c["dtype"],
            attn_implementation=c["attn_implementation"],
            lora=c["lora"],
            gradient_checkpointing=c["gradient_checkpointing"],
            device=device,
            start_token=c.get("start_token"),
            end_token=c.get("end_token"),
        )
        want, got = c.get("base_sha256"), policy._spec_config.get("base_sha256")
        if c.get("lora") and want and got != want:
            raise ValueError(
                f"the LoRA adapters were trained on the base model with sha256 {want[:16]}..., but "
                f"{path!r} now holds {str(got)[:16]}...: refusing to load them onto another base"
            )
        return policy

    def policy_spec(self) -> dict:
        """JSON-able ``{"family": "hf", "config": {...}}``: the load arguments plus the special ids."""
        return {
            "family": self.family,
            "config": {
                **self._spec_config,
                "special_ids": dict(self.special_ids),
                "vocab_size": self.vocab_size,
                "max_state_length": self.max_state_length,
            },
        }

    @property
    def uses_lora(self) -> bool:
        """True when the model is wrapped with peft LoRA adapters."""
        return bool(self._spec_config.get("lora"))

    def _trainable_names(self) -> list[str]:
        return list(self._adapter_names)

    def state_dict(self, *args, **kwargs) -> dict:
        """The module's state dict; with LoRA only the trainable tensors (adapters, added-token rows).

        A LoRA policy's frozen base weights are the base model's (identified
        by ``policy_spec()["config"]["base_sha256"]``), so checkpoints hold
        only what training changes: for SmolLM2 with r = 8, 2.4 M floats
        (10 MB) instead of 134 M (540 MB). With explicit ``destination``/``prefix``
        arguments (a parent module collecting its children) the full dict is returned.
        """
        full = super().state_dict(*args, **kwargs)
        if not self.uses_lora or args or kwargs.get("prefix") or kwargs.get("destination") is not None:
            return full
        keep = set(self._trainable_names())
        return type(full)((k, v) for k, v in full.items() if k in keep)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load a state dict; with LoRA, one holding exactly the trainable tensors (or a full one).

        :raises RuntimeError: (``strict``) on missing or unexpected keys, as ``torch.nn.Module``.
        """
        if not self.uses_lora or not strict:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        keys, trainable = set(state_dict), set(self._trainable_names())
        if keys >= set(super().state_dict()):  # a full state dict (checkpoints written before issue 21)
            return super().load_state_dict(state_dict, strict=True, assign=assign)
        if keys != trainable:
            missing, unexpected = sorted(trainable - keys), sorted(keys - trainable)
            raise RuntimeError(
                f"Error(s) in loading the LoRA state dict: missing keys {missing[:5]} "
                f"({len(missing)}), unexpected keys {unexpected[:5]} ({len(unexpected)})"
            )
        return super().load_state_dict(state_dict, strict=False, assign=assign)

    def save_pretrained(self, directory: str | os.PathLike, state_dict: dict | None = None) -> None:
        """Write the model (or, with LoRA, the peft adapter) and the tokenizer to ``directory``.

        Without LoRA, plain ``AutoModelForCausalLM.from_pretrained(directory)``
        and ``AutoTokenizer.from_pretrained(directory)`` load it, backspace
        token included (and :meth:`from_pretrained` loads it back unchanged).
        With LoRA the directory holds the adapter (``adapter_config.json`` with
        the base model's path, the LoRA weights and the new token rows) and
        the tokenizer; load with ``base = AutoModelForCausalLM.from_pretrained(
        base_path)``, ``base.resize_token_embeddings(len(tokenizer))``,
        ``peft.PeftModel.from_pretrained(base, directory)``. Also writes
        ``seqenv_policy.json`` (:meth:`policy_spec`).

        :param state_dict: this policy's full ``state_dict()`` to write instead
            of reading the parameters (an FSDP-sharded policy: the dict gathered
            by :func:`agents.common.distributed.full_state_dicts`).
        """
        os.makedirs(directory, exist_ok=True)
        model = cast("PreTrainedModel", self.model)  # or a peft model: both have save_pretrained
        if state_dict is not None:  # keys of this module -> keys of self.model
            sub = {k.removeprefix("model."): v for k, v in state_dict.items() if k.startswith("model.")}
            model.save_pretrained(directory, state_dict=sub)
        elif self.uses_lora:  # the added tokens' rows are trainable tokens of the adapter, not whole embeddings
            model.save_pretrained(directory, save_embedding_layers=False)
        else:
            model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        with open(os.path.join(directory, _SPEC_FILE), "w") as f:
            json.dump(self.policy_spec(), f, indent=2)

    def save_pretrained_atomic(self, directory: str | os.PathLike, state_dict: dict | None = None) -> None:
        """:meth:`save_pretrained` (with ``state_dict``) into a temporary sibling directory, then renamed to
        ``directory``.

        A crash mid-write leaves the previous ``directory`` intact (the swap is
        two renames: old -> ``.<name>.old``, new -> ``directory``).
        """
        directory = os.path.abspath(directory)
        parent, name = os.path.split(directory)
        tmp, old = os.path.join(parent, f".{name}.tmp"), os.path.join(parent, f".{name}.old")
        for d in (tmp, old):
            shutil.rmtree(d, ignore_errors=True)
        self.save_pretrained(tmp, state_dict=state_dict)
        if os.path.isdir(directory):
            os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)

    # ------------------------------------------------------------ forward

    def _float_mask(self, allowed: torch.Tensor) -> torch.Tensor:
        """BoolTensor[B, Q, K] (True = attend) -> additive FloatTensor[B, 1, Q, K] in the model dtype."""
        dtype = self.compute_dtype or self.lm.dtype
        mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
        return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits of every state along a batch of trajectories, in one pass.

        :param tokens: LongTensor[B, T], rows ``[bos, prompt..., a_1..a_n,
            pad...]`` that may contain backspaces (pads only at the end).
        :return: FloatTensor[B, T, vocab_size] in the model dtype; ``[:, i]`` =
            logits of the state reached after ``tokens[:, :i+1]`` with
            backspaces applied. Values at pad positions are unspecified.
        :raises ValueError: on ids outside ``[0, vocab_size)``, a pad followed
            by a non-pad, a backspace deleting bos, or a state longer than
            :attr:`max_state_length`.
        """
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [B, T], got shape {tuple(tokens.shape)}")
        check_token_ids(tokens, self.vocab_size)
        input_ids, position_ids, allowed = backspace_layout(
            tokens, self.special_ids["backspace"], self.special_ids["pad"]
        )
        longest = int(position_ids.max()) + 1
        if longest > self.max_state_length:
            raise ValueError(f"a state of length {longest} exceeds max_state_length={self.max_state_length}")
        out = self.lm(
            input_ids=input_ids, attention_mask=self._float_mask(allowed), position_ids=position_ids, use_cache=False
        )
        return out.logits[..., : self.vocab_size]

    # ------------------------------------------------------------ decoding

    def _call_cached(self, kv, input_ids, position_ids, allowed) -> torch.Tensor:
        out = self.lm(
            input_ids=input_ids,
            attention_mask=self._float_mask(allowed),
            position_ids=position_ids,
            use_cache=True,
            **{self._cache_kwarg: kv},
        )
        return out.logits[..., : self.vocab_size]

    @torch.no_grad()
    def prefill(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[HFDecodeCache, torch.Tensor]:
        """Start incremental decoding from a batch of states (no gradients).

        :param tokens: LongTensor[B, T], ``T <= max_state_length``; row ``b``
            holds the state ``tokens[b, :lengths[b]]`` = ``[bos, ...]`` with
            no backspace; entries after it are ignored.
        :param lengths: LongTensor[B], in ``[1, T]``.
        :return: ``(cache, logits)``: a new :class:`HFDecodeCache` with ``T``
            slots and FloatTensor[B, vocab_size], the logits of each row's state.
        :raises ValueError: on bad shapes, lengths outside ``[1, T]``,
            ``T > max_state_length``, ids outside the vocabulary, or a
            backspace inside a state.
        """
        from transformers import DynamicCache

        tokens, lengths, in_state = check_prefill(self, tokens, lengths)
        B, T = tokens.shape
        device = tokens.device
        ar = torch.arange(T, device=device)
        kv = DynamicCache()
        allowed = (ar[None, :, None] >= ar[None, None, :]) & (
            in_state[:, None, :] | torch.eye(T, dtype=torch.bool, device=device)
        )
        logits = self._call_cached(kv, tokens, ar[None, :].expand(B, T), allowed)  # [B, T, V]
        rows = torch.arange(B, device=device)
        last = logits[rows, lengths - 1]
        cache = HFDecodeCache(
            kv=kv,
            live=in_state.clone(),
            stack=ar[None, :].expand(B, T).clone(),
            state=tokens.clone(),
            lengths=lengths.clone(),
            logits=last.clone(),
        )
        return cache, last

    @torch.no_grad()
    def decode_step(
        self, cache: HFDecodeCache, actions: torch.Tensor, active: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Apply one action per row to the cache (in place) and return logits.

        A backspace pops the row's top token (its slot is killed and the new
        top is re-fed, see module doc); any other id is pushed. Rows with
        ``active[b] == False`` are unchanged. At most one batched model call;
        none if no row is active. No gradients.

        :param cache: from :meth:`prefill`; mutated in place.
        :param actions: LongTensor[B].
        :param active: BoolTensor[B] or None (all rows active).
        :return: FloatTensor[B, vocab_size], logits of each row's state after
            the step (an inactive row: its current state).
        :raises ValueError: on bad shapes, ids outside the vocabulary, a push
            beyond ``max_state_length`` or a pop of bos (checked before any
            change).
        """
        lengths = cache.lengths
        B, device = lengths.shape[0], lengths.device
        actions, active, pop, push = check_decode_step(self, lengths, actions, active)
        if not bool(active.any()):
            return cache.logits.clone()

        rows = torch.arange(B, device=device)
        S = cache.live.shape[1]
        new_len = lengths + push.long() - pop.long()
        top = (new_len - 1).clamp(min=0)  # stack index of the token fed this step
        # Grow the per-row tables by one column (the new slot S; the stack never outgrows the slot count).
        cache.live = torch.cat([cache.live, torch.zeros(B, 1, dtype=torch.bool, device=device)], dim=1)
        cache.stack = torch.cat([cache.stack, torch.zeros(B, 1, dtype=torch.long, device=device)], dim=1)
        cache.state = torch.cat([cache.state, torch.zeros(B, 1, dtype=torch.long, device=device)], dim=1)
        # Pop: kill the old top's slot and the new top's slot (the new slot re-computes the new top).
        old_top_slot = cache.stack[rows, (lengths - 1).clamp(min=0)]
        new_top_slot = cache.stack[rows, top]
        cache.live[rows, old_top_slot] &= ~pop
        cache.live[rows, new_top_slot] &= ~pop
        # Push: record the token.
        cache.state[rows, top] = torch.where(push, actions, cache.state[rows, top])
        fed = torch.where(active, cache.state[rows, top], self.special_ids["pad"])
        cache.stack[rows, top] = torch.where(active, S, cache.stack[rows, top])
        cache.live[:, S] = active
        allowed = cache.live.clone()
        allowed[:, S] = True  # inactive rows attend to their throwaway slot (never read later)
        positions = torch.where(active, top, 0)
        logits = self._call_cached(cache.kv, fed[:, None], positions[:, None], allowed[:, None, :])[:, 0]
        cache.logits = torch.where(active[:, None], logits, cache.logits)
        cache.lengths = new_len
        return cache.logits.clone()


def _weight(module: nn.Module) -> torch.Tensor:
    """An embedding layer's ``weight``.

    :raises TypeError: if the module has no tensor ``weight``.
    """
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(module).__name__} has no weight tensor")
    return weight


def _attention_error(impl) -> str:
    return (
        f"attn_implementation {impl!r} is not supported by HFPolicy: the backspace layout needs a 4D "
        f"attention mask, which flash-attention (and other mask-less) kernels ignore; use one of "
        f"{list(ALLOWED_ATTENTION)}"
    )


def init_new_token_rows(model: PreTrainedModel, old_n: int, new_ids: list[int]) -> None:
    """Give a causal LM rows for tokens added to its tokenizer, mean-initialised, in place.

    Resizes the embeddings only if they have fewer rows than ``old_n +
    len(new_ids)``, then sets the new tokens' input rows (and untied output
    rows and bias) to the mean of the rows of ids ``0 .. old_n-1`` [recon].

    :param model: a ``transformers`` causal LM.
    :param old_n: the tokenizer's length before the additions.
    :param new_ids: the added ids (from :func:`seqenv.tokenizers.add_backspace_tokens`).
    """
    if not new_ids:
        return
    if _weight(model.get_input_embeddings()).shape[0] < old_n + len(new_ids):
        model.resize_token_embeddings(old_n + len(new_ids), mean_resizing=False)
    with torch.no_grad():
        emb_in = _weight(model.get_input_embeddings())
        emb_in[new_ids] = emb_in[:old_n].mean(dim=0)
        out = model.get_output_embeddings()
        if out is not None and out.weight is not emb_in:
            out.weight[new_ids] = out.weight[:old_n].mean(dim=0)
            if getattr(out, "bias", None) is not None:
                out.bias[new_ids] = out.bias[:old_n].mean()


#: the weight files whose bytes identify a Hugging Face model directory
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def base_sha256(path: str | os.PathLike, pretrained: str | None = None) -> str | None:
    """Identity of a base model: the GGUF's SHA-256 for a named pretrained model, else the SHA-256 of
    the directory's weight files (names and each file's SHA-256, sorted); ``None`` for a hub id.

    Cost: one read of the weight files (about 1 s per GB), memoised per process.
    """
    if pretrained:
        return pretrained_sha256(pretrained)
    if not os.path.isdir(path):
        return None
    files = sorted(f for f in os.listdir(path) if f.endswith(_WEIGHT_SUFFIXES))
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f}:{file_sha256(os.path.join(path, f))}\n".encode())
    return h.hexdigest()


def _wrap_lora(model: PreTrainedModel, tokenizer, lora: LoraSettings) -> nn.Module:
    """peft LoRA with trainable rows for :data:`BACKSPACE_TOKEN` and :data:`PAD_TOKEN`-style added ids."""
    try:
        import peft
    except ImportError as e:  # pragma: no cover
        raise ImportError("LoRA needs peft: pip install 'seqenv[hf]'") from e
    token_ids = sorted({tokenizer.convert_tokens_to_ids(BACKSPACE_TOKEN), tokenizer.pad_token_id})
    names = {m: n for n, m in model.named_modules()}
    emb_in, emb_out = model.get_input_embeddings(), model.get_output_embeddings()
    trainable = {names[emb_in].split(".")[-1]: token_ids}
    if emb_out is not None and emb_out.weight is not emb_in.weight:
        trainable[names[emb_out].split(".")[-1]] = token_ids
    config = peft.LoraConfig(
        r=lora.r,
        # peft annotates lora_alpha as int; it takes any number (the update is scaled by alpha / r)
        lora_alpha=lora.alpha,  # pyright: ignore[reportArgumentType]
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        trainable_token_indices=trainable,
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():  # peft reads transformers' deprecated alias (peft <= 0.18)
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*deprecated", category=FutureWarning)
        return peft.get_peft_model(model, config)

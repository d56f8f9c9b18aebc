"""Tokenizers with the reserved special ids every seqenv component relies on.

Every tokenizer maps text to integer ids in ``[0, vocab_size)``. The first
:data:`NUM_SPECIAL` ids are reserved, with the same values in every tokenizer:

==========  ==  ============================================================
name        id  meaning
==========  ==  ============================================================
``pad``     0   padding; never a legal action
``bos``     1   beginning of sequence (policy input only; never an action)
``eos``     2   end of sequence; the action terminates the episode
``backspace`` 3 deletes the last generated token
``unk``     4   unknown character (only with ``unk="replace"``)
==========  ==  ============================================================

Two tokenizers ship:

* :class:`CharTokenizer` -- one id per character (the default for the built-in
  corpora). Characters outside the vocabulary follow the ``unk`` policy:
  ``"error"`` (default) raises :class:`ValueError` naming the character and its
  position; ``"replace"`` maps it to ``unk`` (the round trip then loses it:
  ``unk`` decodes to U+FFFD).
* :class:`BPETokenizer` -- byte-level BPE trained locally with HF
  ``tokenizers``. Every byte is in its base alphabet, so every string encodes
  and the round trip is lossless.

A third, :class:`HFTokenizer`, adapts a Hugging Face ``transformers``
tokenizer (optional dependency, imported lazily) for policies built on that
model's vocabulary (``agents/policies/hf.py``). Its special ids are the
tokenizer's own, NOT the table above: read them from ``special_ids``.

All serialise to a JSON-able dict (:meth:`Tokenizer.to_dict`) that
:func:`tokenizer_from_dict` turns back into an equal tokenizer; checkpoints
store it so that a checkpoint from another tokenizer is detected.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .pretrained import pretrained_dir

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
BACKSPACE_ID = 3
UNK_ID = 4
NUM_SPECIAL = 5
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<bksp>", "<unk>")
SPECIAL_IDS = {"pad": PAD_ID, "bos": BOS_ID, "eos": EOS_ID, "backspace": BACKSPACE_ID, "unk": UNK_ID}
_UNK_POLICIES = ("error", "replace")
BACKSPACE_TOKEN = "<|backspace|>"  # added to Hugging Face tokenizers by HFTokenizer / add_backspace_tokens
HF_PAD_TOKEN = "<|pad|>"  # added when a Hugging Face tokenizer has no pad or pads with eos


@dataclass(frozen=True)
class SpecialIds:
    """The special ids of one vocabulary, as plain ints (what env and agents compute with).

    The defaults are the fixed ids of our char/BPE tokenizers (table above);
    an :class:`HFTokenizer` has its own (``bos`` may equal ``eos``, ``unk`` may
    be ``None``). Build one with :meth:`of`.

    :param pad: padding; never a legal action, never written.
    :param bos: policy input only; never a legal action (unless it equals ``eos``).
    :param eos: ends the episode.
    :param backspace: deletes the last generated token.
    :param unk: unknown token (written like an ordinary one), or ``None``.
    """

    pad: int = PAD_ID
    bos: int = BOS_ID
    eos: int = EOS_ID
    backspace: int = BACKSPACE_ID
    unk: int | None = UNK_ID

    @classmethod
    def of(cls, source=None) -> SpecialIds:
        """The ids of ``source``: ``None`` (the defaults), a :class:`SpecialIds`, a
        ``special_ids`` dict, or anything with ``special_ids`` (a tokenizer, a
        policy, a DDP wrapper of one) or a ``tokenizer`` (a task).

        :raises ValueError: if no special ids can be found or the dict lacks
            ``pad``/``bos``/``eos``/``backspace``.
        """
        if source is None:
            return DEFAULT_SPECIAL_IDS
        if isinstance(source, SpecialIds):
            return source
        if not isinstance(source, dict):
            obj = getattr(source, "module", source)  # DDP
            if not hasattr(obj, "special_ids") and hasattr(obj, "tokenizer"):
                obj = obj.tokenizer  # a Task
            found = getattr(obj, "special_ids", None)
            if found is None:
                raise ValueError(
                    f"cannot find special ids on {type(source).__name__}; expected a tokenizer, "
                    "policy, task, dict or SpecialIds"
                )
            if isinstance(found, SpecialIds):
                return found
            source = found
        missing = [k for k in ("pad", "bos", "eos", "backspace") if k not in source]
        if missing:
            raise ValueError(f"special ids {source!r} lack {missing}")
        unk = source.get("unk")
        return cls(
            int(source["pad"]),
            int(source["bos"]),
            int(source["eos"]),
            int(source["backspace"]),
            None if unk is None else int(unk),
        )

    @property
    def never_legal(self) -> tuple[int, ...]:
        """Ids that are never legal actions: ``pad`` and ``bos`` (``bos`` only if it is not also ``eos``)."""
        return (self.pad,) if self.bos == self.eos else (self.pad, self.bos)

    @property
    def non_writing(self) -> tuple[int, ...]:
        """Ids whose action writes no token into the state: ``pad``, ``bos``, ``eos``, ``backspace``."""
        return (self.pad, self.bos, self.eos, self.backspace)

    @property
    def all(self) -> frozenset:
        """Every special id (``unk`` included when present)."""
        return frozenset(i for i in (self.pad, self.bos, self.eos, self.backspace, self.unk) if i is not None)

    def ordinary_ids(self, vocab_size: int) -> list[int]:
        """The ids in ``[0, vocab_size)`` that are not special (ascending); with the
        defaults ``range(NUM_SPECIAL, vocab_size)``."""
        special = self.all
        return [i for i in range(vocab_size) if i not in special]


DEFAULT_SPECIAL_IDS = SpecialIds()


class Tokenizer(ABC):
    """Base class: special ids, ``encode``/``decode`` and serialisation."""

    special_ids: dict[str, int] = SPECIAL_IDS  # HFTokenizer: its own
    pad_id = PAD_ID
    bos_id = BOS_ID
    eos_id = EOS_ID
    backspace_id = BACKSPACE_ID
    unk_id = UNK_ID

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, special ids included."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Encode ``text`` to ordinary token ids (no ``bos``/``eos`` added)."""

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """Decode ids to text; ``pad``/``bos``/``eos``/``backspace`` are skipped.

        Backspaces are *not* applied here: pass a reduced sequence (see
        :func:`apply_backspaces`).
        """

    @abstractmethod
    def to_dict(self) -> dict:
        """A JSON-able description that :func:`tokenizer_from_dict` rebuilds."""

    def token_str(self, token_id: int) -> str:
        """Human-readable form of one id (special ids as ``<name>``)."""
        if 0 <= token_id < NUM_SPECIAL:
            return SPECIAL_TOKENS[token_id]
        return self.decode([token_id])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))


def apply_backspaces(ids: Iterable[int], protected: int = 0, special_ids=None) -> list[int]:
    """Reduce an action history to the state it reaches.

    :param ids: action ids; ``backspace`` removes the previous kept id.
    :param protected: number of leading ids (a prompt) that backspace cannot
        delete; a backspace with nothing deletable is ignored.
    :param special_ids: anything :meth:`SpecialIds.of` takes (default: the fixed ids).
    :return: the reduced id list (``eos``, ``bos`` and ``pad`` are dropped).
    """
    sp = SpecialIds.of(special_ids)
    dropped = (sp.pad, sp.eos, sp.bos)
    out: list[int] = []
    for i in ids:
        i = int(i)
        if i == sp.backspace:
            if len(out) > protected:
                out.pop()
        elif i not in dropped:
            out.append(i)
    return out


class CharTokenizer(Tokenizer):
    """One id per character: ``id = NUM_SPECIAL + index in chars``.

    :param chars: the vocabulary characters, each once (order fixes the ids).
    :param unk: ``"error"`` raises on an unknown character, ``"replace"`` maps it
        to ``unk`` (decoded as U+FFFD).
    :raises ValueError: on duplicate or multi-character entries, an empty
        vocabulary, or an unknown ``unk`` policy.
    """

    def __init__(self, chars: Sequence[str], unk: str = "error"):
        chars = list(chars)
        if not chars:
            raise ValueError("CharTokenizer needs at least one character, got an empty vocabulary")
        bad = [c for c in chars if len(c) != 1]
        if bad:
            raise ValueError(f"CharTokenizer entries must be single characters, got {bad[:5]!r}")
        if len(set(chars)) != len(chars):
            dup = sorted({c for c in chars if chars.count(c) > 1})
            raise ValueError(f"CharTokenizer vocabulary has duplicate characters {dup[:10]!r}")
        if unk not in _UNK_POLICIES:
            raise ValueError(f"unk policy must be one of {_UNK_POLICIES}, got {unk!r}")
        self.chars = "".join(chars)
        self.unk = unk
        self._stoi = {c: NUM_SPECIAL + i for i, c in enumerate(chars)}

    @classmethod
    def from_corpus(cls, lines: Iterable[str], unk: str = "error") -> CharTokenizer:
        """Vocabulary = the sorted set of characters in ``lines``."""
        return cls(sorted(set("".join(lines))), unk=unk)

    @property
    def vocab_size(self) -> int:
        return NUM_SPECIAL + len(self.chars)

    def encode(self, text: str) -> list[int]:
        """:raises ValueError: (policy ``"error"``) on a character not in the vocabulary."""
        stoi = self._stoi
        try:
            return [stoi[c] for c in text]
        except KeyError:
            if self.unk == "replace":
                return [stoi.get(c, UNK_ID) for c in text]
            pos = next(i for i, c in enumerate(text) if c not in stoi)
            raise ValueError(
                f"character {text[pos]!r} (U+{ord(text[pos]):04X}) at position {pos} of {text[:40]!r} "
                f"is not in the tokenizer's {len(self.chars)}-character vocabulary; "
                f"use CharTokenizer(..., unk='replace') to map unknown characters to <unk>"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        out = []
        n = len(self.chars)
        for i in ids:
            i = int(i)
            if i >= NUM_SPECIAL:
                if i - NUM_SPECIAL >= n:
                    raise ValueError(f"token id {i} is out of range for vocab_size {self.vocab_size}")
                out.append(self.chars[i - NUM_SPECIAL])
            elif i == UNK_ID:
                out.append("\ufffd")
            elif i < 0:
                raise ValueError(f"token id {i} is negative")
        return "".join(out)

    def to_dict(self) -> dict:
        return {"type": "char", "chars": self.chars, "unk": self.unk}


class BPETokenizer(Tokenizer):
    """Byte-level BPE from HF ``tokenizers``, trained locally (no download).

    Special ids are the first five entries of the vocabulary. Encoding never
    fails (every byte is in the base alphabet) and decoding inverts encoding.

    :param hf_tokenizer: a ``tokenizers.Tokenizer`` whose ids 0..4 are the
        special tokens in :data:`SPECIAL_TOKENS` order.
    :raises ValueError: if the special tokens are not at ids 0..4.
    """

    def __init__(self, hf_tokenizer):
        for i, tok in enumerate(SPECIAL_TOKENS):
            if hf_tokenizer.token_to_id(tok) != i:
                raise ValueError(f"BPE tokenizer must map {tok!r} to id {i}, got {hf_tokenizer.token_to_id(tok)!r}")
        self._tok = hf_tokenizer

    @classmethod
    def train(cls, lines: Iterable[str], vocab_size: int = 512, min_frequency: int = 2) -> BPETokenizer:
        """Train byte-level BPE on ``lines``.

        :param vocab_size: target size, special ids and the 256 byte symbols
            included; must be at least ``NUM_SPECIAL + 256``.
        :raises ValueError: if ``vocab_size`` is too small.
        """
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        if vocab_size < NUM_SPECIAL + 256:
            raise ValueError(f"BPE vocab_size must be >= {NUM_SPECIAL + 256} (specials + 256 bytes), got {vocab_size}")
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(list(lines), trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if i < 0 or i >= self.vocab_size]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are out of range for vocab_size {self.vocab_size}")
        return self._tok.decode([i for i in ids if i >= NUM_SPECIAL], skip_special_tokens=True)

    def to_dict(self) -> dict:
        return {"type": "bpe", "json": self._tok.to_str()}


def add_backspace_tokens(hf_tokenizer) -> list[int]:
    """Add :data:`BACKSPACE_TOKEN` (and :data:`HF_PAD_TOKEN`) to a ``transformers`` tokenizer, in place.

    The pad token is added when the tokenizer has none or its pad token is
    its eos token, its bos token or :data:`DOCUMENT_SEPARATOR` (a pad equal to
    a start or end token would make "stop" and "padding" one id).
    Idempotent: a tokenizer that already has both adds nothing.

    :param hf_tokenizer: a ``transformers`` tokenizer (``PreTrainedTokenizerBase``).
    :return: the new ids, ``len(tokenizer)`` before the call onwards (pad first).
    """
    from tokenizers import AddedToken

    old_n = len(hf_tokenizer)
    boundary = {hf_tokenizer.eos_token_id, hf_tokenizer.bos_token_id, hf_tokenizer.get_vocab().get(DOCUMENT_SEPARATOR)}
    if hf_tokenizer.pad_token_id is None or hf_tokenizer.pad_token_id in boundary:
        hf_tokenizer.add_special_tokens({"pad_token": AddedToken(HF_PAD_TOKEN, special=True, normalized=False)})
    if BACKSPACE_TOKEN not in hf_tokenizer.get_vocab():
        hf_tokenizer.add_tokens([AddedToken(BACKSPACE_TOKEN, special=True, normalized=False)], special_tokens=True)
    return list(range(old_n, len(hf_tokenizer)))


#: the document separator of GPT-2-style vocabularies (GPT-2, Qwen2, SmolLM2): what their pretraining put
#: between documents, so the natural start and end of plain text
DOCUMENT_SEPARATOR = "<|endoftext|>"


def hf_boundary_tokens(hf_tokenizer, start_token: str | None = None, end_token: str | None = None) -> tuple[str, str]:
    """The start (``bos``) and end (``eos``) tokens of plain text for a ``transformers`` tokenizer.

    Defaults [recon]: start = :data:`DOCUMENT_SEPARATOR` when the vocabulary
    has it (what pretraining put before a document), else the tokenizer's
    bos token (its eos token when it has none); end = the newline token when
    ``"\n"`` encodes to one token (every seqenv text is one line, and a
    pretrained model ends a line with a newline), else
    :data:`DOCUMENT_SEPARATOR` when present, else the eos token. Measured on
    SmolLM2-135M, 64 ``python-lines`` test texts, untrained
    (benchmarks/results/smollm2_cpu.md): held-out NLL 4.36 nats/token with
    ``<|endoftext|>`` ... newline (the end token itself 2.1 nats), 5.12 with
    ``<|endoftext|>`` for both (end 12.1), 5.85 with SmolLM2's own chat
    markers ``<|im_start|>``/``<|im_end|>`` (end 13.7).

    :param start_token: override of the start token: a token of the vocabulary
        (e.g. ``"<|im_start|>"``), or a text that encodes to one token (``"\\n"``).
    :param end_token: override of the end token.
    :return: ``(start token, end token)`` as token strings.
    :raises ValueError: if an override is not a single token of the vocabulary,
        or the tokenizer has no eos token and no override is given.
    """
    vocab = hf_tokenizer.get_vocab()

    def as_token(what: str, tok: str | None) -> str | None:
        if tok is None or tok in vocab:
            return tok
        ids = hf_tokenizer.encode(tok, add_special_tokens=False) if tok else []
        if len(ids) == 1 and ids[0] != hf_tokenizer.unk_token_id:  # a text that is one token: "\n" -> "Ċ"
            return hf_tokenizer.convert_ids_to_tokens(ids[0])
        raise ValueError(
            f"{what} token {tok!r} is not a token of the vocabulary (a single token is needed, "
            f"e.g. {DOCUMENT_SEPARATOR!r} or the tokenizer's bos/eos, or a text that encodes to one "
            f"token; it encodes to {len(ids)})"
        )

    start_token, end_token = as_token("start", start_token), as_token("end", end_token)
    if DOCUMENT_SEPARATOR in vocab:
        default_start = default_end = DOCUMENT_SEPARATOR
    else:
        default_end = hf_tokenizer.eos_token
        default_start = hf_tokenizer.bos_token if hf_tokenizer.bos_token is not None else default_end
    newline = hf_tokenizer.encode("\n", add_special_tokens=False)
    if len(newline) == 1:  # seqenv's texts are lines: a pretrained LM ends a line with a newline
        default_end = hf_tokenizer.convert_ids_to_tokens(newline[0])
    start, end = start_token or default_start, end_token or default_end
    if end is None or start is None:
        raise ValueError("tokenizer has no eos token; seqenv needs one to end episodes (pass an end token)")
    return start, end


def hf_special_ids(hf_tokenizer, start_token: str | None = None, end_token: str | None = None) -> dict[str, int]:
    """Special ids of a ``transformers`` tokenizer prepared by :func:`add_backspace_tokens`.

    ``bos`` and ``eos`` are the start and end tokens of :func:`hf_boundary_tokens`
    (``<|endoftext|>`` ... newline for byte-level vocabularies such as
    SmolLM2's, else the tokenizer's bos and eos) [recon], so ``bos`` may
    equal ``eos``; ``unk`` is present only if the tokenizer has one.

    :param start_token: override of the start token (see :func:`hf_boundary_tokens`).
    :param end_token: override of the end token.
    :return: ``{"pad", "bos", "eos", "backspace"[, "unk"]: id}``.
    :raises ValueError: if the backspace token is missing, no end token can
        be found, pad is missing or equals bos or eos, or an override is not a token.
    """
    vocab = hf_tokenizer.get_vocab()
    if BACKSPACE_TOKEN not in vocab:
        raise ValueError(f"tokenizer has no {BACKSPACE_TOKEN!r} token; call add_backspace_tokens first")
    start, end = hf_boundary_tokens(hf_tokenizer, start_token, end_token)
    bos, eos, pad = vocab[start], vocab[end], hf_tokenizer.pad_token_id
    if pad is None or pad in (eos, bos):
        raise ValueError(f"tokenizer needs a pad token different from bos and eos, got pad={pad}, bos={bos}, eos={eos}")
    ids = {"pad": int(pad), "bos": int(bos), "eos": int(eos), "backspace": int(vocab[BACKSPACE_TOKEN])}
    if hf_tokenizer.unk_token_id is not None:
        ids["unk"] = int(hf_tokenizer.unk_token_id)
    return ids


def load_hf_tokenizer(path: str):
    """``transformers.AutoTokenizer.from_pretrained(path)`` with a clear error without the ``[hf]`` extra."""
    try:
        from transformers import AutoTokenizer
    except ImportError as e:
        raise ImportError("Hugging Face tokenizers need the optional extra: pip install 'seqenv[hf]'") from e
    return AutoTokenizer.from_pretrained(path)


class HFTokenizer(Tokenizer):
    """A Hugging Face ``transformers`` tokenizer with seqenv's interface.

    Loads the tokenizer at ``path`` and adds :data:`BACKSPACE_TOKEN` (and
    :data:`HF_PAD_TOKEN`, see :func:`add_backspace_tokens`), exactly as
    ``HFPolicy.from_pretrained`` does, so the ids agree with the policy's.
    Special ids are the tokenizer's own (:func:`hf_special_ids`), available as
    ``special_ids`` and ``pad_id``/``bos_id``/``eos_id``/``backspace_id``/
    ``unk_id`` (``None`` when the tokenizer has no unk token). Ids are
    ``0 .. vocab_size-1`` with ``vocab_size = len(tokenizer)`` after the
    additions; the model's embedding may have more (padding) rows, which
    are never ids.

    ``bos``/``eos`` are the start and end tokens of :func:`hf_boundary_tokens`
    (``<|endoftext|>`` when the vocabulary has it), overridable.

    :param path: directory (or hub id) of the tokenizer; stored by :meth:`to_dict`.
    :param hf_tokenizer: an already loaded tokenizer for ``path`` (skips loading).
    :param start_token: override of the start token (``bos``); a token of the vocabulary.
    :param end_token: override of the end token (``eos``).
    :param pretrained: the name of a pretrained model (``"smollm2"``,
        :mod:`seqenv.pretrained`) whose cached directory ``path`` is; stored by
        :meth:`to_dict` so that the tokenizer is found again on another machine.
    :raises ImportError: without ``transformers``.
    :raises ValueError: as :func:`hf_special_ids` (e.g. no eos token, an override that is not a token).
    """

    def __init__(
        self,
        path: str,
        hf_tokenizer=None,
        start_token: str | None = None,
        end_token: str | None = None,
        pretrained: str | None = None,
    ):
        self.path = str(path)
        self.hf = hf_tokenizer if hf_tokenizer is not None else load_hf_tokenizer(self.path)
        self.added_ids = add_backspace_tokens(self.hf)
        self.start_token, self.end_token = hf_boundary_tokens(self.hf, start_token, end_token)
        self.pretrained = pretrained
        self.special_ids = hf_special_ids(self.hf, self.start_token, self.end_token)
        self.pad_id = self.special_ids["pad"]
        self.bos_id = self.special_ids["bos"]
        self.eos_id = self.special_ids["eos"]
        self.backspace_id = self.special_ids["backspace"]
        self.unk_id = self.special_ids.get("unk")

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with no bos/eos added (the literal text of a special token encodes to it)."""
        return list(self.hf.encode(text, add_special_tokens=False))

    def decode(self, ids: Iterable[int]) -> str:
        """:raises ValueError: on ids outside ``[0, vocab_size)``. Every special token is skipped."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if i < 0 or i >= self.vocab_size]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are out of range for vocab_size {self.vocab_size}")
        skip = {self.pad_id, self.bos_id, self.eos_id, self.backspace_id}  # eos may be an ordinary token ("\n")
        return self.hf.decode([i for i in ids if i not in skip], skip_special_tokens=True)

    def token_str(self, token_id: int) -> str:
        names = {v: k for k, v in self.special_ids.items()}
        if token_id in names:
            return f"<{names[token_id]}>"
        return self.decode([token_id])

    def to_dict(self) -> dict:
        """``{"type": "hf", "path", "vocab_size", "special_ids", "start_token", "end_token"[, "pretrained"]}``;
        ``vocab_size`` and ``special_ids`` detect a changed directory."""
        d = {
            "type": "hf",
            "path": self.path,
            "vocab_size": self.vocab_size,
            "special_ids": dict(self.special_ids),
            "start_token": self.start_token,
            "end_token": self.end_token,
        }
        if self.pretrained:
            d["pretrained"] = self.pretrained
        return d


def tokenizer_from_dict(d: dict) -> Tokenizer:
    """Rebuild a tokenizer from :meth:`Tokenizer.to_dict`.

    :raises ValueError: on an unknown ``type``, or (``"hf"``) when the
        directory's tokenizer no longer has the stored vocab size or special ids.
    """
    kind = d.get("type")
    if kind == "char":
        return CharTokenizer(d["chars"], unk=d.get("unk", "error"))
    if kind == "hf":
        path = d["path"]
        if d.get("pretrained") and not os.path.isdir(path):  # converted on another machine: convert here
            path = str(pretrained_dir(d["pretrained"]))
        try:
            tok = HFTokenizer(
                path, start_token=d.get("start_token"), end_token=d.get("end_token"), pretrained=d.get("pretrained")
            )
        except ValueError as e:
            raise ValueError(
                f"HF tokenizer at {d['path']!r}: {e}; the directory changed since this tokenizer was saved"
            ) from None
        for key in ("vocab_size", "special_ids"):
            if key in d and d[key] != tok.to_dict()[key]:
                raise ValueError(
                    f"HF tokenizer at {d['path']!r} has {key} {tok.to_dict()[key]!r}, but the stored one is "
                    f"{d[key]!r}; the directory changed since this tokenizer was saved"
                )
        return tok
    if kind == "bpe":
        from tokenizers import Tokenizer as RawTokenizer

        return BPETokenizer(RawTokenizer.from_str(d["json"]))
    raise ValueError(f"unknown tokenizer type {kind!r}; expected 'char', 'bpe' or 'hf'")

"""Tasks: a corpus with its tokenizer, deterministic splits, and optional extras.

A :class:`Task` bundles what an environment and a learner need to know about
the data: the tokenizer, the train/valid/test splits (deterministic: a line's
split is a function of its text alone, through a hash), the suggested
``max_length``, optional prompts (conditional generation), an optional
validity checker and an optional exact oracle.

Built-in tasks (:func:`make_task`, :func:`list_tasks`):

=================  ==========================================================
``python-lines``   single Python statements from the running interpreter's
                   standard library source that parse on their own
                   (``ast.parse``), 8--60 printable-ASCII characters;
                   validity = ``ast.parse`` succeeds. Character tokenizer
                   over printable ASCII (100 ids). The default task.
``pydoc-text``     English sentences from ``pydoc_data.topics`` (the
                   interpreter's bundled help), 20--100 characters;
                   validity = starts with a capital letter, ends with
                   ``.``/``!``/``?``, and every word occurs in the corpus.
``oracle-hmm``     samples of a fixed random :class:`~seqenv.oracle.HMMOracle`
                   (16 symbols written ``a``..``p``, length <= 24); exact
                   ``log_prob`` and sampling.
``arithmetic``     paired conditional task (SequenceMatch's arithmetic
                   setting): ``add_or_sub_in_base`` questions such as
                   ``"In base 7, what is 126 - 4? "`` are the prompts, the
                   answer (``"122"``) is generated; 5,000 train / 200 valid /
                   200 test questions from our own seeded generator; validity
                   = exact answer, checked on prompt + completion
                   (:func:`arithmetic`).
``file:PATH``      any UTF-8 text file, one sequence per line, empty lines
                   dropped; character tokenizer over the file's characters.
                   Fewer than 10 distinct lines: every split is all lines
                   (a warning says so); otherwise every split has at least
                   one line. Lines too long for ``max_length`` are dropped
                   and counted in a warning. The spec records the file's
                   absolute path and SHA-256; :func:`task_from_spec` rebuilds
                   a data-less task (enough to generate) when it is gone.
=================  ==========================================================

Every corpus name accepts ``tokenizer="bpe"`` (byte-level BPE trained on the
train split, ``bpe_vocab_size`` ids), ``tokenizer="hf:PATH"`` (a Hugging Face
tokenizer directory: the model's own vocabulary and special ids, see
:class:`~seqenv.tokenizers.HFTokenizer`; ``arithmetic`` too, not ``oracle-hmm``)
or ``tokenizer="smollm2"`` (SmolLM2-135M's, :mod:`seqenv.pretrained`)
instead of the character tokenizer, and
``prompts=[...]`` to make the task conditional (one prompt list for every
text). A *paired* task (``arithmetic``) has its own prompt per text instead:
``task.split_prompts[split][i]`` is the prompt of ``task.splits[split][i]``,
and :meth:`Task.encoded_pairs` gives both as token ids.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import os
import random
import re
import string
import sysconfig
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .checks import check_number
from .oracle import HMMOracle
from .pretrained import PRETRAINED_NAMES, pretrained_dir
from .tokenizers import BPETokenizer, CharTokenizer, HFTokenizer, Tokenizer, tokenizer_from_dict

SPLITS = ("train", "valid", "test")
PRINTABLE = "".join(c for c in string.printable if c not in "\t\n\r\x0b\x0c")  # 95 characters
#: corpora with fewer distinct texts than this use all of them in every split (see :func:`hash_splits`)
MIN_SPLIT_TEXTS = 10


class MissingTaskDataError(FileNotFoundError):
    """The task's texts are not available: it was rebuilt from a spec without its corpus file.

    Raised when such a task's splits are read (held-out NLL, BLEU references,
    demonstrations); the message names the file. A ``FileNotFoundError``, so
    scripts report it as a one-line user error.
    """


class _MissingSplits(Mapping):
    """Stands in for ``Task.splits`` when the data is unavailable: every read raises."""

    def __init__(self, message: str):
        self.message = message

    def __getitem__(self, split):
        raise MissingTaskDataError(f"{self.message} (needed: the {split!r} split)")

    def __iter__(self):
        return iter(SPLITS)

    def __len__(self):
        return len(SPLITS)

    def __contains__(self, split):
        return split in SPLITS

    def __eq__(self, other):
        return self is other

    def __hash__(self):
        return object.__hash__(self)

    def __repr__(self):
        return f"<splits unavailable: {self.message}>"


@dataclass
class Task:
    """A corpus with tokenizer, splits and optional prompts, checker, oracle.

    :param name: the task's name (``make_task(name)`` rebuilds it).
    :param tokenizer: maps text to ids; its special ids are fixed (see
        :mod:`seqenv.tokenizers`).
    :param splits: ``{"train"|"valid"|"test": list of texts}``.
    :param max_length: suggested environment ``max_length`` in tokens (prompt
        included); every training sequence fits with room for nothing else --
        sequences longer than it are dropped from the splits at construction.
    :param prompts: texts episodes start from (conditional task) or ``None``.
    :param validity: ``text -> bool`` checker or ``None``.
    :param oracle: exact source distribution (see :mod:`seqenv.oracle`) or
        ``None``.
    :param split_prompts: for a *paired* conditional task (``arithmetic``),
        ``split_prompts[split][i]`` is the prompt (question) of
        ``splits[split][i]`` (its completion, the answer); same keys as
        ``splits`` and lists of the same lengths. ``prompts`` then defaults to
        the train split's prompts, so an environment's default prompt draws
        are training questions; pass ``split_prompts["test"]`` as the env's
        ``prompts=`` to evaluate on test questions. ``None``: unpaired.
    :param args: the keyword arguments :func:`make_task` was called with
        (JSON-able); :meth:`spec` stores them so that :func:`make_task` of the
        spec rebuilds the same task.
    :param source: where the texts came from, stored in :meth:`spec`
        (``file:`` tasks: ``{"path": absolute path, "sha256": of the file's
        bytes}``) or ``None``.
    :param missing_data: ``None``, or why the texts are unavailable (a task
        rebuilt by :func:`task_from_spec` without its corpus file): then
        ``splits`` is a stand-in whose every read raises
        :class:`MissingTaskDataError` with this message; tokenizer,
        ``max_length``, prompts and :meth:`spec` work (generation needs
        nothing more).
    :raises ValueError: on ``max_length < 1``, a missing split, or
        ``split_prompts`` whose keys or list lengths do not match ``splits``.
    """

    name: str
    tokenizer: Tokenizer
    splits: Mapping[str, list[str]]
    max_length: int
    prompts: list[str] | None = None
    validity: Callable[[str], bool] | None = None
    oracle: HMMOracle | None = None
    description: str = ""
    split_prompts: dict[str, list[str]] | None = None
    args: dict = field(default_factory=dict, compare=False)
    source: dict | None = field(default=None, compare=False)
    missing_data: str | None = field(default=None, compare=False)
    _encoded: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        if self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")
        if self.missing_data is not None:
            self.splits = _MissingSplits(self.missing_data)
        missing = [s for s in SPLITS if s not in self.splits]
        if missing:
            raise ValueError(f"task {self.name!r} lacks splits {missing}; expected {SPLITS}")
        if self.split_prompts is not None:
            missing = [s for s in SPLITS if s not in self.split_prompts]
            if missing:
                raise ValueError(f"task {self.name!r}: split_prompts lacks splits {missing}; expected {SPLITS}")
            for s in SPLITS:
                if len(self.split_prompts[s]) != len(self.splits[s]):
                    raise ValueError(
                        f"task {self.name!r}: split {s!r} has {len(self.splits[s])} texts but "
                        f"{len(self.split_prompts[s])} prompts in split_prompts; expected one prompt per text"
                    )
            if self.prompts is None:
                self.prompts = list(self.split_prompts["train"])

    @property
    def has_data(self) -> bool:
        """False for a task rebuilt from a spec without its corpus (see ``missing_data``)."""
        return self.missing_data is None

    @property
    def paired(self) -> bool:
        """True for a paired conditional task (each text has its own prompt; see ``split_prompts``)."""
        return self.split_prompts is not None

    def encoded(self, split: str) -> list[list[int]]:
        """Token ids of every text in ``split`` (no ``bos``/``eos``), cached.

        :raises ValueError: on an unknown split name.
        """
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if split not in self._encoded:
            self._encoded[split] = [self.tokenizer.encode(t) for t in self.splits[split]]
        return self._encoded[split]

    def encoded_pairs(self, split: str) -> list[tuple[list[int], list[int]]]:
        """``(prompt ids, completion ids)`` of every text in ``split``, cached.

        For a paired task the prompt is ``split_prompts[split][i]``; for an
        unpaired task every prompt is ``[]``. No ``bos``/``eos``; the
        environment's state after the prompt is ``prompt ids``, and the
        completion followed by ``eos`` is the demonstration's action sequence.

        :raises ValueError: on an unknown split name.
        """
        completions = self.encoded(split)
        key = ("pairs", split)
        if key not in self._encoded:
            if self.split_prompts is None:
                prompts: list[list[int]] = [[] for _ in completions]
            else:
                prompts = [self.tokenizer.encode(p) for p in self.split_prompts[split]]
            self._encoded[key] = list(zip(prompts, completions))
        return self._encoded[key]

    def split_prompt_texts(self, split: str) -> list[str]:
        """The prompts (questions) of ``split`` of a paired task, e.g. for an env's ``prompts=``.

        :raises ValueError: on an unknown split, or if the task is not paired.
        """
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if self.split_prompts is None:
            raise ValueError(f"task {self.name!r} is not a paired conditional task: its splits have no prompts")
        return self.split_prompts[split]

    def encoded_prompts(self) -> list[list[int]] | None:
        """Token ids of the prompts, or ``None`` for an unconditional task."""
        if self.prompts is None:
            return None
        if "prompts" not in self._encoded:
            self._encoded["prompts"] = [self.tokenizer.encode(p) for p in self.prompts]
        return self._encoded["prompts"]

    def is_valid(self, text: str) -> bool:
        """Apply the task's validity checker.

        :raises ValueError: if the task has no checker (``task.validity is None``).
        """
        if self.validity is None:
            raise ValueError(f"task {self.name!r} has no validity checker")
        return bool(self.validity(text))

    @property
    def corpus_hash(self) -> str:
        """SHA-256 (hex, 64 characters) of the task's texts: the corpus identity.

        Hashes every split in the order ``train``, ``valid``, ``test``; each
        text (and, for a paired task, its prompt) is length-prefixed, so no
        two different corpora give the same bytes. Two tasks with the same
        name built on different Python versions (``python-lines`` reads the
        running interpreter's standard library) differ here. Cached.

        :raises MissingTaskDataError: for a task rebuilt without its corpus.
        """
        if "corpus_hash" not in self._encoded:
            h = hashlib.sha256()
            for s in SPLITS:
                prompts = self.split_prompts[s] if self.split_prompts is not None else [None] * len(self.splits[s])
                h.update(f"split {s} {len(self.splits[s])}\n".encode())
                for text, prompt in zip(self.splits[s], prompts):
                    for part in ([] if prompt is None else [prompt]) + [text]:
                        b = part.encode("utf-8")
                        h.update(len(b).to_bytes(8, "big") + b)
            self._encoded["corpus_hash"] = h.hexdigest()
        return self._encoded["corpus_hash"]

    def spec(self) -> dict:
        """JSON-able identity stored in checkpoints; :func:`make_task` of it rebuilds the task.

        Keys: ``name``, ``tokenizer`` (:meth:`~seqenv.tokenizers.Tokenizer.to_dict`),
        ``max_length``, ``args`` (the :func:`make_task` keyword arguments)
        when any were given, and ``file`` (``{"path", "sha256"}``) for a
        ``file:`` task. That is all generation needs: :func:`task_from_spec`
        rebuilds a usable task from it even when the file is gone.
        """
        out = {"name": self.name, "tokenizer": self.tokenizer.to_dict(), "max_length": self.max_length}
        if self.args:  # a tokenizer object given as an argument is stored as its to_dict()
            out["args"] = {k: (v.to_dict() if isinstance(v, Tokenizer) else v) for k, v in self.args.items()}
        if self.source is not None:
            out["file"] = dict(self.source)
        return out


# --------------------------------------------------------------------------
# deterministic splits
# --------------------------------------------------------------------------
def split_of(text: str, valid_frac: float = 0.05, test_frac: float = 0.05) -> str:
    """The split a text belongs to: a pure function of the text (md5 bucket)."""
    u = int.from_bytes(hashlib.md5(text.encode("utf-8")).digest()[:8], "big") / 2**64
    if u < test_frac:
        return "test"
    if u < test_frac + valid_frac:
        return "valid"
    return "train"


def hash_splits(
    texts: list[str], valid_frac: float = 0.05, test_frac: float = 0.05, name: str = "corpus"
) -> dict[str, list[str]]:
    """Deduplicate ``texts`` (first occurrence kept) and split them by hash.

    Small corpora, the rule:

    * fewer than :data:`MIN_SPLIT_TEXTS` (10) distinct texts: every split
      (train, valid and test) is all of them, in corpus order, and a
      ``UserWarning`` says so (held-out metrics then measure training data);
    * otherwise every split gets at least one text: when the hash leaves
      ``valid`` or ``test`` empty, the last train texts (in corpus order)
      move there.

    :param name: the task name the warning gives.
    """
    unique = list(dict.fromkeys(texts))
    if 0 < len(unique) < MIN_SPLIT_TEXTS:
        warnings.warn(
            f"task {name!r} has only {len(unique)} distinct texts (fewer than {MIN_SPLIT_TEXTS}): every "
            f"split (train, valid, test) is all {len(unique)} of them, so held-out metrics measure "
            f"training data",
            UserWarning,
            stacklevel=2,
        )
        return {s: list(unique) for s in SPLITS}
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    for t in unique:
        out[split_of(t, valid_frac, test_frac)].append(t)
    for s in ("valid", "test"):
        if not out[s] and out["train"]:
            out[s].append(out["train"].pop())
    return out


# --------------------------------------------------------------------------
# built-in corpora
# --------------------------------------------------------------------------
_SKIP_DIRS = {"site-packages", "test", "tests", "idle_test", "__pycache__", "lib2to3"}


@functools.lru_cache(maxsize=4)
def python_statements(min_chars: int = 8, max_chars: int = 60) -> tuple[str, ...]:
    """Single-line Python statements from the running interpreter's stdlib.

    Each line of each ``.py`` file under ``sysconfig``'s ``stdlib`` path
    (tests and site-packages excluded), stripped, of ``min_chars..max_chars``
    printable ASCII characters, that ``ast.parse`` accepts on its own and that
    is not a bare literal expression (a docstring or data-table fragment). Sorted, unique.
    """
    root = sysconfig.get_paths()["stdlib"]
    allowed = set(PRINTABLE)
    cands = set()
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x not in _SKIP_DIRS)
        for f in sorted(files):
            if not f.endswith(".py"):
                continue
            try:
                src = Path(d, f).read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            for line in src.splitlines():
                s = line.strip()
                if min_chars <= len(s) <= max_chars and not s.startswith("#") and set(s) <= allowed:
                    cands.add(s)
    out = []
    for s in sorted(cands):
        if _parses_as_statement(s):
            out.append(s)
    if not out:
        raise RuntimeError(f"no Python statements found under the stdlib path {root!r}")
    return tuple(out)


def _quiet_parse(text: str) -> ast.Module | None:
    """``ast.parse(text)``, or ``None`` if it fails; silent.

    Python's compiler reports some lexical oddities (``1if``, ``'\\d'``,
    ``0x1for``) as ``SyntaxWarning`` through :mod:`warnings` while parsing; a
    validity check runs on generated text and must not print them, so they
    are suppressed here (the parse result is unchanged).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return ast.parse(text)
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            return None


def _parses_as_statement(text: str) -> bool:
    tree = _quiet_parse(text)
    if tree is None:
        return False
    if len(tree.body) != 1:
        return False
    node = tree.body[0]
    if isinstance(node, ast.Expr):  # a bare expression must do something: a call, a name, an attribute
        return any(
            isinstance(n, (ast.Call, ast.Name, ast.Attribute, ast.Await, ast.Yield, ast.YieldFrom))
            for n in ast.walk(node.value)
        )
    return True


def python_is_valid(text: str) -> bool:
    """Validity for ``python-lines``: ``ast.parse(text)`` succeeds (non-empty).

    Silent: the compiler's ``SyntaxWarning`` messages (e.g. "invalid decimal
    literal" for ``1if``) are suppressed, never printed.
    """
    if not text.strip():
        return False
    return _quiet_parse(text) is not None


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_WORD = re.compile(r"[A-Za-z]+")


_ASCII_QUOTES = str.maketrans(
    {"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'", "\u2014": "--", "\u2013": "-"}
)


@functools.lru_cache(maxsize=4)
def pydoc_sentences(min_chars: int = 20, max_chars: int = 100) -> tuple[str, ...]:
    """English sentences from ``pydoc_data.topics`` (the bundled help topics).

    Prose paragraphs only: paragraphs are blank-line separated; a leading
    bullet (``* ``) is dropped and its 2-space continuation kept; other
    indented blocks (code, grammar, tables), ``>>>`` lines and reST markup
    lines are skipped. Curly quotes become ASCII quotes and ``*emphasis*``
    loses its stars. Paragraphs are split into sentences that start with a
    capital letter and end with ``.``, ``!`` or ``?``; printable ASCII,
    ``min_chars..max_chars`` characters, at least 4 words. Sorted, unique.
    """
    from pydoc_data.topics import topics

    allowed = set(PRINTABLE) - set("`|")
    out = set()
    for key in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[key].translate(_ASCII_QUOTES)):
            lines = para.splitlines()
            if lines and lines[0].lstrip().startswith("* "):
                indent = len(lines[0]) - len(lines[0].lstrip())
                lines = [lines[0].lstrip()[2:]] + [
                    l[indent + 2 :] if l[: indent + 2].isspace() else l for l in lines[1:]
                ]
            if not lines or any(
                l.startswith((" ", "\t")) or ">>>" in l or l.startswith(("..", "==", "--", "**", "* ")) for l in lines
            ):
                continue
            text = re.sub(r"\*([^*\s][^*]*)\*", r"\1", " ".join(l.strip() for l in lines))
            for s in _SENTENCE_END.split(text):
                s = s.strip()
                if (
                    min_chars <= len(s) <= max_chars
                    and s[0].isupper()
                    and s[-1] in ".!?"
                    and set(s) <= allowed
                    and "*" not in s
                    and len(_WORD.findall(s)) >= 4
                ):
                    out.add(s)
    return tuple(sorted(out))


class ProseValidity:
    """Validity for prose: capitalised, terminal punctuation, known words.

    A sentence is valid when it starts with an upper-case letter, ends with
    ``.``, ``!`` or ``?``, and every alphabetic word (case-folded) occurs in the
    corpus (all splits) -- a spelling check against the corpus vocabulary. Our
    definition; prose has no parser.
    """

    def __init__(self, texts: list[str]):
        self.words = frozenset(w.lower() for t in texts for w in _WORD.findall(t))

    def __call__(self, text: str) -> bool:
        text = text.strip()
        if not text or not text[0].isupper() or text[-1] not in ".!?":
            return False
        return all(w.lower() in self.words for w in _WORD.findall(text))


def _tokenizer_for(
    kind: str | Tokenizer, chars: str | None, train: list[str], bpe_vocab_size: int, unk: str
) -> Tokenizer:
    if isinstance(kind, HFTokenizer):  # e.g. built with start/end token overrides
        return kind
    if isinstance(kind, dict):  # its to_dict(), from a task spec
        return tokenizer_from_dict(kind)
    if isinstance(kind, str) and kind.startswith("hf:") and len(kind) > 3:
        return HFTokenizer(kind[3:])
    if isinstance(kind, str) and kind in PRETRAINED_NAMES:
        return HFTokenizer(str(pretrained_dir(kind)), pretrained=kind)
    if kind == "char":
        return CharTokenizer(chars, unk=unk) if chars is not None else CharTokenizer.from_corpus(train, unk=unk)
    if kind == "bpe":
        return BPETokenizer.train(train, vocab_size=bpe_vocab_size)
    raise ValueError(
        f"tokenizer must be 'char', 'bpe', 'hf:PATH' or one of {', '.join(PRETRAINED_NAMES)}, got {kind!r}"
    )


def _fit_max_length(
    name: str, tok: Tokenizer, splits: dict[str, list[str]], max_length: int | None, prompts: list[str] | None
) -> tuple[dict[str, list[str]], int]:
    """Pick max_length (longest encoded text + 1 for the eos step, at most 512) and drop longer texts.

    Dropped texts are counted in a ``UserWarning``; if a held-out split loses
    all its texts, the kept texts are split again (:func:`hash_splits`' rule).
    """
    if max_length is None:
        longest = max(len(tok.encode(t)) for s in SPLITS for t in splits[s])
        longest_prompt = max((len(tok.encode(p)) for p in prompts), default=0) if prompts else 0
        max_length = min(512, longest + longest_prompt + 1)
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    fits = {t: len(tok.encode(t)) < max_length for s in SPLITS for t in splits[s]}
    dropped = sum(not ok for ok in fits.values())
    if dropped:
        warnings.warn(
            f"task {name!r}: dropped {dropped} of {len(fits)} texts longer than {max_length - 1} tokens "
            f"(max_length={max_length} keeps one step for eos)",
            UserWarning,
            stacklevel=3,
        )
    kept = {s: [t for t in splits[s] if fits[t]] for s in SPLITS}
    if not kept["train"]:
        raise ValueError(f"task {name!r}: no training text fits max_length={max_length}")
    if dropped and not all(kept[s] for s in SPLITS):
        kept = hash_splits([t for t, ok in fits.items() if ok], name=name)
    return kept, max_length


def _text_task(
    name,
    texts,
    validity_factory,
    *,
    chars=None,
    tokenizer="char",
    bpe_vocab_size=512,
    unk="error",
    max_length=None,
    prompts=None,
    description="",
):
    splits = hash_splits(list(texts), name=name)
    tok = _tokenizer_for(tokenizer, chars, splits["train"], bpe_vocab_size, unk)
    if chars is None and tokenizer == "char" and isinstance(tok, CharTokenizer):
        # held-out characters unseen in train: extend so every split encodes
        extra = sorted(set("".join(splits["valid"] + splits["test"] + (prompts or []))) - set(tok.chars))
        if extra:
            tok = CharTokenizer(tok.chars + "".join(extra), unk=unk)
    splits, max_length = _fit_max_length(name, tok, splits, max_length, prompts)
    validity = validity_factory(splits) if validity_factory else None
    return Task(
        name=name,
        tokenizer=tok,
        splits=splits,
        max_length=max_length,
        prompts=prompts,
        validity=validity,
        description=description,
    )


def python_lines(**kw) -> Task:
    """The ``python-lines`` task (see the module docstring)."""
    kw.setdefault("max_length", 64)
    return _text_task(
        "python-lines",
        python_statements(),
        lambda s: python_is_valid,
        chars=PRINTABLE,
        description="single Python statements from the standard library; validity = ast.parse",
        **kw,
    )


def pydoc_text(**kw) -> Task:
    """The ``pydoc-text`` task (see the module docstring)."""
    kw.setdefault("max_length", 104)
    return _text_task(
        "pydoc-text",
        pydoc_sentences(),
        lambda s: ProseValidity([t for v in s.values() for t in v]),
        chars=PRINTABLE,
        description="English sentences from pydoc_data.topics; validity = known words, punctuation",
        **kw,
    )


def oracle_hmm(
    num_train: int = 20000,
    num_eval: int = 1000,
    seed: int = 0,
    tokenizer: str = "char",
    prompts=None,
    max_length=None,
    **oracle_kw,
) -> Task:
    """The ``oracle-hmm`` task: samples of a fixed random HMM (exact likelihood).

    :param num_train: training samples; ``num_eval`` each for valid and test
        (drawn with seeds ``seed+1``, ``seed+2``, ``seed+3``; duplicates kept --
        they are draws from the source, not a corpus).
    :param oracle_kw: forwarded to :class:`~seqenv.oracle.HMMOracle`.
    """
    import torch

    if tokenizer != "char":
        raise ValueError(f"oracle-hmm uses its own character tokenizer; got tokenizer={tokenizer!r}")
    oracle = HMMOracle(seed=seed, **oracle_kw)
    chars = (
        string.ascii_lowercase[: oracle.num_symbols]
        if oracle.num_symbols <= 26
        else [chr(0x100 + i) for i in range(oracle.num_symbols)]
    )
    tok = CharTokenizer(chars)
    splits = {}
    for i, (split, n) in enumerate((("train", num_train), ("valid", num_eval), ("test", num_eval))):
        g = torch.Generator().manual_seed(seed + 1 + i)
        splits[split] = [tok.decode(s) for s in oracle.sample(n, g)]
    ml = max_length if max_length is not None else oracle.max_length + 1
    if ml < oracle.max_length + 1:
        raise ValueError(f"oracle-hmm needs max_length >= {oracle.max_length + 1} (oracle length + eos), got {ml}")
    return Task(
        name="oracle-hmm",
        tokenizer=tok,
        splits=splits,
        max_length=ml,
        prompts=prompts,
        oracle=oracle,
        description=f"random HMM oracle ({oracle.num_states} states, {oracle.num_symbols} symbols)",
    )


# --------------------------------------------------------------------------
# arithmetic: add_or_sub_in_base questions (SequenceMatch's arithmetic task)
# --------------------------------------------------------------------------
BASE_DIGITS = "0123456789abcdef"
ARITHMETIC_CHARS = "".join(sorted(set("In base , what is ? +-" + BASE_DIGITS)))
_ARITH_PREFIX = "In base {base}, what is "
_ARITH_RE = re.compile(r"In base (\d+), what is (-?[0-9a-f]+) ([+-]) (-?[0-9a-f]+)\? (-?[0-9a-f]+)")


def to_base(n: int, base: int) -> str:
    """``n`` written in ``base`` (2..16): digits ``0-9a-f``, a leading ``-`` if negative, no leading zeros.

    :raises ValueError: if ``base`` is not in 2..16.
    """
    if not 2 <= base <= 16:
        raise ValueError(f"base must be in 2..16, got {base!r}")
    if n == 0:
        return "0"
    sign, n = ("-", -n) if n < 0 else ("", n)
    digits = []
    while n:
        n, d = divmod(n, base)
        digits.append(BASE_DIGITS[d])
    return sign + "".join(reversed(digits))


def from_base(text: str, base: int) -> int | None:
    """Inverse of :func:`to_base` on canonical numerals; ``None`` for anything else.

    Canonical: optional ``-``, digits of ``base`` in lowercase, no leading
    zero (except ``"0"`` itself), no ``"-0"``.
    """
    neg = text.startswith("-")
    body = text[1:] if neg else text
    if not body or any(c not in BASE_DIGITS[:base] for c in body):
        return None
    if (len(body) > 1 and body[0] == "0") or (neg and body == "0"):
        return None
    value = int(body, base)
    return -value if neg else value


def arithmetic_question(
    rng: random.Random, min_base: int = 2, max_base: int = 16, max_digits: int = 3
) -> tuple[str, str]:
    """One ``add_or_sub_in_base`` question and its answer, drawn from ``rng``.

    Base uniform in ``min_base..max_base``; each operand: a digit count ``d``
    uniform in ``1..max_digits``, then a value uniform among the ``d``-digit
    numerals of the base (``0..base-1`` for ``d = 1``); the operation ``+`` or
    ``-`` with probability 1/2. Operands are non-negative; a difference may be
    negative.

    :return: ``(prompt, answer)``, e.g. ``("In base 7, what is 126 - 4? ", "122")``.
    """
    base = rng.randint(min_base, max_base)
    ops = []
    for _ in range(2):
        d = rng.randint(1, max_digits)
        ops.append(rng.randint(0 if d == 1 else base ** (d - 1), base**d - 1))
    op = rng.choice("+-")
    p, q = ops
    answer = p + q if op == "+" else p - q
    return f"{_ARITH_PREFIX.format(base=base)}{to_base(p, base)} {op} {to_base(q, base)}? ", to_base(answer, base)


def arithmetic_is_valid(text: str) -> bool:
    """Validity for ``arithmetic``: ``text`` is a question followed by its exact answer.

    ``text`` is the full state text, prompt + completion:
    ``"In base B, what is P + Q? A"`` (or ``-``) with ``B`` in 2..16 written in
    decimal, ``P``, ``Q`` and ``A`` canonical numerals of base ``B`` (see
    :func:`from_base`; signed operands are accepted, as in the source
    module's format), and ``A == P ± Q``. Anything else -- another format,
    a digit outside the base, a leading zero, trailing text -- is ``False``.
    """
    m = _ARITH_RE.fullmatch(text)
    if m is None or m[1] != str(int(m[1])) or not 2 <= int(m[1]) <= 16:
        return False
    base = int(m[1])
    p, q = from_base(m[2], base), from_base(m[4], base)
    if p is None or q is None:
        return False
    return m[5] == to_base(p + q if m[3] == "+" else p - q, base)


def arithmetic(
    num_train: int = 5000,
    num_valid: int = 200,
    num_test: int = 200,
    seed: int = 0,
    min_base: int = 2,
    max_base: int = 16,
    max_digits: int = 3,
    tokenizer: str = "char",
    max_length: int | None = None,
    prompts=None,
) -> Task:
    """The ``arithmetic`` task: questions of DeepMind's ``add_or_sub_in_base`` as prompts, answers generated.

    The arithmetic setting of SequenceMatch (Cundy & Ermon, ICLR 2024) [paper]:
    the ``add_or_sub_in_base`` module of ``mathematics_dataset`` (Saxton et
    al., ICLR 2019), 5,000 training questions and 200 test questions, e.g.
    prompt ``"In base 7, what is 126 - 4? "`` and completion ``"122"``. The
    question is the prompt (ending in ``"? "``), the answer the generated
    text, validity = exact answer (:func:`arithmetic_is_valid` on prompt +
    completion).

    Our own generator of the same question format (:func:`arithmetic_question`),
    not the ``mathematics-dataset`` package: the package installs, but its
    samplers draw from the global :mod:`random` state, so a deterministic call
    needs ``random.seed`` on the process-wide generator. Here every question
    comes from a local ``random.Random(seed)``: the task is a pure function of
    its arguments.

    [recon] Ranges: the source draws the base uniformly in 2..16 (kept as the
    default) and signed operands whose sizes come from an entropy budget (up
    to ~16 decimal digits in training); we draw non-negative operands of
    1..``max_digits`` digits in the base (default 3, e.g. ``fff`` in base 16)
    so that a small model on a CPU learns the task in part. Base > 10 digits
    are ``a``-``f`` (the source's format); a difference can be negative (``-``).

    Splits: questions are drawn in order from the stream; a question's split
    is :func:`split_of` its prompt text (an md5 bucket, so a question has the
    same split under every seed and size), repeated questions are skipped,
    and a split stops taking questions once it has its size. Splits are
    therefore disjoint by question.

    :param num_train, num_valid, num_test: split sizes (questions), each >= 1.
    :param seed: seed of the question stream.
    :param min_base, max_base: base range, ``2 <= min_base <= max_base <= 16``.
    :param max_digits: largest operand length in digits, >= 1.
    :param tokenizer: ``"char"`` (the fixed 28 characters of :data:`ARITHMETIC_CHARS`), or a
        Hugging Face tokenizer (``"hf:PATH"``, ``"smollm2"``, an :class:`HFTokenizer`): its
        token counts never exceed the character counts that ``max_length`` is computed from
        (every token holds at least one of these ASCII characters).
    :param max_length: environment ``max_length``; default = longest possible
        prompt + twice the longest possible answer + 1 (the answer, room for
        as many wrong tokens and their backspaces, and ``eos``); at least
        longest prompt + longest answer + 1.
    :raises ValueError: on a bad argument, or when the ranges hold too few
        distinct questions to fill the splits.
    """
    hf_kind = (
        isinstance(tokenizer, (HFTokenizer, dict))
        or tokenizer in PRETRAINED_NAMES
        or (isinstance(tokenizer, str) and tokenizer.startswith("hf:"))
    )
    if tokenizer != "char" and not hf_kind:
        raise ValueError(
            f"arithmetic uses its own character tokenizer (or a Hugging Face model's: 'hf:PATH', "
            f"{', '.join(map(repr, PRETRAINED_NAMES))}); got tokenizer={tokenizer!r}"
        )
    if prompts is not None:
        raise ValueError("arithmetic draws its prompts (questions) itself; got prompts=")
    for k, v in (
        ("num_train", num_train),
        ("num_valid", num_valid),
        ("num_test", num_test),
        ("max_digits", max_digits),
    ):
        check_number(f"arithmetic: {k}", v, ge=1, integer=True)
    if not (isinstance(min_base, int) and isinstance(max_base, int) and 2 <= min_base <= max_base <= 16):
        raise ValueError(
            f"arithmetic: need 2 <= min_base <= max_base <= 16, got min_base={min_base!r}, max_base={max_base!r}"
        )
    longest_prompt = len(_ARITH_PREFIX.format(base=max_base)) + 2 * max_digits + len(" - ? ")
    longest_answer = max_digits + 1  # a carry digit, or "-" of a negative difference
    need = longest_prompt + longest_answer + 1
    if max_length is None:
        max_length = longest_prompt + 2 * longest_answer + 1
    elif max_length < need:
        raise ValueError(
            f"arithmetic with max_digits={max_digits} needs max_length >= {need} "
            f"(prompt {longest_prompt} + answer {longest_answer} + eos), got {max_length}"
        )
    sizes = {"train": num_train, "valid": num_valid, "test": num_test}
    texts: dict[str, list[str]] = {s: [] for s in SPLITS}
    questions: dict[str, list[str]] = {s: [] for s in SPLITS}
    rng = random.Random(seed)
    seen: set[str] = set()
    max_draws = 50 * sum(sizes.values()) + 10000
    for _ in range(max_draws):
        if all(len(questions[s]) >= sizes[s] for s in SPLITS):
            break
        q, a = arithmetic_question(rng, min_base, max_base, max_digits)
        if q in seen:
            continue
        seen.add(q)
        s = split_of(q)
        if len(questions[s]) < sizes[s]:
            questions[s].append(q)
            texts[s].append(a)
    else:
        got = {s: len(questions[s]) for s in SPLITS}
        raise ValueError(
            f"arithmetic: bases {min_base}..{max_base} with at most {max_digits} digits gave only {got} "
            f"distinct questions in {max_draws} draws; asked for {sizes} (widen the ranges or ask for fewer)"
        )
    tok = CharTokenizer(ARITHMETIC_CHARS) if tokenizer == "char" else _tokenizer_for(tokenizer, None, [], 0, "error")
    return Task(
        name="arithmetic",
        tokenizer=tok,
        splits=texts,
        max_length=max_length,
        validity=arithmetic_is_valid,
        split_prompts=questions,
        description=f"add_or_sub_in_base questions (bases {min_base}..{max_base}, operands of "
        f"<= {max_digits} digits); validity = exact answer",
    )


def file_task(path: str, **kw) -> Task:
    """``file:PATH``: one sequence per line of a UTF-8 file; empty lines dropped.

    Splits follow :func:`hash_splits` (fewer than :data:`MIN_SPLIT_TEXTS`
    distinct lines: every split is all lines, with a warning; otherwise every
    split has at least one line); lines that do not fit ``max_length`` are
    dropped and counted in a warning. The task's :meth:`Task.spec` records
    the file's absolute path and SHA-256 (see :func:`task_from_spec`).

    :raises FileNotFoundError: if ``path`` does not exist.
    :raises ValueError: if ``path`` is a directory, the file is not UTF-8
        (names the byte offset) or has no non-empty line.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        raise ValueError(f"task file {str(p)!r} is a directory; expected a UTF-8 text file, one sequence per line")
    if not p.is_file():
        raise FileNotFoundError(
            f"task file {str(p)!r} does not exist (expected a UTF-8 text file, one sequence per line)"
        )
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")  # a byte-order mark is no text
    except UnicodeDecodeError as e:
        raise ValueError(
            f"task file {str(p)!r} is not valid UTF-8: byte {e.start} ({raw[e.start : e.start + 1]!r}): {e.reason}"
        ) from None
    lines = [l.rstrip("\r") for l in text.split("\n")]
    lines = [l for l in lines if l.strip()]
    if not lines:
        raise ValueError(f"task file {str(p)!r} is empty: expected at least one non-empty line")
    task = _text_task(f"file:{path}", lines, None, description=f"lines of {p}", **kw)
    task.source = {"path": str(p.resolve()), "sha256": hashlib.sha256(raw).hexdigest()}
    return task


TASKS: dict[str, Callable[..., Task]] = {
    "arithmetic": arithmetic,
    "python-lines": python_lines,
    "pydoc-text": pydoc_text,
    "oracle-hmm": oracle_hmm,
}
DEFAULT_TASK = "python-lines"


def list_tasks() -> list[str]:
    """Names :func:`make_task` accepts (``file:PATH`` is a pattern)."""
    return sorted(TASKS) + ["file:PATH"]


@functools.lru_cache(maxsize=16)
def _cached(name: str, frozen_kw: tuple) -> Task:
    kw = {k: (list(v) if isinstance(v, tuple) else v) for k, v in frozen_kw}
    task = TASKS[name](**kw)
    task.args = kw
    return task


def make_task(name: str | Task | dict = DEFAULT_TASK, **kwargs) -> Task:
    """Build a task by name (cached per name and arguments) or pass one through.

    :param name: a built-in name, ``"file:PATH"``, a :class:`Task`, or a
        :meth:`Task.spec` dict (see :func:`task_from_spec`).
    :param kwargs: ``tokenizer`` (``"char"``/``"bpe"``/``"hf:PATH"``: a Hugging Face
        tokenizer directory, its own special ids; ``"smollm2"``; an
        :class:`~seqenv.tokenizers.HFTokenizer` or its ``to_dict()``, e.g. with
        start/end token overrides; text tasks and ``arithmetic``), ``bpe_vocab_size``,
        ``max_length``, ``prompts`` (list of texts), ``unk``; oracle tasks also
        take the :class:`~seqenv.oracle.HMMOracle` arguments; ``arithmetic``
        takes the arguments of :func:`arithmetic`.
    :raises ValueError: on an unknown name (the message lists the valid ones).
    """
    if isinstance(name, Task):
        if kwargs:
            raise ValueError(f"make_task got a Task instance and extra arguments {sorted(kwargs)}")
        return name
    if isinstance(name, dict):
        if kwargs:
            raise ValueError(f"make_task got a task spec and extra arguments {sorted(kwargs)}")
        return task_from_spec(name)
    if not isinstance(name, str):
        raise ValueError(f"task must be a name, a Task or a task spec dict, got {type(name).__name__}")
    if not name.startswith("file:") and name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(list_tasks())}")
    if name.startswith("file:") and not name[len("file:") :]:
        raise ValueError("task 'file:' needs a path, e.g. 'file:corpus.txt'")
    if isinstance(kwargs.get("tokenizer"), dict):  # a Tokenizer.to_dict() (from a task spec)
        kwargs["tokenizer"] = tokenizer_from_dict(kwargs["tokenizer"])
    frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()))
    if name.startswith("file:"):
        # files can change between calls: don't cache
        task = file_task(name[len("file:") :], **kwargs)
        task.args = dict(kwargs)
        return task
    return _cached(name, frozen)


def task_from_spec(spec: dict) -> Task:
    """Rebuild the task of a :meth:`Task.spec` (a checkpoint's ``"task"`` entry).

    Built-in names: :func:`make_task` with the spec's name and ``args``; the
    result must have the spec's tokenizer and ``max_length``.

    ``file:`` tasks: the corpus is looked for at the spec's recorded absolute
    path, then at the path in the name (relative to the working directory);
    the first existing file that rebuilds the spec's tokenizer and
    ``max_length`` gives the full task (a ``UserWarning`` if its SHA-256
    differs from the recorded one: its splits may differ). Without such a
    file the result is a task without data (``task.has_data`` is False):
    name, tokenizer, ``max_length``, prompts and spec are the spec's, so
    generation works, while reading its splits (held-out evaluation, training)
    raises :class:`MissingTaskDataError` naming the file.

    :raises ValueError: on a malformed spec, or a built-in task whose rebuild
        differs from the spec (names what differs).
    """
    if (
        not isinstance(spec, dict)
        or not isinstance(spec.get("name"), str)
        or not isinstance(spec.get("tokenizer"), dict)
        or not isinstance(spec.get("max_length"), int)
    ):
        raise ValueError(
            f"a task spec is a dict with 'name' (str), 'tokenizer' (dict) and 'max_length' (int), got {spec!r:.200}"
        )
    args = spec.get("args", {})
    if not isinstance(args, dict):
        raise ValueError(f"task spec 'args' must be a dict of make_task arguments, got {args!r:.200}")
    name = spec["name"]
    if not name.startswith("file:"):
        task = make_task(name, **args)
        problem = _spec_mismatch(task, spec)
        if problem:
            raise ValueError(problem)
        return task
    source = spec.get("file")
    if not isinstance(source, dict):
        source = {}
    candidates = list(dict.fromkeys(p for p in (source.get("path"), name[len("file:") :]) if p))
    problems = []
    for path in candidates:
        if not Path(path).expanduser().is_file():
            problems.append(f"{path!r} does not exist")
            continue
        try:
            task = file_task(path, **args)
        except ValueError as e:
            problems.append(str(e))
            continue
        problem = _spec_mismatch(task, spec)
        if problem:
            problems.append(f"{path!r} no longer matches: {problem}")
            continue
        if source.get("sha256") and (task.source or {}).get("sha256") != source["sha256"]:
            warnings.warn(
                f"task {name!r}: the file {path!r} differs from the one the spec was made from "
                f"(SHA-256); its splits may differ",
                UserWarning,
                stacklevel=2,
            )
        task.name, task.args = name, dict(args)
        return task
    message = (
        f"task {name!r} was rebuilt from its spec without its corpus file: its texts need the file "
        f"{candidates[0]!r} ({'; '.join(problems)}); generation works without it"
    )
    prompts = args.get("prompts")
    return Task(
        name=name,
        tokenizer=tokenizer_from_dict(spec["tokenizer"]),
        splits={},
        max_length=spec["max_length"],
        prompts=list(prompts) if prompts is not None else None,
        description=f"{name} without its data",
        args=dict(args),
        source=dict(source) or None,
        missing_data=message,
    )


def _spec_mismatch(task: Task, spec: dict) -> str | None:
    if task.tokenizer.to_dict() != spec["tokenizer"]:
        return (
            f"task {spec['name']!r} rebuilt from its spec has a different tokenizer "
            f"(vocab {task.tokenizer.vocab_size}) than the spec's"
        )
    if task.max_length != spec["max_length"]:
        return f"task {spec['name']!r} rebuilt from its spec has max_length {task.max_length}, the spec says {spec['max_length']}"
    return None

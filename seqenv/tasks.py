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
``file:PATH``      any UTF-8 text file, one sequence per line, empty lines
                   dropped; character tokenizer over the file's characters.
=================  ==========================================================

Every name accepts ``tokenizer="bpe"`` (byte-level BPE trained on the train
split, ``bpe_vocab_size`` ids) instead of the character tokenizer, and
``prompts=[...]`` to make the task conditional.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import os
import re
import string
import sysconfig
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from .oracle import HMMOracle
from .tokenizers import BPETokenizer, CharTokenizer, Tokenizer

SPLITS = ("train", "valid", "test")
PRINTABLE = "".join(c for c in string.printable if c not in "\t\n\r\x0b\x0c")  # 95 characters


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
    """

    name: str
    tokenizer: Tokenizer
    splits: dict[str, list[str]]
    max_length: int
    prompts: Optional[list[str]] = None
    validity: Optional[Callable[[str], bool]] = None
    oracle: Optional[HMMOracle] = None
    description: str = ""
    _encoded: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        if self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")
        missing = [s for s in SPLITS if s not in self.splits]
        if missing:
            raise ValueError(f"task {self.name!r} lacks splits {missing}; expected {SPLITS}")

    def encoded(self, split: str) -> list[list[int]]:
        """Token ids of every text in ``split`` (no ``bos``/``eos``), cached.

        :raises ValueError: on an unknown split name.
        """
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if split not in self._encoded:
            self._encoded[split] = [self.tokenizer.encode(t) for t in self.splits[split]]
        return self._encoded[split]

    def encoded_prompts(self) -> Optional[list[list[int]]]:
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

    def spec(self) -> dict:
        """JSON-able identity (name, tokenizer, max_length) stored in checkpoints."""
        return {"name": self.name, "tokenizer": self.tokenizer.to_dict(), "max_length": self.max_length}


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


def hash_splits(texts: list[str], valid_frac: float = 0.05, test_frac: float = 0.05) -> dict[str, list[str]]:
    """Deduplicate ``texts`` (first occurrence kept) and split them by hash.

    Small corpora: when a split would be empty and there are at least 3 texts,
    the last train texts (in corpus order) move there, so that every split is
    non-empty.
    """
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    for t in dict.fromkeys(texts):
        out[split_of(t, valid_frac, test_frac)].append(t)
    for s in ("valid", "test"):
        if not out[s] and len(out["train"]) >= 3:
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


def _quiet_parse(text: str) -> Optional[ast.Module]:
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
        return any(isinstance(n, (ast.Call, ast.Name, ast.Attribute, ast.Await, ast.Yield, ast.YieldFrom))
                   for n in ast.walk(node.value))
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


_ASCII_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'", "\u2014": "--", "\u2013": "-"})


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
                lines = [lines[0].lstrip()[2:]] + [l[indent + 2:] if l[: indent + 2].isspace() else l for l in lines[1:]]
            if not lines or any(l.startswith((" ", "\t")) or ">>>" in l or l.startswith(("..", "==", "--", "**", "* ")) for l in lines):
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


def _tokenizer_for(kind: str, chars: Optional[str], train: list[str], bpe_vocab_size: int, unk: str) -> Tokenizer:
    if kind == "char":
        return CharTokenizer(chars, unk=unk) if chars is not None else CharTokenizer.from_corpus(train, unk=unk)
    if kind == "bpe":
        return BPETokenizer.train(train, vocab_size=bpe_vocab_size)
    raise ValueError(f"tokenizer must be 'char' or 'bpe', got {kind!r}")


def _fit_max_length(name: str, tok: Tokenizer, splits: dict[str, list[str]], max_length: Optional[int],
                    prompts: Optional[list[str]]) -> tuple[dict[str, list[str]], int]:
    """Pick max_length (longest encoded text + 1 for the eos step, at most 512) and drop longer texts."""
    if max_length is None:
        longest = max(len(tok.encode(t)) for s in SPLITS for t in splits[s])
        longest_prompt = max((len(tok.encode(p)) for p in prompts), default=0) if prompts else 0
        max_length = min(512, longest + longest_prompt + 1)
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    kept = {s: [t for t in splits[s] if len(tok.encode(t)) < max_length] for s in SPLITS}
    if not kept["train"]:
        raise ValueError(f"task {name!r}: no training text fits max_length={max_length}")
    return kept, max_length


def _text_task(name, texts, validity_factory, *, chars=None, tokenizer="char", bpe_vocab_size=512,
               unk="error", max_length=None, prompts=None, description=""):
    splits = hash_splits(list(texts))
    tok = _tokenizer_for(tokenizer, chars, splits["train"], bpe_vocab_size, unk)
    if chars is None and tokenizer == "char":
        # held-out characters unseen in train: extend so every split encodes
        extra = sorted(set("".join(splits["valid"] + splits["test"] + (prompts or []))) - set(tok.chars))
        if extra:
            tok = CharTokenizer(tok.chars + "".join(extra), unk=unk)
    splits, max_length = _fit_max_length(name, tok, splits, max_length, prompts)
    validity = validity_factory(splits) if validity_factory else None
    return Task(name=name, tokenizer=tok, splits=splits, max_length=max_length, prompts=prompts,
                validity=validity, description=description)


def python_lines(**kw) -> Task:
    """The ``python-lines`` task (see the module docstring)."""
    kw.setdefault("max_length", 64)
    return _text_task("python-lines", python_statements(), lambda s: python_is_valid, chars=PRINTABLE,
                      description="single Python statements from the standard library; validity = ast.parse", **kw)


def pydoc_text(**kw) -> Task:
    """The ``pydoc-text`` task (see the module docstring)."""
    kw.setdefault("max_length", 104)
    return _text_task("pydoc-text", pydoc_sentences(), lambda s: ProseValidity([t for v in s.values() for t in v]), chars=PRINTABLE,
                      description="English sentences from pydoc_data.topics; validity = known words, punctuation", **kw)


def oracle_hmm(num_train: int = 20000, num_eval: int = 1000, seed: int = 0, tokenizer: str = "char",
               prompts=None, max_length=None, **oracle_kw) -> Task:
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
    chars = string.ascii_lowercase[: oracle.num_symbols] if oracle.num_symbols <= 26 else \
        [chr(0x100 + i) for i in range(oracle.num_symbols)]
    tok = CharTokenizer(chars)
    splits = {}
    for i, (split, n) in enumerate((("train", num_train), ("valid", num_eval), ("test", num_eval))):
        g = torch.Generator().manual_seed(seed + 1 + i)
        splits[split] = [tok.decode(s) for s in oracle.sample(n, g)]
    ml = max_length if max_length is not None else oracle.max_length + 1
    if ml < oracle.max_length + 1:
        raise ValueError(f"oracle-hmm needs max_length >= {oracle.max_length + 1} (oracle length + eos), got {ml}")
    return Task(name="oracle-hmm", tokenizer=tok, splits=splits, max_length=ml, prompts=prompts, oracle=oracle,
                description=f"random HMM oracle ({oracle.num_states} states, {oracle.num_symbols} symbols)")


def file_task(path: str, **kw) -> Task:
    """``file:PATH``: one sequence per line of a UTF-8 file; empty lines dropped.

    :raises FileNotFoundError: if ``path`` does not exist.
    :raises ValueError: if the file is not UTF-8 (names the byte offset) or has
        no non-empty line.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"task file {str(p)!r} does not exist (expected a UTF-8 text file, one sequence per line)")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"task file {str(p)!r} is not valid UTF-8: byte {e.start} ({raw[e.start:e.start + 1]!r}): {e.reason}") from None
    lines = [l.rstrip("\r") for l in text.split("\n")]
    lines = [l for l in lines if l.strip()]
    if not lines:
        raise ValueError(f"task file {str(p)!r} is empty: expected at least one non-empty line")
    return _text_task(f"file:{path}", lines, None, description=f"lines of {p}", **kw)


TASKS: dict[str, Callable[..., Task]] = {
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
    return TASKS[name](**kw)


def make_task(name: "str | Task" = DEFAULT_TASK, **kwargs) -> Task:
    """Build a task by name (cached per name and arguments) or pass one through.

    :param name: a built-in name, ``"file:PATH"``, or a :class:`Task`.
    :param kwargs: ``tokenizer`` (``"char"``/``"bpe"``), ``bpe_vocab_size``,
        ``max_length``, ``prompts`` (list of texts), ``unk``; oracle tasks also
        take the :class:`~seqenv.oracle.HMMOracle` arguments.
    :raises ValueError: on an unknown name (the message lists the valid ones).
    """
    if isinstance(name, Task):
        if kwargs:
            raise ValueError(f"make_task got a Task instance and extra arguments {sorted(kwargs)}")
        return name
    if not isinstance(name, str):
        raise ValueError(f"task must be a name or a Task, got {type(name).__name__}")
    if not name.startswith("file:") and name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(list_tasks())}")
    if name.startswith("file:") and not name[len("file:"):]:
        raise ValueError("task 'file:' needs a path, e.g. 'file:corpus.txt'")
    frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()))
    if name.startswith("file:"):
        # files can change between calls: don't cache
        return file_task(name[len("file:"):], **kwargs)
    return _cached(name, frozen)

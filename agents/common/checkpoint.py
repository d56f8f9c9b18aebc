"""Checkpoints: written atomically, loaded with ``weights_only=True``, checked.

A checkpoint is a dict of tensors and plain Python values:

==================  =========================================================
key                 content
==================  =========================================================
``format``          :data:`FORMAT` (rejects foreign files)
``agent``           the learner's name (``mle``, ``sequencematch``, ...)
``task``            ``Task.spec()``: name, tokenizer dict, max_length
``policy``          the policy's ``policy_spec()``: ``{"family", "config"}``
``model``           the policy's ``state_dict``
``config``          the run's ``TrainConfig`` as a dict
``step``            optimiser steps done
``optimizer``,      their ``state_dict``\\ s (resume)
``scheduler``
``rng``             torch CPU RNG, data and rollout generators (resume)
``learner``         extra learner state (critic, snapshot, ...) or ``{}``
``rank_states``     several processes (DDP, FSDP): per rank ``{"rng", "learner"}`` (resume)
``corpus_sha256``   ``Task.corpus_hash`` of the training task (absent in
                    older checkpoints; None for a task without its texts)
==================  =========================================================

Format versions: ``seqenv-checkpoint-v2`` (this one). ``v1`` files (before
the policy families) stored ``policy_config`` (a ``PolicyConfig`` dict)
instead of ``policy``; :func:`load_checkpoint` upgrades them in memory, so
old checkpoints still load, generate, evaluate and warm-start runs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from seqenv.checks import check_number
from seqenv.tasks import Task, make_task
from seqenv.tokenizers import tokenizer_from_dict

from ..policies import Policy, build_policy

FORMAT = "seqenv-checkpoint-v2"
#: older formats :func:`load_checkpoint` still reads (upgraded in memory)
LEGACY_FORMATS = ("seqenv-checkpoint-v1",)


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or incompatible with the request."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def link_atomic(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Make ``dst`` a hard link to ``src`` (no copy), replacing ``dst`` atomically; a copy where links fail."""
    src, dst = Path(src), Path(dst)
    tmp = src.with_name(f"{src.name}.{os.getpid()}-link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def save_checkpoint(state: dict, path: str | os.PathLike, previous: str | os.PathLike | None = None) -> None:
    """Write ``state`` to ``path`` atomically (temp file, fsync, ``os.replace``), mode ``0666 & ~umask``
    like every other file of the run.

    A crash mid-write leaves the previous checkpoint intact; at every moment
    ``path`` holds a whole checkpoint.

    :param previous: keep the checkpoint being replaced there (a hard link,
        made before the replacement), e.g. to roll back a diverged state.

    :raises CheckpointError: if the file cannot be written (disk full, file size
        limit, permissions); the message says the previous checkpoint is kept.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": FORMAT, **state}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if previous is not None and path.is_file():
            link_atomic(path, previous)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, (OSError, RuntimeError)):  # torch.save reports a failed write as RuntimeError
            kept = "the previous checkpoint is kept" if path.exists() else "no checkpoint was written"
            raise CheckpointError(
                f"could not write checkpoint {str(path)!r} ({' '.join(str(e).split())[:200]}; "
                f"disk full or file size limit?); {kept}"
            ) from None
        raise


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(..., weights_only=True)``.

    An HF policy (family ``hf``) whose model directory no longer exists is
    pointed at the run directory's ``hf/`` export (full fine-tuning runs).

    :raises FileNotFoundError: if ``path`` does not exist.
    :raises CheckpointError: if ``path`` is a directory or the file is not a
        readable seqenv checkpoint (every failure of ``torch.load`` is mapped to it).
    """
    path = Path(path)
    if path.is_dir():
        hint = " (did you mean its checkpoint.pt?)" if (path / "checkpoint.pt").is_file() else ""
        raise CheckpointError(f"checkpoint {str(path)!r} is a directory, not a checkpoint file{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # unpickler errors on foreign files are of any type (KeyError, UnicodeDecodeError, ...)
        detail = _first_sentence(f"{type(e).__name__}: {e}")
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or not a torch file ({detail})") from None
    if not isinstance(state, dict) or state.get("format") not in (FORMAT, *LEGACY_FORMATS):
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{str(path)!r} is not a seqenv checkpoint (format {got!r}, expected {FORMAT!r} or one of {LEGACY_FORMATS})"
        )
    if state["format"] == "seqenv-checkpoint-v1" and "policy_config" in state:
        state["policy"] = {"family": "transformer", "config": state.pop("policy_config")}
        state["format"] = FORMAT
    missing = [k for k in ("agent", "task", "policy", "model") if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks the keys {missing}")
    if (
        not isinstance(state["policy"], dict)
        or not isinstance(state["policy"].get("config"), dict)
        or not isinstance(state["task"], dict)
    ):
        raise CheckpointError(f"checkpoint {str(path)!r} has a malformed 'policy' or 'task' entry")
    task = state["task"]
    try:
        check_number("max_length", task.get("max_length"), ge=1, integer=True)
        well_formed = isinstance(task.get("name"), str) and isinstance(task.get("tokenizer"), dict)
    except ValueError:
        well_formed = False
    if not well_formed:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has a malformed 'task' entry (expected 'name' (str), "
            "'tokenizer' (dict) and 'max_length' (int))"
        )
    if not isinstance(state["model"], dict) or not all(isinstance(v, torch.Tensor) for v in state["model"].values()):
        raise CheckpointError(f"checkpoint {str(path)!r} has a malformed 'model' entry (expected a dict of tensors)")
    if "step" in state:
        try:
            check_number("step", state["step"], ge=0, integer=True)
        except ValueError:
            raise CheckpointError(
                f"checkpoint {str(path)!r} has a malformed 'step' ({state['step']!r}; expected an integer >= 0)"
            ) from None
    _use_hf_export(state, path)
    return state


def _first_sentence(text: str, limit: int = 400) -> str:
    """``text`` on one line, cut at the end of a sentence (or a word) within ``limit`` characters."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    head = text[:limit]
    cut = max(head.rfind(". "), head.rfind("; "))
    if cut > limit // 3:
        return head[: cut + 1] + " ..."
    return head[: head.rfind(" ")] + " ..."


def check_corpus(state: dict, task: Task, path: str = "checkpoint", allow: bool = False) -> bool:
    """Compare ``task``'s corpus (``Task.corpus_hash``) with the one the checkpoint was trained on.

    Only for the checkpoint's own task (same name): another task over the same
    tokenizer is a deliberate choice (:func:`check_task_compatible`).
    Checkpoints without ``corpus_sha256`` (older ones, or tasks without texts)
    and tasks whose texts are not available pass.

    :param allow: report a mismatch (return True) instead of raising (``--allow-corpus-mismatch``).
    :return: whether the corpora differ.
    :raises CheckpointError: on a mismatch without ``allow``, naming both hashes.
    """
    saved = state.get("corpus_sha256")
    if not isinstance(saved, str) or not saved or state["task"].get("name") != task.name:
        return False
    try:
        current = task.corpus_hash
    except (FileNotFoundError, ValueError):
        return False
    if current == saved:
        return False
    if allow:
        return True
    raise CheckpointError(
        f"the corpus of task {task.name!r} differs from the one {path} was trained on (SHA-256 {current} now, "
        f"{saved} in the checkpoint); restore the texts, or pass --allow-corpus-mismatch"
    )


def checkpoint_task(state: dict, task: str | Task | None = None, path: str = "checkpoint") -> Task:
    """The task to use a checkpoint on: ``task`` if given, else the checkpoint's own, rebuilt from its spec.

    The checkpoint's task is rebuilt from its ``Task.spec()`` (tokenizer,
    ``max_length``, arguments; :func:`seqenv.tasks.task_from_spec`), so a
    ``file:`` task works without its corpus for generation; reading its
    splits then raises :class:`seqenv.tasks.MissingTaskDataError` naming the file.

    :raises ValueError: for an unknown ``task`` name.
    :raises CheckpointError: if the checkpoint's spec cannot be rebuilt, or see
        :func:`check_task_compatible`.
    """
    hf = hf_tokenizer_arg(state)
    if task is None:
        try:
            task = make_task(state["task"])
        except ValueError as e:
            raise CheckpointError(f"{path}: its task cannot be rebuilt: {e}") from None
    elif hf is not None and isinstance(task, str):  # an HF policy reads the named task in its own tokenizer
        task = make_task(task, tokenizer=hf)
    else:
        task = make_task(task)
    check_task_compatible(state, task, path=path)
    return task


HF_EXPORT_DIR = "hf"  # run-directory subfolder with the HF policy's save_pretrained export


def hf_tokenizer_arg(state: dict):
    """The ``tokenizer=`` of :func:`seqenv.make_task` for a checkpoint of an HF policy, else None: the
    task's stored tokenizer (``HFTokenizer.to_dict()``: path, start/end tokens, pretrained name), or
    ``"hf:PATH"`` of the policy's directory for a task spec without one."""
    if state["policy"].get("family") != "hf":
        return None
    tok = state.get("task", {}).get("tokenizer")
    if isinstance(tok, dict) and tok.get("type") == "hf":
        return dict(tok)
    return f"hf:{state['policy']['config']['path']}"


def _use_hf_export(state: dict, path: Path) -> None:
    """An HF policy whose model directory is gone: point its spec (and the task's tokenizer) at the
    run directory's ``hf/`` export, in place. Full fine-tuning only: a LoRA export holds only the adapter."""
    if state["policy"].get("family") != "hf":
        return
    config = state["policy"]["config"]
    export = path.resolve().parent / HF_EXPORT_DIR
    if os.path.isdir(config["path"]) or not export.is_dir() or config.get("lora"):
        return
    old = config["path"]
    config["path"] = str(export)
    tok = state["task"].get("tokenizer", {})
    if tok.get("type") == "hf" and tok.get("path") == old:
        tok["path"] = str(export)
    args = state["task"].get("args", {})
    if args.get("tokenizer") == f"hf:{old}":
        args["tokenizer"] = f"hf:{export}"
    elif isinstance(args.get("tokenizer"), dict) and args["tokenizer"].get("path") == old:
        args["tokenizer"] = {**args["tokenizer"], "path": str(export)}


def check_task_compatible(state: dict, task: Task, path: str = "checkpoint") -> None:
    """Raise unless ``task`` tokenizes like the task the checkpoint was trained on.

    Same tokenizer is what matters (a model reads ids); a different task name
    with the same tokenizer (e.g. ``file:`` corpora over the same characters)
    is allowed.

    :raises CheckpointError: naming both tasks when the tokenizers differ or the
        task's ``max_length`` exceeds the model's ``block_size - 1``.
    """
    spec = state["task"]
    if tokenizer_from_dict(spec["tokenizer"]) != task.tokenizer:
        raise CheckpointError(
            f"{path} was trained on task {spec['name']!r} with a different tokenizer than task "
            f"{task.name!r} (vocab {tokenizer_from_dict(spec['tokenizer']).vocab_size} vs "
            f"{task.tokenizer.vocab_size}); use the checkpoint's task or retrain"
        )
    block = state["policy"]["config"].get("block_size", state["policy"]["config"].get("max_state_length"))
    if block is not None and task.max_length + 1 > block:
        raise CheckpointError(
            f"task {task.name!r} has max_length {task.max_length} but the model in {path} handles states of at "
            f"most {block - 1} tokens"
        )


def load_policy(
    path: str | os.PathLike, device: str | torch.device = "cpu", task: str | Task | None = None
) -> tuple[Policy, Task, dict]:
    """Load the policy of a checkpoint (any family, :func:`agents.policies.build_policy`), with its task.

    :param task: evaluate/generate on this task instead of the checkpoint's
        own (its tokenizer must match); None = the checkpoint's, rebuilt from
        its spec (:func:`checkpoint_task`: no corpus needed to generate).
    :return: ``(policy, task, state)``; the policy is in eval mode on ``device``.
    :raises FileNotFoundError, CheckpointError: see :func:`load_checkpoint` and
        :func:`check_task_compatible`.
    """
    state = load_checkpoint(path, map_location=device)
    task = checkpoint_task(state, task, path=f"checkpoint {str(path)!r}")
    try:
        policy = build_policy(state["policy"]).to(device)
    except ValueError as e:
        raise CheckpointError(f"checkpoint {str(path)!r}: {e}") from None
    try:
        policy.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(
            f"checkpoint {str(path)!r}: model weights do not match its policy spec: {_first_sentence(str(e))}"
        ) from None
    bad = next((n for n, p in policy.named_parameters() if not torch.isfinite(p).all()), None)
    if bad is not None:
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds non-finite weights ({bad!r} has NaN or inf): the "
            "run that wrote it diverged; use an earlier checkpoint"
        )
    policy.eval()
    return policy, task, state

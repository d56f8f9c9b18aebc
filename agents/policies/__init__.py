"""Policies: the :class:`Policy` protocol and the families that implement it.

=====================  =========================================================
``transformer``        :class:`TransformerPolicy`, our nanoGPT-sized model
                       (:mod:`agents.policies.transformer`)
``hf``                 :class:`~agents.policies.hf.HFPolicy`, any Hugging Face
                       causal LM (needs the ``[hf]`` extra: transformers, peft)
=====================  =========================================================

:func:`build_policy` rebuilds a policy from its :meth:`Policy.policy_spec`
(what checkpoints store).
"""

from __future__ import annotations

from collections.abc import Callable

from .base import Policy
from .hf import HFPolicy
from .transformer import PolicyConfig, TransformerPolicy

#: family name -> builder taking the spec's ``config`` dict
POLICY_FAMILIES: dict[str, Callable[[dict], Policy]] = {
    "transformer": lambda config: TransformerPolicy(PolicyConfig.from_dict(config)),
    "hf": lambda config: HFPolicy.from_spec({"family": "hf", "config": config}),
}


def build_policy(spec: dict) -> Policy:
    """A fresh (randomly initialised) policy from ``{"family": ..., "config": ...}``.

    :raises ValueError: on a malformed spec or an unknown family (lists the known ones).
    """
    if not isinstance(spec, dict) or "family" not in spec or "config" not in spec:
        raise ValueError(f"a policy spec is a dict with 'family' and 'config', got {spec!r:.100}")
    if spec["family"] not in POLICY_FAMILIES:
        raise ValueError(f"unknown policy family {spec['family']!r}; known: {sorted(POLICY_FAMILIES)}")
    return POLICY_FAMILIES[spec["family"]](spec["config"])


__all__ = ["Policy", "PolicyConfig", "TransformerPolicy", "HFPolicy", "POLICY_FAMILIES", "build_policy"]

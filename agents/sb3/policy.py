"""An sb3-contrib ``MaskablePPO`` policy whose actor is our :class:`~agents.policies.transformer.TransformerPolicy`.

RL fine-tuning starts from a trained policy, so the actor must *be* that
policy: the logits PPO samples from are exactly the transformer's logits of
the current state (its soft Q-values, METHODS.md §1), read through SB3's
policy interface. Only a small value head is new.

=====================  ========================================================
SB3 part               here
=====================  ========================================================
features extractor     :class:`TransformerStateExtractor`: the transformer's
                       final hidden state at the current state, ``[B, n_embd]``
``mlp_extractor``      identity (``net_arch=[]``)
``action_net``         the transformer's own ``lm_head`` (tied to its token
                       embedding): logits ``[B, V]``
``value_net``          :class:`ValueHead`, a 2-layer MLP on the (detached)
                       hidden state
=====================  ========================================================

Observations are those of :class:`seqenv.sb3.SB3VecEnv` after SB3's
preprocessing: ``tokens`` as floats ``[B, L]`` and ``length`` one-hot
``[B, L + 1]`` or ``[B, 1, L + 1]`` (index arrays ``[B]`` / ``[B, 1]`` are
accepted too). The
transformer reads ``[bos, tokens]`` (pads after the state are ignored by the
causal mask) and the state is read at index ``length`` (``bos`` for an empty
state), following docs/internals.md.

Usage (``scripts/ppo_critic.py``)::

    ppo = MaskablePPO(TransformerMaskablePolicy, venv,
                      policy_kwargs=dict(policy_config=state["policy"]["config"]))
    ppo.policy.actor.load_state_dict(state["model"])
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
from gymnasium import spaces
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

from seqenv.sb3 import discrete_index
from seqenv.tokenizers import BOS_ID

from ..policies.transformer import PolicyConfig, TransformerPolicy


class TransformerStateExtractor(BaseFeaturesExtractor):
    """Features = the :class:`TransformerPolicy`'s final hidden state (after its
    last LayerNorm) at the current state, so that ``policy.lm_head(features)``
    are exactly the policy's logits there.

    :param observation_space: the env's ``Dict`` observation space (keys
        ``tokens`` ``[L]`` and ``length``).
    :param policy_config: ``PolicyConfig.to_dict()`` of the actor; its
        ``block_size`` must be at least ``L + 1``.
    :raises ValueError: if the observation space lacks ``tokens`` / ``length``
        or the policy cannot read states of ``L`` tokens.
    :return: (forward) FloatTensor ``[B, n_embd]``.
    """

    def __init__(self, observation_space: spaces.Dict, policy_config: dict):
        config = PolicyConfig.from_dict(policy_config)
        super().__init__(observation_space, features_dim=config.n_embd)
        if not isinstance(observation_space, spaces.Dict) or not {"tokens", "length"} <= set(observation_space.spaces):
            raise ValueError(f"observation space must be a Dict with 'tokens' and 'length', got {observation_space}")
        tokens_shape = observation_space["tokens"].shape
        if not tokens_shape:
            raise ValueError(f"observation space 'tokens' must have a shape [L], got {observation_space['tokens']}")
        self.max_length = int(tokens_shape[0])
        if config.block_size < self.max_length + 1:
            raise ValueError(f"policy block_size {config.block_size} < env max_length + 1 = {self.max_length + 1}")
        self.policy = TransformerPolicy(config)
        self._hidden: torch.Tensor | None = None
        self.policy.ln_f.register_forward_hook(self._keep_hidden)

    def _keep_hidden(self, module, inputs, output) -> None:
        self._hidden = output

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens = observations["tokens"].long()  # [B, L]
        length = discrete_index(observations["length"])  # [B]
        bos = torch.full((len(tokens), 1), BOS_ID, dtype=torch.long, device=tokens.device)
        self.policy(torch.cat([bos, tokens], 1))  # fills self._hidden, [B, L + 1, n_embd]
        hidden, self._hidden = self._hidden, None
        if hidden is None:
            raise RuntimeError("the final layer norm's forward hook did not run")
        return hidden[torch.arange(len(tokens), device=tokens.device), length]


class ValueHead(nn.Module):
    """State-value function ``V(s)``: ``Linear -> Tanh -> Linear`` on the actor's hidden state.

    :param n_embd: input width. :param hidden: hidden width.
    :param detach: stop the value loss's gradient at the hidden state, so
        that only PPO's policy loss moves the pretrained transformer [recon:
        our choice].
    :return: (forward) FloatTensor ``[B, 1]``.
    """

    def __init__(self, n_embd: int, hidden: int = 64, detach: bool = True):
        super().__init__()
        self.detach = detach
        self.net = nn.Sequential(nn.Linear(n_embd, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features.detach() if self.detach else features)


class TransformerMaskablePolicy(MaskableActorCriticPolicy):
    """``MaskableActorCriticPolicy`` whose action logits are a :class:`TransformerPolicy`'s.

    The action distribution is the softmax of the transformer's logits at the
    current state over the env's legal actions (MaskablePPO's masking), i.e.
    the policy as :func:`agents.common.rollout.rollout` samples it at temperature 1.
    ``ortho_init`` is off (it would overwrite the pretrained weights); the
    optimiser (``optimizer_class``, Adam by default) covers the transformer
    and the value head. SB3 puts the policy in train mode for its updates,
    so an actor with ``dropout > 0`` makes PPO's probability ratios noisy:
    fine-tune policies configured without dropout.

    :param observation_space, action_space, lr_schedule: as SB3.
    :param policy_config: ``PolicyConfig.to_dict()`` of the actor (weights are
        loaded afterwards: ``ppo.policy.actor.load_state_dict(...)``).
    :param value_hidden: hidden width of the :class:`ValueHead`.
    :param detach_value: see :class:`ValueHead`.
    :param kwargs: other ``MaskableActorCriticPolicy`` arguments
        (``optimizer_class``, ``optimizer_kwargs``, ...).
    :raises ValueError: if the action space is not ``Discrete(vocab_size)`` of the actor.

    :attr:`kl_reference`: ``None`` (default) or a frozen reference policy π0 (a
    :class:`TransformerPolicy` given to :meth:`set_kl_reference`; not a submodule: neither trained nor saved).
    When set, :meth:`evaluate_actions` returns ``-KL(π(·|s) ‖ π0(·|s))``
    (exact, over the legal actions, differentiable in π) in place of the
    entropy, so that MaskablePPO's ``ent_coef · (-mean entropy)`` term becomes
    the penalty ``ent_coef · mean_s KL`` (``agents.sb3.critic_reward``, ``--kl-estimator exact``).
    """

    @property
    def kl_reference(self) -> TransformerPolicy | None:
        """The frozen π0 of the exact-KL penalty, or ``None`` (set it with :meth:`set_kl_reference`)."""
        return self.__dict__.get("_kl_reference")

    def set_kl_reference(self, model: TransformerPolicy | None) -> None:
        """Attach π0 for the exact-KL penalty (``None`` detaches it). Kept outside the module tree: never
        trained, saved or moved by SB3."""
        vars(self)["_kl_reference"] = model

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule,
        policy_config: dict,
        value_hidden: int = 64,
        detach_value: bool = True,
        **kwargs: Any,
    ):
        vocab = PolicyConfig.from_dict(policy_config).vocab_size
        if not isinstance(action_space, spaces.Discrete) or int(action_space.n) != vocab:
            raise ValueError(f"action space must be Discrete({vocab}) (the actor's vocabulary), got {action_space}")
        self.value_hidden, self.detach_value = value_hidden, detach_value
        kwargs.update(
            net_arch=[],
            ortho_init=False,
            features_extractor_class=TransformerStateExtractor,
            features_extractor_kwargs=dict(policy_config=policy_config),
            share_features_extractor=True,
        )
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    @property
    def actor(self) -> TransformerPolicy:
        """The :class:`TransformerPolicy` (save its ``state_dict`` as a seqenv checkpoint)."""
        extractor = self.features_extractor
        if not isinstance(extractor, TransformerStateExtractor):
            raise TypeError(f"the features extractor is {type(extractor).__name__}, not TransformerStateExtractor")
        return extractor.policy

    def _build(self, lr_schedule) -> None:
        self._build_mlp_extractor()  # net_arch=[]: identity, latent width n_embd
        self.action_net = self.actor.lm_head
        self.value_net = ValueHead(self.features_dim, self.value_hidden, self.detach_value)
        # SB3 types optimizer_class as type[Optimizer], whose __init__ takes no lr (its own policies do the same)
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)  # pyright: ignore[reportCallIssue]

    def evaluate_actions(self, obs: torch.Tensor | dict[str, torch.Tensor], actions: torch.Tensor, action_masks=None):
        """SB3's ``(values, log_prob, entropy)``; with :attr:`kl_reference` the third item is ``-KL(π ‖ π0)``
        per state (FloatTensor ``[B]``, nats)."""
        if self.kl_reference is None:
            # sb3-contrib annotates obs as a tensor; with a Dict observation space it is a dict of tensors
            return super().evaluate_actions(obs, actions, action_masks)  # pyright: ignore[reportArgumentType]
        latent_pi, latent_vf = self.mlp_extractor(self.extract_features(obs))
        distribution = self._get_action_dist_from_latent(latent_pi)
        categorical = distribution.distribution
        if not isinstance(categorical, torch.distributions.Categorical):
            raise TypeError(f"expected one categorical action distribution, got {categorical!r}")
        logits = categorical.logits.float()  # the actor's logits [B, V]
        mask = (
            torch.ones_like(logits, dtype=torch.bool)
            if action_masks is None
            else torch.as_tensor(action_masks, device=logits.device).reshape(logits.shape).bool()
        )
        if action_masks is not None:
            distribution.apply_masking(action_masks)
        if not isinstance(obs, dict):
            raise TypeError(f"observations must be a dict with 'tokens' and 'length', got {type(obs).__name__}")
        tokens, length = obs["tokens"].long(), discrete_index(obs["length"])
        bos = torch.full((len(tokens), 1), BOS_ID, dtype=torch.long, device=tokens.device)
        with torch.no_grad():
            ref = self.kl_reference(torch.cat([bos, tokens], 1))[torch.arange(len(tokens)), length].float()
        log_p = torch.log_softmax(logits.masked_fill(~mask, -math.inf), -1)
        log_ref = torch.log_softmax(ref.masked_fill(~mask, -math.inf), -1)
        diff = torch.where(mask, log_p - log_ref, torch.zeros_like(log_p))
        return self.value_net(latent_vf), distribution.log_prob(actions), -(log_p.exp() * diff).sum(-1)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        for key in ("net_arch", "ortho_init", "features_extractor_class", "features_extractor_kwargs"):
            data.pop(key, None)
        data.update(
            policy_config=self.features_extractor_kwargs["policy_config"],
            value_hidden=self.value_hidden,
            detach_value=self.detach_value,
        )
        return data

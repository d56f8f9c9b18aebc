"""Stable-Baselines3 adapter: the batched env as an SB3 ``VecEnv``, and a token encoder.

``PPO`` and sb3-contrib's ``MaskablePPO`` train on :class:`SB3VecEnv` (one
:class:`~seqenv.vector_env.SeqGenVectorEnv` underneath, no process or Python
env per copy)::

    from sb3_contrib import MaskablePPO
    from seqenv.sb3 import TokenSequenceExtractor, make_sb3_vec_env

    venv = make_sb3_vec_env(task="oracle-hmm", num_envs=16, reward="oracle")
    model = MaskablePPO("MultiInputPolicy", venv,
                        policy_kwargs=dict(features_extractor_class=TokenSequenceExtractor))
    model.learn(10_000)

Plain ``PPO`` knows no masks and samples masked actions; build its env with
``validate_actions=False`` so that they are no-ops (the step still counts).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import VecEnv
from torch import nn

from .vector_env import SeqGenVectorEnv


class SB3VecEnv(VecEnv):
    """An SB3 ``VecEnv`` over a :class:`~seqenv.vector_env.SeqGenVectorEnv`.

    SB3 conventions (not Gymnasium's): numpy outputs; ``step`` returns
    ``(obs, rewards, dones, infos)`` with ``obs`` a dict of numpy arrays
    (``tokens`` int64 ``[N, L]``, ``length`` and ``prompt_length`` int64
    ``[N]``), ``rewards`` float32 ``[N]``, ``dones = terminated | truncated``
    bool ``[N]`` and ``infos`` a list of ``N`` dicts. A finished env is reset
    in the same step: its returned observation is the start of the next
    episode, ``infos[i]["terminal_observation"]`` holds the final one and
    ``infos[i]["TimeLimit.truncated"]`` is ``truncated and not terminated``.
    Every info also carries ``"action_mask"`` (bool ``[V]``, of the returned
    observation).

    ``action_masks()`` returns bool ``[N, V]``, and ``env_method("action_masks")``
    a list of ``N`` rows, which is what sb3-contrib's ``get_action_masks``
    stacks. ``get_attr``/``set_attr`` act on the shared vector env (one value
    for every index; setting for a subset of indices raises ``ValueError``).

    :param venv: the vector env (any device; outputs are copied to the host),
        with ``copy_obs=True`` (SB3 keeps an observation across the next step)
        and ``autoreset_mode`` ``NEXT_STEP`` or ``DISABLED`` (the adapter
        resets ended envs itself).
    :raises ValueError: if ``venv.copy_obs`` is False or ``venv.autoreset_mode`` is ``SAME_STEP``.
    """

    def __init__(self, venv: SeqGenVectorEnv):
        if not venv.copy_obs:
            raise ValueError(
                "SB3VecEnv needs a SeqGenVectorEnv with copy_obs=True: SB3 stores each observation "
                "after the next step, which overwrites the shared state tensors of copy_obs=False"
            )
        if venv.autoreset_mode == AutoresetMode.SAME_STEP:
            raise ValueError(
                "SB3VecEnv needs a SeqGenVectorEnv with autoreset_mode NEXT_STEP or DISABLED, got "
                "SAME_STEP: the adapter resets the ended envs itself"
            )
        self.venv = venv
        self._actions: np.ndarray | None = None
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)

    # -- VecEnv API ---------------------------------------------------------
    def reset(self):
        """Reset every env with the seeds from :meth:`seed` (consecutive: env ``i`` gets ``seed + i``) and options.

        :raises ValueError: if the per-env options differ (the envs share one reset).
        """
        seed = self._seeds[0] if self._seeds[0] is not None else None
        options = self._options[0] or None
        if any(o != self._options[0] for o in self._options):
            raise ValueError(f"SB3VecEnv resets every env together: per-env options must be equal, got {self._options}")
        obs, info = self.venv.reset(seed=seed, options=options)
        masks = _np(info["action_mask"])
        self.reset_infos = [{"action_mask": m} for m in masks]
        self._reset_seeds()
        self._reset_options()
        return _np(obs)

    def step_async(self, actions: np.ndarray) -> None:
        """Store the actions (int ``[N]``) for :meth:`step_wait`."""
        self._actions = np.asarray(actions)

    def step_wait(self):
        """Step every env; reset the finished ones at once (SB3 semantics, see the class docstring).

        :return: ``(obs, rewards, dones, infos)``.
        :raises RuntimeError: without a preceding :meth:`step_async`.
        """
        if self._actions is None:
            raise RuntimeError("step_wait() called without step_async()")
        obs, rewards, terminated, truncated, info = self.venv.step(self._actions.reshape(self.num_envs))
        self._actions = None
        obs, terminated, truncated = _np(obs), _np(terminated), _np(truncated)
        dones = terminated | truncated
        masks = _np(info["action_mask"])
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        if dones.any():
            ended = np.flatnonzero(dones)
            final = {k: v[ended] for k, v in obs.items()}  # copies (fancy indexing)
            new_obs, new_info = self.venv.reset(options={"reset_mask": dones})
            obs, masks = _np(new_obs), _np(new_info["action_mask"])
            for j, i in enumerate(ended):
                infos[i]["terminal_observation"] = {k: v[j] for k, v in final.items()}
                infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
        for i in range(self.num_envs):
            infos[i]["action_mask"] = masks[i]
        return obs, _np(rewards).astype(np.float32), dones, infos

    def close(self) -> None:
        """Close the vector env."""
        self.venv.close()

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        """The vector env's attribute, once per index."""
        value = getattr(self.venv, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        """Set an attribute of the vector env (shared by every index).

        :raises ValueError: if ``indices`` is not every env.
        """
        if sorted(self._get_indices(indices)) != list(range(self.num_envs)):
            raise ValueError(
                f"SB3VecEnv envs share one state: set_attr({attr_name!r}) needs all indices, got {indices!r}"
            )
        setattr(self.venv, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list[Any]:
        """Call a method of the vector env.

        ``"action_masks"`` returns one mask row per index; any other method is
        called once and its result repeated per index.
        """
        idx = list(self._get_indices(indices))
        if method_name == "action_masks":
            masks = self.action_masks()
            return [masks[i] for i in idx]
        result = getattr(self.venv, method_name)(*method_args, **method_kwargs)
        return [result for _ in idx]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices=None) -> list[bool]:
        """Always False: there are no per-env Gymnasium wrappers."""
        return [False for _ in self._get_indices(indices)]

    def seed(self, seed: int | None = None) -> Sequence[int | None]:
        """Seeds for the next :meth:`reset`: env ``i`` gets ``seed + i`` (SB3's convention)."""
        return super().seed(seed)

    def action_masks(self) -> np.ndarray:
        """Legal actions of the current observations: bool ``[N, V]``."""
        return _np(self.venv.action_masks())

    def get_images(self) -> Sequence[np.ndarray | None]:
        raise NotImplementedError("SeqGen envs render text (render_mode='ansi'), not images")


def make_sb3_vec_env(task: str = "python-lines", num_envs: int = 8, **kwargs) -> SB3VecEnv:
    """An :class:`SB3VecEnv` over ``SeqGenVectorEnv(task=task, num_envs=num_envs, **kwargs)``.

    :param kwargs: any :class:`~seqenv.vector_env.SeqGenVectorEnv` argument
        (``max_length``, ``reward``, ``reward_mode``, ``device``,
        ``validate_actions``...).
    """
    return SB3VecEnv(SeqGenVectorEnv(num_envs=num_envs, task=task, **kwargs))


class TokenSequenceExtractor(BaseFeaturesExtractor):
    """SB3 features extractor: token embedding + a GRU over the state, read at its last token.

    Input (after SB3's preprocessing of the ``Dict`` observation): ``tokens``
    float ``[B, L]`` (ids as floats), ``length`` and ``prompt_length`` one-hot
    ``[B, L + 1]`` or ``[B, 1, L + 1]`` (SB3 one-hot encodes ``Discrete``;
    index tensors ``[B]`` or ``[B, 1]`` are accepted too). Each token is embedded, plus a learned
    segment embedding (prompt / generated); a one-layer GRU reads the
    sequence and its output at position ``length - 1`` (zeros for an empty
    state), concatenated with ``length / L``, goes through ``Linear + ReLU``.

    :param observation_space: the env's ``Dict`` observation space.
    :param features_dim: output size.
    :param embed_dim: token embedding size.
    :param hidden_dim: GRU hidden size.
    :return: (forward) float ``[B, features_dim]``.
    """

    def __init__(
        self, observation_space: spaces.Dict, features_dim: int = 64, embed_dim: int = 32, hidden_dim: int = 64
    ):
        super().__init__(observation_space, features_dim)
        tokens_space = observation_space["tokens"]
        if not isinstance(tokens_space, spaces.Box) or tokens_space.shape is None:
            raise TypeError(f"observation_space['tokens'] must be a Box, got {tokens_space!r}")
        self.max_length = int(tokens_space.shape[0])
        vocab_size = int(tokens_space.high.max()) + 1
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.segment = nn.Embedding(2, embed_dim)
        self.gru = nn.GRU(embed_dim, hidden_dim, batch_first=True)
        self.head = nn.Sequential(nn.Linear(hidden_dim + 1, features_dim), nn.ReLU())

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens = observations["tokens"].long()  # [B, L]
        length = discrete_index(observations["length"])  # [B]
        prompt_length = discrete_index(observations["prompt_length"])
        positions = torch.arange(self.max_length, device=tokens.device)
        generated = (positions >= prompt_length[:, None]).long()
        out, _ = self.gru(self.embed(tokens) + self.segment(generated))  # [B, L, H]
        last = out[torch.arange(len(tokens), device=tokens.device), (length - 1).clamp(min=0)]  # [B, H]
        last = last * (length > 0)[:, None]
        return self.head(torch.cat([last, length[:, None].float() / self.max_length], 1))


def discrete_index(x: torch.Tensor) -> torch.Tensor:
    """A ``Discrete`` observation as LongTensor ``[B]``.

    From one-hot ``[B, n]`` or ``[B, 1, n]`` (SB3's preprocessing; rollout
    buffers add a dim), or indices ``[B]`` or ``[B, 1]``.
    """
    x = x.reshape(len(x), -1)
    return x.argmax(1) if x.shape[1] > 1 else x[:, 0].long()


def _np(x: Any) -> Any:
    """Torch tensors (also inside dicts) to numpy arrays on the host."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, dict):
        return {k: _np(v) for k, v in x.items()}
    return x

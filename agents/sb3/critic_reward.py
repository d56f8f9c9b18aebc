"""MaskablePPO in SeqGen-v0 with an NCE critic's reward and a KL penalty to the start (library of
``scripts/ppo_critic.py``).

The actor is the checkpoint's :class:`~agents.policies.transformer.TransformerPolicy`
(:class:`agents.sb3.policy.TransformerMaskablePolicy`, a small value head
added); the env is ``SeqGen-v0``'s batched vector env through the SB3 adapter
(:class:`seqenv.sb3.SB3VecEnv`), so backspace is an action like any other.

Objective (METHODS.md §3 (b): the critic as a reward for RL fine-tuning)::

    max_π  E_{x~π}[ r(x) ] - β KL(π || π0),     r(x) = -E_ψ(x) - c

with π0 the starting policy and ``(E_ψ, c)`` a residual critic trained by
``train.py --agent nce`` on top of π0, so that ``π0(x) exp(r(x))`` is the
critic's residual EBM (Deng et al., ICLR 2020). The optimum of this
KL-regularised objective is ``π*(x) ∝ π0(x) exp(r(x)/β)`` (Korbak, Perez &
Buckley, "RL with KL penalties is better viewed as Bayesian inference",
EMNLP Findings 2022): at **β = 1 it is exactly the residual EBM** that
``generate.py --rerank critic`` approximates by resampling; β > 1 stays closer
to π0. ``c`` does not move the optimum; it centres the reward
(``E_{π0}[exp(r)] ≈ 1``).

How the KL enters PPO [recon, documented choice] (:class:`CriticKLReward`):
every step pays ``β (log π0(a_t|s_t) - log π(a_t|s_t))``, with π the policy
that sampled the action (the actor at rollout time) and both masked to the
env's legal actions, and the step that ends an episode also pays ``r(x_T)``,
the critic's score of the final sequence (``eos`` appended iff it
terminated; truncated sequences are scored too, as the critic saw them as
noise). With γ = 1 an episode's return is ``r(x) - β Σ_t log(π/π0)(a_t|s_t)``,
an unbiased estimate of the objective (the chain rule sums the per-state
KLs to the KL of the episode distributions); treating ``-β log π`` as a fixed
reward still gives the exact policy gradient, because the extra term
``E_π[∇ log π]`` is zero. This is the per-token KL penalty of RLHF (Ziegler
et al., "Fine-Tuning Language Models from Human Preferences", 2019) with
the NCE critic in place of a preference reward model. Everything is in the
reward, so SB3's advantage normalisation and the reward normalisation
(``VecNormalize``, return scale only; the optimum is unchanged by a common
scale) are harmless; PPO's entropy bonus is off (it is inside the KL term).
We do not use the alternative ``reward β log π0 + ent_coef = β`` (equal in
expectation per state): SB3 normalises advantages but not the entropy
bonus, which breaks the relative scale of the two (we saw the policy drift
to near-uniform), and the bonus's gradient ignores the entropy of later
states.

Episode ends are final: the critic pays the last state's score, so the
adapter's ``TimeLimit.truncated`` is cleared and SB3 does not bootstrap
truncated episodes with the value function.

Logged under SB3's standard TensorBoard keys (``tensorboard_log=--logdir``):
``rollout/ep_rew_mean``, ``rollout/ep_len_mean``, ``train/approx_kl``,
``train/entropy_loss``, ``train/policy_gradient_loss``, ``train/value_loss``,
``train/explained_variance``, ``train/clip_fraction``, ``time/fps``..., plus
``rollout/critic_reward_mean`` and ``rollout/kl_to_init_mean`` (mean over
the episodes that ended in the rollout of ``r(x)`` and of ``Σ_t log(π/π0)(a_t|s_t)``,
nats; ``rollout/ep_rew_mean`` is their difference with β, before reward
normalisation). The fine-tuned policy is saved as a normal seqenv
checkpoint (``agent: "ppo"``) that ``load_policy``, ``generate.py`` and
``evaluate.py`` read; ``metrics.json`` holds the evaluations before and after.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper, VecMonitor, VecNormalize

from sb3_contrib import MaskablePPO

from seqenv.sb3 import SB3VecEnv
from seqenv.tokenizers import BOS_ID

from ..common.checkpoint import load_policy, save_checkpoint
from ..common.rundir import RunDirectory
from ..common.cli import MAX_SAMPLES, MAX_STEPS, check_number
from ..common.evaluation import evaluate_policy
from ..common.rollout import make_vector_env, rollout
from ..common.trajectory import sequence_batch
from ..critic import SequenceCritic
from ..nce import load_critic
from ..trainer import resolve_device
from .policy import TransformerMaskablePolicy


@dataclass
class PPOCriticConfig:
    """Flags of ``ppo_critic.py``.

    :param checkpoint: the starting policy π0 (a seqenv checkpoint, e.g. MLE).
    :param critic: an ``nce`` checkpoint (``train.py --agent nce``) whose
        critic was trained on top of π0.
    :param total_timesteps: env steps (actions) of PPO in all.
    :param beta: KL coefficient β > 0; 1 targets the critic's residual EBM exactly.
    :param num_envs: parallel envs (one batched vector env).
    :param logdir: run directory: TensorBoard events, ``checkpoint.pt``, ``metrics.json``.
    :param device: ``auto``, ``cpu``, ``cuda``...
    :param seed: seeds SB3 (torch, numpy, env resets) and the evaluations.
    :param n_steps: steps per env per rollout (rollout = ``n_steps·num_envs``).
    :param batch_size: PPO minibatch size.
    :param n_epochs: passes per rollout.
    :param learning_rate: Adam step size.
    :param clip_range: PPO's ε.
    :param gae_lambda: GAE λ (the discount γ is 1, see the module docstring).
    :param vf_coef: value-loss weight.
    :param max_grad_norm: gradient clipping.
    :param eval_samples: sequences generated for each evaluation.
    :param progress: show SB3's progress bar.
    :param overwrite: replace the run in ``logdir`` (its files are deleted once
        the checkpoints are read; without it a directory holding a run is refused).
    """

    checkpoint: str
    critic: str
    total_timesteps: int = 200_000
    beta: float = 1.0
    num_envs: int = 64
    logdir: str = "runs/ppo-critic"
    device: str = "auto"
    seed: int = 0
    n_steps: int = 64
    batch_size: int = 512
    n_epochs: int = 4
    learning_rate: float = 1e-4
    clip_range: float = 0.2
    gae_lambda: float = 0.95
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    eval_samples: int = 512
    progress: bool = True
    overwrite: bool = False

    def __post_init__(self):
        for name in ("total_timesteps", "num_envs", "n_steps", "batch_size", "n_epochs", "eval_samples"):
            check_number(f"--{name.replace('_', '-')}", getattr(self, name), ge=1,
                         le=MAX_STEPS if name == "total_timesteps" else MAX_SAMPLES, integer=True)
        for name in ("beta", "learning_rate", "clip_range", "max_grad_norm"):
            check_number(f"--{name.replace('_', '-')}", getattr(self, name), gt=0)
        check_number("--gae-lambda", self.gae_lambda, ge=0, le=1)
        check_number("--vf-coef", self.vf_coef, ge=0)
        check_number("--seed", self.seed, ge=0, le=2**31 - 1, integer=True)


@torch.no_grad()
def critic_reward(critic: SequenceCritic, sequences: list[list[int]], terminated: list[bool], device) -> torch.Tensor:
    """``r(x) = -E_ψ(x) - c``, the log density ratio of the critic's residual EBM to its base policy.

    :param sequences: final states as token lists (no ``bos``/``eos``).
    :param terminated: per sequence, whether it ended with ``eos`` (then ``eos`` is appended).
    :returns: FloatTensor ``[N]`` (nats) on ``device``.
    """
    tokens, mask = sequence_batch(sequences, terminated, device)
    return -critic(tokens, mask).float() - critic.log_normalizer.float()


class CriticKLReward(VecEnvWrapper):
    """Rewards of the KL-regularised critic objective (module docstring), on top of the env's own::

        reward_t = env_reward_t + β (log π0(a_t|s_t) - log π(a_t|s_t)) + [episode ends at t] · r(x_T)

    with the logits of π0 and π at ``s_t`` masked by the env's action mask at
    ``s_t``. π is :attr:`policy`, the live actor, attached after the PPO model
    exists (``wrapper.policy = ppo.policy.actor``); while it is None the
    ``log π`` term is left out. Ended episodes get ``infos[i]["critic_reward"]
    = r(x_T)``, ``infos[i]["kl_to_init"] = Σ_t (log π - log π0)(a_t|s_t)``
    (nats; without a policy, ``-Σ_t log π0``) and ``infos[i]["TimeLimit.truncated"]
    = False`` (the critic's reward is final).

    :param venv: an SB3 VecEnv over SeqGen-v0 (dict observations ``tokens``,
        ``length``; final states in ``infos[i]["terminal_observation"]``;
        ``env_method("action_masks")``).
    :param critic: the residual critic (:func:`agents.nce.load_critic`).
    :param reference: π0, a :class:`~agents.policies.transformer.TransformerPolicy` (frozen here).
    :param beta: β > 0.
    :param device: where the critic, π0 and π run.
    :raises ValueError: if ``beta`` is not a finite positive number.
    """

    def __init__(self, venv: VecEnv, critic: SequenceCritic, reference, beta: float, device):
        if not (math.isfinite(beta) and beta > 0):
            raise ValueError(f"beta must be a finite number > 0, got {beta}")
        super().__init__(venv)
        self.critic, self.reference, self.beta, self.device = critic, reference.eval(), float(beta), device
        self.reference.requires_grad_(False)
        self.policy = None
        self._obs: Optional[dict] = None
        self._masks: Optional[np.ndarray] = None
        self._actions: Optional[np.ndarray] = None
        self._episode_kl = np.zeros(self.num_envs)

    def reset(self):
        obs = self.venv.reset()
        self._remember(obs)
        self._episode_kl[:] = 0.0
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions).reshape(self.num_envs)
        self.venv.step_async(actions)

    def step_wait(self):
        obs, env_reward, dones, infos = self.venv.step_wait()
        log_ratio = -self.log_prob(self.reference, self._obs, self._masks, self._actions)  # log π - log π0
        if self.policy is not None:
            log_ratio += self.log_prob(self.policy, self._obs, self._masks, self._actions)
        self._episode_kl += log_ratio
        reward = env_reward.astype(np.float64) - self.beta * log_ratio
        ended = np.flatnonzero(dones)
        if len(ended):
            finals = [infos[i]["terminal_observation"] for i in ended]
            sequences = [f["tokens"][: int(f["length"])].tolist() for f in finals]
            terminated = [not infos[i].get("TimeLimit.truncated", False) for i in ended]
            r = critic_reward(self.critic, sequences, terminated, self.device).cpu().numpy()
            reward[ended] += r
            for j, i in enumerate(ended):
                infos[i].update({"critic_reward": float(r[j]), "kl_to_init": float(self._episode_kl[i]),
                                 "TimeLimit.truncated": False})
            self._episode_kl[ended] = 0.0
        self._remember(obs)
        return obs, reward.astype(np.float32), dones, infos

    def _remember(self, obs: dict) -> None:
        """Keep the current states and masks: the next step's log-probabilities are taken there."""
        self._obs = {k: np.array(v) for k, v in obs.items()}
        self._masks = np.stack(self.venv.env_method("action_masks")).astype(bool)

    @torch.no_grad()
    def log_prob(self, model, obs: dict, masks: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """``log p(a|s)`` (nats, float64 ``[N]``) of ``actions`` at the states ``obs`` under a
        :class:`~agents.policies.transformer.TransformerPolicy` ``model`` masked by ``masks`` (bool ``[N, V]``)."""
        tokens = torch.as_tensor(obs["tokens"], dtype=torch.long, device=self.device)
        length = torch.as_tensor(obs["length"], dtype=torch.long, device=self.device).reshape(-1)
        bos = torch.full((len(tokens), 1), BOS_ID, dtype=torch.long, device=self.device)
        rows = torch.arange(len(tokens), device=self.device)
        logits = model(torch.cat([bos, tokens], 1))[rows, length].float()  # the state s_t
        logits = logits.masked_fill(~torch.as_tensor(masks, device=self.device), -math.inf)
        a = torch.as_tensor(actions, dtype=torch.long, device=self.device)
        return F.log_softmax(logits, -1)[rows, a].double().cpu().numpy()


class RewardTermsCallback(BaseCallback):
    """Logs ``rollout/critic_reward_mean`` and ``rollout/kl_to_init_mean`` (episodes ended in the rollout)."""

    def _on_rollout_start(self) -> None:
        self._critic, self._kl = [], []

    def _on_step(self) -> bool:
        for info in self.locals["infos"]:
            if "critic_reward" in info:
                self._critic.append(info["critic_reward"])
                self._kl.append(info["kl_to_init"])
        return True

    def _on_rollout_end(self) -> None:
        if self._critic:
            self.logger.record("rollout/critic_reward_mean", float(np.mean(self._critic)))
            self.logger.record("rollout/kl_to_init_mean", float(np.mean(self._kl)))


@torch.no_grad()
def evaluate(policy, reference, critic, task, beta: float, num_samples: int, device, seed: int) -> dict:
    """:func:`agents.common.evaluation.evaluate_policy`'s metrics plus the objective's terms on fresh samples:

    ``critic_reward`` = mean ``r(x)``, ``kl_to_init`` = mean ``log π(τ) - log
    π0(τ)`` over the episodes' action histories τ (a Monte Carlo estimate of
    KL(π‖π0) in nats per sequence; both policies masked to the legal
    actions), and ``objective`` = ``critic_reward - beta · kl_to_init``.
    """
    metrics = evaluate_policy(policy, task, num_samples=num_samples, device=device, seed=seed)
    venv = make_vector_env(task, num_samples, device)
    res = rollout(policy, venv, seed=seed, generator=torch.Generator(device=device).manual_seed(seed),
                  store_masks=True)
    batch = res.to_batch()
    S = res.actions.shape[1]
    masks = torch.zeros(*batch.tokens.shape, res.action_masks.shape[-1], dtype=torch.bool, device=batch.tokens.device)
    masks[batch.is_action] = res.action_masks[torch.arange(S, device=masks.device)[None] < res.num_actions[:, None]]
    logits = reference(batch.tokens).float()[:, :-1].masked_fill(~masks[:, 1:], -math.inf)  # predict position t from t-1
    log_ref = F.log_softmax(logits, -1).gather(-1, batch.tokens[:, 1:, None]).squeeze(-1)
    log_ref = torch.where(batch.is_action[:, 1:], log_ref, torch.zeros_like(log_ref)).sum(1)
    kl = float((res.log_probs.sum(1) - log_ref).mean())
    reward = float(critic_reward(critic, res.sequences(), res.terminated.tolist(), device).mean())
    metrics.update(critic_reward=reward, kl_to_init=kl, objective=reward - beta * kl)
    return metrics


def run(cfg: PPOCriticConfig) -> dict:
    """Fine-tune, save ``<logdir>/checkpoint.pt`` and ``metrics.json``; return ``{"before": ..., "after": ...}``.

    The run directory goes through the run-directory guard
    (:class:`~agents.common.rundir.RunDirectory`): locked for the run's life, a
    directory holding a run refused unless ``overwrite``, whose files are
    deleted only after both checkpoints are read.

    :raises FileNotFoundError, agents.common.checkpoint.CheckpointError: for a bad
        ``--checkpoint`` or ``--critic`` (not an nce checkpoint, another tokenizer).
    :raises agents.common.cli.RunDirectoryError: ``logdir`` holds a run (without
        ``overwrite``) or is in use.
    """
    device = resolve_device(cfg.device)
    with RunDirectory(cfg.logdir, overwrite=cfg.overwrite, script="ppo_critic.py", resumable=False) as run_dir:
        reference, task, state = load_policy(cfg.checkpoint, device)  # π0, frozen
        critic = load_critic(cfg.critic, device, task)
        run_dir.start()  # inputs read: the old run's files may go now
        return _run(cfg, device, reference, task, state, critic)


def _run(cfg: PPOCriticConfig, device, reference, task, state, critic) -> dict:
    before = evaluate(reference, reference, critic, task, cfg.beta, cfg.eval_samples, device, cfg.seed)

    reward = CriticKLReward(SB3VecEnv(make_vector_env(task, cfg.num_envs, device)), critic, reference, cfg.beta, device)
    # VecMonitor logs episode returns in nats; VecNormalize then only rescales the rewards PPO learns from
    env = VecNormalize(VecMonitor(reward), norm_obs=False, norm_reward=True, gamma=1.0)
    ppo = MaskablePPO(
        TransformerMaskablePolicy, env, learning_rate=cfg.learning_rate, n_steps=cfg.n_steps,
        batch_size=cfg.batch_size, n_epochs=cfg.n_epochs, gamma=1.0, gae_lambda=cfg.gae_lambda,
        clip_range=cfg.clip_range, ent_coef=0.0, vf_coef=cfg.vf_coef, max_grad_norm=cfg.max_grad_norm,
        tensorboard_log=cfg.logdir, policy_kwargs=dict(policy_config=state["policy"]["config"]), seed=cfg.seed,
        device=device,
    )
    ppo.policy.actor.load_state_dict(state["model"])  # π starts at π0
    reward.policy = ppo.policy.actor  # the log π term of the KL penalty
    ppo.learn(cfg.total_timesteps, callback=RewardTermsCallback(), tb_log_name="ppo", progress_bar=cfg.progress)
    env.close()

    actor = ppo.policy.actor
    after = evaluate(actor, reference, critic, task, cfg.beta, cfg.eval_samples, device, cfg.seed)
    logdir = Path(cfg.logdir)
    save_checkpoint({"agent": "ppo", "task": task.spec(), "policy": actor.policy_spec(),
                     "model": actor.state_dict(), "config": asdict(cfg), "step": int(ppo.num_timesteps),
                     "learner": {"value_head": ppo.policy.value_net.state_dict()}}, logdir / "checkpoint.pt")
    metrics = {"before": before, "after": after}
    (logdir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics

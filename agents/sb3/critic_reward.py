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

How the KL enters PPO (:class:`CriticKLReward`, ``--kl-estimator``), with π the
policy that sampled the action (the actor at rollout time), both π and π0
masked to the env's legal actions, and ``KL_t = KL(π(·|s_t) ‖ π0(·|s_t))``:

* ``k1`` (default; TRL's PPO, Ziegler et al., "Fine-Tuning Language Models
  from Human Preferences", 2019): every step pays ``-β (log π - log π0)(a_t|s_t)``.
  Its expectation is ``-β KL_t`` and, treated as a fixed reward, its policy
  gradient is exactly ``∇(-β KL(π‖π0))`` over episodes (the extra term
  ``E_π[∇ log π] = 0``; ``tests/test_ppo_kl.py`` checks it on a 2-state MDP).
* ``k3`` (Schulman's positive estimator, "Approximating KL divergence", 2020):
  every step pays ``-β (ρ - 1 - log ρ)``, ``ρ = π0(a_t|s_t)/π(a_t|s_t)``:
  unbiased for ``KL_t`` and never negative, lower variance, but as a fixed
  reward its gradient is *biased*: it misses ``-β E_π[∇k3] = β Σ_a π0(a|s) ∇ log π(a|s)``
  per state (the test shows the gap). Offered for comparison with GRPO-style
  trainers.
* ``exact`` [recon: the decomposition is ours]: every step pays the exact
  ``-β KL_t`` (from the full logits) as a fixed reward -- this carries the
  effect of earlier actions on which later states are visited -- *and* the loss
  gets the differentiable penalty ``β · mean_s KL(π_θ(·|s) ‖ π0(·|s))`` over
  the minibatch states, the ``∇KL_t`` a fixed reward cannot give. Together
  they are the exact gradient of ``-β KL`` (the test checks it; the penalty
  alone, as "KL in the loss" trainers do, misses the first part). The
  penalty rides in SB3's entropy slot: the policy returns ``-KL_t`` as its
  "entropy" and ``ent_coef = β``, so ``train/entropy_loss`` is the mean
  per-state KL. Mind that SB3's advantage whitening rescales the policy
  gradient but not this penalty: use ``--no-normalize-advantage`` to keep
  their relative scale.

The critic score ``r(x)`` is paid on the step that ends an episode. With
γ = 1 an episode's return is ``r(x) - β Σ_t KL-term_t``, an unbiased
estimate of the objective (the chain rule sums the per-state KLs to the KL of
the episode distributions). **No reward normalisation touches the KL term**:
an earlier version passed the whole reward through ``VecNormalize`` (a
running scale of the return), suspected of making β inert
(``benchmarks/results/ppo_critic_rerun.md``: β = 5 moved the policy as far as
β = 1). A common scale keeps the ratio of score to β·KL, and on a synthetic
check both configurations restrain alike (``ppo_kl_control.md``); it is gone
so that rewards stay in nats and the step size does not follow a running
statistic. ``--score-norm frozen`` standardises the
critic score alone, ``(r(x) - μ0)/σ0``, with ``μ0, σ0`` measured once on
``eval_samples`` samples of π0 and then frozen (RL4LMs / OpenRLHF practice);
β is then in units of the start policy's score spread. The default ``none``
keeps the score in nats, where β = 1 targets the residual EBM.

β is fixed (``--beta``) or adapted toward a target KL per episode
(``--kl-target``; Ziegler et al.'s controller, :class:`KLControllerCallback`):
after each rollout ``β ← β (1 + clip((KL - KL*)/KL*, -0.2, 0.2) · n/horizon)``
with ``KL`` the mean ``Σ_t log(π/π0)`` of the rollout's ended episodes and ``n``
its env steps. ``--target-kl`` is SB3's early stop of the epochs on the
per-update KL (π_old to π), a separate guard. PPO's entropy bonus is off
(the KL term holds it; with ``exact`` the entropy slot carries the KL).

Episode ends are final: the critic pays the last state's score, so the
adapter's ``TimeLimit.truncated`` is cleared and SB3 does not bootstrap
truncated episodes with the value function.

Logged under SB3's standard TensorBoard keys (``tensorboard_log=--logdir``):
``rollout/ep_rew_mean``, ``rollout/ep_len_mean``, ``train/approx_kl``,
``train/entropy_loss``, ``train/policy_gradient_loss``, ``train/value_loss``,
``train/explained_variance``, ``train/clip_fraction``, ``time/fps``..., plus
``rollout/critic_reward_mean`` and ``rollout/kl_to_init_mean`` (mean over
the episodes that ended in the rollout of ``r(x)`` -- in nats, before any
score normalisation -- and of ``Σ_t log(π/π0)(a_t|s_t)``, nats per sequence),
``rollout/objective_mean`` (``r(x) - β·KL``, the KL-regularised objective the
run maximises) and ``train/beta`` (β used for the next rollout). The fine-tuned policy is saved as a normal seqenv
checkpoint (``agent: "ppo"``) that ``load_policy``, ``generate.py`` and
``evaluate.py`` read; ``metrics.json`` holds the evaluations before and after.

**PPO with the verifiable reward** (``--critic validity``): no critic; the
score ``r(x)`` is the env's ``reward="validity"`` (1 when the task's checker
accepts the final text, else 0; :mod:`seqenv.rewards`), paid on the step that
ends the episode, with the same KL term, controller and logging
(``rollout/critic_reward_mean`` is then the rollout's validity). The
objective is ``E[valid(x)] - β KL(π‖π0)``, whose optimum is
``π*(x) ∝ π0(x) exp(valid(x)/β)``: valid texts up-weighted by ``e^{1/β}``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from sb3_contrib import MaskablePPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper, VecMonitor

from seqenv.sb3 import SB3VecEnv
from seqenv.tokenizers import BOS_ID

from ..common.checkpoint import load_policy, save_checkpoint
from ..common.cli import MAX_SAMPLES, MAX_STEPS, check_number
from ..common.distributed import resolve_device
from ..common.evaluation import evaluate_policy
from ..common.rollout import make_vector_env, rollout
from ..common.rundir import RunDirectory
from ..common.trajectory import sequence_batch
from ..critic import SequenceCritic, load_critic
from .policy import TransformerMaskablePolicy

KL_ESTIMATORS = ("k1", "k3", "exact")
#: ``--critic`` value of PPO with the verifiable reward (module docstring)
VALIDITY = "validity"


def masked_log_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``log_softmax`` over the legal actions: FloatTensor ``[N, V]`` (``-inf`` where ``mask`` is False)."""
    return F.log_softmax(logits.float().masked_fill(~mask, -math.inf), -1)


def exact_kl(log_p: torch.Tensor, log_ref: torch.Tensor) -> torch.Tensor:
    """``KL(p ‖ ref) = Σ_a p(a) (log p(a) - log ref(a))`` per row (nats, ``[N]``).

    :param log_p, log_ref: masked log-probabilities ``[N, V]`` (:func:`masked_log_softmax`,
        same mask); masked entries (``-inf`` in both) contribute 0. Differentiable in both.
    """
    legal = torch.isfinite(log_p)
    diff = torch.where(legal, log_p - log_ref, torch.zeros_like(log_p))
    return (log_p.exp() * diff).sum(-1)


def kl_reward_term(log_p: torch.Tensor, log_ref: torch.Tensor, actions: torch.Tensor, estimator: str) -> torch.Tensor:
    """The per-step KL term ``k_t`` the reward pays ``-β·k_t`` for (module docstring), ``[N]`` nats.

    :param log_p, log_ref: masked log-probabilities ``[N, V]`` of π and π0 at ``s_t``.
    :param actions: LongTensor ``[N]``, ``a_t``.
    :param estimator: ``"k1"``: ``log π(a) - log π0(a)``; ``"k3"``: ``ρ - 1 - log ρ`` with
        ``ρ = π0(a)/π(a)`` (Schulman 2020); ``"exact"``: ``KL(π(·|s_t) ‖ π0(·|s_t))``.
    :raises ValueError: on another estimator.
    """
    if estimator == "exact":
        return exact_kl(log_p, log_ref)
    rows = torch.arange(len(actions), device=actions.device)
    log_ratio = log_ref[rows, actions] - log_p[rows, actions]  # log ρ
    if estimator == "k1":
        return -log_ratio
    if estimator == "k3":
        return log_ratio.exp() - 1 - log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {KL_ESTIMATORS}")


@dataclass
class PPOCriticConfig:
    """Flags of ``ppo_critic.py``.

    :param checkpoint: the starting policy π0 (a seqenv checkpoint, e.g. MLE).
    :param critic: an ``nce`` checkpoint (``train.py --agent nce``) whose
        critic was trained on top of π0, or ``validity``: the task's
        verifiable reward as the score (module docstring), no critic.
    :param total_timesteps: env steps (actions) of PPO in all.
    :param beta: KL coefficient β > 0 (the start value with ``kl_target``); 1
        targets the critic's residual EBM exactly (with ``score_norm="none"``).
    :param kl_estimator: ``k1`` (default), ``k3`` or ``exact`` (module docstring).
    :param score_norm: ``none`` (default) or ``frozen``: standardise the critic
        score with its mean/std on π0 samples, measured once.
    :param kl_target: target KL to π0 (nats per sequence) of the adaptive β
        controller; ``None`` (default) keeps β fixed.
    :param kl_horizon: the controller's horizon in env steps (Ziegler et al.: 10 000).
    :param num_envs: parallel envs (one batched vector env).
    :param logdir: run directory: TensorBoard events, ``checkpoint.pt``, ``metrics.json``.
    :param device: ``auto``, ``cpu``, ``cuda``...
    :param seed: seeds SB3 (torch, numpy, env resets) and the evaluations.
    :param n_steps: steps per env per rollout (rollout = ``n_steps·num_envs``).
    :param batch_size: PPO minibatch size.
    :param n_epochs: passes per rollout.
    :param learning_rate: Adam step size (fine-tuning scale: 1e-5).
    :param target_kl: SB3's early stop of a rollout's epochs when the update's
        approximate KL (π_old to π, per action) passes ``1.5 × target_kl``; 0 = off.
    :param normalize_advantage: SB3's per-minibatch advantage whitening.
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
    kl_estimator: Literal["k1", "k3", "exact"] = "k1"
    score_norm: Literal["none", "frozen"] = "none"
    kl_target: float | None = None
    kl_horizon: int = 10_000
    num_envs: int = 64
    logdir: str = "runs/ppo-critic"
    device: str = "auto"
    seed: int = 0
    n_steps: int = 64
    batch_size: int = 512
    n_epochs: int = 4
    learning_rate: float = 1e-5
    target_kl: float = 0.02
    normalize_advantage: bool = True
    clip_range: float = 0.2
    gae_lambda: float = 0.95
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    eval_samples: int = 512
    progress: bool = True
    overwrite: bool = False

    def __post_init__(self):
        for name in ("total_timesteps", "num_envs", "n_steps", "batch_size", "n_epochs", "eval_samples", "kl_horizon"):
            check_number(
                f"--{name.replace('_', '-')}",
                getattr(self, name),
                ge=1,
                le=MAX_STEPS if name in ("total_timesteps", "kl_horizon") else MAX_SAMPLES,
                integer=True,
            )
        for name in ("beta", "learning_rate", "clip_range", "max_grad_norm"):
            check_number(f"--{name.replace('_', '-')}", getattr(self, name), gt=0)
        check_number("--gae-lambda", self.gae_lambda, ge=0, le=1)
        check_number("--target-kl", self.target_kl, ge=0)
        if self.kl_target is not None:
            check_number("--kl-target", self.kl_target, gt=0)
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"--kl-estimator must be one of {', '.join(KL_ESTIMATORS)}, got {self.kl_estimator!r}")
        if self.score_norm not in ("none", "frozen"):
            raise ValueError(f"--score-norm must be 'none' or 'frozen', got {self.score_norm!r}")
        check_number("--vf-coef", self.vf_coef, ge=0)
        check_number("--seed", self.seed, ge=0, le=2**31 - 1, integer=True)


@torch.no_grad()
def critic_reward(
    critic: SequenceCritic | None, sequences: list[list[int]], terminated: list[bool], device, task=None
) -> torch.Tensor:
    """``r(x) = -E_ψ(x) - c``, the log density ratio of the critic's residual EBM to its base policy; with
    ``critic=None`` the verifiable reward ``valid(x)`` instead (1.0 when ``x`` terminated and ``task``'s checker
    accepts its text, else 0.0; as the env's ``reward="validity"``).

    :param sequences: final states as token lists (no ``bos``/``eos``; with ``critic=None`` the whole state,
        the prompt of a conditional task included).
    :param terminated: per sequence, whether it ended with ``eos`` (then ``eos`` is appended).
    :param task: the :class:`~seqenv.tasks.Task` (needed when ``critic`` is None).
    :returns: FloatTensor ``[N]`` (nats; 0/1 for validity) on ``device``.
    :raises ValueError: ``critic`` and ``task`` both None.
    """
    if critic is None:
        if task is None:
            raise ValueError("critic_reward without a critic needs the task (its validity checker)")
        valid = [bool(t) and task.is_valid(task.tokenizer.decode(s)) for s, t in zip(sequences, terminated)]
        return torch.tensor(valid, dtype=torch.float32, device=device)
    tokens, mask = sequence_batch(sequences, terminated, device)
    return -critic(tokens, mask).float() - critic.log_normalizer.float()


class CriticKLReward(VecEnvWrapper):
    """Rewards of the KL-regularised critic objective (module docstring), on top of the env's own::

        reward_t = env_reward_t - β k_t + [episode ends at t] · (r(x_T) - shift) / scale

    with ``k_t`` the ``estimator``'s KL term (:func:`kl_reward_term`; ``k1``:
    ``log π(a_t|s_t) - log π0(a_t|s_t)``) and the logits of π0 and π at ``s_t``
    masked by the env's action mask at ``s_t``. π is :attr:`policy`, the live
    actor, attached after the PPO model exists (``wrapper.policy =
    ppo.policy.actor``); while it is None the ``log π`` term is left out
    (``k_t = -log π0(a_t|s_t)`` for every estimator).
    :attr:`beta` may be changed between steps (the adaptive controller does).
    Ended episodes get ``infos[i]["critic_reward"] = r(x_T)`` (nats, before
    ``shift``/``scale``), ``infos[i]["kl_to_init"] = Σ_t (log π - log
    π0)(a_t|s_t)`` (nats, whatever the estimator) and
    ``infos[i]["TimeLimit.truncated"] = False`` (the critic's reward is final).

    :param venv: an SB3 VecEnv over SeqGen-v0 (dict observations ``tokens``,
        ``length``; final states in ``infos[i]["terminal_observation"]``;
        ``env_method("action_masks")``).
    :param critic: the residual critic (:func:`agents.critic.load_critic`), or any
        module with ``critic(tokens, mask) -> energy [N]`` and a ``log_normalizer``;
        or None: the score ``r(x_T)`` is then the env's own terminal reward at the
        step that ends the episode (``reward="validity"``: 0/1), passed through
        the same ``(r - shift)/scale``.
    :param reference: π0, a :class:`~agents.policies.transformer.TransformerPolicy` (frozen here).
    :param beta: β > 0.
    :param device: where the critic, π0 and π run.
    :param estimator: ``"k1"``, ``"k3"`` or ``"exact"``.
    :param score_shift, score_scale: the critic score is paid as ``(r - shift)/scale``.
    :raises ValueError: if ``beta`` or ``score_scale`` is not a finite positive
        number, or on an unknown estimator.
    """

    def __init__(
        self,
        venv: VecEnv,
        critic: SequenceCritic | None,
        reference,
        beta: float,
        device,
        estimator: str = "k1",
        score_shift: float = 0.0,
        score_scale: float = 1.0,
    ):
        if not (math.isfinite(beta) and beta > 0):
            raise ValueError(f"beta must be a finite number > 0, got {beta}")
        if not (math.isfinite(score_scale) and score_scale > 0):
            raise ValueError(f"score_scale must be a finite number > 0, got {score_scale}")
        if estimator not in KL_ESTIMATORS:
            raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {KL_ESTIMATORS}")
        super().__init__(venv)
        self.critic, self.reference, self.beta, self.device = critic, reference.eval(), float(beta), device
        self.estimator, self.score_shift, self.score_scale = estimator, float(score_shift), float(score_scale)
        self.reference.requires_grad_(False)
        self.policy: torch.nn.Module | None = None
        self._obs: dict | None = None
        self._masks: np.ndarray | None = None
        self._actions: np.ndarray | None = None
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
        if self._obs is None or self._masks is None:
            raise RuntimeError("step_wait() called before reset()")
        actions = torch.as_tensor(self._actions, dtype=torch.long, device=self.device)
        log_ref = self.log_probs(self.reference, self._obs, self._masks)
        if self.policy is not None:
            log_p = self.log_probs(self.policy, self._obs, self._masks)
            term = kl_reward_term(log_p, log_ref, actions, self.estimator).double().cpu().numpy()
            log_ratio = kl_reward_term(log_p, log_ref, actions, "k1").double().cpu().numpy()
        else:
            rows = torch.arange(len(actions), device=self.device)
            term = log_ratio = -log_ref[rows, actions].double().cpu().numpy()
        self._episode_kl += log_ratio
        reward = env_reward.astype(np.float64) - self.beta * term
        ended = np.flatnonzero(dones)
        if len(ended):
            finals = [infos[i]["terminal_observation"] for i in ended]
            sequences = [f["tokens"][: int(f["length"])].tolist() for f in finals]
            terminated = [not infos[i].get("TimeLimit.truncated", False) for i in ended]
            if self.critic is None:  # the env's terminal reward is the score: rescale it in place
                r = env_reward[ended].astype(np.float64)
                reward[ended] += (r - self.score_shift) / self.score_scale - r
            else:
                r = critic_reward(self.critic, sequences, terminated, self.device).cpu().numpy()
                reward[ended] += (r - self.score_shift) / self.score_scale
            for j, i in enumerate(ended):
                infos[i].update(
                    {
                        "critic_reward": float(r[j]),
                        "kl_to_init": float(self._episode_kl[i]),
                        "TimeLimit.truncated": False,
                    }
                )
            self._episode_kl[ended] = 0.0
        self._remember(obs)
        return obs, reward.astype(np.float32), dones, infos

    def _remember(self, obs) -> None:
        """Keep the current states and masks: the next step's log-probabilities are taken there."""
        if not isinstance(obs, dict):
            raise TypeError(f"expected dict observations (tokens, length), got {type(obs).__name__}")
        self._obs = {k: np.array(v) for k, v in obs.items()}
        self._masks = np.stack(self.venv.env_method("action_masks")).astype(bool)

    @torch.no_grad()
    def log_probs(self, model, obs: dict, masks: np.ndarray) -> torch.Tensor:
        """``log p(·|s)`` (nats, float32 ``[N, V]``, ``-inf`` on masked actions) at the states ``obs``
        under a :class:`~agents.policies.transformer.TransformerPolicy` ``model`` masked by ``masks`` (bool ``[N, V]``)."""
        tokens = torch.as_tensor(obs["tokens"], dtype=torch.long, device=self.device)
        length = torch.as_tensor(obs["length"], dtype=torch.long, device=self.device).reshape(-1)
        return masked_log_softmax(state_logits(model, tokens, length), torch.as_tensor(masks, device=self.device))

    def log_prob(self, model, obs: dict, masks: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """``log p(a|s)`` (nats, float64 ``[N]``) of ``actions`` (see :meth:`log_probs`)."""
        lp = self.log_probs(model, obs, masks)
        a = torch.as_tensor(actions, dtype=torch.long, device=self.device)
        return lp[torch.arange(len(a), device=self.device), a].double().cpu().numpy()


def state_logits(model, tokens: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """A :class:`~agents.policies.transformer.TransformerPolicy`'s logits ``[N, V]`` at the states
    ``tokens[:, :length]`` (LongTensors ``[N, L]``, ``[N]``): it reads ``[bos, tokens]`` at index ``length``."""
    bos = torch.full((len(tokens), 1), BOS_ID, dtype=torch.long, device=tokens.device)
    return model(torch.cat([bos, tokens], 1))[torch.arange(len(tokens), device=tokens.device), length]


class RewardTermsCallback(BaseCallback):
    """Logs the objective's terms after each rollout and, with ``kl_target``, adapts β (Ziegler et al. 2019).

    Logged: ``rollout/critic_reward_mean``, ``rollout/kl_to_init_mean`` (episodes
    ended in the rollout; nats), ``rollout/objective_mean`` (``r - β·KL`` per
    episode, β of the rollout) and ``train/beta`` (β after the update, used
    by the next rollout and, with ``exact``, by the coming PPO epochs).

    The adaptive controller (TRL's ``AdaptiveKLController``): ``β ← β (1 +
    clip((KL - KL*)/KL*, -0.2, 0.2) · n / horizon)``, ``KL`` the rollout's
    ``kl_to_init_mean`` and ``n`` its env steps. β is written to
    ``reward.beta`` and, when the policy carries the exact-KL penalty, to
    the model's ``ent_coef``.

    :param reward: the :class:`CriticKLReward` wrapper of the run.
    :param kl_target: KL* (nats per sequence) or ``None`` (β fixed).
    :param horizon: the controller's horizon in env steps.
    """

    def __init__(self, reward: CriticKLReward | None = None, kl_target: float | None = None, horizon: int = 10_000):
        super().__init__()
        self.reward, self.kl_target, self.horizon = reward, kl_target, horizon
        self._critic, self._kl = [], []

    def _on_rollout_start(self) -> None:
        self._critic, self._kl = [], []

    def _on_step(self) -> bool:
        for info in self.locals["infos"]:
            if "critic_reward" in info:
                self._critic.append(info["critic_reward"])
                self._kl.append(info["kl_to_init"])
        return True

    def _on_rollout_end(self) -> None:
        beta = self.reward.beta if self.reward is not None else None
        if self._critic:
            kl = float(np.mean(self._kl))
            self.logger.record("rollout/critic_reward_mean", float(np.mean(self._critic)))
            self.logger.record("rollout/kl_to_init_mean", kl)
            if beta is not None:
                self.logger.record("rollout/objective_mean", float(np.mean(self._critic)) - beta * kl)
            if self.kl_target is not None and self.reward is not None and beta is not None:
                ppo = self.model
                if not isinstance(ppo, MaskablePPO):
                    raise TypeError(f"the adaptive KL controller drives MaskablePPO, got {type(ppo).__name__}")
                n = ppo.n_steps * ppo.n_envs
                beta = adaptive_beta(beta, kl, self.kl_target, n, self.horizon)
                self.reward.beta = beta
                if getattr(ppo.policy, "kl_reference", None) is not None:
                    ppo.ent_coef = beta
        if beta is not None:
            self.logger.record("train/beta", beta)


def adaptive_beta(beta: float, kl: float, target: float, n_steps: int, horizon: int) -> float:
    """One step of Ziegler et al.'s adaptive KL controller (TRL ``AdaptiveKLController.update``).

    ``β (1 + clip((kl - target)/target, -0.2, 0.2) · n_steps / horizon)``.
    """
    error = min(max((kl - target) / target, -0.2), 0.2)
    return beta * (1 + error * n_steps / horizon)


@torch.no_grad()
def evaluate(policy, reference, critic, task, beta: float, num_samples: int, device, seed: int) -> dict:
    """:func:`agents.common.evaluation.evaluate_policy`'s metrics plus the objective's terms on fresh samples:

    ``critic_reward`` = mean ``r(x)`` (``critic=None``: the validity of those samples), ``kl_to_init`` = mean ``log π(τ) - log
    π0(τ)`` over the episodes' action histories τ (a Monte Carlo estimate of
    KL(π‖π0) in nats per sequence; both policies masked to the legal
    actions), and ``objective`` = ``critic_reward - beta · kl_to_init``.
    """
    metrics = evaluate_policy(policy, task, num_samples=num_samples, device=device, seed=seed)
    venv = make_vector_env(task, num_samples, device)
    res = rollout(policy, venv, seed=seed, generator=torch.Generator(device=device).manual_seed(seed), store_masks=True)
    batch = res.to_batch()
    assert res.action_masks is not None  # store_masks=True
    S = res.actions.shape[1]
    masks = torch.zeros(*batch.tokens.shape, res.action_masks.shape[-1], dtype=torch.bool, device=batch.tokens.device)
    masks[batch.is_action] = res.action_masks[torch.arange(S, device=masks.device)[None] < res.num_actions[:, None]]
    logits = (
        reference(batch.tokens).float()[:, :-1].masked_fill(~masks[:, 1:], -math.inf)
    )  # predict position t from t-1
    log_ref = F.log_softmax(logits, -1).gather(-1, batch.tokens[:, 1:, None]).squeeze(-1)
    log_ref = torch.where(batch.is_action[:, 1:], log_ref, torch.zeros_like(log_ref)).sum(1)
    kl = float((res.log_probs.sum(1) - log_ref).mean())
    states = res.sequences() if critic is not None else [p + x for p, x in zip(res.prompts(), res.sequences())]
    reward = float(critic_reward(critic, states, res.terminated.tolist(), device, task).mean())
    metrics.update(critic_reward=reward, kl_to_init=kl, objective=reward - beta * kl)
    return metrics


def make_ppo(
    cfg: PPOCriticConfig,
    reference,
    policy_config: dict,
    critic,
    task,
    device,
    score_shift: float = 0.0,
    score_scale: float = 1.0,
):
    """The MaskablePPO model of a run, its actor started at π0, with the reward wrapper and the callback.

    ``cfg.checkpoint``/``cfg.critic`` are not read (the caller loaded them).

    :param reference: π0, a :class:`~agents.policies.transformer.TransformerPolicy` on ``device``.
    :param policy_config: its ``PolicyConfig.to_dict()``.
    :param critic: see :class:`CriticKLReward` (None: the env pays ``reward="validity"`` as the score).
    :return: ``(ppo, reward, callback)``: run ``ppo.learn(n, callback=callback)``.
    """
    reward = CriticKLReward(
        SB3VecEnv(make_vector_env(task, cfg.num_envs, device, reward="validity" if critic is None else "none")),
        critic,
        reference,
        cfg.beta,
        device,
        estimator=cfg.kl_estimator,
        score_shift=score_shift,
        score_scale=score_scale,
    )
    env = VecMonitor(reward)  # episode returns in reward units; no reward normalisation (module docstring)
    exact = cfg.kl_estimator == "exact"
    ppo = MaskablePPO(
        TransformerMaskablePolicy,
        env,
        learning_rate=cfg.learning_rate,
        n_steps=cfg.n_steps,
        batch_size=cfg.batch_size,
        n_epochs=cfg.n_epochs,
        gamma=1.0,
        gae_lambda=cfg.gae_lambda,
        clip_range=cfg.clip_range,
        ent_coef=cfg.beta if exact else 0.0,
        vf_coef=cfg.vf_coef,
        max_grad_norm=cfg.max_grad_norm,
        target_kl=cfg.target_kl or None,
        normalize_advantage=cfg.normalize_advantage,
        tensorboard_log=cfg.logdir,
        policy_kwargs=dict(policy_config=policy_config),
        seed=cfg.seed,
        device=device,
    )
    policy = _policy_of(ppo)
    policy.actor.load_state_dict(reference.state_dict())  # π starts at π0
    reward.policy = policy.actor  # the log π term of the KL penalty
    if exact:
        policy.set_kl_reference(reference)  # the differentiable per-state KL penalty in the loss
    return ppo, reward, RewardTermsCallback(reward, cfg.kl_target, cfg.kl_horizon)


def _policy_of(ppo: MaskablePPO) -> TransformerMaskablePolicy:
    """The PPO run's actor-critic (SB3 types it as any actor-critic policy)."""
    if not isinstance(ppo.policy, TransformerMaskablePolicy):
        raise TypeError(f"expected a TransformerMaskablePolicy, got {type(ppo.policy).__name__}")
    return ppo.policy


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
        critic = None if cfg.critic == VALIDITY else load_critic(cfg.critic, device, task)
        run_dir.start()  # inputs read: the old run's files may go now
        return _run(cfg, device, reference, task, state, critic)


def _run(cfg: PPOCriticConfig, device, reference, task, state, critic) -> dict:
    before = evaluate(reference, reference, critic, task, cfg.beta, cfg.eval_samples, device, cfg.seed)

    shift, scale = 0.0, 1.0
    if cfg.score_norm == "frozen":  # the critic score's spread on π0 samples, measured once
        res = rollout(
            reference,
            make_vector_env(task, cfg.eval_samples, device),
            seed=cfg.seed + 1,
            generator=torch.Generator(device=device).manual_seed(cfg.seed + 1),
        )
        states = res.sequences() if critic is not None else [p + x for p, x in zip(res.prompts(), res.sequences())]
        scores = critic_reward(critic, states, res.terminated.tolist(), device, task).double()
        shift, scale = float(scores.mean()), max(float(scores.std()), 1e-6)
    ppo, reward, callback = make_ppo(cfg, reference, state["policy"]["config"], critic, task, device, shift, scale)
    ppo.learn(cfg.total_timesteps, callback=callback, tb_log_name="ppo", progress_bar=cfg.progress)
    if ppo.env is not None:
        ppo.env.close()

    actor = _policy_of(ppo).actor
    after = evaluate(actor, reference, critic, task, reward.beta, cfg.eval_samples, device, cfg.seed)
    logdir = Path(cfg.logdir)
    save_checkpoint(
        {
            "agent": "ppo",
            "task": task.spec(),
            "policy": actor.policy_spec(),
            "model": actor.state_dict(),
            "config": asdict(cfg),
            "step": int(ppo.num_timesteps),
            "learner": {"value_head": _policy_of(ppo).value_net.state_dict()},
        },
        logdir / "checkpoint.pt",
    )
    metrics = {"before": before, "after": after, "final_beta": reward.beta, "score_shift": shift, "score_scale": scale}
    (logdir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics

"""Fine-tune a policy with MaskablePPO in SeqGen-v0, reward = an NCE critic, KL penalty to the start.

    python scripts/ppo_critic.py --checkpoint runs/mle-oracle-hmm/checkpoint.pt \\
        --critic runs/nce-oracle-hmm/checkpoint.pt --total-timesteps 200000 --logdir runs/ppo-critic

``--critic validity`` uses the task's verifiable reward (1 when the checker
accepts the final text) as the score instead of a critic: PPO with the
verifiable reward, e.g.

    python scripts/ppo_critic.py --checkpoint runs/mle-py/checkpoint.pt --critic validity \\
        --beta 1 --learning-rate 2e-4 --total-timesteps 4096 --logdir runs/ppo-validity

The objective, the KL reward and what is logged: :mod:`agents.sb3.critic_reward`.
The run directory is guarded like train.py's: one that holds a run is refused
unless ``--overwrite`` (its files are deleted only after both checkpoints are
read), and a second process on it is refused while this one runs.
A bad flag or checkpoint exits with status 2 and one line ``error: ...``;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import sys

from agents.common.cli import parse_flags, run_cli
from agents.common.report import SUMMARY_COLUMNS, format_metrics_table
from agents.sb3.critic_reward import PPOCriticConfig, run


def _main(argv: list[str]) -> dict:
    cfg = parse_flags(PPOCriticConfig, argv, description=__doc__)
    metrics = run(cfg)
    columns = ("critic_reward", "kl_to_init", "objective", *SUMMARY_COLUMNS)
    print(
        format_metrics_table(
            {"start (π0)": metrics["before"], f"ppo (β={cfg.beta})": metrics["after"]}, columns=columns
        )
    )
    print(f"\nrun directory: {cfg.logdir}\nTensorBoard:   tensorboard --logdir {cfg.logdir}")
    return metrics


def main(argv: list[str] | None = None) -> dict:
    """``ppo_critic.py`` (arguments: ``sys.argv[1:]`` by default); user errors exit 2 with one line."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    main(sys.argv[1:])

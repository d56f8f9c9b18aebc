"""Trainer callbacks (SB3 keeps ``BaseCallback`` and ``EvalCallback`` in ``common/callbacks.py``).

- :class:`Callback` -- the hooks :meth:`agents.trainer.Trainer.train` calls;
  subclass it and override what you need.
- :class:`SamplesPanel` -- a TensorBoard text panel of generated episodes at
  every evaluation (the trainer always adds one).
- :class:`CriticEvalCallback` -- held-out evaluation, best-critic keeping and
  early stopping of an NCE critic (:class:`agents.nce.NCELearner` adds one to
  its ``callbacks``).

The ``trainer`` argument of every hook is the running
:class:`agents.trainer.Trainer` (this module does not import it: the trainer
imports the callbacks).
"""

from __future__ import annotations

from .report import format_episode
from .rollout import generate


class Callback:
    """Hooks into :meth:`agents.trainer.Trainer.train` (SB3-style; override what you need).

    ``on_batch(trainer, demos)`` sees each step's demonstrations before the
    loss; ``on_step_end(trainer, metrics)`` runs after each optimiser step
    (``trainer.step`` already incremented); ``on_evaluate_start(trainer)`` and
    ``on_evaluate(trainer, metrics)`` around each evaluation; ``on_train_end(trainer)`` when :meth:`Trainer.train`
    returns or stops. Time spent in callbacks is not excluded from anything.
    """

    def on_batch(self, trainer, demos) -> None:
        pass

    def on_step_end(self, trainer, metrics: dict) -> None:
        pass

    def on_evaluate_start(self, trainer) -> None:
        pass

    def on_evaluate(self, trainer, metrics: dict) -> None:
        pass

    def on_train_end(self, trainer) -> None:
        pass


class SamplesPanel(Callback):
    """At every evaluation, a TensorBoard text panel ``samples/episodes`` with a
    few generated episodes written as their actions (deleted tokens struck
    through, the backspace shown as ``⌫``) next to the final text.

    :param num_episodes: episodes per panel.
    """

    def __init__(self, num_episodes: int = 8):
        self.num_episodes = num_episodes

    def on_evaluate(self, trainer, metrics: dict) -> None:
        if trainer.writer is None:
            return
        results = generate(
            trainer.policy,
            trainer.task,
            self.num_episodes,
            device=trainer.device,
            seed=trainer.cfg.seed,
            temperature=trainer.cfg.eval_temperature,
        )
        tok = trainer.task.tokenizer
        rows = ["| episode (actions) | final text |", "|---|---|"]
        for r in results:
            for prompt, actions, final in zip(r.prompts(), r.action_lists(), r.sequences()):
                shown = format_episode(tok, actions, prompt).replace("|", "\\|")
                rows.append(f"| {shown} | `{(tok.decode(prompt) + tok.decode(final)).replace('|', '/')}` |")
        trainer.writer.add_text("samples/episodes", "\n".join(rows), trainer.step)


class CriticEvalCallback(Callback):
    """Evaluates an :class:`agents.nce.NCELearner`'s critic on held-out data
    every ``eval_every`` steps and at the last step, logs ``eval/critic_*``
    (:meth:`~agents.nce.NCELearner.evaluate_critic`), adds the latest values to
    the trainer's evaluation metrics (``metrics.json``), with ``keep_best`` or
    ``patience`` restores the critic of the lowest held-out ``critic_loss`` at
    the last step, and with ``patience`` stops the run early
    (``trainer.request_stop()``) after ``patience`` evaluations without a
    lower held-out ``critic_loss``, restoring the best critic (also at the
    last step, which is ``max_steps`` or a step where an earlier callback
    asked the trainer to stop), so that the checkpoint holds the best critic.

    :param learner: the :class:`~agents.nce.NCELearner` (read through its
        ``cfg``, ``critic``, ``evaluate_critic``, ``last_eval``,
        ``eval_history``, ``early_stop`` and ``train_policy``).
    """

    def __init__(self, learner):
        self.learner = learner

    def on_evaluate(self, trainer, metrics: dict) -> None:
        if not self.learner.last_eval:
            self.learner.evaluate_critic()
        metrics.update(self.learner.last_eval)
        metrics["critic_best_step"] = self.learner.early_stop["best_step"]

    def on_step_end(self, trainer, metrics: dict) -> None:
        learner, cfg = self.learner, self.learner.cfg
        # the last step of the run: max_steps, or a stop asked for by an earlier callback (e.g. a time limit)
        last = trainer.step >= trainer.cfg.max_steps or trainer.stop_requested
        if not (trainer.step % cfg.eval_every == 0 or last):
            return
        m = learner.evaluate_critic()
        learner.eval_history.append({"step": trainer.step, **m})
        trainer.log({f"eval/{k}": v for k, v in m.items()}, trainer.step)
        if not (cfg.patience or (cfg.keep_best and not learner.train_policy)):
            return
        es = learner.early_stop
        if es["best_loss"] is None or m["critic_loss"] < es["best_loss"]:
            es.update(
                best_loss=m["critic_loss"],
                best_step=trainer.step,
                bad_evals=0,
                best_critic={k: v.detach().clone() for k, v in learner.critic.state_dict().items()},
            )
        else:
            es["bad_evals"] += 1
        if (cfg.patience and es["bad_evals"] >= cfg.patience) or last:
            if es["best_critic"] is not None:
                learner.critic.load_state_dict(es["best_critic"])
                learner.evaluate_critic()  # last_eval = the best critic's
            if not last:
                trainer.request_stop()

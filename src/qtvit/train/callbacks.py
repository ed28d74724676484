"""Hooks into the training loop (engine.py): what tests and users' programs attach to a run instead of replacing
the loop's functions."""
from __future__ import annotations

__all__ = ["Callback", "call"]


class Callback:
    """Hooks into a run: ``train(cfg, callbacks=[...])`` calls each hook of each callback in order; override the
    ones you need. They receive the run (setup.Run: model, task, data, optimiser, ...) and its state
    (state.RunState: epoch, step, history, ...) and may read or change them. A hook that raises stops the run with
    that error; a SIGINT raised in one (``signal.raise_signal``) is a Ctrl-C: the run stops after the step, saved."""

    def on_run_start(self, run, state) -> None:
        """Set up (and resumed), before the first step."""

    def on_step_start(self, run, state) -> None:
        """Before a training step (``state.global_step`` steps done)."""

    def on_step_end(self, run, state, loss: float) -> None:
        """After a training step: `loss` is its loss, ``state.global_step`` counts it."""

    def on_epoch_end(self, run, state, row: dict) -> None:
        """After an epoch's row (scores included when it was evaluated) went to the metrics files."""

    def on_run_end(self, run, summary: dict) -> None:
        """After the run's summary (what ``train`` returns) was written."""


def call(run, hook: str, *args) -> None:
    """Each of the run's callbacks' `hook`, in order."""
    for cb in run.callbacks:
        getattr(cb, hook)(run, *args)

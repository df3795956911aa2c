"""Fault injection shared by the engine and run-log tests."""

from __future__ import annotations


def poison_baseline_loss(monkeypatch, at_step: int = 1) -> None:
    """Make the baseline's loss NaN at global step ``at_step`` (the trainer must stop there with a hint)."""
    from vireid.methods.baseline import METHOD

    original = METHOD.loss

    def poisoned(out, batch, ctx):
        loss = original(out, batch, ctx)
        if ctx.global_step == at_step:
            loss.total = loss.total * float("nan")
        return loss

    monkeypatch.setattr(METHOD, "loss", poisoned)

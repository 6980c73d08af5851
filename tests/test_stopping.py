"""The stopping rule and --retry, exercised on planted data (seconds each)."""

from __future__ import annotations

import pandas as pd

from genepanel.api import select_panel
from genepanel.config import SelectConfig
from genepanel.io import ExpressionData
from tests.conftest import planted


def _data() -> ExpressionData:
    x, genes, _, _ = planted(n=300)
    return ExpressionData(x, genes, pd.DataFrame(index=range(len(x))), "planted")


def _cfg(**train) -> SelectConfig:
    return SelectConfig(k=5, seed=1, train={"learning_rate": 0.01, "batch_size": 32, **train})


def test_training_stops_at_the_first_epoch_past_the_threshold():
    res = select_panel(_data(), _cfg(max_epochs=200, stop_threshold=0.6),
                       evaluate_baselines=False)
    fit = res.fit
    assert fit.converged and fit.stop_epoch == fit.epochs_run < 200
    probs = [h["mean_max_prob"] for h in fit.history]
    assert probs[-1] > 0.6 and all(p <= 0.6 or h["collisions"] > 0
                                   for p, h in zip(probs[:-1], fit.history[:-1], strict=True))
    assert res.run["training"]["converged"] is True


def test_retry_doubles_the_epochs_until_the_cap_of_retries():
    # 3 epochs cannot anneal far enough to pass a 0.999 threshold: every attempt fails
    res = select_panel(_data(), _cfg(max_epochs=3, stop_threshold=0.999, retry_unconverged=True,
                                     max_retries=2), evaluate_baselines=False)
    fit = res.fit
    assert not fit.converged and fit.stop_epoch is None
    assert fit.attempts == 3
    # each attempt starts afresh with twice the epochs: 3 → 6 → 12 (history keeps them all)
    assert [h["epochs"] for h in fit.history] == [3] * 3 + [6] * 6 + [12] * 12
    assert fit.epochs_run == 21
    assert "NOT CONVERGED" in res.run["training"]["status"]


def test_no_retry_by_default_and_unconverged_is_said():
    res = select_panel(_data(), _cfg(max_epochs=3, stop_threshold=0.999),
                       evaluate_baselines=False)
    assert res.fit.attempts == 1 and res.fit.epochs_run == 3 and not res.fit.converged
    status = res.run["training"]["status"]
    assert status.startswith("NOT CONVERGED") and "--anneal-steps" in status

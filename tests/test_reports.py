"""Reports that do not overclaim: guarded linear refits and the sweep's headline."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from genepanel.compare import plot_sweep, sweep_match
from genepanel.data import Preprocessor
from genepanel.evaluate import fit_linear, guarded_linear_fit
from genepanel.io import ExpressionData


def _low_rank(n: int, d: int = 60, rank: int = 4, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, rank)) @ rng.normal(size=(rank, d))
            + 0.5 * rng.normal(size=(n, d))).astype(np.float32)


def test_guarded_fit_is_least_squares_when_determined():
    x = _low_rank(200)
    panel = np.arange(5)
    fit, how = guarded_linear_fit(x, None, panel)
    assert how["fit"] == "ols"
    data = ExpressionData(x, [f"g{i}" for i in range(x.shape[1])], pd.DataFrame(), "x")
    ref = fit_linear(data, Preprocessor(kind="none").fit(data, np.arange(200)), np.arange(200),
                     {"p": panel})["p"]
    np.testing.assert_allclose(fit.coef, ref.coef, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fit.intercept, ref.intercept, rtol=1e-4, atol=1e-5)


def test_guarded_fit_regularises_or_refuses_when_genes_outnumber_rows():
    x = _low_rank(300, seed=1)
    train, val, test = x[:20], x[20:60], x[60:]
    panel = np.arange(30)  # 30 genes, 20 training rows: least squares interpolates
    fit, how = guarded_linear_fit(train, val, panel)
    assert how["fit"] == "ridge" and how["val_rows"] == 40 and how["alpha"] > 0
    assert "30 panel genes" in how["reason"] and "20 training rows" in how["reason"]
    # the minimum-norm interpolating fit is far worse on new rows than the ridge fit
    mu = train.mean(0).astype(np.float64)
    interp = np.linalg.lstsq(train[:, panel] - mu[panel], train - mu, rcond=None)[0]
    err_interp = np.mean(np.square((test[:, panel] - mu[panel]) @ interp + mu - test))
    err_ridge = np.mean(np.square(fit.predict(test[:, panel]) - test))
    assert err_ridge < 0.9 * err_interp
    # k + 1 = n rows already interpolates (the intercept takes one)
    assert guarded_linear_fit(train, val, np.arange(19))[1]["fit"] == "ridge"
    assert guarded_linear_fit(train, val, np.arange(18))[1]["fit"] == "ols"
    assert guarded_linear_fit(train, None, panel) == (None, {**{
        k: how[k] for k in ("k", "n_train", "reason")}, "fit": "refused"})


def _sweep_table(rows):
    cols = ["panel", "size", "mse_all_linear", "linear_fit", "converged"]
    return pd.DataFrame([dict(zip(cols, r, strict=True)) for r in rows])


def test_sweep_never_claims_a_match_from_unconverged_or_interpolating_panels():
    df = _sweep_table([
        ("cae_sweep", 50, 0.40, "ols", False),      # better, but not converged
        ("cae_sweep", 100, 0.30, "ridge", True),    # better, but k ≥ training rows
        ("cae_sweep", 25, 0.90, "ols", True),       # converged, worse
        ("candidate", 20, 0.95, "ols", None),
        ("reference", 891, 0.50, "ridge", None),
    ])
    m = sweep_match(df)
    assert m["smallest_matching_size"] is None
    assert "matches" not in m["text"] and "no converged swept panel" in m["text"]
    assert "50 genes: selector not converged" in m["text"]
    assert "100 genes: at least as many genes as training rows" in m["text"]
    df.loc[2, "mse_all_linear"] = 0.45
    m = sweep_match(df)
    assert m["smallest_matching_size"] == 25 and "matches" in m["text"]
    df.loc[2, "converged"] = False  # nothing left to compare: said so, no claim
    m = sweep_match(df)
    assert m["smallest_matching_size"] is None and "matches" not in m["text"]
    assert "no swept panel can be compared" in m["text"] and "25, 50 genes" in m["text"]


def test_sweep_plot_uses_a_log_axis(tmp_path, monkeypatch):
    import matplotlib.axes

    scales = []
    orig = matplotlib.axes.Axes.set_yscale
    monkeypatch.setattr(matplotlib.axes.Axes, "set_yscale",
                        lambda self, v, **kw: (scales.append(v), orig(self, v, **kw))[1])
    df = _sweep_table([
        ("cae_sweep", 50, 0.9, "ols", False), ("cae_sweep", 100, 44.6, "ols", True),
        ("cae_sweep", 200, 2.6, "ridge", True), ("candidate", 20, 0.95, "ols", None),
        ("reference", 891, 0.5, "ridge", None), ("greedy", 50, 0.7, "ols", None),
        ("greedy", 200, 3.1, "ridge", None), ("topvar", 50, 1.2, "ols", None),
    ])
    plot_sweep(df, tmp_path / "sweep.png")
    assert scales == ["log"] and (tmp_path / "sweep.png").stat().st_size > 0


@pytest.mark.parametrize("seed", [0, 1])
def test_guarded_ridge_is_stable_under_row_order(seed):
    """The ridge choice does not hinge on rounding: permuted rows give the same numbers."""
    x = _low_rank(120, seed=seed)
    train, val = x[:25], x[25:60]
    perm = np.random.default_rng(seed).permutation(25)
    a, ha = guarded_linear_fit(train, val, np.arange(40))
    b, hb = guarded_linear_fit(train[perm], val, np.arange(40))
    assert ha["alpha"] == hb["alpha"]
    np.testing.assert_allclose(a.coef, b.coef, rtol=1e-3, atol=1e-5)


def test_sweep_report_names_baselines_that_do_better():
    df = _sweep_table([
        ("cae_sweep", 25, 0.90, "ols", True), ("cae_sweep", 50, 0.45, "ols", True),
        ("greedy", 25, 0.48, "ols", None), ("greedy", 50, 0.30, "ols", None),
        ("topvar", 25, 0.95, "ols", None), ("topvar", 50, 0.60, "ridge", None),
        ("reference", 891, 0.50, "ols", None),
    ])
    m = sweep_match(df)
    assert m["smallest_matching_size"] == 50  # the headline stays about the CAE panels
    greedy = [n for n in m["baselines"] if "greedy" in n]
    assert len(greedy) == 2 and not any("top-variance" in n for n in m["baselines"])
    assert "at 25 genes" in greedy[0] and "smallest matching CAE panel (50 genes)" in greedy[0]
    assert "25 genes (0.48 vs 0.9); 50 genes (0.3 vs 0.45)" in greedy[1]
    # no CAE panel matches: a baseline that does is said to, and nothing without baselines
    df.loc[1, "converged"] = False
    m = sweep_match(df)
    assert m["smallest_matching_size"] is None
    assert any("no converged CAE panel" in n for n in m["baselines"])
    assert any("CAE not converged" in n for n in m["baselines"])
    assert sweep_match(df[~df["panel"].isin(["greedy", "topvar"])])["baselines"] == []

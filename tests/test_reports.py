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


def test_guarded_fit_is_the_gcv_refit_when_determined():
    x = _low_rank(200)
    panel = np.arange(5)
    fit, how = guarded_linear_fit(x, None, panel)
    assert how["fit"] == "gcv"
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
    assert guarded_linear_fit(train, val, np.arange(18))[1]["fit"] == "gcv"
    assert guarded_linear_fit(train, None, panel) == (None, {**{
        k: how[k] for k in ("k", "n_train", "reason")}, "fit": "refused"})


def _gcv_by_hand(xp: np.ndarray, x: np.ndarray, lam: float) -> tuple[float, float]:
    """GCV score and RSS of the ridge refit from centred ``xp`` to centred ``x``, via the
    explicit hat matrix (intercept included: ``H = 11ᵀ/n + X_P(X_PᵀX_P + λI)⁻¹X_Pᵀ``)."""
    n, k = xp.shape
    inv = np.linalg.pinv(xp.T @ xp + lam * np.eye(k))
    h = xp @ inv @ xp.T
    rss = float(np.sum(np.square(x - h @ x)))
    df = 1.0 + np.trace(h)
    return n * rss / (n - df) ** 2, rss


def test_gcv_refit_chooses_the_grid_penalty_with_the_lowest_gcv_score():
    from genepanel.evaluate import PENALTY_GRID, ridge_refit

    x = _low_rank(30, d=50, seed=3).astype(np.float64)
    xc = x - x.mean(0)
    xp = xc[:, :12]
    coef, rss, pen = ridge_refit(xp.T @ xp, xp.T @ xc, float(np.sum(xc * xc)), len(xc))
    scale = np.trace(xp.T @ xp) / 12
    scores = [_gcv_by_hand(xp, xc, rel * scale)[0] for rel in PENALTY_GRID]
    assert pen["alpha"] == PENALTY_GRID[int(np.argmin(scores))]
    assert pen["penalty"] == pytest.approx(pen["alpha"] * scale, rel=1e-9)
    want = np.linalg.solve(xp.T @ xp + pen["penalty"] * np.eye(12), xp.T @ xc)
    np.testing.assert_allclose(coef, want, rtol=1e-6, atol=1e-9)
    assert rss == pytest.approx(_gcv_by_hand(xp, xc, pen["penalty"])[1], rel=1e-8)


def test_gcv_refit_shrinks_on_few_rows_and_not_on_many():
    """Few training rows per coefficient: GCV picks a real penalty and the refit predicts
    new rows better than least squares; many rows: the penalty is negligible."""
    from genepanel.evaluate import ridge_refit

    def fit(x, panel):
        mu = x.mean(0)
        xc = x - mu
        xp = xc[:, panel]
        coef, _, pen = ridge_refit(xp.T @ xp, xp.T @ xc, float(np.sum(xc * xc)), len(xc))
        ols = np.linalg.lstsq(xp, xc, rcond=None)[0]
        return mu, coef, ols, pen

    panel = np.arange(25)
    x = _low_rank(3000, d=120, rank=4, seed=4).astype(np.float64)
    test = x[2000:]
    mu, coef, ols, pen = fit(x[:40], panel)  # 25 genes + intercept for 40 rows
    err = [np.mean(np.square((test[:, panel] - mu[panel]) @ b + mu - test)) for b in (coef, ols)]
    assert pen["alpha"] > 0.01 and err[0] < 0.8 * err[1]
    mu, coef, ols, pen = fit(x[:2000], panel)
    assert pen["alpha"] < 1e-2
    err = [np.mean(np.square((test[:, panel] - mu[panel]) @ b + mu - test)) for b in (coef, ols)]
    assert err[0] == pytest.approx(err[1], rel=2e-3)


def _sweep_table(rows):
    cols = ["panel", "size", "mse_all_linear", "linear_fit", "converged"]
    return pd.DataFrame([dict(zip(cols, r, strict=True)) for r in rows])


def test_sweep_never_claims_a_match_from_unconverged_or_interpolating_panels():
    df = _sweep_table([
        ("cae_sweep", 50, 0.40, "gcv", False),      # better, but not converged
        ("cae_sweep", 100, 0.30, "ridge", True),    # better, but k ≥ training rows
        ("cae_sweep", 25, 0.90, "gcv", True),       # converged, worse
        ("candidate", 20, 0.95, "gcv", None),
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
        ("cae_sweep", 50, 0.9, "gcv", False), ("cae_sweep", 100, 44.6, "gcv", True),
        ("cae_sweep", 200, 2.6, "ridge", True), ("candidate", 20, 0.95, "gcv", None),
        ("reference", 891, 0.5, "ridge", None), ("greedy", 50, 0.7, "gcv", None),
        ("greedy", 200, 3.1, "ridge", None), ("topvar", 50, 1.2, "gcv", None),
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
        ("cae_sweep", 25, 0.90, "gcv", True), ("cae_sweep", 50, 0.45, "gcv", True),
        ("greedy", 25, 0.48, "gcv", None), ("greedy", 50, 0.30, "gcv", None),
        ("topvar", 25, 0.95, "gcv", None), ("topvar", 50, 0.60, "ridge", None),
        ("reference", 891, 0.50, "gcv", None),
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


def test_one_scoring_pass_matches_the_direct_computation():
    """score(guarded, per_gene, decoders) = guarded refits and per-gene errors done by hand."""
    from genepanel.compare import pearson_per_gene
    from genepanel.config import SelectConfig
    from genepanel.dataset import Dataset
    from genepanel.evaluate import score

    x = _low_rank(60, d=80)
    x[:, 7] = 1.5  # a constant gene: no correlation
    data = ExpressionData(x, [f"g{i}" for i in range(80)], pd.DataFrame(index=range(60)), "x")
    ds = Dataset.build(data, SelectConfig(k=3, preprocess="none"))
    train, val, test = (x[ds.split.train], x[ds.split.val], x[ds.split.test])
    n = len(train)
    panels = {"small": np.array([0, 3, 9]), "wide": np.arange(10, 10 + n - 1)}
    scale = 2.0
    decoders = {"halved": (panels["small"], lambda xs: np.tile(xs[:, :1] / scale, (1, 80)))}
    sc = score(ds, panels, guarded=True, per_gene=True, decoders=decoders)
    assert sc.panels["small"].fit == "gcv" and sc.panels["wide"].fit == "ridge"
    for name, p in panels.items():
        fit, how = guarded_linear_fit(train, val, p)
        assert how["fit"] == sc.panels[name].fit
        pred = fit.predict(test[:, p])
        err = np.square(pred.astype(np.float64) - test)
        got = sc.panels[name].genes
        np.testing.assert_allclose(got.mse, err.mean(0), rtol=1e-4, atol=1e-7)
        assert sc.panels[name].test_mse == pytest.approx(err.mean(), rel=1e-4)
        want_r = pearson_per_gene(test, pred)
        assert np.isnan(got.pearson[7]) and np.isnan(want_r[7])
        np.testing.assert_allclose(got.pearson, want_r, rtol=1e-6, atol=1e-6)
    pred = np.tile(test[:, :1] / scale, (1, 80))
    np.testing.assert_allclose(sc.decoders["halved"].mse,
                               np.square(pred.astype(np.float64) - test).mean(0), rtol=1e-5)
    np.testing.assert_allclose(sc.test_gene_variance, test.astype(np.float64).var(0),
                               rtol=1e-6, atol=1e-9)
    # without validation rows the undetermined refit is refused, never interpolated
    ds.val = None
    refused = score(ds, {"wide": panels["wide"]}, guarded=True, per_gene=True)
    assert refused.panels["wide"].fit == "refused"
    assert np.isnan(refused.panels["wide"].test_mse) and "wide" not in refused.fits


def test_dataset_reads_each_part_once_and_greedy_is_sliced():
    from genepanel.config import SelectConfig
    from genepanel.dataset import Dataset
    from genepanel.selectors import greedy_css, greedy_panel, run_selector

    x = _low_rank(80, d=30)
    reads = []

    class Counting(ExpressionData):
        def rows(self, idx):
            reads.append(len(idx))
            return super().rows(idx)

    data = Counting(x, [f"g{i}" for i in range(30)], pd.DataFrame(index=range(80)), "x")
    ds = Dataset.build(data, SelectConfig(k=3, preprocess="none", train={
        "device_memory_budget_gb": 1e-9}))  # nothing materialised
    assert ds.train.dense is None
    before = len(reads)
    m = ds.matrix("train")
    assert len(reads) > before
    before = len(reads)
    blocks = np.concatenate([b for _, b in ds.blocks("train")])
    assert len(reads) == before  # from memory
    np.testing.assert_array_equal(blocks, m)
    assert ds.train_matrix() is m
    big = run_selector("greedy", ds, 8)
    small = run_selector("greedy", ds, 5)
    direct = greedy_css(ds.train_centred(), 5)
    np.testing.assert_array_equal(small.indices, np.sort(direct))
    assert small.seconds == big.seconds  # the one run, sliced
    assert np.array_equal(greedy_panel(ds, 5)[0], greedy_panel(ds, 8)[0][:5])

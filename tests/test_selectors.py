"""Column subset selection: greedy forward selection, the swap search, the registry."""

from __future__ import annotations

import numpy as np
import pytest

from genepanel.errors import UsageError
from genepanel.selectors import (
    centred,
    greedy_css,
    refit_objective,
    supervised_target,
    swap_alternatives,
    swap_refine,
    topvar_panel,
)


def _matrix(n=40, d=14, rank=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, rank)) @ rng.normal(size=(rank, d)) + 0.3 * rng.normal(size=(n, d))
    return centred(x + rng.normal(size=d))  # an offset per gene: the refit has an intercept


def _brute_forward(xc, k, allowed=None, include=()):
    chosen = list(include)
    cands = range(xc.shape[1]) if allowed is None else np.flatnonzero(allowed)
    while len(chosen) < k:
        best = min((c for c in cands if c not in chosen),
                   key=lambda c: refit_objective(xc, [*chosen, c]))
        chosen.append(int(best))
    return chosen


@pytest.mark.parametrize("shape", [(40, 14), (12, 30)])  # n > d (Gram) and n < d (sample space)
def test_greedy_equals_brute_force_forward_selection(shape):
    xc = _matrix(*shape)
    assert greedy_css(xc, 6).tolist() == _brute_forward(xc, 6)


def test_greedy_respects_allowed_and_include():
    xc = _matrix(seed=1)
    allowed = np.ones(14, bool)
    allowed[[0, 3, 5]] = False
    got = greedy_css(xc, 5, allowed=allowed, include=[3])
    assert got.tolist() == _brute_forward(xc, 5, allowed, include=[3])
    assert got[0] == 3 and not set(got[1:].tolist()) & {0, 5}


def test_refit_objective_is_least_squares_with_intercept():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(30, 8)) + 5.0
    panel = [1, 4]
    design = np.column_stack([np.ones(30), x[:, panel]])
    resid = x - design @ np.linalg.lstsq(design, x, rcond=None)[0]
    assert refit_objective(centred(x), panel) == pytest.approx(np.sum(resid**2), rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_swap_never_increases_and_ends_at_a_local_optimum(seed):
    xc = _matrix(n=30, d=16, seed=seed)
    start = np.random.default_rng(seed).choice(16, 4, replace=False)
    res = swap_refine(xc, start)
    assert res.converged
    assert np.all(np.diff(res.history) <= 1e-9 * res.history[0])  # objective never rises
    assert res.objective_end <= res.objective_start
    assert res.objective_end == pytest.approx(refit_objective(xc, res.panel), rel=1e-9)
    # no single swap (any panel gene for any outside gene) improves the result
    panel = res.panel.tolist()
    best_swap = min(
        refit_objective(xc, [*panel[:i], c, *panel[i + 1:]])
        for i in range(4) for c in range(16) if c not in panel
    )
    assert best_swap >= res.objective_end * (1 - 1e-9)


@pytest.mark.parametrize("shape", [(40, 14), (12, 30)])
def test_swap_alternatives_equal_brute_force_swaps(shape):
    xc = _matrix(n=shape[0], d=shape[1], seed=4)
    panel = swap_refine(xc, [0, 1, 2, 3]).panel.tolist()
    alt, inc = swap_alternatives(xc, panel, 3)
    base = refit_objective(xc, panel)
    for i in range(4):
        cost = {c: refit_objective(xc, [*panel[:i], c, *panel[i + 1:]]) / base - 1
                for c in range(shape[1]) if c not in panel}
        want = sorted(cost, key=cost.get)[:3]
        np.testing.assert_allclose(inc[i], [cost[c] for c in want], rtol=1e-6, atol=1e-9)
        assert [cost[c] for c in alt[i]] == pytest.approx([cost[c] for c in want], rel=1e-6)
    assert (inc >= -1e-9).all()  # a swap optimum: no replacement lowers the error


def test_swap_keeps_fixed_genes_and_allowed_set():
    xc = _matrix(n=30, d=16, seed=4)
    allowed = np.ones(16, bool)
    allowed[8:] = False
    res = swap_refine(xc, [0, 9, 10, 11], allowed=allowed, fixed=[9])
    assert res.panel[1] == 9  # input order kept; the fixed gene stays
    assert all(allowed[g] or g in (9, 10, 11) for g in res.panel)
    assert not ({int(g) for g in res.panel} - {9, 10, 11}) - set(range(8))


def test_swap_from_greedy_improves_or_keeps_it():
    xc = _matrix(n=50, d=25, seed=5)
    g = greedy_css(xc, 5)
    res = swap_refine(xc, g)
    assert res.objective_end <= refit_objective(xc, g) * (1 + 1e-12)


def test_duplicate_panel_and_bad_k_are_refused():
    xc = _matrix()
    with pytest.raises(UsageError):
        swap_refine(xc, [1, 1, 2])
    with pytest.raises(UsageError):
        greedy_css(xc, 0)


def test_topvar_panel():
    x = np.column_stack([np.arange(10.0) * s for s in (1, 5, 2, 4)])
    assert topvar_panel(x, 2).tolist() == [1, 3]
    assert topvar_panel(x, 2, allowed=np.array([True, False, True, True])).tolist() == [2, 3]


def _lstsq_rss(design_cols, target):
    design = np.column_stack([np.ones(len(target)), design_cols])
    resid = target - design @ np.linalg.lstsq(design, target, rcond=None)[0]
    return float(np.sum(resid**2))


def test_supervised_target_is_the_weighted_share_of_unexplained_variance():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 9)) + 2.0
    codes = rng.integers(0, 3, size=30)
    codes[4] = -1  # unlabelled row: a zero label row
    onehot = np.zeros((30, 3))
    onehot[np.flatnonzero(codes >= 0), codes[codes >= 0]] = 1.0
    w, panel = 0.3, [2, 5, 7]
    t = supervised_target(centred(x), codes, w, ridge=None)  # the unregularised form
    assert t.shape == (30, 12)
    want = ((1 - w) * _lstsq_rss(x[:, panel], x) / np.sum((x - x.mean(0)) ** 2)
            + w * _lstsq_rss(x[:, panel], onehot) / np.sum((onehot - onehot.mean(0)) ** 2))
    assert refit_objective(t, panel) == pytest.approx(want, rel=1e-9)
    with pytest.raises(UsageError):
        supervised_target(centred(x), codes, 1.0)


def test_supervised_search_never_picks_a_label_column_and_uses_the_labels():
    # Gene 0 carries the labels but little variance; genes 1.. carry the variance.
    rng = np.random.default_rng(4)
    codes = np.repeat([0, 1], 30)
    x = rng.normal(size=(60, 8)) * 3.0
    x[:, 0] = 0.2 * codes + 0.02 * rng.normal(size=60)
    t = supervised_target(centred(x), codes, 0.5)
    allowed = np.ones(8, bool)  # shorter than t's 10 columns: the labels are targets only
    g = greedy_css(t, 2, allowed=allowed)
    assert g.max() < 8 and 0 in g.tolist()
    assert 0 not in greedy_css(centred(x), 2).tolist()  # without labels it is not chosen
    s = swap_refine(t, [1, 2], allowed=allowed)
    assert s.panel.max() < 8 and 0 in s.panel.tolist()
    assert s.objective_end <= s.objective_start


def _ridge_rss(zp, target_cols, lam, in_panel, genes):
    """Σ over target columns of min_b ‖t − Z_P b‖² + λ‖b − e‖² (genes, ``e``: the column's
    own panel indicator) or + λ‖b‖² (labels): the closed form of the ridge refits."""
    m = zp.T @ zp + lam * np.eye(zp.shape[1])
    total = 0.0
    for j in range(target_cols.shape[1]):
        t = target_cols[:, j]
        e = in_panel[:, j]
        b = zp.T @ t + lam * e
        total += t @ t + lam * genes - b @ np.linalg.solve(m, b)
    return total


def test_ridge_supervised_target_is_ridge_gene_share_plus_canonical_label_share():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(40, 7)) * np.arange(1, 8) + 1.0
    codes = rng.integers(0, 4, size=40)
    w, panel, alpha = 0.4, [1, 4, 6], 3.0
    z = (x - x.mean(0)) / x.std(0)
    lam = alpha * 40
    zp = z[:, panel]
    t = supervised_target(centred(x), codes, w, ridge=alpha)
    assert t.shape == (40 + 7, 7 + 3)  # ridge rows; 4 classes whiten to 3 directions
    own = np.zeros((3, 7))
    own[np.arange(3), panel] = 1.0
    gene = _ridge_rss(zp, z, lam, own, True) / (np.sum(z**2) + lam * 7)
    onehot = np.eye(4)[codes] - np.eye(4)[codes].mean(0)
    u, s, _ = np.linalg.svd(onehot, full_matrices=False)
    yw = u[:, s > 1e-9]  # whitened labels: an orthonormal basis of the class space
    label = _ridge_rss(zp, yw, lam, np.zeros((3, 3)), False) / 3
    assert refit_objective(t, panel) == pytest.approx((1 - w) * gene + w * label, rel=1e-9)
    # Without the penalty the label share is 1 − mean squared canonical correlation.
    t0 = supervised_target(centred(x), codes, 0.999, ridge=0.0)
    q, _ = np.linalg.qr(zp - zp.mean(0))
    rho2 = np.linalg.svd(q.T @ yw, compute_uv=False) ** 2
    gene0 = _ridge_rss(zp, z, 0.0, own, True) / np.sum(z**2)
    want0 = 0.001 * gene0 + 0.999 * (1 - rho2.sum() / 3)
    assert refit_objective(t0, panel) == pytest.approx(want0, rel=1e-9)


def test_ridge_supervised_panel_measures_every_class_marker():
    """Three low-variance genes each mark one class (the last 10 of 200 cells); three
    label-free high-variance modules. The default (ridge, whitened) objective's swap
    optimum of 4 genes measures all three markers; the unregularised one-hot objective
    spends its genes on the modules and misses the rarest class's marker."""
    rng = np.random.default_rng(0)
    codes = np.repeat(np.arange(4), [120, 40, 30, 10])
    n = len(codes)
    x = np.empty((n, 26))
    for j, c in enumerate((1, 2, 3)):
        x[:, j] = 0.3 * (codes == c) + 0.1 * rng.normal(size=n)
    for m in range(3):
        f = 3.0 * rng.normal(size=n)
        x[:, 3 + 7 * m : 10 + 7 * m] = f[:, None] + rng.normal(size=(n, 7))
    x[:, 24:] = 2.0 * rng.normal(size=(n, 2))
    allowed = np.ones(26, bool)
    panels = {}
    for ridge in (3.0, None):
        t = supervised_target(centred(x), codes, 0.5, ridge=ridge)
        panels[ridge] = swap_refine(t, greedy_css(t, 4, allowed=allowed), allowed=allowed).panel
    assert {0, 1, 2} <= set(panels[3.0].tolist())
    assert 2 not in panels[None].tolist()


def test_refit_matrix_is_the_ridge_target_up_to_the_gene_cap(monkeypatch):
    import pandas as pd

    from genepanel import selectors
    from genepanel.config import SelectConfig
    from genepanel.dataset import Dataset
    from genepanel.io import ExpressionData

    rng = np.random.default_rng(6)
    x = rng.normal(size=(60, 10)).astype(np.float32)
    obs = pd.DataFrame({"t": rng.choice(["a", "b", "c"], 60)},
                       index=[f"c{i}" for i in range(60)])
    data = ExpressionData(x, [f"g{j}" for j in range(10)], obs, "tiny")
    ds = Dataset.build(data, SelectConfig(k=3, seed=0, labels="t"))
    n = len(ds.train_sample_rows())
    assert selectors.refit_matrix(ds, 0.5).shape == (n + 10, 10 + 2)  # ridge rows, whitened
    assert "ridge" in selectors.supervised_objective(ds)
    assert selectors.refit_matrix(ds, None).shape == (n, 10)  # unsupervised: unchanged
    monkeypatch.setattr(selectors, "RIDGE_MAX_GENES", 9)
    ds2 = Dataset.build(data, SelectConfig(k=3, seed=0, labels="t"))
    assert selectors.refit_matrix(ds2, 0.5).shape == (n, 10 + 3)  # unregularised one-hot
    assert "unregularised" in selectors.supervised_objective(ds2)


# --------------------------------------------------------------------------- ridge objective


def _ridge_primal(xc, panel, lam):
    xp = xc[:, list(panel)]
    b = np.linalg.solve(xp.T @ xp + lam * np.eye(len(panel)), xp.T @ xc)
    return float(np.sum(np.square(xc - xp @ b)) + lam * np.sum(b * b))


def test_ridge_objective_greedy_and_swaps_equal_brute_force():
    from genepanel.selectors import (
        ridge_greedy,
        ridge_objective,
        ridge_swap_alternatives,
        ridge_swap_refine,
    )

    xc = _matrix(n=30, d=18, rank=4, seed=2)
    xc[:, 5] = 0.0  # a constant gene never enters
    lam, k = 4.0, 4
    for panel in ([0, 1, 2, 3], [6, 9, 12, 17]):
        assert ridge_objective(xc, panel, lam) == pytest.approx(_ridge_primal(xc, panel, lam),
                                                                rel=1e-9)
    chosen = []
    for _ in range(k):
        chosen.append(min((c for c in range(18) if c not in chosen),
                          key=lambda c: _ridge_primal(xc, [*chosen, c], lam)))
    assert ridge_greedy(xc, k, lam).tolist() == chosen
    res = ridge_swap_refine(xc, [0, 1, 2, 3], lam)
    assert res.converged and res.objective_end < res.objective_start
    assert res.history[-1] == pytest.approx(res.objective_end, rel=1e-9)
    assert all(b < a for a, b in zip(res.history, res.history[1:], strict=False))
    p = res.panel.tolist()
    best = min(_ridge_primal(xc, [*p[:i], c, *p[i + 1:]], lam)
               for i in range(k) for c in range(18) if c not in p)
    assert best >= res.objective_end * (1 - 1e-9)  # a local optimum: no swap improves it
    alt, cost = ridge_swap_alternatives(xc, p, 3, lam)
    for i in range(k):
        want = sorted((_ridge_primal(xc, [*p[:i], c, *p[i + 1:]], lam), c)
                      for c in range(18) if c not in p and c != 5)[:3]
        assert alt[i].tolist() == [c for _, c in want]
        np.testing.assert_allclose(cost[i], [v / res.objective_end - 1 for v, _ in want],
                                   rtol=1e-6, atol=1e-9)


def test_search_uses_ridge_on_few_rows_and_least_squares_on_many():
    """Noisy genes, few rows per panel gene: GCV's penalty is real and the search uses
    it; nearly noise-free genes (negligible penalty) or more rows than the ridge form
    holds: least squares, as before."""
    from genepanel.selectors import (
        RIDGE_SEARCH_MAX_ROWS,
        RIDGE_SEARCH_MIN_ALPHA,
        search_penalty,
        selection_penalty,
    )

    rng = np.random.default_rng(5)
    s = rng.normal(size=(RIDGE_SEARCH_MAX_ROWS + 500, 30))  # the panel: 30 sources
    w = 0.3 * rng.normal(size=(30, 170))
    x = np.hstack([s, s @ w + rng.normal(size=(len(s), 170))])
    panel = list(range(30))
    lam, alpha = search_penalty(centred(x[:60]), panel)
    assert alpha >= RIDGE_SEARCH_MIN_ALPHA
    assert lam == selection_penalty(centred(x[:60]), panel)[0] > 0
    lam, alpha = search_penalty(centred(x), panel)  # too many rows for the ridge form
    assert lam == 0.0 and alpha >= RIDGE_SEARCH_MIN_ALPHA
    quiet = np.hstack([s, s @ w + 0.01 * rng.normal(size=(len(s), 170))])[:200]
    lam, alpha = search_penalty(centred(quiet), panel)
    assert lam == 0.0 and alpha < RIDGE_SEARCH_MIN_ALPHA


def test_ridge_search_keeps_fixed_genes_and_allowed_set():
    from genepanel.selectors import ridge_greedy, ridge_swap_refine

    xc = _matrix(n=30, d=16, seed=3)
    allowed = np.zeros(16, bool)
    allowed[8:] = True
    start = ridge_greedy(xc, 4, 2.0, allowed=allowed, include=[1])
    assert start[0] == 1 and set(start[1:]) <= set(range(8, 16))
    res = ridge_swap_refine(xc, start, 2.0, allowed=allowed, fixed=[1])
    assert 1 in res.panel and set(res.panel) - {1} <= set(range(8, 16))
    # fewer varying allowed genes than k: filled with allowed constant genes, not refused
    xc[:, [9, 10, 11]] = 0.0
    allowed[:] = False
    allowed[[2, 5, 9, 10, 11]] = True
    panel = ridge_greedy(xc, 4, 2.0, allowed=allowed)
    assert panel[:2].tolist() in ([2, 5], [5, 2]) and set(panel[2:]) <= {9, 10, 11}
    with pytest.raises(UsageError, match="only 5 genes may enter"):
        ridge_greedy(xc, 6, 2.0, allowed=allowed)

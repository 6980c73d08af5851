"""Held-out metrics: refit linear regression from a panel, baseline panels, the PCA bound.

All metrics are mean squared errors over every entry of the preprocessed test matrix
(``‖X̂ − X‖²_F / (n·d)``, the paper's metric). Data are streamed in row batches, so a
sparse matrix is never densified whole. :func:`score` is the one scoring function of
``select``, ``benchmark`` and ``compare-landmarks``: every panel, the PCA bound, (with
labels) ExtraTrees accuracy, (on request) per-gene errors, guarded refits and already
fitted decoders, from one pass over the training rows and one over the test rows of a
:class:`~genepanel.dataset.Dataset`, returned as :class:`Scores`. :func:`fit_linear` and
:func:`linear_test_mse` stay for callers that hold no ``Dataset`` (benchmark scripts).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from genepanel.data import Preprocessor, block_rows, sample_rows
from genepanel.io import ExpressionData


@dataclass
class LinearFit:
    """The linear refit ``X ≈ X[:, panel] @ coef + intercept`` (see :func:`ridge_refit`).

    ``coef`` is ``[k, d]`` and ``intercept`` ``[d]``, on the preprocessed scale.
    """

    panel: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray

    def predict(self, xs: np.ndarray) -> np.ndarray:
        """Reconstruct ``[b, d]`` from panel values ``xs`` ``[b, k]``."""
        return xs @ self.coef + self.intercept


def _batches(data: ExpressionData, pre: Preprocessor, rows: np.ndarray, batch: int):
    batch = block_rows(data.shape[1], batch)
    for i in range(0, len(rows), batch):
        yield pre.transform(data.rows(rows[i : i + batch]))


def fit_linear(
    data: ExpressionData,
    pre: Preprocessor,
    rows: np.ndarray,
    panels: dict[str, np.ndarray],
    batch: int = 2048,
) -> dict[str, LinearFit]:
    """Fit one linear regression per panel on ``rows`` in a single pass over the data.

    The sufficient statistics (sums, ``XᵤᵀXᵤ`` and ``XᵤᵀX`` for the union ``u`` of all
    panels' genes) are accumulated in float64; each panel's refit is then solved from
    them (:func:`ridge_refit`: ridge with the penalty chosen by generalised
    cross-validation on these rows, 0 = least squares; a rank-deficient panel, with
    duplicated or constant genes, gets the minimum-norm solution).
    """
    union = np.unique(np.concatenate([np.asarray(p, np.int64) for p in panels.values()]))
    blocks = ((None, xb) for xb in _batches(data, pre, rows, batch))
    mom = _train_moments(blocks, data.shape[1], union, None)
    return {name: _refit(mom, panel)[0] for name, panel in panels.items()}


def guarded_linear_fit(
    x_train: np.ndarray, x_val: np.ndarray | None, panel: np.ndarray
) -> tuple[LinearFit | None, dict]:
    """A linear refit from ``panel`` that never interpolates the training rows.

    ``x_train`` ``[n, d]`` and ``x_val`` ``[m, d]`` are preprocessed dense rows. With
    fewer parameters per gene than training rows (``k + 1 < n``: k panel genes and an
    intercept) this is the refit of :func:`ridge_refit` (``fit = "gcv"``). Otherwise
    least squares interpolates the training rows and its test error says nothing about
    the panel, so the fit is ridge regression with the strength chosen on the validation
    rows (``fit = "ridge"``, ``alpha`` relative to the mean squared singular value of the
    centred panel matrix), or refused (``(None, {"fit": "refused", ...})``) without
    validation rows. The second element describes the choice (JSON-able).
    """
    x = np.asarray(x_train, np.float64)
    idx = np.asarray(panel)
    n, k = len(x), len(idx)
    mu = x.mean(0)
    xc = x - mu
    info: dict = {"fit": "gcv", "k": k, "n_train": n}
    if k + 1 < n:
        xp = xc[:, idx]
        coef, _, pen = ridge_refit(xp.T @ xp, xp.T @ xc, float(np.einsum("ij,ij->", xc, xc)), n)
        info.update(pen)
    else:
        info["reason"] = f"{k} panel genes + intercept for {n} training rows"
        if x_val is None or len(x_val) < 2:
            return None, {**info, "fit": "refused"}
        u, s, vt = scipy.linalg.svd(xc[:, idx], full_matrices=False)
        keep = s > s[0] * 1e-10 if len(s) and s[0] > 0 else np.zeros(len(s), bool)
        u, s, vt = u[:, keep], s[keep], vt[keep]
        uty = u.T @ xc
        v = np.asarray(x_val, np.float64)
        pv = (v[:, idx] - mu[idx]) @ vt.T
        scale = float(np.mean(s**2)) if len(s) else 1.0
        best = (np.inf, 0.0)
        for rel in 10.0 ** np.arange(-6.0, 3.5, 0.5):
            f = s / (s**2 + rel * scale)
            err = float(np.mean(np.square((pv * f) @ uty + mu - v)))
            best = min(best, (err, float(rel)))
        info.update(fit="ridge", alpha=best[1], ridge_lambda=best[1] * scale,
                    val_rows=len(v), val_mse=best[0])
        coef = vt.T @ ((s / (s**2 + best[1] * scale))[:, None] * uty)
    intercept = mu - mu[idx] @ coef
    return LinearFit(idx, coef.astype(np.float32), intercept.astype(np.float32)), info


def linear_test_mse(
    data: ExpressionData,
    pre: Preprocessor,
    rows: np.ndarray,
    fits: dict[str, LinearFit],
    batch: int = 2048,
) -> dict[str, float]:
    """Test MSE of each fitted panel regression over ``rows`` (one pass)."""
    test = _TestPass(data.shape[1], {name: (f.panel, f.predict) for name, f in fits.items()},
                     per_gene=False)
    test.run(((None, xb) for xb in _batches(data, pre, rows, batch)), None)
    return {name: err.mse_all(test.m) for name, err in test.errors.items()}


def random_panels(d: int, k: int, seed: int, n: int) -> list[np.ndarray]:
    """``n`` random panels of ``k`` distinct genes out of ``d``."""
    rng = np.random.default_rng([seed, 11])
    return [np.sort(rng.choice(d, k, replace=False)) for _ in range(n)]


def hvg_panel(
    data: ExpressionData, pre: Preprocessor, rows: np.ndarray, k: int, max_rows: int = 20000,
    seed: int = 0,
) -> tuple[np.ndarray, str]:
    """The ``k`` most highly variable genes of the training rows (scanpy).

    The selection uses the per-sample part of the preprocessing (normalise + log1p
    when chosen), not the per-gene z-score, after which every gene has variance 1.
    scanpy's ``seurat`` flavour is used on log-scale non-negative data, ``cell_ranger``
    on other non-negative data, and the plain variance ranking when values are negative.
    At most ``max_rows`` training rows (a random subset) are used, so that memory
    stays bounded on large inputs. Returns the gene indices and a description.
    """
    import anndata as ad
    import scanpy as sc

    rows = sample_rows(rows, max_rows, seed, 13)
    row_pre = Preprocessor(kind="log1p" if pre.uses_log1p else "none", target_sum=pre.target_sum)
    # Sparse input stays sparse here: scanpy computes dispersions on CSR directly.
    x = _row_transformed(data, row_pre, rows)
    values = x.data if sp.issparse(x) else x
    lo, hi = float(values.min(initial=0.0)), float(values.max(initial=0.0))
    if lo < 0:
        var = np.asarray(x.var(axis=0)).ravel()
        return np.sort(np.argsort(-var, kind="stable")[:k]), "top variance (negative values)"
    flavor = "seurat" if hi <= 30 else "cell_ranger"
    adata = ad.AnnData(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            sc.pp.highly_variable_genes(adata, n_top_genes=k, flavor=flavor, subset=False)
        except (ValueError, IndexError):
            var = np.asarray(x.var(axis=0) if not sp.issparse(x) else
                             x.multiply(x).mean(0) - np.square(x.mean(0))).ravel()
            return np.sort(np.argsort(-var, kind="stable")[:k]), "top variance (scanpy failed)"
    norm = adata.var["dispersions_norm"].to_numpy()
    norm = np.where(np.isfinite(norm), norm, -np.inf)
    idx = np.argsort(-norm, kind="stable")[:k]
    return np.sort(idx), f"scanpy highly_variable_genes flavor={flavor}"


def _row_transformed(
    data: ExpressionData, row_pre: Preprocessor, rows: np.ndarray
) -> np.ndarray | sp.csr_matrix:
    """Rows after the per-sample preprocessing; CSR stays CSR (never densified whole)."""
    if not data.is_sparse:
        return np.concatenate(list(_batches(data, row_pre, rows, 4096)))
    x = sp.csr_matrix(data.rows(rows), dtype=np.float32)
    if row_pre.uses_log1p:
        totals = np.asarray(x.sum(axis=1), np.float64).ravel()
        scale = np.divide(row_pre.target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
        x = sp.csr_matrix(sp.diags(scale.astype(np.float32)) @ x)
        x.data = np.log1p(x.data)
    return x


# --------------------------------------------------------------------------- one scoring pass


@dataclass(frozen=True)
class GeneErrors:
    """Held-out errors of one reconstruction, gene by gene (``[d]`` arrays).

    ``pearson`` is NaN where the gene or its prediction is constant on the test rows.
    """

    mse: np.ndarray
    pearson: np.ndarray


@dataclass(frozen=True)
class PanelScore:
    """Held-out score of one panel.

    ``determined`` is False when the panel has at least as many genes as there are
    training rows minus one: the refit (``k`` coefficients and an intercept) is then not
    determined by the data, its error says nothing about the panel, and comparisons
    leave it out. ``fit`` says how the refit was solved: ``gcv`` (:func:`ridge_refit`:
    ridge, penalty chosen by GCV on the training rows, 0 = least squares), ``ridge`` or
    ``refused`` (``guarded`` scoring of an undetermined panel, see
    :func:`guarded_linear_fit`: penalty chosen on the validation rows, or no fit).
    ``fit_info`` holds its record (``penalty``/``alpha`` for ``gcv``; NaN errors when
    refused).
    ``genes`` holds the per-gene errors when they were asked for.
    """

    name: str
    indices: np.ndarray
    test_mse: float
    train_mse: float
    determined: bool
    accuracy: float | None = None
    fit: str = "gcv"
    fit_info: dict | None = None
    genes: GeneErrors | None = None


@dataclass(frozen=True)
class BoundScore:
    """The PCA bound: best rank-``k`` affine reconstruction fitted on the training rows."""

    test_mse: float
    components: int
    fit_rows: int


@dataclass
class Scores:
    """What :func:`score` returns: every panel's held-out scores and the reference points.

    ``decoders`` scores the extra decoders passed to :func:`score` (per gene);
    ``test_gene_variance`` is each gene's variance over the test rows (with ``per_gene``).
    """

    panels: dict[str, PanelScore]
    fits: dict[str, LinearFit]
    pca: BoundScore | None
    test_variance: float
    n_train: int
    n_test: int
    accuracy_info: dict | None = None
    decoders: dict[str, GeneErrors] = field(default_factory=dict)
    test_gene_variance: np.ndarray | None = None

    def mse(self, name: str) -> float:
        """Held-out linear refit MSE of panel ``name``."""
        return self.panels[name].test_mse


#: A decoder to score: the panel genes it reads and ``[b, k]`` panel values → ``[b, d]``.
Decoder = tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]


def score(
    ds,
    panels: dict[str, np.ndarray],
    *,
    pca_k: int | None = None,
    labels: np.ndarray | None = None,
    seed: int = 0,
    guarded: bool = False,
    per_gene: bool = False,
    decoders: dict[str, Decoder] | None = None,
) -> Scores:
    """Score every panel the same way, in one pass over training and one over test rows.

    Each panel gets a linear refit (with intercept) from its genes to every gene, fitted
    on all training rows of ``ds`` (:func:`ridge_refit`: ridge regression, its penalty
    chosen by generalised cross-validation on the training rows, 0 = least squares) (a
    :class:`~genepanel.dataset.Dataset`), and its mean squared error over every entry of
    the preprocessed test rows (and of the training rows). With ``pca_k`` the PCA bound
    of that rank is added, fitted on :meth:`~genepanel.dataset.Dataset.train_matrix`.
    With ``labels`` (strings, ``""`` missing, one per data row) each panel also gets the
    test accuracy of an ExtraTrees classifier on its genes.

    With ``guarded`` an undetermined panel (``k + 1 ≥`` training rows) is refitted with
    ridge regression chosen on the validation rows, or refused without them
    (:func:`guarded_linear_fit`), instead of the GCV-chosen refit.
    With ``per_gene`` every panel also gets :class:`GeneErrors`. ``decoders`` (already
    fitted, by name) are scored per gene on the same test pass.
    """
    d = ds.n_genes
    union = np.unique(np.concatenate([np.asarray(p, np.int64) for p in panels.values()]))
    mom = _train_moments(ds.blocks("train"), d, union, labels)
    fits, train_mse, how = _linear_fits(ds, mom, panels, guarded=guarded)
    pca_model, fit_rows = _pca(ds, pca_k, seed) if pca_k is not None else (None, 0)
    predictors = {name: (fit.panel, fit.predict) for name, fit in fits.items()}
    predictors.update(decoders or {})
    test = _TestPass(d, predictors, per_gene=per_gene or bool(decoders))
    test.run(ds.blocks("test"), pca_model, union if labels is not None else None, labels)
    m = test.m
    pca = (BoundScore(test.pca_sse / (m * d), pca_model.n_components_, fit_rows)
           if pca_model is not None else None)
    acc: dict[str, float] = {}
    info = None
    if labels is not None:
        acc, info = _panel_accuracies(ds, panels, labels, mom.lab, test.lab,
                                      np.searchsorted(union, np.arange(d)), seed)
    out = {}
    for name, p in panels.items():
        err = test.errors.get(name)
        out[name] = PanelScore(
            name, np.asarray(p), err.mse_all(m) if err else float("nan"), train_mse[name],
            determined=len(p) < mom.n - 1, accuracy=acc.get(name), fit=how[name]["fit"],
            fit_info=how[name],
            genes=(err.genes(test) if err else _nan_genes(d)) if per_gene else None)
    return Scores(out, fits, pca, test.test_variance(), mom.n, m, info,
                  decoders={name: test.errors[name].genes(test) for name in decoders or {}},
                  test_gene_variance=test.gene_variance() if per_gene else None)


@dataclass
class _Moments:
    """Sums over the training rows from which every panel's refit is solved.

    ``uu``/``ux`` are ``XᵤᵀXᵤ``/``XᵤᵀX`` for the union ``u`` of the panels' genes
    (``pos`` maps a gene to its place in ``u``); ``ss_x`` the total centred sum of squares.
    """

    union: np.ndarray
    pos: np.ndarray
    n: int
    mu_u: np.ndarray
    mu_x: np.ndarray
    uu: np.ndarray
    ux: np.ndarray
    ss_x: float
    lab: list[np.ndarray]


def _train_moments(
    blocks: Iterable[tuple[Any, np.ndarray]], d: int, union: np.ndarray,
    labels: np.ndarray | None,
) -> _Moments:
    """One pass over ``(data rows, [b, d] rows)`` blocks of the training rows.

    With ``labels`` the labelled rows' panel genes are kept too (for the accuracies).
    """
    s_u, s_x, s_xx = np.zeros(len(union)), np.zeros(d), np.zeros(d)
    uu = np.zeros((len(union), len(union)))
    ux = np.zeros((len(union), d))
    lab: list[np.ndarray] = []
    n = 0
    for rows, xb in blocks:
        xb64 = xb.astype(np.float64)
        xu = xb64[:, union]
        s_u += xu.sum(0)
        s_x += xb64.sum(0)
        s_xx += np.einsum("ij,ij->j", xb64, xb64)
        uu += xu.T @ xu
        ux += xu.T @ xb64
        n += len(xb)
        if labels is not None:
            lab.append(xb[labels[rows] != ""][:, union])
    mu_x = s_x / n
    return _Moments(union, np.searchsorted(union, np.arange(d)), n, s_u / n, mu_x, uu, ux,
                    float(np.sum(s_xx - n * mu_x * mu_x)), lab)


def _linear_fits(
    ds, mom: _Moments, panels: dict[str, np.ndarray], *, guarded: bool
) -> tuple[dict[str, LinearFit], dict[str, float], dict[str, dict]]:
    """Each panel's refit from the training moments: fits, training MSE, how it was fitted."""
    n = mom.n
    fits: dict[str, LinearFit] = {}
    train_mse: dict[str, float] = {}
    how: dict[str, dict] = {}
    for name, panel in panels.items():
        if guarded and len(panel) + 1 >= n:
            x = ds.matrix("train")
            fit, how[name] = guarded_linear_fit(x, ds.matrix("val") if ds.val else None, panel)
            train_mse[name] = (float(np.mean(np.square(fit.predict(x[:, fit.panel]) - x)))
                               if fit is not None else float("nan"))
            if fit is not None:
                fits[name] = fit
            continue
        fits[name], train_mse[name], pen = _refit(mom, panel)
        how[name] = {"fit": "gcv", "k": len(panel), "n_train": n, **pen}
    return fits, train_mse, how


#: Ridge penalties the refit chooses among, relative to the mean eigenvalue of the
#: panel's centred training covariance (``trace / k``); 0 is least squares.
PENALTY_GRID = np.concatenate([[0.0], 10.0 ** np.arange(-6.0, 3.01, 0.25)])


def _live(e: np.ndarray) -> np.ndarray:
    """Eigenvalues that carry variance (the others are rounding of a rank deficit)."""
    return e > max(float(e.max(initial=0.0)), 1e-300) * 1e-10


def _ridge_rss(
    e: np.ndarray, c2: np.ndarray, ss: float, lam: float, live: np.ndarray
) -> tuple[float, float]:
    """RSS and degrees of freedom (intercept included) of the ridge refit with ``λ``."""
    el = e[live]
    keep = 1.0 - (lam / (el + lam)) ** 2 if lam > 0 else np.ones_like(el)
    rss = max(ss - float(np.sum(keep * c2[live] / el)), 0.0)
    return rss, 1.0 + float(np.sum(el / (el + lam)))


def gcv_penalty(e: np.ndarray, c2: np.ndarray, ss: float, n: int) -> tuple[float, float]:
    """The ridge penalty of :data:`PENALTY_GRID` with the lowest GCV score: ``(λ, λ/scale)``.

    ``e``: eigenvalues of the panel's centred training covariance ``X_PᵀX_P``; ``c2``:
    squared norms of the rows of ``QᵀX_PᵀX`` (``Q`` its eigenvectors, ``X`` every gene,
    centred); ``ss``: ``‖X‖²``; ``n``: training rows. Generalised cross-validation
    (Golub, Heath & Wahba 1979) scores a penalty ``λ`` by ``n · RSS(λ) / (n − df(λ))²``,
    ``df = 1 + Σ e/(e + λ)`` (the intercept counts 1): an estimate of the leave-one-out
    error from the training rows alone, so the test rows never choose it. With many
    more training rows than panel genes it is close to 0 (least squares); with few, it
    shrinks the refit of genes the panel barely explains instead of fitting their noise.
    """
    e = np.asarray(e, np.float64)
    live = _live(e)
    scale = float(e[live].mean()) if live.any() else 1.0
    best = (np.inf, 0.0, 0.0)
    for rel in PENALTY_GRID:
        lam = rel * scale
        rss, df = _ridge_rss(e, c2, ss, lam, live)
        if n - df <= 0:
            continue
        gcv = n * rss / (n - df) ** 2
        if gcv < best[0]:
            best = (gcv, lam, float(rel))
    return best[1], best[2]


def ridge_refit(
    cov: np.ndarray, cross: np.ndarray, ss: float, n: int
) -> tuple[np.ndarray, float, dict[str, float]]:
    """Coefficients ``[k, d]`` of the refit from centred moments, its RSS and its penalty.

    ``cov = X_PᵀX_P`` and ``cross = X_PᵀX`` (centred training rows), ``ss = ‖X‖²``. The
    penalty is :func:`gcv_penalty`'s; directions of ``cov`` with no variance get no
    weight (the minimum-norm solution at ``λ = 0``).
    """
    e, q = np.linalg.eigh(cov)
    c = q.T @ cross
    c2 = np.einsum("ij,ij->i", c, c)
    lam, rel = gcv_penalty(e, c2, ss, n)
    live = _live(e)
    inv = np.zeros_like(e)
    inv[live] = 1.0 / (e[live] + lam)
    coef = q @ (inv[:, None] * c)
    return coef, _ridge_rss(e, c2, ss, lam, live)[0], {"penalty": lam, "alpha": rel}


def _refit(mom: _Moments, panel: np.ndarray) -> tuple[LinearFit, float, dict[str, float]]:
    """The refit from ``panel`` (:func:`ridge_refit`), its training MSE and its penalty.

    Ridge with the GCV penalty, 0 = least squares (minimum-norm when rank-deficient).
    """
    n, d = mom.n, len(mom.mu_x)
    sel = mom.pos[np.asarray(panel, np.int64)]
    cov = mom.uu[np.ix_(sel, sel)] - n * np.outer(mom.mu_u[sel], mom.mu_u[sel])
    cross = mom.ux[sel] - n * np.outer(mom.mu_u[sel], mom.mu_x)
    coef, rss, pen = ridge_refit(cov, cross, mom.ss_x, n)
    fit = LinearFit(np.asarray(panel), coef.astype(np.float32),
                    (mom.mu_x - mom.mu_u[sel] @ coef).astype(np.float32))
    return fit, rss / (n * d), pen


def _pca(ds, k: int, seed: int) -> tuple[Any, int]:
    """The PCA bound's model of rank ``k``, fitted on the dense training rows."""
    from sklearn.decomposition import PCA

    xfit = ds.train_matrix()
    return PCA(n_components=int(min(k, len(xfit), ds.n_genes)),
               random_state=seed).fit(xfit), len(xfit)


class _Errors:
    """Running sums of one reconstruction's errors over the test rows.

    A scalar sum of squared errors, or (``per_gene``) per-gene sums from which each
    gene's MSE and the Pearson correlation of prediction and truth follow.
    """

    def __init__(self, d: int, *, per_gene: bool):
        self.d, self.per_gene = d, per_gene
        self.sse: Any = np.zeros(d) if per_gene else 0.0
        if per_gene:
            self.p1, self.p2, self.tp = np.zeros(d), np.zeros(d), np.zeros(d)

    def add(self, pred: np.ndarray, xb: np.ndarray, xb64: np.ndarray) -> None:
        """Add one block: predictions and truth ``[b, d]`` (float32 and float64)."""
        if not self.per_gene:
            self.sse += float(np.sum(np.square(pred - xb)))
            return
        p = np.asarray(pred, np.float64)
        self.sse += np.einsum("ij,ij->j", p - xb64, p - xb64)
        self.p1 += p.sum(0)
        self.p2 += np.einsum("ij,ij->j", p, p)
        self.tp += np.einsum("ij,ij->j", p, xb64)

    def mse_all(self, m: int) -> float:
        """Mean over every test entry (``m`` rows × d genes)."""
        return float(np.sum(self.sse)) / (m * self.d)

    def genes(self, test: _TestPass) -> GeneErrors:
        """Per-gene MSE and Pearson r, given the pass's truth moments."""
        m = test.m
        vt = test.t2 - test.t1 * test.t1 / m
        vp = self.p2 - self.p1 * self.p1 / m
        cov = self.tp - test.t1 * self.p1 / m
        # relative thresholds: a constant column's centred sum is rounding noise
        ok = ((vt > 1e-12 * test.t2) & (vp > 1e-12 * self.p2)
              & (np.sqrt(np.clip(vt * vp, 0, None)) > 1e-12))
        r = np.full(len(vt), np.nan)
        r[ok] = cov[ok] / np.sqrt(vt[ok] * vp[ok])
        return GeneErrors(self.sse / m, np.clip(r, -1.0, 1.0))


def _nan_genes(d: int) -> GeneErrors:
    return GeneErrors(np.full(d, np.nan), np.full(d, np.nan))


class _TestPass:
    """One pass over the test rows: every predictor's errors, the PCA bound, moments."""

    def __init__(self, d: int, predictors: dict[str, Decoder], *, per_gene: bool):
        self.predictors = predictors
        self.errors = {name: _Errors(d, per_gene=per_gene) for name in predictors}
        self.pca_sse = 0.0
        self.t1, self.t2 = np.zeros(d), np.zeros(d)
        self.m = 0
        self.lab: list[np.ndarray] = []

    def run(
        self, blocks: Iterable[tuple[Any, np.ndarray]], pca_model: Any,
        union: np.ndarray | None = None, labels: np.ndarray | None = None,
    ) -> None:
        """Read the test rows once, in ``(data rows, [b, d] rows)`` blocks."""
        for rows, xb in blocks:
            xb64 = xb.astype(np.float64)
            for name, (idx, predict) in self.predictors.items():
                self.errors[name].add(predict(xb[:, idx]), xb, xb64)
            if pca_model is not None:
                self.pca_sse += float(np.sum(np.square(
                    pca_model.inverse_transform(pca_model.transform(xb)) - xb)))
            self.t1 += xb64.sum(0)
            self.t2 += np.einsum("ij,ij->j", xb64, xb64)
            self.m += len(xb)
            if labels is not None:
                self.lab.append(xb[labels[rows] != ""][:, union])

    def gene_variance(self) -> np.ndarray:
        """Each gene's variance over the test rows."""
        mean = self.t1 / self.m
        return self.t2 / self.m - mean * mean

    def test_variance(self) -> float:
        """Mean per-gene variance over the test rows."""
        return float(np.mean(self.gene_variance()))


def _panel_accuracies(ds, panels, labels, lab_tr, lab_te, pos, seed):
    from genepanel.baselines import extra_trees_accuracy

    y_tr = labels[ds.split.train][labels[ds.split.train] != ""]
    y_te = labels[ds.split.test][labels[ds.split.test] != ""]
    if len(y_te) == 0 or len(np.unique(y_tr)) < 2:
        return {}, None
    xtr, xte = np.concatenate(lab_tr), np.concatenate(lab_te)
    acc = {name: extra_trees_accuracy(xtr[:, pos[np.asarray(p)]], y_tr,
                                      xte[:, pos[np.asarray(p)]], y_te, seed=seed)
           for name, p in panels.items()}
    info = {"n_train": len(y_tr), "n_test": len(y_te), "n_classes": len(np.unique(y_tr)),
            "classifier": "sklearn ExtraTreesClassifier(n_estimators=50)"}
    return acc, info

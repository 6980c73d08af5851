"""Baseline feature selectors the concrete autoencoder is compared with, and their scores.

Every selector takes a dense, preprocessed training matrix ``x`` of shape
``[n_samples, n_genes]`` and returns the sorted indices of ``k`` distinct genes:

- :func:`laplacian_panel`: the Laplacian score (He, Cai & Niyogi, NIPS 2005) on a
  k-nearest-neighbour heat-kernel graph of the samples; genes that vary smoothly over
  the graph (and have variance) rank first.
- :func:`pfa_panel`: principal feature analysis (Lu, Cohen, Zhou & Tian, ACM MM 2007):
  cluster the genes' PCA loading vectors into ``k`` clusters with k-means and keep, per
  cluster, the gene nearest its centroid.
- random panels and highly variable genes live in :mod:`genepanel.evaluate`
  (:func:`~genepanel.evaluate.random_panels`, :func:`~genepanel.evaluate.hvg_panel`),
  the PCA bound in :func:`genepanel.evaluate.score`; greedy subset selection, the swap
  search and top-variance genes in :mod:`genepanel.selectors`, which registers all of
  them.

:func:`extra_trees_accuracy` scores a panel by held-out classification accuracy of an
extremely randomised trees classifier (Geurts et al. 2006), as in the paper's Table 2.

Genes that are constant on the training rows carry no information; both selectors
leave them out (unless fewer than ``k`` genes vary, when they fill the panel last).
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp

from genepanel.data import sample_rows
from genepanel.errors import DataError, UsageError

#: Standard deviation below which a gene counts as constant.
CONSTANT_TOL = 1e-8


def _check_k(x: np.ndarray, k: int) -> None:
    if x.ndim != 2:
        msg = f"expected a 2-D samples × genes matrix, got shape {x.shape}"
        raise DataError(msg)
    if not 1 <= k <= x.shape[1]:
        msg = f"k must be between 1 and the number of genes ({x.shape[1]}), got {k}"
        raise UsageError(msg)


def _subsample(x: np.ndarray, max_rows: int | None, seed: int) -> np.ndarray:
    if max_rows is None or x.shape[0] <= max_rows:
        return x
    return x[sample_rows(np.arange(x.shape[0]), max_rows, seed, 0x1A9)]


def _fill(chosen: np.ndarray, order: np.ndarray, k: int) -> np.ndarray:
    """Complete ``chosen`` to ``k`` distinct genes from ``order`` (best first); sort."""
    chosen = list(dict.fromkeys(int(g) for g in chosen))
    seen = set(chosen)
    for g in order:
        if len(chosen) >= k:
            break
        if int(g) not in seen:
            chosen.append(int(g))
            seen.add(int(g))
    return np.sort(np.asarray(chosen[:k], dtype=np.int64))


# --------------------------------------------------------------------------- Laplacian score


def knn_heat_graph(
    x: np.ndarray, n_neighbors: int = 5, t: float | None = None
) -> sp.csr_matrix:
    """Symmetric k-nearest-neighbour graph of the rows of ``x`` with heat-kernel weights.

    Parameters
    ----------
    x
        ``[n, d]`` samples.
    n_neighbors
        Neighbours per sample (the sample itself excluded). He et al. use 5.
    t
        Heat-kernel width: an edge of squared length ``δ`` gets weight ``exp(-δ / t)``.
        ``None`` uses the mean squared length of the graph's edges.

    Returns
    -------
    scipy.sparse.csr_matrix
        ``[n, n]`` weights ``W``; ``W[i, j] > 0`` when ``j`` is among the neighbours of
        ``i`` or ``i`` among those of ``j``.
    """
    from sklearn.neighbors import NearestNeighbors

    n = x.shape[0]
    m = int(min(n_neighbors, n - 1))
    if m < 1:
        msg = f"the Laplacian score needs at least 2 samples, got {n}"
        raise DataError(msg)
    nn = NearestNeighbors(n_neighbors=m + 1).fit(x)
    dist, idx = nn.kneighbors(x)
    # Drop each sample's own entry (the nearest one, or any one at distance 0 when the
    # sample has exact duplicates): keep the m neighbours that are not the sample itself.
    not_self = idx != np.arange(n)[:, None]
    keep = np.cumsum(not_self, axis=1) <= m
    keep &= not_self
    rows = np.repeat(np.arange(n), keep.sum(axis=1))
    cols = idx[keep]
    d2 = np.square(dist[keep]).astype(np.float64)
    if t is None:
        t = float(d2.mean()) if d2.size and d2.mean() > 0 else 1.0
    w = sp.csr_matrix((np.exp(-d2 / t), (rows, cols)), shape=(n, n))
    return w.maximum(w.T).tocsr()


def laplacian_score(
    x: np.ndarray,
    n_neighbors: int = 5,
    t: float | None = None,
    graph: sp.spmatrix | None = None,
) -> np.ndarray:
    """Compute the Laplacian score of every gene (lower is better).

    For gene values ``f`` (a column of ``x``), graph weights ``W``, degree matrix
    ``D = diag(W 1)`` and Laplacian ``L = D − W``, the score is
    ``f̃ᵀ L f̃ / f̃ᵀ D f̃`` with ``f̃ = f − (fᵀD1 / 1ᵀD1) 1`` (He et al. 2005, eq. 4):
    small when neighbouring samples have similar values relative to the gene's
    degree-weighted variance. Computed for all genes at once with sparse products.

    Parameters
    ----------
    x
        ``[n, d]`` preprocessed training samples.
    n_neighbors, t
        Graph parameters, see :func:`knn_heat_graph` (ignored when ``graph`` is given).
    graph
        A precomputed ``[n, n]`` symmetric weight matrix.

    Returns
    -------
    numpy.ndarray
        ``[d]`` float64 scores in ``[0, 2]``; ``inf`` for genes constant on the samples.
    """
    x = np.asarray(x, dtype=np.float64)
    w = knn_heat_graph(x, n_neighbors, t) if graph is None else sp.csr_matrix(graph)
    deg = np.asarray(w.sum(axis=1)).ravel()
    f = x - (deg @ x) / deg.sum()
    dterm = np.einsum("i,ij,ij->j", deg, f, f)
    wterm = np.einsum("ij,ij->j", f, w @ f)
    score = np.full(x.shape[1], np.inf)
    ok = dterm > CONSTANT_TOL**2 * max(deg.sum(), 1.0)
    score[ok] = (dterm[ok] - wterm[ok]) / dterm[ok]
    return score


def laplacian_panel(
    x: np.ndarray,
    k: int,
    *,
    n_neighbors: int = 5,
    t: float | None = None,
    max_rows: int | None = 10000,
    seed: int = 0,
) -> np.ndarray:
    """Return the ``k`` genes with the lowest Laplacian score.

    Parameters
    ----------
    x
        ``[n, d]`` preprocessed training samples.
    k
        Panel size.
    n_neighbors, t
        Graph parameters, see :func:`knn_heat_graph`.
    max_rows
        Build the graph on at most this many samples (a random subset drawn with
        ``seed``); the neighbour search grows with ``n²``.
    seed
        Seed of the subset.

    Returns
    -------
    numpy.ndarray
        ``[k]`` sorted gene indices.
    """
    _check_k(x, k)
    xs = _subsample(np.asarray(x), max_rows, seed)
    score = laplacian_score(xs, n_neighbors=n_neighbors, t=t)
    order = np.argsort(score, kind="stable")
    return np.sort(order[:k])


# --------------------------------------------------------------------------- PFA


def pfa_panel(
    x: np.ndarray,
    k: int,
    *,
    n_components: int | float | None = None,
    standardize: bool = True,
    max_rows: int | None = 50000,
    seed: int = 0,
) -> np.ndarray:
    """Principal feature analysis: one representative gene per cluster of PCA loadings.

    The genes' rows of the ``[d, q]`` loading matrix ``A_q`` (the first ``q``
    principal directions) are clustered with k-means into ``k`` clusters, and from each
    cluster the gene nearest its centroid is kept (Lu et al. 2007). Genes with similar
    loadings are redundant, so one of them represents the group.

    Parameters
    ----------
    x
        ``[n, d]`` preprocessed training samples.
    k
        Panel size (number of clusters).
    n_components
        ``q``: an int, a fraction of variance to retain (float in ``(0, 1)``), or
        ``None`` for ``k`` components (capped by the rank); ``q ≥ k`` is not required.
    standardize
        Run PCA on z-scored genes (the correlation matrix), as Lu et al. and the
        paper's reference code do; constant genes are left out either way.
    max_rows
        Fit the PCA on at most this many samples (a random subset drawn with ``seed``).
    seed
        Seed of the subset and of k-means.

    Returns
    -------
    numpy.ndarray
        ``[k]`` sorted gene indices.
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    _check_k(x, k)
    xs = np.asarray(_subsample(np.asarray(x), max_rows, seed), dtype=np.float64)
    sd = xs.std(axis=0)
    varying = np.flatnonzero(sd > CONSTANT_TOL)
    fill_order = np.concatenate([varying[np.argsort(-sd[varying], kind="stable")],
                                 np.flatnonzero(sd <= CONSTANT_TOL)])
    if len(varying) <= k:
        return _fill(varying, fill_order, k)
    xv = xs[:, varying] - xs[:, varying].mean(axis=0)
    if standardize:
        xv /= sd[varying]
    rank_cap = int(min(xv.shape))
    if n_components is None:
        q: int | float = min(k, rank_cap)
    elif isinstance(n_components, float) and 0 < n_components < 1:
        q = n_components
    else:
        q = int(min(int(n_components), rank_cap))
    pca = PCA(n_components=q, random_state=seed).fit(xv)
    loadings = pca.components_.T  # [n_varying, q]
    km = KMeans(n_clusters=k, n_init=4, random_state=seed)
    with warnings.catch_warnings():
        # Fewer distinct loading vectors than k (duplicated genes): some clusters stay
        # empty and are filled below; sklearn warns about it.
        warnings.simplefilter("ignore")
        labels = km.fit_predict(loadings)
    chosen = []
    for c in range(k):
        members = np.flatnonzero(labels == c)
        if len(members) == 0:
            continue
        dist = np.linalg.norm(loadings[members] - km.cluster_centers_[c], axis=1)
        chosen.append(varying[members[np.argmin(dist)]])
    return _fill(np.asarray(chosen, dtype=np.int64), fill_order, k)


# --------------------------------------------------------------------------- classification


def extra_trees_accuracy(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    n_estimators: int = 50,
    seed: int = 0,
    n_jobs: int | None = None,
) -> float:
    """Test accuracy of an extremely randomised trees classifier trained on the panel.

    As in the paper (Section 4 and its reference code: ``ExtraTreesClassifier`` with 50
    trees); the labels are used only here, never to choose the panel.

    Parameters
    ----------
    x_train, x_test
        ``[n_train, k]`` and ``[n_test, k]`` panel values.
    y_train, y_test
        ``[n_train]`` and ``[n_test]`` labels (any hashable values).
    n_estimators, seed, n_jobs
        Passed to :class:`sklearn.ensemble.ExtraTreesClassifier`.

    Returns
    -------
    float
        Fraction of test samples classified correctly.
    """
    from sklearn.ensemble import ExtraTreesClassifier

    clf = ExtraTreesClassifier(n_estimators=n_estimators, random_state=seed, n_jobs=n_jobs)
    clf.fit(x_train, y_train)
    return float(clf.score(x_test, y_test))

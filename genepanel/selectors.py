"""Panel selectors: one registry, each a function from a dataset and ``k`` to a panel.

Every selector sees only the training rows (:meth:`genepanel.dataset.Dataset.train_matrix`,
a dense preprocessed copy cached within the host memory budget) and returns sorted gene
indices. The concrete autoencoder is trained in :mod:`genepanel.api`; this module holds
the classical column-subset solvers it is judged against and refined with (DESIGN.md §5):

- :func:`greedy_css`: greedy forward selection for linear reconstruction (Farahat, Ghodsi
  & Kamel, ICDM 2011) in its recursive form, which never forms the ``d × d`` Gram matrix:
  each step costs two products with the training matrix, ``O(n·d + d·k)``.
- :func:`swap_refine`: exact swap (exchange) search on the same objective, in sample
  space with rank-one updates: ``O(n·d)`` per panel position tried.

The objective is the residual sum of squares of an unregularised least-squares refit
with intercept, ``f(P) = ‖X − X_P X_P⁺ X‖²_F`` for the column-centred training matrix
``X`` (the classical greedy baseline's objective). :func:`ridge_greedy` and
:func:`ridge_swap_refine` minimise the ridge-penalised version
``min_B ‖X − X_P B‖² + λ‖B‖²`` instead, with ``λ`` chosen by GCV as for the refit
:func:`genepanel.evaluate.score` uses on held-out rows (the refinement's objective on
up to :data:`RIDGE_SEARCH_MAX_ROWS` training rows).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.linalg

from genepanel.errors import UsageError

if TYPE_CHECKING:
    from genepanel.dataset import Dataset

#: Relative size below which a residual column counts as zero (collinear with the panel).
COLLINEAR_TOL = 1e-10


# --------------------------------------------------------------------------- objective


def centred(x: np.ndarray, block: int = 1024) -> np.ndarray:
    """Column-centred float64 copy of ``x`` (Fortran order, for cheap column access).

    Built ``block`` columns at a time, so the only full-size float64 array is the result
    (``np.asfortranarray(x64 - x64.mean(0))`` held three); the same numbers.
    """
    x = np.asarray(x)
    out = np.empty(x.shape, dtype=np.float64, order="F")
    for j in range(0, x.shape[1], block):
        xb = np.asarray(x[:, j : j + block], dtype=np.float64)
        out[:, j : j + block] = xb - xb.mean(axis=0)
    return out


def refit_objective(xc: np.ndarray, panel: Sequence[int]) -> float:
    """Residual sum of squares of the least-squares refit of centred ``xc`` from ``panel``."""
    p = np.asarray(panel, dtype=np.int64)
    if not len(p):
        return float(np.sum(xc * xc))
    q, _ = np.linalg.qr(xc[:, p])
    resid = xc - q @ (q.T @ xc)
    return float(np.sum(resid * resid))


def _gram_column_norms(r: np.ndarray, block: int = 4096) -> np.ndarray:
    """``f_j = ‖(RᵀR)[:, j]‖²`` for every column of ``r`` without forming ``RᵀR`` when n < d."""
    n, d = r.shape
    f = np.empty(d)
    if n < d:
        kmat = r @ r.T  # [n, n]
        for j in range(0, d, block):
            rb = r[:, j : j + block]
            f[j : j + block] = np.einsum("ij,ij->j", kmat @ rb, rb)
    else:
        for j in range(0, d, block):
            gb = r.T @ r[:, j : j + block]  # [d, b]
            f[j : j + block] = np.einsum("ij,ij->j", gb, gb)
    return f


# --------------------------------------------------------------------------- greedy


def greedy_css(
    xc: np.ndarray,
    k: int,
    *,
    allowed: np.ndarray | None = None,
    include: Sequence[int] = (),
) -> np.ndarray:
    """Greedy column subset selection for linear reconstruction, in selection order.

    Repeatedly adds the gene ``c`` maximising ``‖R[:, c]‖² / R[c, c]`` of the residual
    Gram matrix ``R`` (the largest drop of the refit error), Farahat et al.'s recursive
    form: with ``ω_t = R[:, c] / √R[c, c]`` and ``R ← R − ω ωᵀ``, the scores
    ``f = ‖R[:, j]‖²`` and ``g = R[j, j]`` are updated as
    ``f ← f − 2 ω∘(Rω) + ‖ω‖² ω∘ω`` and ``g ← g − ω∘ω``, where
    ``Rω = Xᵀ(Xω) − Σ_r ω_r (ω_rᵀ ω)``. ``R`` itself is never formed.

    Parameters
    ----------
    xc
        ``[n, d]`` column-centred training matrix (see :func:`centred`).
    k
        Panel size.
    allowed
        ``[d]`` bool: genes that may be added (default: all). A shorter mask leaves
        the columns past its end as targets only (see :func:`supervised_target`).
    include
        Genes taken first, in this order (they count towards ``k``).
    """
    d = xc.shape[1]
    if not 1 <= k <= d:
        msg = f"k must be between 1 and the number of genes ({d}), got {k}"
        raise UsageError(msg)
    ok = _allowed_mask(allowed, d)
    f = _gram_column_norms(xc)
    g = np.einsum("ij,ij->j", xc, xc)
    tol = COLLINEAR_TOL * max(float(g.max(initial=0.0)), 1e-300)
    omegas = np.zeros((k, d))
    chosen: list[int] = []
    forced = [int(c) for c in include]
    for t in range(k):
        if forced:
            c = forced.pop(0)
        else:
            live = ok & (g > tol)
            if not live.any():  # every remaining gene is collinear with the panel
                rest = np.flatnonzero(ok)
                rest = rest[np.argsort(-g[rest], kind="stable")]
                chosen.extend(int(j) for j in rest[: k - len(chosen)])
                break
            score = np.where(live, f / np.where(live, g, 1.0), -np.inf)
            c = int(np.argmax(score))
        chosen.append(c)
        ok[c] = False
        if g[c] <= tol:
            continue
        gc = xc.T @ xc[:, c]  # G[:, c]
        r_c = gc - omegas[:t].T @ omegas[:t, c]
        w = r_c / np.sqrt(g[c])
        r_w = xc.T @ (xc @ w) - omegas[:t].T @ (omegas[:t] @ w)
        f = f - 2.0 * w * r_w + float(w @ w) * w * w
        g = g - w * w
        omegas[t] = w
    return np.asarray(chosen[:k], dtype=np.int64)


# --------------------------------------------------------------------------- swap search


def _residual(xc: np.ndarray, panel: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Residual ``R = X − Q Qᵀ X`` of the refit from ``panel`` and its scores ``f``, ``g``."""
    q_all, _ = np.linalg.qr(xc[:, list(panel)])
    r = np.asfortranarray(xc - q_all @ (q_all.T @ xc))
    return r, _gram_column_norms(r), np.einsum("ij,ij->j", r, r)


def _swap_scores(
    xc: np.ndarray, p: Sequence[int], r: np.ndarray, f: np.ndarray, g: np.ndarray,
    ok: np.ndarray, tol_g: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Score every swap at once.

    ``score[c, i] − aa[i]`` is the drop of the refit error when panel position ``i`` is
    replaced by gene ``c`` (``-inf`` where ``c`` may not enter). Also returns ``qs``
    (``[n, k]``: the unit direction of each panel gene orthogonal to the others),
    ``a = Xᵀ qs``, ``h = Rᵀ(R a)`` and ``aa = ‖a_i‖²`` for the update step.
    """
    xp = xc[:, list(p)]
    inv = np.linalg.pinv(xp.T @ xp)
    v = xp @ inv  # column i is orthogonal to every other panel gene
    norms = np.linalg.norm(v, axis=0)
    norms[norms == 0] = 1.0
    qs = v / norms  # [n, k]
    a = xc.T @ qs  # [d, k]
    h = r.T @ (r @ a)  # [d, k]
    aa = np.einsum("ij,ij->j", a, a)  # [k]
    num = f[:, None] + 2.0 * a * h + aa[None, :] * a * a
    den = g[:, None] + a * a
    cand = ok.copy()
    cand[list(p)] = False
    live = cand[:, None] & (den > tol_g)
    score = np.where(live, num / np.where(live, den, 1.0), -np.inf)
    return score, qs, a, h, aa


def swap_alternatives(
    xc: np.ndarray, panel: Sequence[int], n: int, *, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """For every panel gene, the ``n`` genes that could replace it at the least cost.

    The cost of replacing panel gene ``i`` by gene ``c`` is the relative increase of the
    training refit error, ``f(P − i + c) / f(P) − 1`` (negative where the swap would
    improve it; never at a swap optimum). Returns ``(genes [k, n], increase [k, n])``,
    best first: the alternatives to measure if a probe fails.
    """
    p = [int(x) for x in panel]
    d = xc.shape[1]
    ok = _allowed_mask(allowed, d)
    r, f, g = _residual(xc, p)
    tol_g = COLLINEAR_TOL * max(float(np.einsum("ij,ij->j", xc, xc).max()), 1e-300)
    score, _, _, _, aa = _swap_scores(xc, p, r, f, g, ok, tol_g)
    obj = max(float(g.sum()), 1e-300)
    n = min(n, int(np.isfinite(score[:, 0]).sum()))
    top = np.argsort(-score, axis=0, kind="stable")[:n].T  # [k, n]
    gain = np.take_along_axis(score.T, top, axis=1) - aa[:, None]
    return top.astype(np.int64), -gain / obj


@dataclass(frozen=True)
class SwapResult:
    """Outcome of :func:`swap_refine`.

    ``panel`` keeps the input order: position ``i`` holds the input's gene ``i`` or the
    gene that replaced it.
    ``objective_start``/``objective_end`` are the training residual sums of squares
    (recomputed exactly, not from the updates); ``converged`` says the last round
    found no improving swap (a local optimum), otherwise ``max_swaps`` ran out.
    """

    panel: np.ndarray
    objective_start: float
    objective_end: float
    swaps: int
    rounds: int  # times every (position, gene) pair was scored
    converged: bool
    history: tuple[float, ...] = ()


def swap_refine(
    xc: np.ndarray,
    panel: Sequence[int],
    *,
    allowed: np.ndarray | None = None,
    fixed: Sequence[int] = (),
    max_swaps: int | None = None,
    rtol: float = 1e-9,
    exact_every: int = 20,
) -> SwapResult:
    """Exchange search: swap a panel gene for an outside gene while the refit error drops.

    Works in sample space with the explicit residual ``R = X − Q Qᵀ X`` (``n × d``), so
    no ``d × d`` matrix is formed. For panel position ``i``, removing it adds back the
    unit direction ``q_i`` of ``X_P`` orthogonal to the other panel genes:
    ``R₋ᵢ = R + q_i a_iᵀ`` with ``a_i = Xᵀq_i``. The best replacement ``c`` maximises
    ``‖R₋ᵢᵀ R₋ᵢ[:, c]‖² / ‖R₋ᵢ[:, c]‖²``, which for every ``c`` and every ``i`` at once
    is ``(f + 2 a_i∘h_i + ‖a_i‖² a_i∘a_i) / (g + a_i∘a_i)`` with ``h_i = Rᵀ(R a_i)``,
    ``f = ‖(RᵀR)[:, c]‖²`` and ``g = ‖R[:, c]‖²`` (three ``n × d × k`` products per
    round). Each round takes the single swap that lowers the error most, if it lowers it
    by more than ``rtol`` of it; ``R``, ``f`` and ``g`` are then updated by rank-one
    steps (in float64; recomputed exactly every ``exact_every`` swaps), so the result is
    a local optimum: no single swap improves it by more than ``rtol``.

    Parameters
    ----------
    xc
        ``[n, d]`` column-centred training matrix.
    panel
        Starting genes (distinct).
    allowed
        ``[d]`` bool: genes that may enter the panel (default: all). A shorter mask
        leaves the columns past its end as targets only.
    fixed
        Genes that never leave the panel (``--include``).
    max_swaps
        Upper bound on swaps (default ``10 k``); ``converged`` is False when reached.
    rtol
        Relative improvement a swap must bring.
    exact_every
        Recompute the residual and its scores from scratch after this many swaps.
    """
    p = [int(g) for g in panel]
    k = len(p)
    if len(set(p)) != k:
        msg = "swap_refine needs a panel of distinct genes"
        raise UsageError(msg)
    d = xc.shape[1]
    ok = _allowed_mask(allowed, d)
    movable = np.array([g not in {int(x) for x in fixed} for g in p])
    max_swaps = 10 * k if max_swaps is None else max_swaps
    tol_g = COLLINEAR_TOL * max(float(np.einsum("ij,ij->j", xc, xc).max()), 1e-300)
    block = 4096

    def exact() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return _residual(xc, p)

    r, f, g = exact()
    start = float(g.sum())
    history = [start]
    swaps = since_exact = 0
    converged = False
    while swaps < max_swaps:
        obj = float(g.sum())
        score, qs, a, h, aa = _swap_scores(xc, p, r, f, g, ok, tol_g)
        best_c = np.argmax(score, axis=0)  # [k]
        gain = score[best_c, np.arange(k)] - aa  # drop of the error for each position
        gain[~movable] = -np.inf
        i = int(np.argmax(gain))
        if not np.isfinite(gain[i]) or gain[i] <= rtol * obj:
            converged = True
            break
        c = int(best_c[i])
        q, ai = qs[:, i], a[:, i]
        f_minus = f + 2.0 * ai * h[:, i] + aa[i] * ai * ai
        g_minus = g + ai * ai
        # Accept: R ← (I − u uᵀ)(R + q aᵀ), with u the unit residual of gene c.
        rc = r[:, c] + q * ai[c]
        u = rc / np.linalg.norm(rc)
        w = r.T @ u + ai * float(q @ u)
        rmw = r @ w + q * float(ai @ w)
        vv = r.T @ rmw + ai * float(q @ rmw)
        f = f_minus - 2.0 * w * vv + float(w @ w) * w * w
        g = g_minus - w * w
        for j in range(0, d, block):
            sl = slice(j, j + block)
            r[:, sl] += np.outer(q, ai[sl]) - np.outer(u, w[sl])
        p[i] = c
        swaps += 1
        since_exact += 1
        if since_exact >= exact_every:
            r, f, g = exact()
            since_exact = 0
        history.append(float(g.sum()))
    end = refit_objective(xc, p)
    return SwapResult(panel=np.asarray(p, dtype=np.int64), objective_start=start,
                      objective_end=end, swaps=swaps, rounds=swaps + int(converged),
                      converged=converged, history=tuple(history))


# --------------------------------------------------------------------------- ridge objective

#: The ridge form of the refinement needs the ``n × n`` row Gram matrix, two more
#: ``n × d`` float64 arrays and three ``n² d`` products to start; above this many training
#: rows the least-squares search is used (where, with many rows per panel gene, the
#: penalty matters least).
RIDGE_SEARCH_MAX_ROWS = 2000
#: Penalties below this fraction of the panel's mean eigenvalue change the refit error by
#: less than about its square (1e-6 relatively): the least-squares search is used.
RIDGE_SEARCH_MIN_ALPHA = 1e-3


def selection_penalty(xc: np.ndarray, panel: Sequence[int]) -> tuple[float, float]:
    """The ridge penalty (``λ``, ``λ / scale``) GCV chooses for ``panel``'s refit on ``xc``.

    The same choice as the held-out refit (:func:`~genepanel.evaluate.ridge_refit`), made
    on the centred training rows ``xc`` for one panel (the greedy one), so that the
    search optimises the objective its final refit is fitted with.
    """
    from genepanel.evaluate import gcv_penalty

    xp = xc[:, list(panel)]
    e, q = np.linalg.eigh(xp.T @ xp)
    c = q.T @ (xp.T @ xc)
    return gcv_penalty(e, np.einsum("ij,ij->i", c, c), float(np.einsum("ij,ij->", xc, xc)),
                       xc.shape[0])


def search_penalty(xc: np.ndarray, panel: Sequence[int]) -> tuple[float, float]:
    """``(λ, α)``: the swap refinement's penalty (0: least squares), GCV's relative one.

    ``α`` is the relative penalty GCV chose for ``panel`` (:func:`selection_penalty`).
    The ridge form is used where GCV's choice is at least :data:`RIDGE_SEARCH_MIN_ALPHA`
    and there are at most :data:`RIDGE_SEARCH_MAX_ROWS` rows.
    """
    lam, alpha = selection_penalty(xc, panel)
    use = alpha >= RIDGE_SEARCH_MIN_ALPHA and xc.shape[0] <= RIDGE_SEARCH_MAX_ROWS
    return (lam if use else 0.0), alpha


def ridge_objective(xc: np.ndarray, panel: Sequence[int], lam: float) -> float:
    """``min_B ‖X − X_P B‖² + λ‖B‖²`` on the centred training rows ``xc`` (``λ > 0``).

    The penalised training refit error of every gene from the panel, computed in sample
    space as ``λ · tr(Xᵀ (K + λI)⁻¹ X)`` with ``K = X_P X_Pᵀ``.
    """
    xp = xc[:, list(panel)]
    n = xc.shape[0]
    m = scipy.linalg.cho_solve(scipy.linalg.cho_factor(xp @ xp.T + lam * np.eye(n)), xc)
    return lam * float(np.einsum("ij,ij->", xc, m))


class _RidgeState:
    """``M = (X_P X_Pᵀ + λI)⁻¹``-based quantities of the ridge search, in sample space.

    ``a = M X`` and ``ga = G M X`` (``G = X Xᵀ``), both ``[n, d]``; per gene ``c``,
    ``xmx[c] = x_cᵀ M x_c`` and ``num[c] = x_cᵀ M G M x_c``. Adding gene ``c`` lowers
    the objective ``λ tr(G M)`` by ``λ num[c] / (1 + xmx[c])`` (Sherman–Morrison);
    removing panel gene ``p`` raises it by ``λ num[p] / (1 − xmx[p])``.
    """

    def __init__(self, xc: np.ndarray, g: np.ndarray, panel: list[int], lam: float):
        self.x, self.g, self.lam = xc, g, lam
        n = xc.shape[0]
        xp = xc[:, panel]
        fac = scipy.linalg.cho_factor(xp @ xp.T + lam * np.eye(n))
        self.a = scipy.linalg.cho_solve(fac, xc)
        self.ga = g @ self.a
        self._scores()

    def _scores(self) -> None:
        self.xmx = np.einsum("ij,ij->j", self.x, self.a)
        self.num = np.einsum("ij,ij->j", self.ga, self.a)

    def objective(self) -> float:
        """``λ tr(G M) = λ Σ_c x_cᵀ M x_c``."""
        return self.lam * float(self.xmx.sum())

    def rank_one(self, c: int, sign: float) -> None:
        """Add (``sign = 1``) or remove (``-1``) gene ``c``: ``M ← M ∓ m mᵀ / (1 ± x_cᵀm)``."""
        m, gm = self.a[:, c].copy(), self.ga[:, c].copy()
        den = 1.0 + sign * self.xmx[c]
        mx, mga = m @ self.x, m @ self.ga
        mgm = float(m @ gm)
        self.a -= np.outer(m, (sign / den) * mx)
        self.ga -= np.outer(gm, (sign / den) * mx)
        self.xmx -= (sign / den) * mx * mx
        self.num += (mgm / den**2) * mx * mx - (2.0 * sign / den) * mx * mga


def _varying(
    xc: np.ndarray, keep: Sequence[int], allowed: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``xc`` restricted to the genes that vary on its rows, plus ``keep``.

    A constant gene neither lowers the ridge objective when it enters (``x_c = 0``) nor
    adds to it as a target, so the ridge search works on the others only. Returns the
    kept columns (sorted gene indices), the restricted matrix, the ``allowed`` mask on
    them and ``pos`` (gene index → column, ``-1`` if dropped).
    """
    live = np.einsum("ij,ij->j", xc, xc) > 0
    live[list(keep)] = True
    cols = np.flatnonzero(live)
    pos = np.full(xc.shape[1], -1)
    pos[cols] = np.arange(len(cols))
    return cols, xc[:, cols], _allowed_mask(allowed, xc.shape[1])[cols], pos


def ridge_greedy(
    xc: np.ndarray, k: int, lam: float, *, allowed: np.ndarray | None = None,
    include: Sequence[int] = (),
) -> np.ndarray:
    """Forward selection on the ridge objective (:func:`ridge_objective`).

    Each step adds the gene that lowers it most. ``include`` genes come first; only
    ``allowed`` genes enter. When no allowed gene that varies is left, the panel is
    filled with the remaining allowed genes in index order (constant on the training
    rows: they change nothing), as :func:`greedy_css` does. Returns the genes in the
    order chosen.
    """
    full_ok = _allowed_mask(allowed, xc.shape[1])
    cols, xc, ok, pos = _varying(xc, include, allowed)
    g = xc @ xc.T
    chosen = [int(pos[c]) for c in include]
    st = _RidgeState(xc, g, chosen, lam)
    while len(chosen) < k:
        gain = np.where(ok, st.num / (1.0 + st.xmx), -np.inf)
        gain[chosen] = -np.inf
        c = int(np.argmax(gain))
        if not np.isfinite(gain[c]):
            break
        chosen.append(c)
        st.rank_one(c, 1.0)
    genes = [int(c) for c in cols[np.asarray(chosen, np.int64)]]
    taken = set(genes)
    genes += [int(c) for c in np.flatnonzero(full_ok) if c not in taken][: k - len(genes)]
    if len(genes) < k:
        msg = f"only {len(genes)} genes may enter the panel, {k} asked for"
        raise UsageError(msg)
    return np.asarray(genes, np.int64)


def _ridge_swaps(st: _RidgeState, p: list[int], ok: np.ndarray, obj: float) -> np.ndarray:
    """``[k, d]``: the ridge objective after panel position ``i`` is replaced by gene ``c``.

    ``inf`` where ``c`` may not enter; see :func:`ridge_swap_refine`.
    """
    mp, gmp = st.a[:, p], st.ga[:, p]  # [n, k]
    beta = 1.0 - st.xmx[p]
    num_p = st.num[p]
    mpx = mp.T @ st.x  # [k, d]
    mpga = gmp.T @ st.a  # [k, d]
    t = mpx / beta[:, None]
    den = 1.0 + st.xmx[None, :] + mpx * t
    num = st.num[None, :] + 2.0 * t * mpga + t * t * num_p[:, None]
    new = obj + st.lam * (num_p / beta)[:, None] - st.lam * num / den
    cand = ok.copy()
    cand[p] = False
    new[:, ~cand] = np.inf
    return new


def ridge_swap_alternatives(
    xc: np.ndarray, panel: Sequence[int], n: int, lam: float, *,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`swap_alternatives` on the ridge objective (:func:`ridge_objective`)."""
    cols, x, ok, pos = _varying(xc, panel, allowed)
    p = [int(pos[g]) for g in panel]
    st = _RidgeState(x, x @ x.T, p, lam)
    obj = st.objective()
    new = _ridge_swaps(st, p, ok, obj)  # [k, d']
    n = min(n, int(np.isfinite(new[0]).sum()))
    top = np.argsort(new, axis=1, kind="stable")[:, :n]
    return cols[top].astype(np.int64), np.take_along_axis(new, top, axis=1) / obj - 1.0


def ridge_swap_refine(
    xc: np.ndarray,
    panel: Sequence[int],
    lam: float,
    *,
    allowed: np.ndarray | None = None,
    fixed: Sequence[int] = (),
    max_swaps: int | None = None,
    rtol: float = 1e-9,
    exact_every: int = 20,
) -> SwapResult:
    """:func:`swap_refine` on the ridge objective (:func:`ridge_objective`, ``λ = lam``).

    For panel position ``i`` (gene ``p``, ``m_p = M x_p``, ``β = 1 − x_pᵀm_p``) and every
    gene ``c`` at once, the objective after the swap is

        ``J + λ num_p/β − λ (num_c + 2t·m_pᵀG M x_c + t²·num_p) / (1 + xmx_c + t·m_pᵀx_c)``

    with ``t = m_pᵀx_c / β`` (two ``k × n × d`` products a round). Each round takes the
    best single swap if it lowers ``J`` by more than ``rtol`` of it; the state is
    updated by two rank-one steps and recomputed exactly every ``exact_every`` swaps.
    Objectives in the result are ``J`` itself (recomputed exactly).
    """
    p = [int(x) for x in panel]
    k = len(p)
    if len(set(p)) != k:
        msg = "ridge_swap_refine needs a panel of distinct genes"
        raise UsageError(msg)
    movable = np.array([x not in {int(f) for f in fixed} for x in p])
    cols, xc, ok, pos = _varying(xc, p, allowed)
    p = [int(pos[x]) for x in p]
    max_swaps = 10 * k if max_swaps is None else max_swaps
    g = xc @ xc.T
    st = _RidgeState(xc, g, p, lam)
    start = obj = st.objective()
    history = [start]
    swaps = since_exact = 0
    converged = False
    while swaps < max_swaps:
        new = _ridge_swaps(st, p, ok, obj)
        new[~movable] = np.inf
        i, c = np.unravel_index(int(np.argmin(new)), new.shape)
        if not np.isfinite(new[i, c]) or obj - new[i, c] <= rtol * obj:
            converged = True
            break
        st.rank_one(p[i], -1.0)
        st.rank_one(int(c), 1.0)
        p[i] = int(c)
        swaps += 1
        since_exact += 1
        if since_exact >= exact_every:
            st = _RidgeState(xc, g, p, lam)
            since_exact = 0
        obj = st.objective()
        history.append(obj)
    end = ridge_objective(xc, p, lam)
    return SwapResult(panel=cols[np.asarray(p, dtype=np.int64)], objective_start=start,
                      objective_end=end, swaps=swaps, rounds=swaps + int(converged),
                      converged=converged, history=tuple(history))


# --------------------------------------------------------------------------- supervised


#: Ridge penalty of the supervised refit objective, as a multiple of the training rows
#: ``n`` (each z-scored gene has ``‖z‖² = n``): chosen on training rows only, by nested
#: cross-validation (``benchmarks/supervised_variants.py``; see ``supervised.md``).
RIDGE_ALPHA = 3.0
#: Above this many genes the ridge target (``n + d`` rows) is not built; the refinement
#: then uses the unregularised objective (``ridge=None``) and ``run.json`` says so.
RIDGE_MAX_GENES = 3000


def _label_matrix(codes: np.ndarray, *, whiten: bool) -> np.ndarray:
    """Centred one-hot labels (unlabelled rows ``-1``: zero before centring).

    With ``whiten``, ``Y (YᵀY)^{-1/2}`` on its non-null space (every class direction
    counts 1).
    """
    codes = np.asarray(codes)
    n_cls = int(codes.max(initial=-1)) + 1
    y = np.zeros((len(codes), max(n_cls, 1)))
    lab = codes >= 0
    y[np.flatnonzero(lab), codes[lab]] = 1.0
    y -= y.mean(axis=0)
    if whiten:
        lam, v = np.linalg.eigh(y.T @ y)
        keep = lam > 1e-9 * max(float(lam.max(initial=0.0)), 1e-300)
        y = y @ (v[:, keep] / np.sqrt(lam[keep]))
    return y


def supervised_target(
    xc: np.ndarray, codes: np.ndarray, weight: float, ridge: float | None = RIDGE_ALPHA
) -> np.ndarray:
    """The refit objective of a supervised panel as one matrix: genes, then labels.

    Default (``ridge = α``): with ``Z`` the z-scored training genes (``n`` rows, ``d``
    genes), ``Yw`` the whitened centred one-hot labels (``c`` classes give ``c − 1``
    columns, ``c`` when some rows are unlabelled: rows coded ``-1`` get a zero label
    row before centring) and ``λ = α n``,

        ``T = [[a·Z, b·Yw], [a·√λ·I_d, 0]]``, ``a = √((1−w)/(‖Z‖² + λd))``, ``b = √(w/‖Yw‖²)``

    (``[n + d, d + c − 1]`` when every row is labelled; Fortran float64). The ``√λ·I``
    rows turn the least-squares refit from a panel ``P`` of the first ``d`` columns into
    a ridge regression (``Z_PᵀZ_P + λI``), so the refit error of ``T`` is

        ``(1 − w) · ridge share of z-scored gene variance left unexplained``
        ``+ w · (1 − mean squared ridge canonical correlation of panel and classes)``,

    the label term an LDA-like criterion (between-class variance of the panel relative
    to its total, every class direction counting equally, not by class size) shrunk so
    that genes with a strong class signal of their own are preferred to combinations
    that separate the training rows only jointly. ``ridge=None``: the unregularised
    objective of earlier versions, ``T = [√((1−w)/‖X‖²)·X, √(w/‖Y‖²)·Y]`` on the centred
    genes ``X`` and one-hot ``Y``. Either way :func:`greedy_css` and
    :func:`swap_refine` on ``T``, with only the first ``d`` columns allowed to enter,
    optimise it unchanged.
    """
    if not 0.0 <= weight < 1.0:
        msg = f"the supervised refit objective needs a label weight in [0, 1), got {weight}"
        raise UsageError(msg)
    x = np.asarray(xc, np.float64)
    y = _label_matrix(codes, whiten=ridge is not None)
    if ridge is None:
        sx = float(np.einsum("ij,ij->", x, x))
    else:
        n, d = x.shape
        sd = x.std(axis=0)
        sd[sd <= 0] = 1.0
        lam = float(ridge) * n
        x = np.vstack([x / sd, np.sqrt(lam) * np.eye(d)])
        y = np.vstack([y, np.zeros((d, y.shape[1]))])
        sx = float(np.einsum("ij,ij->", x, x))
    sy = float(np.einsum("ij,ij->", y, y))
    gx = np.sqrt((1.0 - weight) / sx) if sx > 0 else 0.0
    gy = np.sqrt(weight / sy) if sy > 0 else 0.0
    return np.asfortranarray(np.hstack([gx * x, gy * y]))


SUPERVISED_OBJECTIVE = ("(1 − w) · share of training gene variance the panel's refit leaves "
                        "unexplained + w · share of one-hot label variance a least-squares "
                        "classifier on the panel leaves unexplained (w = --label-weight)")
SUPERVISED_OBJECTIVE_RIDGE = (
    "(1 − w) · share of z-scored training gene variance a ridge refit from the panel leaves "
    "unexplained + w · (1 − mean squared ridge canonical correlation of the panel and the "
    "classes, i.e. whitened one-hot labels); ridge penalty {alpha:g} × training rows "
    "(w = --label-weight)")


def supervised_ridge(ds: Dataset) -> float | None:
    """The ridge penalty factor of ``ds``'s supervised objective (None: unregularised)."""
    return RIDGE_ALPHA if ds.n_genes <= RIDGE_MAX_GENES else None


def supervised_objective(ds: Dataset) -> str:
    """What :func:`refit_matrix` optimises for a supervised run on ``ds``, in words."""
    ridge = supervised_ridge(ds)
    if ridge is None:
        return (f"{SUPERVISED_OBJECTIVE} (unregularised: more than {RIDGE_MAX_GENES} genes, "
                "the ridge target is not built)")
    return SUPERVISED_OBJECTIVE_RIDGE.format(alpha=ridge)


def supervised_refit(cfg: Any) -> tuple[float | None, str]:
    """(label weight of the refinement's objective or None if unsupervised, reason if none).

    A supervised run (``cfg.labels``) is refined on :func:`supervised_target` with
    ``w = cfg.label_weight``; with ``w = 1`` the objective has no gene term, so the
    reason says why no refinement runs.
    """
    if getattr(cfg, "labels", None) is None:
        return None, ""
    if cfg.label_weight >= 1.0:
        return None, ("label weight 1 (labels only): the swap search needs the gene "
                      "reconstruction term; use --label-weight below 1 to refine")
    return float(cfg.label_weight), ""


def refit_matrix(ds: Dataset, label_weight: float | None = None) -> np.ndarray:
    """The matrix whose refit error the swap refinement lowers (cached on ``ds``).

    Unsupervised (``label_weight`` None): the centred training rows. Supervised: the
    :func:`supervised_target` of the same rows and their label codes, whose columns
    after the ``d`` genes are targets only (they never enter a panel); ridge-regularised
    (:func:`supervised_ridge`) up to :data:`RIDGE_MAX_GENES` genes.
    """
    if label_weight is None or ds.label_codes is None:
        return ds.train_centred()
    ridge = supervised_ridge(ds)
    key = ("supervised_target", float(label_weight), ridge)
    if key not in ds.cache:
        codes = ds.label_codes[ds.train_sample_rows()]
        ds.cache[key] = supervised_target(ds.train_centred(), codes, label_weight, ridge)
    return ds.cache[key]


def label_head(ds: Dataset, panel: Sequence[int], n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression from the panel to the labels, on the training rows.

    Returns ``(kernel [k, n_classes], bias [n_classes])`` on the preprocessed panel
    values: the label outputs of a refined supervised panel's saved decoder (the trained
    decoder read the autoencoder's panel). Fitted on standardised panel values (L2,
    ``C = 1``, scikit-learn's default) with the scaling folded into the weights; a class
    absent from the training rows gets a bias of -30.
    """
    from sklearn.linear_model import LogisticRegression

    rows = ds.train_sample_rows()
    codes = ds.label_codes[rows]
    lab = codes >= 0
    xs = np.asarray(ds.train_matrix(), np.float64)[np.ix_(lab, np.asarray(panel))]
    mu, sd = xs.mean(axis=0), xs.std(axis=0)
    sd[sd == 0] = 1.0
    kernel = np.zeros((len(panel), n_classes))
    bias = np.full(n_classes, -30.0)
    present = np.unique(codes[lab])
    if len(present) < 2:
        bias[present] = 0.0
        return kernel.astype(np.float32), bias.astype(np.float32)
    clf = LogisticRegression(max_iter=5000).fit((xs - mu) / sd, codes[lab])
    w = clf.coef_ if len(present) > 2 else np.vstack([-clf.coef_, clf.coef_]) / 2
    b = clf.intercept_ if len(present) > 2 else np.r_[-clf.intercept_, clf.intercept_] / 2
    kernel[:, present] = (w / sd).T
    bias[present] = b - (w / sd) @ mu
    return kernel.astype(np.float32), bias.astype(np.float32)


def with_label_head(params: dict, ds: Dataset, panel: Sequence[int]) -> dict:
    """A refit linear decoder's ``params`` plus :func:`label_head` outputs (supervised runs).

    Unchanged when ``ds`` has no training labels.
    """
    if not len(ds.classes or ()):
        return params
    kern, bias = label_head(ds, panel, len(ds.classes))
    out = params["out"]
    return {"out": {"kernel": np.hstack([np.asarray(out["kernel"]), kern]),
                    "bias": np.r_[np.asarray(out["bias"]), bias]}}


def _allowed_mask(allowed: np.ndarray | None, d: int) -> np.ndarray:
    """``allowed`` as a ``[d]`` mask; columns past its length are targets only (False)."""
    if allowed is None:
        return np.ones(d, bool)
    ok = np.zeros(d, bool)
    a = np.asarray(allowed, bool)
    ok[: len(a)] = a
    return ok


# --------------------------------------------------------------------------- simple ranks


def topvar_panel(x: np.ndarray, k: int, allowed: np.ndarray | None = None) -> np.ndarray:
    """The ``k`` genes of largest variance on the (preprocessed) training rows."""
    var = np.asarray(x, np.float64).var(axis=0)
    if allowed is not None:
        var = np.where(allowed, var, -np.inf)
    return np.sort(np.argsort(-var, kind="stable")[:k])


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Selected:
    """A panel chosen by a selector: sorted gene indices, the time it took, a note."""

    method: str
    indices: np.ndarray
    seconds: float
    detail: str = ""
    extra: dict[str, Any] | None = None


Selector = Callable[..., tuple[np.ndarray, str]]


def greedy_panel(
    ds: Dataset, k: int, allowed: np.ndarray | None = None, include: Sequence[int] = (),
    label_weight: float | None = None,
) -> tuple[np.ndarray, float]:
    """:func:`greedy_css` on the dataset's training rows, cached on ``ds``: (panel, seconds).

    With ``label_weight``, on the supervised objective (:func:`refit_matrix`). Greedy
    selection is nested (its first ``k`` genes are its panel of size ``k``), so a cached
    larger run with the same constraints and objective is sliced; its time is reported.
    """
    import time

    base = (None if allowed is None else np.packbits(allowed).tobytes(),
            tuple(int(i) for i in include), label_weight)
    key = ("greedy", k, *base)
    if key not in ds.cache:
        longer = [c for c in ds.cache if isinstance(c, tuple) and len(c) == 5
                  and c[0] == "greedy" and c[2:] == base and c[1] > k]
        if longer:
            idx, seconds = ds.cache[min(longer, key=lambda c: c[1])]
            ds.cache[key] = (idx[:k], seconds)
        else:
            t = time.perf_counter()
            if allowed is None and label_weight is not None:
                allowed = np.ones(ds.n_genes, bool)
            idx = greedy_css(refit_matrix(ds, label_weight), k, allowed=allowed,
                             include=include)
            ds.cache[key] = (idx, time.perf_counter() - t)
    return ds.cache[key]


def _greedy(
    ds: Dataset, k: int, seed: int, allowed: np.ndarray | None, include: Sequence[int] = ()
) -> tuple[np.ndarray, str]:
    idx, _ = greedy_panel(ds, k, allowed, include)
    return np.sort(idx), f"Farahat recursive greedy on {len(ds.train_sample_rows())} training rows"


def _topvar(ds: Dataset, k: int, seed: int, allowed: np.ndarray | None) -> tuple[np.ndarray, str]:
    return topvar_panel(ds.train_matrix(), k, allowed), "largest variance on the training rows"


def _hvg(ds: Dataset, k: int, seed: int, allowed: np.ndarray | None) -> tuple[np.ndarray, str]:
    from genepanel.evaluate import hvg_panel

    return hvg_panel(ds.data, ds.pre, ds.train_sample_rows(), k, max_rows=ds.max_train_rows,
                     seed=seed)


def _random(ds: Dataset, k: int, seed: int, allowed: np.ndarray | None) -> tuple[np.ndarray, str]:
    from genepanel.evaluate import random_panels

    return random_panels(ds.n_genes, k, seed, 1)[0], "uniform without replacement"


def _laplacian(ds: Dataset, k: int, seed: int,
               allowed: np.ndarray | None) -> tuple[np.ndarray, str]:
    from genepanel.baselines import laplacian_panel

    x = ds.train_matrix()
    rows = min(len(x), 10000)
    return (laplacian_panel(x, k, max_rows=10000, seed=seed),
            f"5-NN heat-kernel graph on {rows} training samples")


def _pfa(ds: Dataset, k: int, seed: int, allowed: np.ndarray | None) -> tuple[np.ndarray, str]:
    from genepanel.baselines import pfa_panel

    return pfa_panel(ds.train_matrix(), k, seed=seed), f"k-means of z-scored PCA loadings (q = {k})"


#: Baseline selectors by name (the concrete autoencoder, ``cae``, is trained in ``api``).
SELECTORS: dict[str, Selector] = {
    "greedy": _greedy,
    "topvar": _topvar,
    "hvg": _hvg,
    "random": _random,
    "laplacian": _laplacian,
    "pfa": _pfa,
}

DESCRIPTIONS = {
    "cae": "concrete autoencoder + swap refinement",
    "cae_unrefined": "concrete autoencoder (before swap refinement)",
    "greedy": "greedy column subset selection",
    "topvar": "top-variance genes",
    "hvg": "highly variable genes",
    "random": "random panels",
    "laplacian": "Laplacian score",
    "pfa": "principal feature analysis",
    "pca": "PCA bound (not a panel)",
}


def run_selector(
    name: str, ds: Dataset, k: int, *, seed: int = 0, allowed: np.ndarray | None = None,
    include: Sequence[int] = (),
) -> Selected:
    """Run the baseline selector ``name`` on the training rows of ``ds``; time it.

    ``include``: genes ``greedy`` takes first (``--include``); the others ignore it.
    """
    import time

    if name not in SELECTORS:
        msg = f"unknown selector {name!r}; choose from {', '.join(SELECTORS)}"
        raise UsageError(msg)
    t = time.perf_counter()
    if name == "greedy":
        idx, detail = _greedy(ds, k, seed, allowed, include)
    else:
        idx, detail = SELECTORS[name](ds, k, seed, allowed)
    seconds = time.perf_counter() - t
    if name == "greedy":  # computed once per dataset; report the time it took then
        seconds = greedy_panel(ds, k, allowed, include)[1]
    return Selected(name, np.sort(np.asarray(idx, np.int64)), seconds, detail)

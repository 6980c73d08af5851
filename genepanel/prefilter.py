"""Candidate prefilter: the genes the selector chooses from on whole-transcriptome inputs.

A training step costs ``O(k · d)`` in the selector (Gumbel noise, softmax, Adam over the
``[k, d]`` logits), and the number of steps the selector needs to settle on one gene
per node grows with ``d`` as well. Most of the 20,000–35,000 genes of a single-cell
atlas vary too little to be worth measuring, so by default the selector chooses among
the ``n`` genes with the highest variance on the training rows (the values before any
per-gene z-score, as highly-variable-gene methods do), while the decoder still
reconstructs every gene and every metric is computed over every gene.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from genepanel.data import Preprocessor, sample_rows
from genepanel.io import ExpressionData

MAX_ROWS = 20000


@dataclass(frozen=True)
class Prefilter:
    """The candidate columns (sorted) and what to report about them."""

    columns: np.ndarray
    report: dict


def gene_variance(
    data: ExpressionData, pre: Preprocessor, rows: np.ndarray, *,
    max_rows: int = MAX_ROWS, seed: int = 0, batch_size: int = 4096,
) -> np.ndarray:
    """Per-gene variance ``[d]`` of the per-sample-normalised training rows.

    The per-gene z-score of ``standardize`` is left out (it would make every variance
    1). At most ``max_rows`` rows, drawn at random (seeded), are read.
    """
    rows = sample_rows(rows, max_rows, seed, 0x9F11)
    return pre.row_moments(data, rows, batch_size)[1]


def candidate_columns(
    data: ExpressionData, pre: Preprocessor, rows: np.ndarray, n: int, *,
    allowed: np.ndarray | None = None, include: tuple[int, ...] = (), seed: int = 0,
    variance: np.ndarray | None = None,
) -> Prefilter | None:
    """The ``n`` allowed genes of highest variance, plus the ``include`` genes.

    ``variance`` (default: :func:`gene_variance`) may be passed when already computed.
    Returns ``None`` when the prefilter is off (``n`` 0) or would keep every allowed gene.
    """
    d = data.shape[1]
    allowed = np.ones(d, bool) if allowed is None else np.asarray(allowed, bool)
    n_allowed = int(allowed.sum())
    if n <= 0 or n_allowed <= n:
        return None
    var = gene_variance(data, pre, rows, seed=seed) if variance is None else variance
    score = np.where(allowed, var, -np.inf)
    top = np.argsort(-score, kind="stable")[:n]
    columns = np.union1d(top, np.asarray(include, np.int64)).astype(np.int64)
    report = {
        "method": "top variance of the training rows (before any per-gene z-score)",
        "candidates": int(n),
        "of_allowed_genes": n_allowed,
        "min_variance_kept": float(var[top].min()),
        "how_to_turn_off": "--prefilter 0 (config: train.prefilter: 0)",
    }
    return Prefilter(columns=columns, report=report)


def constant_genes(source, batch_size: int = 1024) -> np.ndarray:
    """``[d]`` the value of each gene that is constant on ``source``'s rows, NaN elsewhere.

    ``source`` is a :class:`~genepanel.train.RowSource` (preprocessed rows). Genes that
    never vary in training (in single-cell data, thousands that are never detected) are
    left out of the decoder during training: their reconstruction is their value.
    """
    if source.dense is not None:
        x = source.dense
        lo, hi = x.min(axis=0), x.max(axis=0)
    else:
        lo = hi = None
        for i in range(0, source.n, batch_size):
            xb = source.batch(np.arange(i, min(i + batch_size, source.n)))
            blo, bhi = xb.min(axis=0), xb.max(axis=0)
            lo = blo if lo is None else np.minimum(lo, blo)
            hi = bhi if hi is None else np.maximum(hi, bhi)
    return np.where(lo == hi, lo, np.nan).astype(np.float32)

"""Host-side data handling: splits, preprocessing and minibatch assembly (NumPy only).

Preprocessing is fitted on the training rows and applied batch by batch, so a sparse
matrix is only ever densified one minibatch at a time. The fitted statistics travel
with every saved decoder (see :meth:`Preprocessor.to_dict`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from genepanel.config import SplitConfig
from genepanel.errors import DataError, UsageError
from genepanel.io import ExpressionData

# --------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class Split:
    """Row indices (sorted) of the train, validation and test sets."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def sizes(self) -> dict[str, int]:
        """Number of rows in each part."""
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


_SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "test"}


def make_split(
    n: int, cfg: SplitConfig, seed: int, obs: pd.DataFrame | None = None, *, min_train: int = 2
) -> Split:
    """Split ``n`` rows into train/validation/test.

    With ``cfg.column`` the split is read from that ``obs`` column (values ``train``,
    ``val``/``validation``, ``test``); otherwise rows are shuffled with ``seed`` and cut
    by the configured fractions (72/8/20 by default).

    Raises
    ------
    DataError
        When a part that is needed would be empty or the training part too small.
    """
    if cfg.column is not None:
        if obs is None or cfg.column not in obs.columns:
            cols = ", ".join(map(str, obs.columns)) if obs is not None else "none"
            msg = f"split column '{cfg.column}' not found in obs (columns: {cols or 'none'})"
            raise DataError(msg)
        raw = obs[cfg.column].astype(str).str.lower().to_numpy()
        unknown = sorted(set(raw) - set(_SPLIT_NAMES))
        if unknown:
            msg = (
                f"split column '{cfg.column}' holds {', '.join(unknown[:5])}; "
                "expected only train, val (or validation) and test"
            )
            raise DataError(msg)
        labels = np.array([_SPLIT_NAMES[v] for v in raw])
        parts = {name: np.flatnonzero(labels == name) for name in ("train", "val", "test")}
    else:
        rng = np.random.default_rng([seed, 0x5317])
        perm = rng.permutation(n)
        n_test = round(cfg.test * n)
        n_val = round(cfg.val * n)
        n_test = max(n_test, 1) if cfg.test > 0 else 0
        n_val = max(n_val, 1) if cfg.val > 0 else 0
        n_train = n - n_test - n_val
        parts = {
            "train": np.sort(perm[:n_train]),
            "val": np.sort(perm[n_train : n_train + n_val]),
            "test": np.sort(perm[n_train + n_val :]),
        }
    if len(parts["train"]) < min_train or len(parts["test"]) < 1:
        msg = (
            f"{n} samples are too few for the split (train {len(parts['train'])}, "
            f"val {len(parts['val'])}, test {len(parts['test'])}); need at least "
            f"{min_train} training and 1 test sample: add samples or change the split"
        )
        raise DataError(msg)
    return Split(**parts)


def resolve_labels(data: ExpressionData, key: str) -> np.ndarray:
    """Return the labels of all samples from ``obs[key]`` as strings (``""`` if missing).

    Raises
    ------
    DataError
        When the column does not exist, or holds fewer than two distinct labels.
    """
    if key not in data.obs.columns:
        cols = ", ".join(map(str, data.obs.columns)) or "none"
        msg = f"labels column '{key}' not found in obs of {data.source} (columns: {cols})"
        raise DataError(msg)
    col = data.obs[key]
    missing = col.isna().to_numpy()
    labels = np.where(missing, "", col.astype(str).to_numpy()).astype(str)
    n_classes = len(np.unique(labels[~missing]))
    if n_classes < 2:
        msg = (
            f"labels column '{key}' holds {n_classes} distinct label(s); classification "
            "accuracy needs at least two classes (omit --labels)"
        )
        raise DataError(msg)
    return labels


def label_codes(labels: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Integer codes (``-1`` for missing ``""``) and the sorted class names of ``labels``."""
    classes = sorted(set(labels.tolist()) - {""})
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index.get(v, -1) for v in labels.tolist()], np.int64), classes


# --------------------------------------------------------------------------- preprocessing


def _has_negative(data: ExpressionData, rows: np.ndarray, batch_size: int) -> bool:
    if not data.is_backed:
        x = data.X
        return bool(x.data.size and x.data.min() < 0) if sp.issparse(x) else bool(x.min() < 0)
    for i in range(0, len(rows), batch_size):
        x = data.rows(rows[i : i + batch_size])
        values = x.data if sp.issparse(x) else x
        if values.size and values.min() < 0:
            return True
    return False



@dataclass
class Preprocessor:
    """Per-sample normalisation + log1p and/or per-gene standardisation.

    ``kind`` is one of ``none``, ``log1p`` (scale each sample to ``target_sum`` total,
    then ``log1p``, as ``scanpy.pp.normalize_total`` + ``scanpy.pp.log1p``),
    ``standardize`` (per-gene z-score with training mean and standard deviation, as
    D-GEX) or ``log1p+standardize`` (both, in that order).
    """

    kind: str = "none"
    target_sum: float | None = None
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    @property
    def uses_log1p(self) -> bool:
        """Whether samples are normalised to ``target_sum`` and log-transformed."""
        return self.kind in ("log1p", "log1p+standardize")

    @property
    def uses_standardize(self) -> bool:
        """Whether genes are z-scored with the fitted mean and sd."""
        return self.kind in ("standardize", "log1p+standardize")

    def fit(
        self, data: ExpressionData, rows: np.ndarray, batch_size: int = 4096
    ) -> Preprocessor:
        """Fit ``target_sum`` (median training total) and per-gene mean/sd on ``rows``."""
        if self.uses_log1p:
            if _has_negative(data, rows, batch_size):
                self._negative(data)
            if self.target_sum is None:
                totals = np.concatenate(
                    [
                        np.asarray(data.rows(rows[i : i + batch_size]).sum(axis=1)).ravel()
                        for i in range(0, len(rows), batch_size)
                    ]
                )
                med = float(np.median(totals))
                if med <= 0:
                    msg = (
                        f"the median total per sample in {data.source} is {med}; "
                        "log1p normalisation needs positive totals (use --preprocess none "
                        "or standardize)"
                    )
                    raise DataError(msg)
                self.target_sum = med
        if self.uses_standardize:
            mean, var = self.row_moments(data, rows, batch_size)
            std = np.sqrt(var)
            std[std < 1e-8] = 1.0
            self.mean = mean.astype(np.float32)
            self.std = std.astype(np.float32)
        return self

    def row_moments(
        self, data: ExpressionData, rows: np.ndarray, batch_size: int = 4096
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per-gene mean and variance ``[d]`` (float64) of the per-sample-normalised ``rows``.

        Only the row-wise part of the preprocessing (normalise + log1p) is applied, never
        the per-gene z-score; read in batches of ``batch_size`` rows (fewer on many genes,
        :func:`block_rows`).
        """
        d = data.shape[1]
        batch_size = block_rows(d, batch_size)
        s1 = np.zeros(d, np.float64)
        s2 = np.zeros(d, np.float64)
        for i in range(0, len(rows), batch_size):
            xb = self._row_transform(data.rows(rows[i : i + batch_size])).astype(np.float64)
            s1 += xb.sum(axis=0)
            s2 += (xb * xb).sum(axis=0)
        n = max(len(rows), 1)
        mean = s1 / n
        return mean, np.maximum(s2 / n - mean * mean, 0.0)

    @staticmethod
    def _negative(data: ExpressionData) -> None:
        msg = (
            f"{data.source} holds negative values, so it is not counts; "
            "log1p normalisation needs counts: use --preprocess none or standardize"
        )
        raise UsageError(msg)

    def _row_transform(self, x: np.ndarray | sp.spmatrix) -> np.ndarray:
        """Per-sample part (normalise + log1p) returning dense float32."""
        if self.uses_log1p:
            totals = np.asarray(x.sum(axis=1), dtype=np.float64).reshape(-1, 1)
            scale = np.divide(
                self.target_sum, totals, out=np.zeros_like(totals), where=totals > 0
            ).astype(np.float32)
            if sp.issparse(x):
                x = sp.csr_matrix(x.multiply(scale))
                x.data = np.log1p(x.data)
                return x.toarray().astype(np.float32, copy=False)
            return np.log1p(np.asarray(x, np.float32) * scale).astype(np.float32, copy=False)
        if sp.issparse(x):
            return x.toarray().astype(np.float32, copy=False)
        return np.asarray(x, dtype=np.float32)

    def transform(self, x: np.ndarray | sp.spmatrix) -> np.ndarray:
        """Preprocess raw rows ``[b, d]`` (dense or sparse) into dense float32 ``[b, d]``."""
        out = self._row_transform(x)
        if self.uses_standardize:
            out = (out - self.mean) / self.std
        return out.astype(np.float32, copy=False)

    def transform_columns(
        self, x: np.ndarray, cols: np.ndarray, totals: np.ndarray | None = None
    ) -> np.ndarray:
        """Preprocess raw values of a subset of genes ``cols`` (``x`` is ``[b, len(cols)]``).

        For ``log1p`` the per-sample ``totals`` over *all* genes are needed, since the
        normalisation divides by them.
        """
        x = np.asarray(x, dtype=np.float32)
        if self.uses_log1p:
            if totals is None:
                msg = "log1p preprocessing needs per-sample totals over all genes"
                raise DataError(msg)
            t = np.asarray(totals, np.float64).reshape(-1, 1)
            scale = np.divide(self.target_sum, t, out=np.zeros_like(t), where=t > 0)
            x = np.log1p(x * scale.astype(np.float32))
        if self.uses_standardize:
            x = (x - self.mean[cols]) / self.std[cols]
        return x.astype(np.float32, copy=False)

    def inverse_transform_columns(
        self, x: np.ndarray, cols: np.ndarray | None = None
    ) -> np.ndarray:
        """Undo the per-gene standardisation only (values stay on the log1p scale)."""
        if not self.uses_standardize:
            return x
        mean = self.mean if cols is None else self.mean[cols]
        std = self.std if cols is None else self.std[cols]
        return x * std + mean

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description (arrays are saved separately)."""
        return {"kind": self.kind, "target_sum": self.target_sum}

    def arrays(self) -> dict[str, np.ndarray]:
        """The fitted per-gene arrays to store beside the description."""
        out: dict[str, np.ndarray] = {}
        if self.mean is not None:
            out["mean"] = self.mean
            out["std"] = self.std  # type: ignore[assignment]
        return out

    @classmethod
    def from_saved(cls, desc: dict[str, Any], arrays: dict[str, np.ndarray]) -> Preprocessor:
        """Rebuild a fitted preprocessor from :meth:`to_dict` and :meth:`arrays`."""
        return cls(
            kind=desc["kind"],
            target_sum=desc.get("target_sum"),
            mean=arrays.get("mean"),
            std=arrays.get("std"),
        )


def dense_rows(
    data: ExpressionData, pre: Preprocessor, rows: np.ndarray, batch_size: int = 4096
) -> np.ndarray:
    """Preprocessed dense ``[len(rows), d]`` float32 matrix of ``rows``, built in batches."""
    out = np.empty((len(rows), data.shape[1]), np.float32)
    for i in range(0, len(rows), batch_size):
        out[i : i + batch_size] = pre.transform(data.rows(rows[i : i + batch_size]))
    return out


#: Bytes one block of evaluation rows may take as float64 (``[rows, d]``): the passes
#: over every training/test row read, preprocess and predict one block at a time, and
#: each keeps a few arrays of this size alive, so on 30,000 genes 2,048-row blocks
#: (0.5 GB each) would add over 1 GB to the peak.
BLOCK_BYTES = 64 * 2**20


def block_rows(d: int, batch: int = 2048) -> int:
    """Rows per evaluation block on ``d`` genes: ``batch``, fewer when the block is large."""
    return max(16, min(batch, BLOCK_BYTES // (8 * max(d, 1))))


def sample_rows(rows: np.ndarray, max_rows: int | None, seed: int, stream: int) -> np.ndarray:
    """At most ``max_rows`` of ``rows``: all of them, or a sorted random subset.

    ``stream`` names the purpose (each caller has its own, so that their subsets are
    independent and stay the same when another caller changes).
    """
    rows = np.asarray(rows)
    if max_rows is None or len(rows) <= max_rows:
        return rows
    return np.sort(np.random.default_rng([seed, stream]).choice(rows, max_rows, replace=False))

"""The data every command shares, built once: matrix, split, fitted preprocessing, rows.

A :class:`Dataset` holds the loaded :class:`~genepanel.io.ExpressionData`, the
train/validation/test split, the preprocessing fitted on the training rows, one
:class:`~genepanel.train.RowSource` per part, and caches within the host memory budget:
the dense training matrix the baseline selectors and the swap refinement read (a random
subset of rows when the whole would not fit), and the test rows, so that scoring after
training reads them from disk at most once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import jax
import numpy as np

from genepanel.config import SelectConfig
from genepanel.data import (
    Preprocessor,
    Split,
    block_rows,
    dense_rows,
    label_codes,
    make_split,
    resolve_labels,
    sample_rows,
)
from genepanel.errors import DataError
from genepanel.io import ExpressionData
from genepanel.train import RowSource

#: The per-epoch validation error uses at most this many validation rows.
VAL_ROWS = 8192


@dataclass
class Dataset:
    """Loaded data, split, fitted preprocessing and row sources, shared by every panel.

    ``label_codes``/``classes`` are the training labels of a supervised run
    (``cfg.labels``); ``eval_labels`` (strings, ``""`` = missing) are only scored
    (classification accuracy of each panel), never trained on.
    """

    data: ExpressionData
    split: Split
    pre: Preprocessor
    train: RowSource
    val: RowSource | None
    test: RowSource
    seed: int
    host_budget_bytes: int
    timings: dict[str, float] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    label_codes: np.ndarray | None = None
    eval_labels: np.ndarray | None = None
    cache: dict = field(default_factory=dict)
    _train_rows: np.ndarray | None = None
    _train_x: np.ndarray | None = None
    _train_xc: np.ndarray | None = None

    @classmethod
    def build(
        cls, data: ExpressionData, cfg: SelectConfig, *, eval_labels: str | None = None,
        pre: Preprocessor | None = None,
    ) -> Dataset:
        """Split ``data``, fit the preprocessing on the training rows and set up row sources.

        With ``pre`` (a fitted preprocessing, e.g. a saved run's) that one is used as is.
        """
        t = time.perf_counter()
        n, d = data.shape
        split = make_split(n, cfg.split, cfg.seed, data.obs)
        if pre is None:
            pre = Preprocessor(kind=cfg.preprocess, target_sum=cfg.target_sum).fit(
                data, split.train)
        budget = cfg.train.device_memory_budget_gb * 2**30
        host = int(cfg.input.host_memory_budget_gb * 2**30)
        # Fast path: the training matrix lives on the device. Several processes stream
        # instead, each reading only its own rows of every minibatch.
        single = jax.process_count() == 1 and not data.is_backed
        materialize = len(split.train) * d * 4 <= budget and single
        codes, classes = None, []
        if cfg.labels is not None:
            codes, classes = label_codes(resolve_labels(data, cfg.labels))
            if len(np.unique(codes[split.train][codes[split.train] >= 0])) < 2:
                msg = (f"labels column '{cfg.labels}' has fewer than two classes among the "
                       "training samples; supervised panels need at least two")
                raise DataError(msg)
        lab = {"labels": codes, "n_classes": len(classes)}
        val_rows = sample_rows(split.val, VAL_ROWS, cfg.seed, 17)
        # The test rows are read once and kept when they fit a quarter of the host budget.
        keep_test = len(split.test) * d * 4 <= host // 4 and not data.is_backed
        return cls(
            data=data, split=split, pre=pre,
            train=RowSource(data, pre, split.train, materialize=materialize, **lab),
            val=(RowSource(data, pre, val_rows, materialize=materialize, **lab)
                 if len(val_rows) else None),
            test=RowSource(data, pre, split.test, materialize=keep_test, **lab),
            seed=cfg.seed, host_budget_bytes=host,
            timings={"preprocess": time.perf_counter() - t},
            classes=classes, label_codes=codes,
            eval_labels=resolve_labels(data, eval_labels) if eval_labels is not None else None,
        )

    @property
    def n_genes(self) -> int:
        """Number of genes ``d``."""
        return self.data.shape[1]

    @property
    def max_train_rows(self) -> int:
        """Training rows the dense selector copies hold: two float64 copies in half the budget."""
        return max(1000, self.host_budget_bytes // (4 * 8 * 2 * self.n_genes))

    def train_sample_rows(self) -> np.ndarray:
        """The training rows the selectors see (all, or a random subset within the budget)."""
        if self._train_rows is None:
            self._train_rows = sample_rows(self.split.train, self.max_train_rows, self.seed,
                                           0x5E1)
        return self._train_rows

    def train_matrix(self) -> np.ndarray:
        """Dense preprocessed ``[n, d]`` float32 training rows (cached)."""
        if self._train_x is None:
            rows = self.train_sample_rows()
            self._train_x = (self.matrix("train") if len(rows) == self.train.n
                             else dense_rows(self.data, self.pre, rows))
        return self._train_x

    def _dense(self, part: str) -> np.ndarray | None:
        """Every row of ``part``, dense, if held already (materialised or cached)."""
        source = getattr(self, part)
        if source is not None and source.dense is not None:
            return source.dense[:, : self.n_genes]
        return self.cache.get(("dense", part))

    def matrix(self, part: str) -> np.ndarray:
        """Dense preprocessed ``[n, d]`` float32 rows of ``part`` (``train``/``val``/``test``).

        Every row of that part (the row source's; the validation rows are capped at
        :data:`VAL_ROWS`), read at most once: a row source's materialised copy, else
        read and kept, so that later passes (:meth:`blocks`) read it from memory.
        """
        x = self._dense(part)
        if x is None:
            source = getattr(self, part)
            if source is None:
                return np.empty((0, self.n_genes), np.float32)
            x = self.cache[("dense", part)] = dense_rows(self.data, self.pre, source.rows)
        return x

    def blocks(self, part: str, batch: int = 2048) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(data rows, dense preprocessed rows)`` of ``part`` in blocks of ``batch`` rows.

        From memory when the part is held dense (:meth:`matrix`), else read and
        preprocessed block by block (a sparse matrix is never densified whole). On many
        genes a block has fewer rows (:func:`~genepanel.data.block_rows`).
        """
        batch = block_rows(self.n_genes, batch)
        source = getattr(self, part)
        x = self._dense(part)
        for i in range(0, source.n, batch):
            rows = source.rows[i : i + batch]
            yield rows, (x[i : i + batch] if x is not None else
                         source.pre.transform(source.data.rows(rows)))

    def train_centred(self) -> np.ndarray:
        """Column-centred float64 copy of :meth:`train_matrix` (cached)."""
        if self._train_xc is None:
            from genepanel.selectors import centred

            self._train_xc = centred(self.train_matrix())
        return self._train_xc

    def release(self) -> None:
        """Drop the dense selector copies (the row sources stay)."""
        self._train_x = self._train_xc = None
        self.cache.clear()

"""Impute every gene from measurements of the panel with a saved ``genepanel select`` model.

The input holds the panel genes (any order, other genes ignored) or the full gene set;
genes are matched by name. Rows are processed in batches, read from disk one batch at
a time (``.h5ad`` through h5py, dense or sparse), and :func:`impute_file` writes the
output ``.h5ad`` batch by batch into a temporary file that is moved into place only
when complete.

Values
------
The decoder works on the model's preprocessed scale (the training preprocessing
applied from its stored statistics: ``log1p`` of counts normalised to the stored
``target_sum`` and/or the per-gene z-score). The output is on that scale; with
``original_scale`` the per-gene z-score is undone (values are then on the log1p scale
for ``log1p+standardize`` models and on the input's scale for ``standardize`` models).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from genepanel.errors import DataError, UsageError
from genepanel.io import (
    BackedMatrix,
    read_matrix,
    temp_file_beside,
    uns_safe,
    write_error,
    write_json,
    write_tsv,
)
from genepanel.saved import DECODERS, FittedModel, load_model

UNS_KEY = "genepanel_impute"
#: Default batch: at most this many values (rows × genes) per batch, and at most 4096 rows.
BATCH_VALUES = 2**24


# --------------------------------------------------------------------------- row readers


class _Rows:
    """Row-batch access to an expression matrix: ``genes``, ``obs``, ``n`` and ``read``."""

    genes: list[str]
    obs: pd.DataFrame
    source: str

    @property
    def n(self) -> int:
        return len(self.obs)

    def read(self, start: int, stop: int) -> np.ndarray | sp.csr_matrix:  # pragma: no cover
        raise NotImplementedError

    def close(self) -> None:
        """Release the file (if any)."""


class _MatrixRows(_Rows):
    """An in-memory (or AnnData-backed) matrix sliced by rows."""

    def __init__(self, X: Any, genes: list[str], obs: pd.DataFrame, source: str):
        self.X, self.genes, self.obs, self.source = X, genes, obs, source

    def read(self, start: int, stop: int) -> np.ndarray | sp.csr_matrix:
        block = self.X[start:stop]
        if sp.issparse(block):
            return sp.csr_matrix(block, dtype=np.float32)
        return np.asarray(block, dtype=np.float32)

    def close(self) -> None:
        """Close the file behind a streamed matrix."""
        if isinstance(self.X, BackedMatrix):
            self.X.close()


def _open_rows(
    data: Any, layer: str | None, gene_column: str | None, hdf5: dict[str, Any]
) -> _Rows:
    """Open a row reader over an AnnData, an ``.h5ad`` path or a plain HDF5 path."""
    import anndata as ad

    if isinstance(data, ad.AnnData):
        X = data.X if layer is None else data.layers.get(layer)
        if X is None:
            what = "X" if layer is None else f"layer '{layer}'"
            msg = f"the AnnData has no {what}; pass layer= with one of {list(data.layers)}"
            raise DataError(msg)
        if gene_column is None:
            genes = [str(g) for g in data.var_names]
        else:
            if gene_column not in data.var.columns:
                msg = f"the AnnData has no var column '{gene_column}'"
                raise DataError(msg)
            genes = [str(g) for g in data.var[gene_column]]
        return _MatrixRows(X, genes, data.obs, "AnnData in memory")
    # .h5ad and plain HDF5 stay on disk (rows read per batch), except a genes × samples
    # HDF5 matrix, which has to be transposed in memory.
    stream = not hdf5.get("genes_by_samples", False)
    ed = read_matrix(Path(data), layer=layer, gene_column=gene_column, stream=stream, **hdf5)
    return _MatrixRows(ed.X, ed.genes, ed.obs, ed.source)


# --------------------------------------------------------------------------- planning


@dataclass
class _Plan:
    """Where the model's genes are in the input and how to preprocess it."""

    panel_cols: np.ndarray  # [k] input column of each panel gene (model node order)
    model_cols: np.ndarray | None  # [d] input columns of all model genes, when all present
    eval_in: np.ndarray  # input columns of the non-panel model genes present
    eval_out: np.ndarray  # their positions in model.genes
    totals: np.ndarray | None  # [n] per-sample totals from obs (log1p, panel-only input)
    totals_from: str


def _alternatives(model: FittedModel, missing: list[str], present: set[str]) -> list[str]:
    """``"GENE → ALT1 (p 0.21), ALT2"`` for missing panel genes with present related genes."""
    folder = model.meta.get("_folder")
    path = Path(folder) / "groups.tsv" if folder else None
    if path is None or not path.is_file():
        return []
    groups = pd.read_csv(path, sep="\t")
    out = []
    for gene in missing:
        rows = groups[(groups["panel_gene"].astype(str) == gene) & ~groups["selected"].astype(bool)]
        alts = [
            f"{g} (p {p:.2f})"
            for g, p in zip(rows["gene"].astype(str), rows["probability"], strict=True)
            if g in present
        ]
        if alts:
            out.append(f"{gene} → {', '.join(alts)}")
    return out


def _plan(
    rows: _Rows, model: FittedModel, totals_column: str | None, *, evaluate: bool
) -> _Plan:
    pos = {g: i for i, g in enumerate(rows.genes)}
    present = set(pos)
    missing = [g for g in model.panel_genes if g not in pos]
    if len(missing) == len(model.panel_genes):
        shown = ", ".join(model.panel_genes[:5])
        first = ", ".join(rows.genes[:3])
        msg = (
            f"{rows.source} shares no gene with the panel ({len(model.panel_genes)} genes, e.g. "
            f"{shown}; input genes look like {first}): name genes as at training, e.g. "
            "with --gene-column"
        )
        raise DataError(msg)
    if missing:
        alts = _alternatives(model, missing, present)
        hint = (
            f"; related genes from the run's groups.tsv present in the input: {'; '.join(alts)} "
            "(the decoder needs the panel genes: measure them, or select a new panel from the "
            "genes you have)"
            if alts
            else "; measure them, or select a new panel from the genes you have"
        )
        msg = (
            f"{len(missing)} of {len(model.panel_genes)} panel genes are missing from "
            f"{rows.source}: {', '.join(missing)}{hint}"
        )
        raise DataError(msg)
    panel_cols = np.array([pos[g] for g in model.panel_genes], np.int64)
    all_present = all(g in pos for g in model.genes)
    model_cols = np.array([pos[g] for g in model.genes], np.int64) if all_present else None
    panel_set = set(model.panel_genes)
    eval_out = np.array(
        [j for j, g in enumerate(model.genes) if g in pos and g not in panel_set], np.int64
    )
    eval_in = np.array([pos[model.genes[j]] for j in eval_out], np.int64)
    if evaluate and len(eval_out) == 0:
        msg = (
            f"--evaluate needs true values of genes outside the panel, but {rows.source} holds "
            "only panel genes; drop --evaluate or pass an input with more genes"
        )
        raise UsageError(msg)
    totals, totals_from = None, "not needed"
    if model.pre.uses_log1p:
        if totals_column is not None:
            if totals_column not in rows.obs.columns:
                cols = ", ".join(map(str, rows.obs.columns)) or "none"
                msg = f"--totals-column '{totals_column}' not in obs of {rows.source} (obs: {cols})"
                raise DataError(msg)
            totals = pd.to_numeric(rows.obs[totals_column], errors="coerce").to_numpy(np.float64)
            if not np.all(np.isfinite(totals)) or np.any(totals <= 0):
                msg = (
                    f"obs column '{totals_column}' must hold positive per-sample totals; "
                    "it has missing, zero or negative values"
                )
                raise DataError(msg)
            totals_from = f"obs column '{totals_column}'"
        elif model_cols is not None:
            totals_from = "sum over the model's genes in the input"
        else:
            have = [c for c in rows.obs.columns if "total" in str(c).lower()]
            hint = f" (obs has {', '.join(map(str, have))})" if have else ""
            msg = (
                f"this model normalises each sample by its total over all {len(model.genes)} "
                f"training genes, but {rows.source} holds only some of them: pass "
                f"--totals-column with an obs column of per-sample totals{hint}"
            )
            raise UsageError(msg)
    return _Plan(panel_cols, model_cols, eval_in, eval_out, totals, totals_from)


# --------------------------------------------------------------------------- evaluation


@dataclass
class _EvalSums:
    """Streaming per-gene sums for MSE and Pearson correlation (float64)."""

    d: int
    n: int = 0
    st: np.ndarray = field(init=False)
    sp_: np.ndarray = field(init=False)
    stt: np.ndarray = field(init=False)
    spp: np.ndarray = field(init=False)
    stp: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        z = np.zeros(self.d)
        self.st, self.sp_, self.stt, self.spp, self.stp = (z.copy() for _ in range(5))

    def add(self, truth: np.ndarray, pred: np.ndarray) -> None:
        t, p = truth.astype(np.float64), pred.astype(np.float64)
        self.n += len(t)
        self.st += t.sum(0)
        self.sp_ += p.sum(0)
        self.stt += (t * t).sum(0)
        self.spp += (p * p).sum(0)
        self.stp += (t * p).sum(0)

    def mse(self) -> np.ndarray:
        """``[d]`` per-gene mean squared error."""
        return (self.stt - 2 * self.stp + self.spp) / max(self.n, 1)

    def pearson(self) -> np.ndarray:
        """``[d]`` per-gene Pearson correlation (NaN where either side is constant)."""
        n = self.n
        cov = n * self.stp - self.st * self.sp_
        vt = n * self.stt - self.st**2
        vp = n * self.spp - self.sp_**2
        denom = np.sqrt(np.clip(vt, 0, None) * np.clip(vp, 0, None))
        scale = np.maximum(np.abs(n * self.stt), 1.0)
        ok = (vt > 1e-12 * scale) & (vp > 1e-12 * np.maximum(np.abs(n * self.spp), 1.0))
        out = np.full(self.d, np.nan)
        out[ok] = cov[ok] / denom[ok]
        return np.clip(out, -1.0, 1.0)


@dataclass
class Evaluation:
    """Accuracy of an imputation where the input held true values.

    Attributes
    ----------
    summary
        JSON-able: ``mse_non_panel`` (mean over samples and the non-panel genes with
        true values), ``mse_all_genes`` (over every output gene, when the input held
        them all), ``pearson_mean``/``pearson_median`` (per-gene, over non-panel genes
        with variance), counts. All on the model's preprocessed scale.
    per_gene
        One row per evaluated non-panel gene: ``gene``, ``mse``, ``pearson``,
        ``truth_variance``.
    """

    summary: dict[str, Any]
    per_gene: pd.DataFrame


def _evaluation(
    model: FittedModel, plan: _Plan, sums: _EvalSums, panel_sse: float | None, n: int
) -> Evaluation:
    genes = [model.genes[j] for j in plan.eval_out]
    mse = sums.mse()
    r = sums.pearson()
    var = sums.stt / max(sums.n, 1) - (sums.st / max(sums.n, 1)) ** 2
    per_gene = pd.DataFrame({"gene": genes, "mse": mse, "pearson": r, "truth_variance": var})
    valid = np.isfinite(r)
    summary: dict[str, Any] = {
        "scale": "preprocessed",
        "n_samples": n,
        "n_genes_evaluated": len(genes),
        "mse_non_panel": float(mse.mean()),
        "pearson_mean": float(np.nanmean(r)) if valid.any() else None,
        "pearson_median": float(np.nanmedian(r)) if valid.any() else None,
        "n_genes_with_pearson": int(valid.sum()),
    }
    if panel_sse is not None:
        total = panel_sse + float(mse.sum()) * n
        summary["mse_all_genes"] = total / (n * len(model.genes))
    return Evaluation(summary, per_gene)


# --------------------------------------------------------------------------- the core


def _default_batch(d: int) -> int:
    return int(max(1, min(4096, BATCH_VALUES // max(d, 1))))


def _dense(x: np.ndarray | sp.csr_matrix) -> np.ndarray:
    return x.toarray().astype(np.float32, copy=False) if sp.issparse(x) else x


def _check_panel(raw_panel: np.ndarray, source: str, start: int, pre: Any) -> None:
    """Raise :class:`DataError` for non-finite panel values, or negative ones for log1p."""
    bad = ~np.isfinite(raw_panel)
    if bad.any():
        row = int(np.argwhere(bad)[0][0]) + start
        msg = f"{source} holds NaN or infinite panel values (first at sample {row}); fix the input"
        raise DataError(msg)
    if pre.uses_log1p and np.any(raw_panel < 0):
        row = int(np.argwhere(raw_panel < 0)[0][0]) + start
        msg = (
            f"{source} holds negative panel values (first at sample {row}); this model "
            "normalises counts with log1p: pass raw counts, not transformed values"
        )
        raise DataError(msg)


def _batches(
    rows: _Rows,
    model: FittedModel,
    plan: _Plan,
    *,
    keep_measured: bool,
    decoder: str,
    batch_size: int,
    original_scale: bool,
    sums: _EvalSums | None,
) -> Iterator[tuple[int, np.ndarray, float]]:
    """Yield ``(start, imputed [b, d], panel SSE of the batch)`` over all rows."""
    pre = model.pre
    for start in range(0, rows.n, batch_size):
        stop = min(start + batch_size, rows.n)
        raw = rows.read(start, stop)
        totals = plan.totals[start:stop] if plan.totals is not None else None
        truth = None
        if plan.model_cols is not None and totals is None:
            # every model gene present: exactly the training preprocessing
            full_raw = raw[:, plan.model_cols]
            _check_panel(_dense(full_raw[:, model.panel_index]), rows.source, start, pre)
            full = pre.transform(full_raw)
            panel = full[:, model.panel_index]
            if sums is not None:
                truth = full
        else:
            raw_panel = _dense(raw[:, plan.panel_cols])
            _check_panel(raw_panel, rows.source, start, pre)
            panel = pre.transform_columns(raw_panel, model.panel_index, totals)
            if sums is not None:
                truth_cols = pre.transform_columns(
                    _dense(raw[:, plan.eval_in]), plan.eval_out, totals
                )
                truth = np.zeros((stop - start, len(model.genes)), np.float32)
                truth[:, plan.eval_out] = truth_cols
                truth[:, model.panel_index] = panel
        pred = np.array(model.predict(panel, decoder=decoder), np.float32)
        if keep_measured:
            pred[:, model.panel_index] = panel
        panel_sse = 0.0
        if sums is not None and truth is not None:
            sums.add(truth[:, plan.eval_out], pred[:, plan.eval_out])
            panel_sse = float(np.sum(np.square(
                pred[:, model.panel_index].astype(np.float64) - panel
            )))
        if original_scale:
            pred = pre.inverse_transform_columns(pred).astype(np.float32, copy=False)
        yield start, pred, panel_sse


def _prepare(
    data: Any,
    model: FittedModel | str | Path,
    *,
    decoder: str,
    batch_size: int | None,
    layer: str | None,
    gene_column: str | None,
    totals_column: str | None,
    evaluate: bool,
    hdf5: dict[str, Any],
) -> tuple[FittedModel, _Rows, _Plan, int]:
    if decoder not in DECODERS:
        msg = f"--fitted-decoder must be one of {', '.join(DECODERS)}; got {decoder!r}"
        raise UsageError(msg)
    if batch_size is not None and batch_size < 1:
        msg = f"--batch-size must be ≥ 1, got {batch_size}"
        raise UsageError(msg)
    if not isinstance(model, FittedModel):
        folder = Path(model)
        model = load_model(folder)
        model.meta["_folder"] = str(folder)
    rows = _open_rows(data, layer, gene_column, hdf5)
    try:
        plan = _plan(rows, model, totals_column, evaluate=evaluate)
    except BaseException:
        rows.close()
        raise
    return model, rows, plan, batch_size or _default_batch(len(model.genes))


def _provenance(
    model: FittedModel, rows: _Rows, plan: _Plan, *, decoder: str, keep_measured: bool,
    original_scale: bool,
) -> dict[str, Any]:
    from genepanel import __version__

    pre = model.pre
    if original_scale and pre.uses_standardize:
        scale = "log1p (z-score undone)" if pre.uses_log1p else "input scale (z-score undone)"
    else:
        scale = f"preprocessed ({pre.kind})"
    prov: dict[str, Any] = {
        "genepanel_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model_folder": str(model.meta.get("_folder", "in memory")),
        "model_source": str(model.meta.get("source", "unknown")),
        "model_seed": int(model.meta.get("seed", -1)),
        "input": rows.source,
        "n_samples": rows.n,
        "n_genes_out": len(model.genes),
        "panel_genes": list(model.panel_genes),
        "decoder": decoder,
        "measured_panel_genes": "kept as measured" if keep_measured else "decoder reconstruction",
        "scale": scale,
        "preprocess_kind": pre.kind,
        "totals": plan.totals_from,
    }
    if pre.target_sum is not None:
        prov["preprocess_target_sum"] = float(pre.target_sum)
    return prov


def _var(model: FittedModel, plan: _Plan, rows: _Rows, *, keep_measured: bool) -> pd.DataFrame:
    d = len(model.genes)
    node = np.full(d, -1, np.int64)
    node[model.panel_index] = np.arange(len(model.panel_index))
    in_input = np.zeros(d, bool)
    in_input[model.panel_index] = True
    in_input[plan.eval_out] = True
    panel = node >= 0
    return pd.DataFrame(
        {"panel": panel, "panel_node": node, "measured": panel & keep_measured,
         "in_input": in_input},
        index=pd.Index(model.genes, name=None),
    )


def _obs(rows: _Rows) -> pd.DataFrame:
    obs = rows.obs.copy()
    obs.index = obs.index.astype(str)
    return obs


def impute(
    data: Any,
    model: FittedModel | str | Path,
    *,
    keep_measured: bool = True,
    decoder: str = "trained",
    batch_size: int | None = None,
    original_scale: bool = False,
    totals_column: str | None = None,
    layer: str | None = None,
    gene_column: str | None = None,
    evaluate: bool = False,
) -> Any:
    """Impute every gene the model knows from the panel genes of ``data``.

    Parameters
    ----------
    data
        An :class:`anndata.AnnData` (samples × genes; not modified) or the path of an
        ``.h5ad`` file (read in row batches) or plain HDF5 file.
    model
        A :class:`~genepanel.saved.FittedModel` or a ``genepanel select`` run folder.
    keep_measured
        Keep the measured (preprocessed) panel values in the output; otherwise the
        decoder's reconstruction of the panel genes is returned.
    decoder
        ``"trained"`` (the decoder trained with the selector) or ``"linear"`` (the
        refit linear regression).
    batch_size
        Rows per batch (default: up to 4096 rows and 2²⁴ values).
    original_scale
        Undo the per-gene z-score of ``standardize`` models (see the module docstring).
    totals_column
        ``obs`` column of per-sample totals over all training genes; needed for
        ``log1p`` models when ``data`` does not hold every training gene.
    layer, gene_column
        Read a layer instead of ``X``; take gene names from a ``var`` column.
    evaluate
        Also score the imputation against the true values of non-panel genes in
        ``data``; the result goes to ``uns['genepanel_impute']['evaluation']`` and
        the per-gene table to ``uns['genepanel_impute_per_gene']``.

    Returns
    -------
    anndata.AnnData
        ``X`` float32 ``[n_samples, n_model_genes]`` (dense), ``obs`` copied from the
        input, ``var`` indexed by the model's genes with columns ``panel``,
        ``panel_node``, ``measured`` and ``in_input``, provenance in
        ``uns['genepanel_impute']``.

    Raises
    ------
    DataError
        Missing panel genes (with alternatives from the run's related-gene groups),
        no shared genes, non-finite panel values.
    UsageError
        Bad options, or a ``log1p`` model without per-sample totals.
    ModelError
        Missing or incompatible model folder.
    """
    import anndata as ad

    model, rows, plan, bs = _prepare(
        data, model, decoder=decoder, batch_size=batch_size, layer=layer,
        gene_column=gene_column, totals_column=totals_column, evaluate=evaluate, hdf5={},
    )
    try:
        sums = _EvalSums(len(plan.eval_out)) if evaluate else None
        X = np.empty((rows.n, len(model.genes)), np.float32)
        panel_sse = 0.0
        for start, pred, sse in _batches(rows, model, plan, keep_measured=keep_measured,
                                         decoder=decoder, batch_size=bs,
                                         original_scale=original_scale, sums=sums):
            X[start : start + len(pred)] = pred
            panel_sse += sse
        uns = _provenance(model, rows, plan, decoder=decoder, keep_measured=keep_measured,
                          original_scale=original_scale)
        out = ad.AnnData(X=X, obs=_obs(rows), var=_var(model, plan, rows,
                                                          keep_measured=keep_measured))
        if sums is not None:
            ev = _evaluation(model, plan, sums, panel_sse if plan.model_cols is not None else None,
                             rows.n)
            uns["evaluation"] = ev.summary
            out.uns["genepanel_impute_per_gene"] = ev.per_gene
        out.uns[UNS_KEY] = uns_safe(uns)
        return out
    finally:
        rows.close()


@dataclass
class ImputeResult:
    """What :func:`impute_file` returns (the data are in the output file)."""

    out: Path
    n_samples: int
    n_genes: int
    provenance: dict[str, Any]
    evaluation: Evaluation | None = None
    evaluation_files: list[Path] = field(default_factory=list)


def _is_impute_output(path: Path) -> bool:
    """Whether ``path`` is an ``.h5ad`` that ``genepanel impute`` wrote."""
    try:
        with h5py.File(path, "r") as f:
            return f"uns/{UNS_KEY}" in f
    except OSError:
        return False


def _check_out_file(path: Path, *, overwrite: bool) -> None:
    if path.is_dir():
        msg = (f"--out {path} is a folder; impute writes one .h5ad file: name a file, e.g. "
               f"{path / 'imputed.h5ad'}")
        raise UsageError(msg)
    if path.exists() and not overwrite:
        msg = (f"output {path} already exists; pass --overwrite to replace it or choose "
               "another --out")
        raise UsageError(msg)
    if path.exists() and not _is_impute_output(path):
        msg = (f"--overwrite: {path} is not a file genepanel impute wrote; it is never replaced: "
               "move it away or choose another --out")
        raise UsageError(msg)


class _DiscardableFile(io.RawIOBase):
    """A file for h5py's ``fileobj`` driver that never hands HDF5 a write error.

    When HDF5 meets a failed write (a full disk) it fails again while closing and
    leaves a half-closed file that crashes the interpreter at exit (SIGSEGV/SIGBUS).
    Here the first failed write is kept in :attr:`error` and from then on every
    operation succeeds without touching the disk, so the HDF5 file closes cleanly; the
    caller checks :attr:`error` (:meth:`check`) and removes the temporary file.
    """

    def __init__(self, path: Path):
        self._fh: Any = open(path, "w+b")  # closed by sync_close() or _stop()
        self._dead = False
        self._pos = 0
        self.error: OSError | None = None

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def _stop(self, exc: OSError | None = None) -> None:
        if exc is not None and self.error is None:
            self.error = exc
        self._dead = True
        with contextlib.suppress(OSError):
            self._fh.close()

    def seek(self, offset: int, whence: int = 0) -> int:
        if not self._dead:
            try:
                return self._fh.seek(offset, whence)
            except OSError as exc:
                self._stop(exc)
        self._pos = offset
        return offset

    def tell(self) -> int:
        return self._pos if self._dead else self._fh.tell()

    def write(self, b: Any) -> int:
        n = len(memoryview(b))
        if not self._dead:
            try:
                return self._fh.write(b)
            except OSError as exc:
                self._stop(exc)
        return n

    def readinto(self, b: Any) -> int:
        if not self._dead:
            try:
                return self._fh.readinto(b)
            except OSError as exc:
                self._stop(exc)
        return 0

    def truncate(self, size: int | None = None) -> int:
        if not self._dead:
            try:
                return self._fh.truncate(size)
            except OSError as exc:
                self._stop(exc)
        return int(size or 0)

    def flush(self) -> None:
        if not self._dead:
            try:
                self._fh.flush()
            except OSError as exc:
                self._stop(exc)

    def check(self) -> None:
        """Raise the first write error, if any (call between batches)."""
        if self.error is not None:
            raise self.error

    def sync_close(self) -> None:
        """Flush, fsync and close the real file; raise the first error, if any."""
        self.check()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()

    def discard(self) -> None:
        """Stop writing: every later operation is a no-op; the real file is closed."""
        self._stop()


@contextlib.contextmanager
def _atomic_h5(path: Path) -> Iterator[tuple[h5py.File, _DiscardableFile]]:
    """An HDF5 file written beside ``path`` and moved onto it only when complete.

    Yields the file and its sink (call ``sink.check()`` between batches to stop early
    on a full disk). A failed write raises :class:`DataError` with one line and leaves
    neither ``path`` changed nor a temporary file behind.
    """
    tmp = None
    sink = None
    f = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temp_file_beside(path)
        os.close(fd)
        sink = _DiscardableFile(Path(tmp))
        f = h5py.File(sink, "w")
        yield f, sink
        f.close()
        sink.sync_close()
        os.replace(tmp, path)
    except BaseException as exc:
        if sink is not None:
            sink.discard()
        if f is not None:
            with contextlib.suppress(Exception):
                f.close()
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno is not None:
            raise write_error(path, exc) from exc
        raise


def _write_elem(group: h5py.Group, key: str, value: Any) -> None:
    try:
        from anndata.io import write_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import write_elem
    write_elem(group, key, value)


def impute_file(
    data: str | Path,
    model: FittedModel | str | Path,
    out: str | Path,
    *,
    keep_measured: bool = True,
    decoder: str = "trained",
    batch_size: int | None = None,
    original_scale: bool = False,
    totals_column: str | None = None,
    layer: str | None = None,
    gene_column: str | None = None,
    dataset: str | None = None,
    genes: str | None = None,
    genes_by_samples: bool = False,
    evaluate: bool = False,
    overwrite: bool = False,
    compression: str | None = "gzip",
) -> ImputeResult:
    """Impute file to file: read ``data`` in row batches, write the ``.h5ad`` ``out`` atomically.

    Only one batch of rows (``[batch_size, n_genes]``) is held in memory at a time.
    With ``evaluate`` the metrics are also written beside ``out`` as
    ``<stem>.evaluation.json`` and ``<stem>.evaluation.tsv`` (per gene). See
    :func:`impute` for the other parameters; ``dataset``, ``genes`` and
    ``genes_by_samples`` describe a plain HDF5 input (read whole).
    """
    src, out = Path(data), Path(out)
    if out.suffix != ".h5ad":
        msg = f"--out {out} must end in .h5ad (the imputed matrix is written as AnnData)"
        raise UsageError(msg)
    if src.exists() and out.exists() and src.resolve() == out.resolve():
        msg = f"--out {out} is the input file; inputs are never modified: choose another --out"
        raise UsageError(msg)
    _check_out_file(out, overwrite=overwrite)
    hdf5 = {"dataset": dataset, "genes": genes, "genes_by_samples": genes_by_samples}
    model, rows, plan, bs = _prepare(
        src, model, decoder=decoder, batch_size=batch_size, layer=layer,
        gene_column=gene_column, totals_column=totals_column, evaluate=evaluate, hdf5=hdf5,
    )
    try:
        n, d = rows.n, len(model.genes)
        sums = _EvalSums(len(plan.eval_out)) if evaluate else None
        prov = _provenance(model, rows, plan, decoder=decoder, keep_measured=keep_measured,
                           original_scale=original_scale)
        ev = None
        with _atomic_h5(out) as (f, sink):
            f.attrs["encoding-type"] = "anndata"
            f.attrs["encoding-version"] = "0.1.0"
            chunk_rows = int(max(1, min(n, bs, 2**20 // (4 * d) or 1)))
            X = f.create_dataset("X", shape=(n, d), dtype=np.float32,
                                 chunks=(chunk_rows, d), compression=compression)
            X.attrs["encoding-type"] = "array"
            X.attrs["encoding-version"] = "0.2.0"
            panel_sse = 0.0
            for start, pred, sse in _batches(rows, model, plan, keep_measured=keep_measured,
                                             decoder=decoder, batch_size=bs,
                                             original_scale=original_scale, sums=sums):
                X[start : start + len(pred)] = pred
                panel_sse += sse
                sink.check()
            if sums is not None:
                ev = _evaluation(model, plan, sums,
                                 panel_sse if plan.model_cols is not None else None, n)
                prov["evaluation"] = ev.summary
            _write_elem(f, "obs", _obs(rows))
            _write_elem(f, "var", _var(model, plan, rows, keep_measured=keep_measured))
            _write_elem(f, "uns", {UNS_KEY: uns_safe(prov)})
            for empty in ("obsm", "varm", "obsp", "varp", "layers"):
                _write_elem(f, empty, {})
    finally:
        rows.close()
    files: list[Path] = []
    if ev is not None:
        stem = out.with_suffix("")
        files = [stem.with_name(stem.name + ".evaluation.json"),
                 stem.with_name(stem.name + ".evaluation.tsv")]
        write_json(files[0], ev.summary)
        write_tsv(files[1], ev.per_gene)
    return ImputeResult(out=out, n_samples=n, n_genes=d, provenance=prov, evaluation=ev,
                        evaluation_files=files)

"""Compare a selected panel with a reference panel (default: the L1000 landmarks).

Both panels are scored on the same rows with the same preprocessing as the panel's
``genepanel select`` run (its stored config, seed and split rule, and its fitted
preprocessing statistics). For each panel every decoder class is fitted from scratch on
the training rows: the closed-form linear regression (ridge with the penalty chosen by
generalised cross-validation on the training rows, 0 = least squares; chosen on the
validation rows instead where the panel has at least as many genes, plus intercept, as
there are training rows: least squares would interpolate them; see
:func:`genepanel.evaluate.guarded_linear_fit`), and MLPs (Dense + LeakyReLU(0.2), Adam,
early stopping on the validation rows) over several seeds. The data are held in a
:class:`~genepanel.dataset.Dataset` (the run's split and fitted preprocessing, each part
read once) and every panel and decoder is scored by :func:`genepanel.evaluate.score`
(``guarded``, ``per_gene``) in one pass over the test rows, which give the metrics:

- ``mse_all``: mean squared error over every gene (the paper's metric; a panel's own
  genes count too, which favours the larger panel);
- ``mse_neither``: over the genes in neither panel (the same genes for both: the fair
  imputation comparison);
- per-gene Pearson correlation over the genes in neither panel (mean and median).

With ``sweep`` concrete-autoencoder panels of several sizes are trained on the same
``Dataset`` (the paper's Fig. 6b) and the smallest whose linear-decoder ``mse_all``
reaches the reference's is reported, counting only panels whose selector converged and
whose linear fit is determined by the training rows (``gcv``, :func:`sweep_match`).
Greedy column subset selection and top-variance panels of the same sizes are scored
alongside; the report says when either reaches the reference at a smaller size than the
CAE panels or beats a CAE panel of the same size (:func:`baseline_notes`).
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from genepanel.config import SelectConfig, from_dict
from genepanel.dataset import Dataset
from genepanel.errors import DataError, UsageError
from genepanel.evaluate import Decoder, GeneErrors, Scores, score
from genepanel.io import (
    ExpressionData,
    OutputDir,
    input_paths,
    read_matrix,
    write_json,
    write_tsv,
)
from genepanel.landmarks import ReferenceMatch, map_gene_list, map_landmarks, read_gene_list
from genepanel.saved import FittedModel, load_model
from genepanel.selectors import run_selector

log = logging.getLogger("genepanel")

PANELS = ("candidate", "reference")


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class CompareConfig:
    """Options of :func:`compare_landmarks`.

    Attributes
    ----------
    mlp_hidden
        Hidden sizes of each MLP decoder class (default: one layer of 256, two of 256).
    trials
        Seeds per MLP decoder (the linear regression is deterministic: one fit).
    epochs, patience, batch_size, learning_rate
        MLP training: epoch cap, early-stopping patience (epochs without a validation
        gain; the best validation epoch is kept), minibatch size, Adam learning rate.
    min_found
        Refuse unless this fraction of the reference genes is found in the data.
    dgex_only
        Use the 943 D-GEX landmarks instead of all 978 (ignored with a user reference).
    sweep, sweep_sizes, sweep_epochs
        Train CAE panels of these sizes (default: 4 sizes evenly up to the reference
        size, below it), with this epoch cap (default: the panel run's).
    seed
        Seed of the MLP trials (default: the panel run's seed).
    """

    mlp_hidden: tuple[tuple[int, ...], ...] = ((256,), (256, 256))
    trials: int = 3
    epochs: int = 300
    patience: int = 30
    batch_size: int = 64
    learning_rate: float = 1e-3
    min_found: float = 0.5
    dgex_only: bool = False
    sweep: bool = False
    sweep_sizes: tuple[int, ...] | None = None
    sweep_epochs: int | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.trials >= 1, f"--trials must be ≥ 1, got {self.trials}"),
            (self.epochs >= 1, f"--epochs must be ≥ 1, got {self.epochs}"),
            (self.patience >= 1, f"--patience must be ≥ 1, got {self.patience}"),
            (self.batch_size >= 1, f"--batch-size must be ≥ 1, got {self.batch_size}"),
            (self.learning_rate > 0, f"--lr must be positive, got {self.learning_rate}"),
            (0 < self.min_found <= 1, f"--min-found must be in (0, 1], got {self.min_found}"),
            (all(len(h) > 0 for h in self.mlp_hidden),
             "--mlp needs hidden sizes such as 256 or 256,256"),
            (self.sweep_epochs is None or self.sweep_epochs >= 1,
             f"--sweep-epochs must be ≥ 1, got {self.sweep_epochs}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UsageError(msg)


def parse_sizes(text: str) -> tuple[int, ...]:
    """Parse ``"100,200,400"`` into sorted distinct positive panel sizes."""
    try:
        sizes = sorted({int(v) for v in text.replace(" ", "").split(",") if v})
    except ValueError as exc:
        msg = f"--sweep-sizes must be positive integers like 100,200,400; got {text!r}"
        raise UsageError(msg) from exc
    if not sizes or sizes[0] < 1:
        msg = f"--sweep-sizes must be positive integers like 100,200,400; got {text!r}"
        raise UsageError(msg)
    return tuple(sizes)


def decoder_name(hidden: tuple[int, ...]) -> str:
    """``()`` → ``linear``; ``(256, 128)`` → ``mlp[256,128]``."""
    return "linear" if not hidden else f"mlp[{','.join(map(str, hidden))}]"


# --------------------------------------------------------------------------- MLP decoders


class MLPFitter:
    """Fit ``Decoder(d, hidden)`` from panel values ``[n, k]`` to all genes ``[n, d]``.

    Adam on the mean squared error, minibatches drawn without replacement each epoch
    (one ``lax.scan`` per epoch, compiled once per shape), early stopping on the
    validation rows with the best epoch's parameters kept.
    """

    def __init__(self, k: int, d: int, hidden: tuple[int, ...], lr: float):
        import jax
        import jax.numpy as jnp
        import optax

        from genepanel.model import Decoder

        self.k, self.d, self.hidden = k, d, hidden
        self.module = Decoder(d, hidden)
        self.tx = optax.adam(lr)
        module, tx = self.module, self.tx

        def loss(params: Any, xb: Any, yb: Any) -> Any:
            return jnp.mean(jnp.square(module.apply({"params": params}, xb) - yb))

        def epoch(state: Any, x: Any, y: Any, perm: Any) -> Any:
            def step(st: Any, idx: Any) -> Any:
                params, opt = st
                val, grads = jax.value_and_grad(loss)(params, x[idx], y[idx])
                updates, opt = tx.update(grads, opt, params)
                return (optax.apply_updates(params, updates), opt), val

            return jax.lax.scan(step, state, perm)[0]

        self._epoch = jax.jit(epoch)
        self._loss = jax.jit(loss)
        self._predict = jax.jit(lambda params, x: module.apply({"params": params}, x))
        self._init = jax.jit(lambda key: module.init(key, jnp.zeros((1, k), jnp.float32)))

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        x_val: np.ndarray | None,
        y_val: np.ndarray | None,
        *,
        seed: int,
        epochs: int,
        patience: int,
        batch_size: int,
    ) -> tuple[Any, dict[str, Any]]:
        """Train from a fresh initialisation; return ``(params, info)``.

        ``x``/``y`` are ``[n, k]``/``[n, d]`` preprocessed training rows; ``x_val``/``y_val``
        the validation rows (``None`` or empty: train ``epochs`` epochs, keep the last).
        """
        import jax

        key = jax.random.key(seed)
        params = self._init(key)["params"]
        state = (params, self.tx.init(params))
        xd, yd = jax.device_put(x), jax.device_put(y)
        has_val = x_val is not None and len(x_val) > 0
        if has_val:
            xv, yv = jax.device_put(x_val), jax.device_put(y_val)
        n = len(x)
        b = min(batch_size, n)
        steps = n // b
        rng = np.random.default_rng([seed, 0xDEC])
        best, best_epoch, best_params = np.inf, 0, state[0]
        epoch = 0
        for epoch in range(1, epochs + 1):
            perm = rng.permutation(n)[: steps * b].reshape(steps, b).astype(np.int32)
            state = self._epoch(state, xd, yd, perm)
            if has_val:
                v = float(self._loss(state[0], xv, yv))
                if v < best:
                    best, best_epoch, best_params = v, epoch, state[0]
                elif epoch - best_epoch >= patience:
                    break
        if not has_val:
            best_params, best_epoch, best = state[0], epoch, float("nan")
        return best_params, {"epochs_run": epoch, "best_epoch": best_epoch, "val_mse": best}

    def predict(self, params: Any, x: np.ndarray) -> np.ndarray:
        """``[n, k]`` → ``[n, d]``."""
        return np.asarray(self._predict(params, x))


# --------------------------------------------------------------------------- metrics


def pearson_per_gene(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """``[d]`` Pearson correlation per column of ``[n, d]`` arrays (NaN where constant)."""
    t = truth.astype(np.float64) - truth.mean(0)
    p = pred.astype(np.float64) - pred.mean(0)
    num = (t * p).sum(0)
    den = np.sqrt((t * t).sum(0) * (p * p).sum(0))
    out = np.full(truth.shape[1], np.nan)
    ok = den > 1e-12
    out[ok] = num[ok] / den[ok]
    return out


# --------------------------------------------------------------------------- data


def _read_var(path: Path, n_genes: int) -> pd.DataFrame | None:
    """Read the ``var`` table of an ``.h5ad`` file (``None`` for plain HDF5)."""
    from genepanel.io import _is_anndata, _open_h5, _read_elem

    with _open_h5(path) as f:
        if not _is_anndata(f):
            return None
        var = _read_elem(f["var"])
    return var if len(var) == n_genes else None


def _restrict(
    data: ExpressionData, var: pd.DataFrame | None, model: FittedModel
) -> tuple[ExpressionData, pd.DataFrame | None]:
    """Columns of ``data`` in the order of ``model.genes``; every model gene must be present."""
    pos = {g: i for i, g in enumerate(data.genes)}
    missing = [g for g in model.genes if g not in pos]
    if missing:
        shown = ", ".join(missing[:5])
        msg = (
            f"{data.source} lacks {len(missing)} of the {len(model.genes)} genes of the panel's "
            f"run (e.g. {shown}); pass the data the panel was selected on (same genes)"
        )
        raise DataError(msg)
    cols = np.array([pos[g] for g in model.genes], np.int64)
    if len(cols) == len(data.genes) and np.array_equal(cols, np.arange(len(cols))):
        return data, var
    X = data.X[:, cols]
    sub = ExpressionData(X=X, genes=list(model.genes), obs=data.obs,
                         source=f"{data.source} (the {len(cols)} genes of the panel's run)")
    return sub, (var.iloc[cols] if var is not None else None)


def _run_record(folder: Path | None) -> dict[str, Any] | None:
    import json

    if folder is None or not (folder / "run.json").is_file():
        return None
    try:
        return json.loads((folder / "run.json").read_text())
    except json.JSONDecodeError:
        return None


# --------------------------------------------------------------------------- result


@dataclass
class CompareResult:
    """Everything :func:`compare_landmarks` computed (also written to ``out``).

    Attributes
    ----------
    trials
        One row per (panel, decoder, trial) with the test metrics.
    summary
        One row per (panel, decoder): mean and sd over trials.
    per_gene
        One row per gene: membership and, per panel and decoder, the mean test Pearson
        correlation (genes in neither panel only).
    overlap
        ``n``, ``jaccard``, ``genes`` shared by the two panels.
    mapping
        The reference mapped onto the data.
    sweep
        One row per swept panel size and selector (``cae_sweep``, ``greedy``, ``topvar``),
        plus the candidate and the reference (``None`` without ``sweep``).
    info
        JSON-able description of the run (sizes, split, fairness, files).
    """

    trials: pd.DataFrame
    summary: pd.DataFrame
    per_gene: pd.DataFrame
    overlap: dict[str, Any]
    mapping: ReferenceMatch
    sweep: pd.DataFrame | None
    info: dict[str, Any]
    out: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def headline(self) -> list[str]:
        """Summarise the comparison in a few lines for the terminal."""
        i = self.info
        lines = [
            f"candidate panel {i['candidate_size']} genes vs {i['reference_name']} "
            f"{i['reference_size']} genes (overlap {self.overlap['n']}); {i['fairness']}",
        ]
        for dec in self.summary["decoder"].unique():
            rows = self.summary[self.summary["decoder"] == dec].set_index("panel")
            c, r = rows.loc["candidate"], rows.loc["reference"]
            if "refused" in (c["fit"], r["fit"]):
                who = [p for p in PANELS if rows.loc[p, "fit"] == "refused"]
                lines.append(f"{dec}: not reported for the {' and '.join(who)} panel (at least "
                             "as many genes as training rows, and no validation rows)")
                continue
            note = "".join(f"; {p}: ridge (more genes than training rows)"
                           for p in PANELS if rows.loc[p, "fit"] == "ridge")
            lines.append(
                f"{dec}: test MSE on genes in neither panel {c['mse_neither_mean']:.4g} "
                f"(candidate) vs {r['mse_neither_mean']:.4g} (reference), "
                f"ratio {c['mse_neither_mean'] / r['mse_neither_mean']:.3f}{note}"
            )
        if self.sweep is not None and i.get("sweep_match") is not None:
            lines.append(i["sweep_match"]["text"])
            lines += [f"sweep: {n}" for n in i["sweep_match"].get("baselines", [])]
        return lines


# --------------------------------------------------------------------------- main


def compare_landmarks(
    data: ExpressionData | str | Path,
    panel: FittedModel | str | Path,
    out: str | Path | None = None,
    *,
    reference: str | Path | list[str] | None = None,
    config: CompareConfig | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> CompareResult:
    """Compare the panel of a ``genepanel select`` run with a reference panel.

    Parameters
    ----------
    data
        The expression matrix (path or :class:`~genepanel.io.ExpressionData`); it must
        hold every gene of the panel's run (extra genes are dropped). Read with the
        run's input options (layer, gene column).
    panel
        The run folder (or its :class:`~genepanel.saved.FittedModel`).
    out
        Output folder, written atomically (``None``: nothing written).
    reference
        ``None`` for the L1000 landmarks, a text file with one gene per line, or a list
        of gene identifiers.
    config
        Decoders, trials and sweep; see :class:`CompareConfig`.
    overwrite
        Replace an existing ``out``.
    progress
        Log one line per fitted decoder.

    Returns
    -------
    CompareResult

    Raises
    ------
    ModelError
        Missing or incompatible run folder.
    DataError
        Data lacking the run's genes, or a reference that matches too few genes.
    """
    cfg = config or CompareConfig()
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    outdir = _output_dir(out, data, panel, reference, overwrite=overwrite)
    folder = None if isinstance(panel, FittedModel) else Path(panel)
    model = panel if isinstance(panel, FittedModel) else load_model(folder)
    sel_cfg = from_dict(model.meta.get("config", {}))
    seed = cfg.seed if cfg.seed is not None else sel_cfg.seed
    data, var = _restrict(*_read_data(data, sel_cfg), model)
    mapping = _reference_match(reference, data, var, cfg)
    sets = _PanelSets.of(np.asarray(model.panel_index), mapping.indices, data.genes)

    # the panel run's split and fitted preprocessing; a supervised run's labels only
    # where the sweep trains panels
    t = time.perf_counter()
    ds = Dataset.build(data, sel_cfg if cfg.sweep else sel_cfg.replace(labels=None),
                       pre=model.pre)
    same_split = _same_split(folder, ds)
    timings["preprocess"] = time.perf_counter() - t

    sweep_panels: dict[str, np.ndarray] = {}
    sweep_rows: list[dict[str, Any]] = []
    if cfg.sweep:
        t = time.perf_counter()
        sweep_panels, sweep_rows = _sweep_select(ds, sel_cfg, cfg, sets.ref)
        timings["sweep"] = time.perf_counter() - t

    t = time.perf_counter()
    decoders, trials = _train_mlps(ds, sets.panels, cfg, seed)
    scores = score(ds, {**sets.panels, **sweep_panels}, guarded=True, per_gene=True,
                   decoders=decoders)
    records, corr = _records(scores, sets, trials, progress=progress)
    timings["decoders"] = time.perf_counter() - t
    trials_df = pd.DataFrame(records)
    summary = _summarise(trials_df)
    per_gene = _per_gene_table(data.genes, sets, scores.test_gene_variance, corr)
    info = _info(data, ds, sel_cfg, cfg, seed, model, folder, mapping, sets,
                 same_split=same_split)
    sweep_df = None
    if cfg.sweep:
        sweep_df = _sweep_table(sweep_rows, scores, sets, summary, progress=progress)
        info["sweep_match"] = sweep_match(sweep_df)
    timings["total"] = time.perf_counter() - t0
    info["timings_seconds"] = timings
    res = CompareResult(trials=trials_df, summary=summary, per_gene=per_gene,
                        overlap=sets.overlap, mapping=mapping, sweep=sweep_df, info=info,
                        timings=timings)
    if outdir is not None:
        staging = outdir.prepare()
        _write_outputs(staging, res)
        res.out = outdir.commit()
    return res


def _output_dir(
    out: str | Path | None, data: Any, panel: Any, reference: Any, *, overwrite: bool
) -> OutputDir | None:
    """The checked output folder (``None``: nothing is written)."""
    if out is None:
        return None
    refs = reference if isinstance(reference, str | Path) else None
    outdir = OutputDir(out, overwrite=overwrite, command="compare-landmarks",
                       inputs=input_paths(data, panel if not isinstance(panel, FittedModel)
                                          else None, refs))
    outdir.check()
    return outdir


def _read_data(
    data: ExpressionData | str | Path, sel_cfg: SelectConfig
) -> tuple[ExpressionData, pd.DataFrame | None]:
    """The matrix, read with the panel run's input options, and its ``var`` table."""
    if isinstance(data, ExpressionData):
        return data, None
    path = Path(data)
    i = sel_cfg.input
    x = read_matrix(path, layer=i.layer, gene_column=i.gene_column, dataset=i.dataset,
                    genes=i.genes, genes_by_samples=i.genes_by_samples)
    return x, _read_var(path, x.shape[1])


def _reference_match(
    reference: str | Path | list[str] | None, data: ExpressionData, var: pd.DataFrame | None,
    cfg: CompareConfig,
) -> ReferenceMatch:
    """The reference panel mapped onto the data's genes (refused when too few match)."""
    if reference is None:
        mapping = map_landmarks(data.genes, var, dgex_only=cfg.dgex_only)
    else:
        if isinstance(reference, list | tuple):
            names, label = list(reference), "reference genes"
        else:
            names, label = read_gene_list(reference), f"genes of {Path(reference).name}"
        mapping = map_gene_list(names, data.genes, var, name=label)
    mapping.check(cfg.min_found, data.source)
    return mapping


@dataclass(frozen=True)
class _PanelSets:
    """The two panels (sorted indices) and which genes lie in either, both or neither."""

    cand: np.ndarray
    ref: np.ndarray
    in_c: np.ndarray
    in_r: np.ndarray
    neither: np.ndarray
    overlap: dict[str, Any]

    @property
    def panels(self) -> dict[str, np.ndarray]:
        """``{"candidate": …, "reference": …}``."""
        return {"candidate": self.cand, "reference": self.ref}

    @classmethod
    def of(cls, cand: np.ndarray, ref: np.ndarray, genes: list[str]) -> _PanelSets:
        """Membership of ``genes`` in the two panels; refused when no gene is left over."""
        cand, ref = np.sort(cand), np.sort(ref)
        in_c = np.zeros(len(genes), bool)
        in_c[cand] = True
        in_r = np.zeros(len(genes), bool)
        in_r[ref] = True
        neither = ~(in_c | in_r)
        if not neither.any():
            msg = "the two panels together hold every gene, so no gene is left to impute"
            raise DataError(msg)
        shared = np.flatnonzero(in_c & in_r)
        overlap = {"n": len(shared), "jaccard": float(len(shared) / np.count_nonzero(in_c | in_r)),
                   "genes": [genes[j] for j in shared]}
        return cls(cand, ref, in_c, in_r, neither, overlap)


def _same_split(folder: Path | None, ds: Dataset) -> bool | None:
    """Whether the data match the panel run's (``None``: no run record to tell)."""
    run = _run_record(folder)
    if run is None:
        return None
    n = ds.data.shape[0]
    same = run["data"]["n_samples"] == n and run["data"]["split"] == ds.split.sizes()
    if not same:
        log.warning("the data differ from the panel's run (%s samples there, %d here): "
                    "the split is not the one the panel was selected on",
                    run["data"]["n_samples"], n)
    return same


def _info(
    data: ExpressionData, ds: Dataset, sel_cfg: SelectConfig, cfg: CompareConfig, seed: int,
    model: FittedModel, folder: Path | None, mapping: ReferenceMatch, sets: _PanelSets, *,
    same_split: bool | None,
) -> dict[str, Any]:
    """The JSON-able description of the run (``comparison.json``, the report)."""
    n, d = data.shape
    nc, nr = len(sets.cand), len(sets.ref)
    fair = nc == nr
    fairness = (
        "same size: a fair comparison" if fair else
        f"sizes differ ({nc} vs {nr} genes): the larger panel has an advantage; "
        "compare MSE on the genes in neither panel, and the size sweep (--sweep)"
    )
    return {
        "data": data.source, "n_samples": n, "n_genes": d, "split": ds.split.sizes(),
        "split_rule": {"seed": sel_cfg.seed, **sel_cfg.split.__dict__},
        "same_split_as_panel_run": same_split,
        "preprocess": model.pre.to_dict(),
        "panel_run": str(folder) if folder is not None else "in memory",
        "candidate_size": nc, "reference_name": mapping.name,
        "reference_size": nr, "reference_listed": mapping.n_reference,
        "reference_not_found": mapping.not_found, "reference_matched_by": mapping.by_source,
        "fair": fair, "fairness": fairness, "n_genes_neither": int(sets.neither.sum()),
        "config": {**cfg.__dict__, "mlp_hidden": [list(h) for h in cfg.mlp_hidden],
                   "sweep_sizes": list(cfg.sweep_sizes) if cfg.sweep_sizes else None,
                   "seed": seed},
    }


@dataclass(frozen=True)
class _Trial:
    """One trained MLP decoder: its panel, class, trial number and training record."""

    panel: str
    decoder: str
    trial: int
    info: dict[str, Any]


def _train_mlps(
    ds: Dataset, panels: dict[str, np.ndarray], cfg: CompareConfig, seed: int
) -> tuple[dict[str, Decoder], dict[str, _Trial]]:
    """Train every MLP decoder class on every panel, ``cfg.trials`` seeds each.

    Returns the fitted decoders for :func:`~genepanel.evaluate.score` and what each is,
    by the same names.
    """
    train = ds.matrix("train")
    val = ds.matrix("val") if ds.val is not None else None
    decoders: dict[str, Decoder] = {}
    trials: dict[str, _Trial] = {}
    for hidden in cfg.mlp_hidden:
        dec = decoder_name(hidden)
        for pname, idx in panels.items():
            fitter = MLPFitter(len(idx), train.shape[1], hidden, cfg.learning_rate)
            for trial in range(cfg.trials):
                params, fit_info = fitter.fit(
                    train[:, idx], train, val[:, idx] if val is not None else None, val,
                    seed=int(seed) * 1000 + trial, epochs=cfg.epochs, patience=cfg.patience,
                    batch_size=cfg.batch_size,
                )
                name = f"{dec} {pname} {trial}"
                decoders[name] = (idx, partial(fitter.predict, params))
                trials[name] = _Trial(pname, dec, trial, fit_info)
    return decoders, trials


def _metric_values(genes: GeneErrors, neither: np.ndarray) -> dict[str, Any]:
    """A reconstruction's metrics (``_METRICS``) and its Pearson r over the neither genes."""
    r = genes.pearson[neither]
    some = np.isfinite(r).any()
    return {
        "mse_all": float(np.mean(genes.mse)),
        "mse_neither": float(np.mean(genes.mse[neither])),
        "pearson_mean_neither": float(np.nanmean(r)) if some else float("nan"),
        "pearson_median_neither": float(np.nanmedian(r)) if some else float("nan"),
        "_pearson": r,
    }


def _records(
    scores: Scores, sets: _PanelSets, trials: dict[str, _Trial], *, progress: bool
) -> tuple[list[dict[str, Any]], dict[tuple[str, str], np.ndarray]]:
    """One record per (panel, decoder, trial), and each (panel, decoder)'s mean Pearson r."""
    records: list[dict[str, Any]] = []
    corr: dict[tuple[str, str], np.ndarray] = {}
    for pname, idx in sets.panels.items():
        ps = scores.panels[pname]
        how = ps.fit_info or {"fit": ps.fit}
        if ps.fit == "refused":
            log.warning("linear %s: not fitted (%s and no validation rows to choose a ridge "
                        "penalty)", pname, how["reason"])
        s = _metric_values(ps.genes, sets.neither)
        corr[(pname, "linear")] = s.pop("_pearson")
        records.append({"panel": pname, "decoder": "linear", "trial": 0, "panel_size": len(idx),
                        **s, "epochs_run": 0, "best_epoch": 0, "linear_fit": ps.fit,
                        "ridge_alpha": how.get("alpha", float("nan")),
                        "ridge_lambda": how.get("ridge_lambda",
                                                how.get("penalty", float("nan")))})
        if progress and ps.fit != "refused":
            log.info("linear  %-9s test MSE all %.4g, neither %.4g (%s)", pname, s["mse_all"],
                     s["mse_neither"], _fit_label(how))
    by_pair: dict[tuple[str, str], list[np.ndarray]] = {}
    for name, tr in trials.items():
        s = _metric_values(scores.decoders[name], sets.neither)
        by_pair.setdefault((tr.panel, tr.decoder), []).append(s.pop("_pearson"))
        records.append({"panel": tr.panel, "decoder": tr.decoder, "trial": tr.trial,
                        "panel_size": len(sets.panels[tr.panel]), **s,
                        "epochs_run": tr.info["epochs_run"], "best_epoch": tr.info["best_epoch"]})
        if progress:
            log.info("%s %-9s trial %d: test MSE all %.4g, neither %.4g (%d epochs)",
                     tr.decoder, tr.panel, tr.trial, s["mse_all"], s["mse_neither"],
                     tr.info["epochs_run"])
    for pair, rs in by_pair.items():
        with warnings.catch_warnings():  # genes constant on the test rows stay NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            corr[pair] = np.nanmean(np.stack(rs), axis=0)
    return records, corr


def _per_gene_table(
    genes: list[str], sets: _PanelSets, test_variance: np.ndarray,
    corr: dict[tuple[str, str], np.ndarray],
) -> pd.DataFrame:
    """One row per gene: membership, test variance, mean Pearson r per panel and decoder."""
    per_gene = pd.DataFrame({"gene": genes, "in_candidate": sets.in_c,
                             "in_reference": sets.in_r, "test_variance": test_variance})
    for (pname, dec), r in corr.items():
        full = np.full(len(genes), np.nan)
        full[sets.neither] = r
        per_gene[f"pearson_{pname}_{dec}"] = full
    return per_gene


def _fit_label(how: dict[str, Any]) -> str:
    """``gcv`` / ``ridge α=… (k genes + intercept ≥ n training rows)`` / ``refused (…)``."""
    if how["fit"] == "ridge":
        return (f"ridge α={how['alpha']:.3g} chosen on {how['val_rows']} validation rows: "
                f"{how['reason']}")
    if how["fit"] == "refused":
        return f"refused: {how['reason']}"
    return (f"ridge α={how.get('alpha', 0.0):.3g} chosen by GCV on the training rows "
            "(0: least squares)")


_METRICS = ("mse_all", "mse_neither", "pearson_mean_neither", "pearson_median_neither")


def _summarise(trials: pd.DataFrame) -> pd.DataFrame:
    rows = []
    order = list(dict.fromkeys(trials["decoder"]))
    for dec in order:
        for pname in PANELS:
            t = trials[(trials["decoder"] == dec) & (trials["panel"] == pname)]
            row: dict[str, Any] = {"decoder": dec, "panel": pname,
                                   "panel_size": int(t["panel_size"].iloc[0]),
                                   "n_trials": len(t)}
            fit = t["linear_fit"].iloc[0] if "linear_fit" in t else None
            row["fit"] = fit if isinstance(fit, str) else "trained"
            for m in _METRICS:
                row[f"{m}_mean"] = float(t[m].mean())
                row[f"{m}_sd"] = float(t[m].std(ddof=1)) if len(t) > 1 else 0.0
            rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- sweep


def _default_sweep_sizes(n_ref: int, n_genes: int) -> tuple[int, ...]:
    sizes = {max(1, round(n_ref * f)) for f in (0.25, 0.5, 0.75, 1.0)}
    return tuple(sorted(s for s in sizes if s < n_genes))


def _sweep_select(
    ds: Dataset, sel_cfg: SelectConfig, cfg: CompareConfig, ref: np.ndarray
) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """Greedy, top-variance and CAE panels of every swept size, chosen on ``ds``.

    Returns the panels (named ``<selector> <size>``) and one sweep row per panel without
    its test error (filled by :func:`_sweep_table`). Every selector sees the compare
    run's training rows (the panel run's split and fitted preprocessing) and the panel
    run's gene constraints (``--include``/``--exclude``/``--candidates``). Greedy
    selection is nested, so it runs once at the largest size and is sliced (each greedy
    row's ``seconds`` is that one run).
    """
    from genepanel.api import select_panels
    from genepanel.constraints import resolve

    d = ds.n_genes
    sizes = cfg.sweep_sizes or _default_sweep_sizes(len(ref), d)
    too_big = [s for s in sizes if s >= d]
    if too_big:
        msg = f"--sweep-sizes {too_big[0]} is not below the number of genes ({d})"
        raise UsageError(msg)
    con = resolve(ds.data.genes, max(sizes), sel_cfg.include, sel_cfg.exclude,
                  sel_cfg.candidates)
    allowed = con.selectable()
    panels: dict[str, np.ndarray] = {}
    rows: list[dict[str, Any]] = []
    for k in sorted(sizes, reverse=True):  # the largest greedy run first: the rest slice it
        for name in SWEEP_BASELINES:
            sel = run_selector(name, ds, int(k), seed=sel_cfg.seed, allowed=allowed,
                               include=con.include)
            panels[f"{name} {k}"] = sel.indices
            rows.append({"panel": name, "size": int(k), "seconds": sel.seconds})
    changes: dict[str, Any] = {}
    if cfg.sweep_epochs is not None:
        changes["train.max_epochs"] = cfg.sweep_epochs
    results = select_panels(ds, sel_cfg.replace(**changes), list(sizes), None,
                            evaluate_baselines=False)
    for k, res in zip(sizes, results, strict=True):
        panels[f"cae_sweep {k}"] = np.sort(res.panel.indices)
        rows.append({"panel": "cae_sweep", "size": int(k), "converged": bool(res.fit.converged),
                     "epochs_run": res.fit.epochs_run, "seconds": res.timings["total"]})
    return panels, rows


def _sweep_table(
    rows: list[dict[str, Any]], scores: Scores, sets: _PanelSets, summary: pd.DataFrame,
    *, progress: bool,
) -> pd.DataFrame:
    """``sweep.tsv``: the swept panels' linear test MSE (all genes), then the two panels."""
    out = []
    for row in sorted(rows, key=lambda r: (r["panel"] != "cae_sweep", r["size"])):
        ps = scores.panels[f"{row['panel']} {row['size']}"]
        out.append({"panel": row["panel"], "size": row["size"], "mse_all_linear": ps.test_mse,
                    "linear_fit": ps.fit,
                    **{c: row[c] for c in ("converged", "epochs_run") if c in row},
                    "overlap_with_reference": int(np.intersect1d(ps.indices, sets.ref).size),
                    "seconds": row["seconds"]})
        if progress:
            state = ("" if "converged" not in row else
                     " (converged)" if row["converged"] else " (NOT converged)")
            log.info("sweep: %s panel of %d genes%s: linear test MSE %.4g (%s)", row["panel"],
                     row["size"], state, ps.test_mse, _fit_label(ps.fit_info or {"fit": ps.fit}))
    lin = summary[summary["decoder"] == "linear"].set_index("panel")
    for pname, idx in sets.panels.items():
        out.append({"panel": pname, "size": len(idx),
                    "mse_all_linear": float(lin.loc[pname, "mse_all_mean"]),
                    "linear_fit": lin.loc[pname, "fit"]})
    return pd.DataFrame(out)


#: Baseline panels of every swept size (``panel`` values of ``sweep.tsv``).
SWEEP_BASELINES = {"greedy": "greedy column subset selection", "topvar": "top-variance genes"}
_NOTE_NAMES = {"greedy": "the greedy panel", "topvar": "the top-variance panel"}


def baseline_notes(df: pd.DataFrame) -> list[str]:
    """Where greedy or top-variance panels do better than the swept CAE panels.

    Two findings, each one sentence: a baseline reaches the reference's linear test MSE
    at a smaller size than the smallest matching CAE panel (or where no CAE panel
    matches), and a baseline has a lower linear test MSE than the CAE panel of the same
    size. As in :func:`sweep_match`, only ``gcv`` fits (fewer genes than training rows)
    count; a CAE panel whose selector did not converge is named as such.
    """
    if "panel" not in df or not df["panel"].isin(list(SWEEP_BASELINES)).any():
        return []
    r = df[df["panel"] == "reference"].iloc[0]
    ref_mse = float(r["mse_all_linear"])
    cae = df[df["panel"] == "cae_sweep"].sort_values("size")
    cae_ok = cae[cae["converged"].astype(bool) & (cae["linear_fit"] == "gcv")]
    cae_hit = cae_ok[cae_ok["mse_all_linear"] <= ref_mse] if np.isfinite(ref_mse) else cae_ok[:0]
    cae_k = int(cae_hit["size"].iloc[0]) if len(cae_hit) else None
    by_size = cae.set_index("size")
    notes = []
    for name, label in _NOTE_NAMES.items():
        b = df[(df["panel"] == name) & (df["linear_fit"] == "gcv")].sort_values("size")
        b = b[np.isfinite(b["mse_all_linear"])]
        if np.isfinite(ref_mse):
            hit = b[b["mse_all_linear"] <= ref_mse]
            if len(hit) and (cae_k is None or int(hit["size"].iloc[0]) < cae_k):
                k = int(hit["size"].iloc[0])
                than = (f"smaller than the smallest matching CAE panel ({cae_k} genes)"
                        if cae_k is not None else "while no converged CAE panel of the sweep "
                        "does")
                notes.append(f"{label} reaches the reference's linear test MSE at "
                             f"{k} genes ({hit['mse_all_linear'].iloc[0]:.4g} ≤ "
                             f"{ref_mse:.4g}), {than}")
        beaten = []
        for _, row in b.iterrows():
            k = int(row["size"])
            if k not in by_size.index:
                continue
            c = by_size.loc[k]
            if c["linear_fit"] == "gcv" and row["mse_all_linear"] < c["mse_all_linear"]:
                conv = "" if bool(c["converged"]) else ", CAE not converged"
                beaten.append(f"{k} genes ({row['mse_all_linear']:.4g} vs "
                              f"{c['mse_all_linear']:.4g}{conv})")
        if beaten:
            notes.append(f"{label} has a lower linear test MSE than the CAE panel "
                         f"at {'; '.join(beaten)}")
    return notes


def sweep_match(df: pd.DataFrame) -> dict[str, Any]:
    """The smallest swept CAE panel whose linear test MSE reaches the reference's.

    Only panels whose selector converged and whose refit is the ``gcv`` one (fewer genes
    than training rows) count: an unconverged panel is not the method's
    panel, and a panel with as many genes as training rows is fitted with ridge (or not
    at all), which says nothing about it as a panel. Those rows are named, never claimed.
    """
    r = df[df["panel"] == "reference"].iloc[0]
    ref_mse, n_ref = float(r["mse_all_linear"]), int(r["size"])
    cae = df[df["panel"] == "cae_sweep"].sort_values("size")
    ok = cae["converged"].astype(bool) & (cae["linear_fit"] == "gcv")
    skipped = []
    bad_fit = cae[cae["linear_fit"] != "gcv"]["size"].tolist()
    if bad_fit:
        skipped.append(f"{', '.join(map(str, bad_fit))} genes: at least as many genes as "
                       "training rows (linear fit regularised or refused)")
    unconv = cae[~cae["converged"].astype(bool) & (cae["linear_fit"] == "gcv")]["size"].tolist()
    if unconv:
        skipped.append(f"{', '.join(map(str, unconv))} genes: selector not converged")
    not_counted = f" (not counted: {'; '.join(skipped)})" if skipped else ""
    ref_note = (" (reference fitted with ridge)" if r["linear_fit"] == "ridge" else "")
    if not np.isfinite(ref_mse):
        return {"smallest_matching_size": None, "reference_mse_all_linear": None,
                "excluded": skipped,
                "text": "sweep: no comparison: the reference's linear fit was refused",
                "baselines": baseline_notes(df)}
    hit = cae[ok & (cae["mse_all_linear"] <= ref_mse)]
    if len(hit):
        k = int(hit["size"].iloc[0])
        text = (f"sweep: a converged CAE panel of {k} genes matches the reference's linear "
                f"test MSE ({hit['mse_all_linear'].iloc[0]:.4g} ≤ {ref_mse:.4g}, reference "
                f"{n_ref} genes{ref_note}){not_counted}")
    elif ok.any():
        k = None
        sizes = ", ".join(map(str, cae.loc[ok, "size"]))
        text = (f"sweep: no converged swept panel (sizes {sizes}) reached the reference's "
                f"linear test MSE {ref_mse:.4g}{ref_note}{not_counted}")
    else:
        k = None
        text = (f"sweep: no swept panel can be compared with the reference's linear test MSE "
                f"{ref_mse:.4g}{ref_note}: {'; '.join(skipped)}")
    return {"smallest_matching_size": k, "reference_mse_all_linear": ref_mse,
            "excluded": skipped, "text": text, "baselines": baseline_notes(df)}


# --------------------------------------------------------------------------- outputs


def _write_outputs(folder: Path, res: CompareResult) -> None:
    files = ["report.md", "summary.tsv", "trials.tsv", "per_gene.tsv", "reference_mapping.tsv",
             "comparison.json", "mse_by_decoder.png"]
    write_tsv(folder / "summary.tsv", res.summary)
    write_tsv(folder / "trials.tsv", res.trials)
    write_tsv(folder / "per_gene.tsv", res.per_gene)
    write_tsv(folder / "reference_mapping.tsv", res.mapping.table)
    plot_bars(res.summary, folder / "mse_by_decoder.png")
    if res.sweep is not None:
        write_tsv(folder / "sweep.tsv", res.sweep)
        plot_sweep(res.sweep, folder / "sweep.png")
        files += ["sweep.tsv", "sweep.png"]
    res.info["files"] = files
    write_json(folder / "comparison.json", {
        **res.info,
        "overlap": res.overlap,
        "summary": res.summary.to_dict(orient="records"),
        "trials": res.trials.to_dict(orient="records"),
        "sweep": res.sweep.to_dict(orient="records") if res.sweep is not None else None,
    })
    from genepanel.io import atomic_write

    with atomic_write(folder / "report.md") as fh:
        fh.write(report_markdown(res))


def plot_bars(summary: pd.DataFrame, path: Path) -> None:
    """Plot grouped bars (mean ± sd) of test MSE over all genes and genes in neither panel."""
    from genepanel.plots import pyplot, save_png

    plt = pyplot()

    decs = list(dict.fromkeys(summary["decoder"]))
    x = np.arange(len(decs))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, title in zip(axes, ("mse_all", "mse_neither"),
                                 ("all genes", "genes in neither panel"), strict=True):
        for j, (pname, color) in enumerate(zip(PANELS, ("tab:blue", "tab:gray"), strict=True)):
            rows = summary[summary["panel"] == pname].set_index("decoder").loc[decs]
            size = int(rows["panel_size"].iloc[0])
            ax.bar(x + (j - 0.5) * 0.38, rows[f"{metric}_mean"], 0.38,
                   yerr=rows[f"{metric}_sd"], capsize=3, color=color,
                   label=f"{pname} ({size} genes)")
        ax.set_xticks(x, decs)
        ax.set_ylabel("test MSE (preprocessed scale)")
        ax.set_title(f"test MSE, {title}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def plot_sweep(sweep: pd.DataFrame, path: Path) -> None:
    """Linear-decoder test MSE against panel size (the paper's Fig. 6b), on a log scale.

    Filled circles: converged panels with a ``gcv`` fit; hollow circles: the
    selector did not converge; crosses: ``ridge`` fits (at least as many genes as training
    rows). Triangles: the greedy and top-variance baselines (crosses in their colour for
    ridge fits). Refused fits are left out. The log axis keeps an interpolating outlier from
    squashing the other points.
    """
    from genepanel.plots import pyplot, save_png

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 4))
    cae = sweep[sweep["panel"] == "cae_sweep"].sort_values("size")
    cae = cae[np.isfinite(cae["mse_all_linear"])]
    ax.plot(cae["size"], cae["mse_all_linear"], "-", color="tab:orange", alpha=0.5)
    conv = cae["converged"].astype(bool)
    gcv = cae["linear_fit"] == "gcv"
    groups = ((conv & gcv, {"marker": "o", "color": "tab:orange"}, "CAE panels (sweep)"),
              (~conv & gcv, {"marker": "o", "mfc": "none", "color": "tab:orange"},
               "CAE panels, not converged"),
              (~gcv, {"marker": "x", "color": "tab:red"}, "CAE panels, ridge fit (k ≥ n train)"))
    for sel, style, label in groups:
        if sel.any():
            ax.plot(cae.loc[sel, "size"], cae.loc[sel, "mse_all_linear"], ls="none",
                    label=label, **style)
    for name, color in (("greedy", "tab:green"), ("topvar", "tab:purple")):
        b = sweep[sweep["panel"] == name].sort_values("size")
        b = b[np.isfinite(b["mse_all_linear"])]
        if not len(b):
            continue
        ridge = b["linear_fit"] != "gcv"
        ax.plot(b["size"], b["mse_all_linear"], "-", color=color, alpha=0.5)
        ax.plot(b.loc[~ridge, "size"], b.loc[~ridge, "mse_all_linear"], ls="none",
                marker="^", color=color, label=f"{SWEEP_BASELINES[name]} ({name})")
        if ridge.any():
            ax.plot(b.loc[ridge, "size"], b.loc[ridge, "mse_all_linear"], ls="none",
                    marker="x", color=color, label=f"{name}, ridge fit (k ≥ n train)")
    c = sweep[sweep["panel"] == "candidate"].iloc[0]
    r = sweep[sweep["panel"] == "reference"].iloc[0]
    if np.isfinite(c["mse_all_linear"]):
        ax.plot([c["size"]], [c["mse_all_linear"]], "s", color="tab:blue",
                label="candidate panel")
    if np.isfinite(r["mse_all_linear"]):
        ridge = " (ridge fit)" if r.get("linear_fit") == "ridge" else ""
        ax.axhline(r["mse_all_linear"], color="tab:gray", ls="--",
                   label=f"reference ({int(r['size'])} genes){ridge}")
        ax.plot([r["size"]], [r["mse_all_linear"]], "D", color="tab:gray")
    ax.set_yscale("log")
    ax.set_xlabel("panel size (genes)")
    ax.set_ylabel("linear decoder test MSE, all genes (log scale)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def _fmt(mean: float, sd: float, n: int) -> str:
    return f"{mean:.4g}" if n <= 1 else f"{mean:.4g} ± {sd:.2g}"


def report_markdown(res: CompareResult) -> str:
    """Write the short human-readable report (``report.md``) as Markdown text."""
    i, s = res.info, res.summary
    lines = [
        "# Panel comparison",
        "",
        f"- Data: `{i['data']}`: {i['n_samples']} samples × {i['n_genes']} genes; split "
        f"train/val/test {i['split']['train']}/{i['split']['val']}/{i['split']['test']} "
        f"(the panel run's rule, seed {i['split_rule']['seed']}); preprocessing "
        f"`{i['preprocess']['kind']}` with the run's fitted statistics.",
        f"- Candidate: the panel of `{i['panel_run']}`, {i['candidate_size']} genes.",
        f"- Reference: {i['reference_name']}, {i['reference_size']} of "
        f"{i['reference_listed']} found in the data.",
        f"- Overlap: {res.overlap['n']} genes (Jaccard {res.overlap['jaccard']:.3f}); "
        f"{i['n_genes_neither']} genes are in neither panel.",
        f"- **Fairness:** {i['fairness']}.",
    ]
    if i.get("same_split_as_panel_run") is False:
        lines.append("- **Note:** the data differ from the panel's run, so its split differs too.")
    lines += [
        "",
        "Test-set metrics on the preprocessed scale, mean ± sd over trials (the linear "
        "regression is deterministic: one fit). `MSE neither` uses only the genes in neither "
        "panel (the same genes for both); `MSE all` counts each panel's own genes too. The "
        "linear fit is ridge regression with the penalty chosen by generalised "
        "cross-validation on the training rows, 0 = least squares (`gcv`), unless a panel "
        "has at least as many genes (plus intercept) as there are training rows: least "
        "squares would then interpolate the training rows, so the penalty is chosen on the "
        "validation rows (`ridge`), or there is no fit without them (`refused`).",
        "",
        "| decoder | fit | panel | genes | MSE all | MSE neither | Pearson r mean (neither) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for _, r in s.iterrows():
        lines.append(
            f"| {r['decoder']} | {r['fit']} | {r['panel']} | {r['panel_size']} | "
            f"{_fmt(r['mse_all_mean'], r['mse_all_sd'], r['n_trials'])} | "
            f"{_fmt(r['mse_neither_mean'], r['mse_neither_sd'], r['n_trials'])} | "
            f"{_fmt(r['pearson_mean_neither_mean'], r['pearson_mean_neither_sd'], r['n_trials'])} |"
        )
    lines += ["", "Candidate / reference ratio of `MSE neither` (below 1: candidate better):", ""]
    for dec in dict.fromkeys(s["decoder"]):
        t = s[s["decoder"] == dec].set_index("panel")
        ratio = t.loc["candidate", "mse_neither_mean"] / t.loc["reference", "mse_neither_mean"]
        fits = [f"{p}: {t.loc[p, 'fit']}" for p in PANELS if t.loc[p, "fit"] != "trained"]
        lines.append(f"- {dec}: {ratio:.3f}" + (f" ({', '.join(fits)})" if fits else ""))
    if res.sweep is not None:
        lines += ["", "## Panel-size sweep", "", i["sweep_match"]["text"] + "."]
        notes = i["sweep_match"].get("baselines", [])
        if (res.sweep["panel"].isin(list(SWEEP_BASELINES))).any():
            lines += ["", "Baselines at every swept size, scored the same way: greedy column "
                      "subset selection (`greedy`, run once at the largest size and sliced: "
                      "its panels are nested) and the top-variance genes (`topvar`), both "
                      "chosen on the training rows. The headline above counts CAE panels "
                      "only."]
            if notes:
                lines += [""] + [f"- **Baseline better:** {n}." for n in notes]
            else:
                lines += ["", "Neither baseline reaches the reference at a smaller size than "
                          "the CAE panels or beats a CAE panel of the same size."]
        lines += ["", "| panel | genes | linear test MSE (all genes) | linear fit | converged "
                  "| seconds |", "|---|---:|---:|---|---|---:|"]
        for _, r in res.sweep.sort_values(["size", "panel"]).iterrows():
            conv = r.get("converged")
            conv = "yes" if conv is True else "**no**" if conv is False else ""
            mse = "not fitted" if not np.isfinite(r["mse_all_linear"]) else (
                f"{r['mse_all_linear']:.4g}")
            secs = r.get("seconds")
            secs = f"{secs:.3g}" if isinstance(secs, float) and np.isfinite(secs) else ""
            lines.append(f"| {r['panel']} | {int(r['size'])} | {mse} | {r['linear_fit']} "
                         f"| {conv} | {secs} |")
        lines += ["", "![sweep](sweep.png)"]
    nf = i["reference_not_found"]
    missing = (
        f"Not found ({len(nf)}): {', '.join(nf[:50])}{' …' if len(nf) > 50 else ''} "
        "(see reference_mapping.tsv)." if nf else "Not found: none."
    )
    lines += [
        "",
        "## Reference mapping",
        "",
        "Matched through: "
        + ", ".join(f"{k} ({v})" for k, v in i["reference_matched_by"].items()) + ".",
        missing,
        "",
        "![MSE by decoder](mse_by_decoder.png)",
        "",
        "Files: summary.tsv (mean ± sd), trials.tsv (every fit), per_gene.tsv (per-gene "
        "test correlation), reference_mapping.tsv, comparison.json (all numbers).",
        "",
    ]
    return "\n".join(lines)


__all__ = ["CompareConfig", "CompareResult", "MLPFitter", "compare_landmarks", "parse_sizes"]

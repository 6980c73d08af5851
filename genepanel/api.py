"""Library entry points used by the CLI and by notebooks."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
import pandas as pd

from genepanel.config import SelectConfig
from genepanel.constraints import Constraints
from genepanel.constraints import resolve as resolve_constraints
from genepanel.data import Split
from genepanel.dataset import Dataset
from genepanel.errors import DataError, UsageError
from genepanel.evaluate import Scores, random_panels, score
from genepanel.io import (
    ExpressionData,
    OutputDir,
    counts_hint,
    input_identity,
    input_paths,
    matrix_bytes,
    read_matrix,
    write_json,
    write_tsv,
)
from genepanel.panel import Panel, extract_panel, panel_table, related_groups, swap_groups
from genepanel.plots import plot_history, plot_sizes
from genepanel.runtime import data_mesh, is_main_process
from genepanel.saved import FittedModel, save_model, versions
from genepanel.selectors import (
    RIDGE_SEARCH_MAX_ROWS,
    RIDGE_SEARCH_MIN_ALPHA,
    Selected,
    greedy_panel,
    refit_matrix,
    ridge_greedy,
    ridge_swap_alternatives,
    ridge_swap_refine,
    run_selector,
    search_penalty,
    supervised_objective,
    supervised_refit,
    swap_alternatives,
    swap_refine,
    with_label_head,
)
from genepanel.train import (
    FitResult,
    Trainer,
    check_checkpoint_layout,
    convergence_note,
    eval_chunk,
    fit,
)

if TYPE_CHECKING:  # pragma: no cover
    import anndata as ad

log = logging.getLogger("genepanel")

N_RANDOM_PANELS = 5
HISTORY_COLUMNS = (
    "epoch", "epochs", "temperature", "mean_max_prob", "train_loss", "val_loss",
    "val_accuracy", "collisions", "unique_genes", "seconds",
)


@dataclass
class SelectResult:
    """What :func:`select_panel` returns (everything also written to ``out``)."""

    genes: list[str]
    panel: Panel
    panel_table: pd.DataFrame
    groups: pd.DataFrame
    fit: FitResult
    metrics: dict[str, Any]
    run: dict[str, Any]
    split: Split
    model: FittedModel
    out: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)
    stability: dict[str, Any] | None = None
    cae_panel: Panel | None = None

    def __repr__(self) -> str:
        names = list(self.panel_table["gene"])
        shown = ", ".join(names[:5]) + (", …" if len(names) > 5 else "")
        state = "converged" if self.fit.converged else "NOT converged"
        mse = self.metrics.get("linear_refit_test_mse")
        where = f", out={str(self.out)!r}" if self.out is not None else ""
        return (f"SelectResult({len(names)} of {len(self.genes)} genes [{shown}], {state}, "
                f"held-out linear refit MSE {mse:.4g}{where})")


def load_input(path: Any, cfg: SelectConfig) -> ExpressionData:
    """Read the matrix named by ``path`` (or held by an AnnData) with ``cfg``'s input options."""
    i = cfg.input
    if not isinstance(path, str | Path):
        from genepanel.tl import expression_from_anndata

        return expression_from_anndata(path, i.layer)
    stream = i.stream == "yes" or (
        i.stream == "auto"
        and matrix_bytes(path, i.layer, i.dataset) > i.host_memory_budget_gb * 2**30
    )
    return read_matrix(
        path, layer=i.layer, gene_column=i.gene_column, dataset=i.dataset, genes=i.genes,
        genes_by_samples=i.genes_by_samples, stream=stream,
    )


def _check_k(k: int, d: int) -> None:
    if k >= d:
        msg = f"--k {k} must be smaller than the number of genes ({d}); choose k < {d}"
        raise UsageError(msg)


def select_panel(
    data: ExpressionData | ad.AnnData | str | Path | Dataset,
    cfg: SelectConfig,
    out: str | Path | None = None,
    *,
    overwrite: bool = False,
    resume: bool = False,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    evaluate_baselines: bool = True,
    stop_after_epochs: int | None = None,
) -> SelectResult:
    """Train a concrete autoencoder and return (and, with ``out``, write) the panel.

    Parameters
    ----------
    data
        An :class:`~genepanel.io.ExpressionData`, an :class:`anndata.AnnData` (``X`` or
        ``cfg.input.layer``; see also :func:`genepanel.tl.select`), a path to
        ``.h5ad``/HDF5/``.npz``, or a :class:`~genepanel.dataset.Dataset` built with
        ``cfg`` (its split and preprocessing are used as they are).
    cfg
        The validated configuration.
    out
        Output folder; written atomically (through ``<out>.partial``).
    overwrite
        Replace an existing ``out`` (otherwise it is refused).
    resume
        Continue an interrupted run from the checkpoint in ``<out>.partial``.
    on_epoch
        Called with each epoch's history record (for progress display).
    evaluate_baselines
        Also score greedy, top-variance, highly-variable-gene and random panels and
        the PCA bound.
    stop_after_epochs
        Testing aid: interrupt (with a checkpoint) after that many epochs.
    """
    results = select_panels(
        data, cfg, [cfg.k], out, overwrite=overwrite, resume=resume, on_epoch=on_epoch,
        evaluate_baselines=evaluate_baselines, stop_after_epochs=stop_after_epochs,
    )
    return results[0]


def select_panels(
    data: ExpressionData | ad.AnnData | str | Path | Dataset,
    cfg: SelectConfig,
    ks: list[int],
    out: str | Path | None = None,
    *,
    overwrite: bool = False,
    resume: bool = False,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    evaluate_baselines: bool = True,
    stop_after_epochs: int | None = None,
) -> list[SelectResult]:
    """Select one panel per size in ``ks``, sharing loading, split and preprocessing.

    With one size the run folder is ``out`` itself; with several, each size gets
    ``out/k<size>/`` (a complete run folder) and ``out/sizes.tsv`` + ``out/sizes.png``
    show the error against panel size. Other parameters as :func:`select_panel`.
    """
    t0 = time.perf_counter()
    ks = list(dict.fromkeys(int(k) for k in ks))
    for k in ks:
        cfg.replace(k=k)  # validates every size before any work
    outdir = None
    if out is not None:
        inputs = input_paths(data, cfg.input.genes, cfg.include, cfg.exclude, cfg.candidates)
        outdir = OutputDir(out, overwrite=overwrite, resume=resume, inputs=inputs,
                           command="select")
    if outdir is not None:
        outdir.check(staging=is_main_process())
    prep, src, constraints = _prepare(data, cfg, ks, t0)
    main = is_main_process()
    staging = None
    if outdir is not None:
        # Only process 0 writes; the others train alongside it and write nothing.
        staging = outdir.prepare() if main else outdir.staging
        if main:
            _check_resume_config(staging, cfg, ks, resume, input_identity(prep.data, src))
    results = []
    for k, con in zip(ks, constraints, strict=True):
        folder = None if staging is None else (staging if len(ks) == 1 else staging / f"k{k}")
        sel = _select_one(
            prep, cfg.replace(k=k), con, folder, staging, resume=resume, on_epoch=on_epoch,
            evaluate_baselines=evaluate_baselines, stop_after_epochs=stop_after_epochs,
        )
        if folder is not None and main:
            _write_run(folder, sel)
        results.append(sel)
    if outdir is not None and main:
        _commit_sizes(outdir, staging, ks, results)
    return results


def _prepare(
    data: Any, cfg: SelectConfig, ks: list[int], t0: float
) -> tuple[Dataset, Any, list[Constraints]]:
    """The :class:`Dataset` (loaded and built, or given), the input source, constraints.

    A given ``Dataset`` must have been built with ``cfg``'s split, seed and labels.
    """
    given = data if isinstance(data, Dataset) else None
    if given is not None:
        data = given.data
    src = None if isinstance(data, ExpressionData) else data
    if src is not None:
        data = load_input(src, cfg)
    load_s = time.perf_counter() - t0
    for k in ks:
        _check_k(k, data.shape[1])
    constraints = [
        resolve_constraints(data.genes, k, cfg.include, cfg.exclude, cfg.candidates) for k in ks
    ]
    if given is not None:
        return given, None, constraints
    hint = counts_hint(data, cfg.preprocess) if is_main_process() else None
    if hint:
        log.warning(hint)
    prep = Dataset.build(data, cfg)
    prep.timings["load"] = load_s
    return prep, src, constraints


def _commit_sizes(
    outdir: OutputDir, staging: Path, ks: list[int], results: list[SelectResult]
) -> None:
    """Write the size table (several sizes), commit the run folder, set each result's ``out``."""
    if len(ks) > 1:
        _write_sizes(staging, results)
    committed = outdir.commit()
    for k, sel in zip(ks, results, strict=True):
        sel.out = committed if len(ks) == 1 else committed / f"k{k}"


@dataclass
class _Trained:
    """The concrete autoencoder's outcome on one panel size (before any refinement)."""

    trainer: Trainer
    result: FitResult
    logits: np.ndarray
    panel: Panel
    best: int
    stability: dict[str, Any] | None
    seconds: float
    prefilter: Any = None  # the candidate prefilter (None: the selector saw every gene)


def _train(
    ds: Dataset,
    cfg: SelectConfig,
    con: Constraints,
    folder: Path | None,
    staging: Path | None,
    *,
    resume: bool,
    on_epoch: Callable[[dict[str, float]], None] | None,
    stop_after_epochs: int | None,
) -> _Trained:
    t = time.perf_counter()
    d = ds.n_genes
    n_lab = len(ds.classes)
    mask = con.mask(cfg.k) if con.active or n_lab else None
    if mask is not None and n_lab:  # the label columns are never selectable
        mask = np.concatenate([mask, np.zeros((cfg.k, n_lab), bool)], axis=1)
    pf = _prefilter(ds, cfg, con)
    trainer = Trainer(cfg.k, d + n_lab, cfg.model.hidden, cfg.train, cfg.seed, data_mesh(),
                      mask=mask, n_labels=n_lab, label_weight=cfg.label_weight,
                      columns=None if pf is None else pf.columns, constant=_constant_genes(ds))
    fits_by_seed, val_mse = [], []
    for r in range(cfg.train.restarts):
        ckpt = None
        if staging is not None:
            tag = "" if folder == staging else f"{folder.name}_"
            ckpt = staging / "checkpoints" / f"{tag}state{'' if r == 0 else f'_r{r}'}.msgpack"
        if on_epoch is not None and cfg.train.restarts > 1:
            on_epoch({"run": r + 1, "runs": cfg.train.restarts, "seed": cfg.seed + r})
        result = fit(trainer, ds.train, ds.val, on_epoch=on_epoch, checkpoint=ckpt,
                     resume=resume, stop_after_epochs=stop_after_epochs, seed=cfg.seed + r)
        fits_by_seed.append(result)
        last = result.history[-1] if result.history else {}
        val_mse.append(last.get("val_loss", float("nan")) if ds.val is not None
                       else last.get("train_loss", float("nan")))
    best = int(np.nanargmin(val_mse)) if np.isfinite(val_mse).any() else 0
    result = fits_by_seed[best]
    logits = np.asarray(result.params["selector"]["logits"])[:, :d]
    stability = None
    if cfg.train.restarts > 1:
        panels = [extract_panel(np.asarray(f.params["selector"]["logits"])[:, :d]).indices
                  for f in fits_by_seed]
        stability = panel_stability(panels, ds.data.genes, val_mse, best, cfg.seed)
    return _Trained(trainer, result, logits, extract_panel(logits), best, stability,
                    time.perf_counter() - t, pf)


#: Swap optima whose training refit errors differ by less than this fraction count as tied.
TIE_RTOL = 1e-4


def refine_panel(
    ds: Dataset, cfg: SelectConfig, con: Constraints, cae: Panel
) -> tuple[Panel, dict[str, Any]]:
    """Swap-refine the concrete autoencoder's panel on the training rows (if enabled).

    The exact swap search (:func:`~genepanel.selectors.swap_refine`) runs from the
    autoencoder's panel and from the greedy panel; the local optimum with the lower
    training refit error is kept. Local optima of this objective often differ by a few
    genes at training errors equal to 1e-5 of each other; such ties (within
    :data:`TIE_RTOL`) go to the greedy start, which does not depend on the seed or the
    number of devices, so that the panel is reproducible. Returns the final panel (genes
    it shares with the autoencoder's panel keep their node; the others fill the
    remaining nodes) and a record for ``run.json``. Refinement runs with the linear
    decoder only (an MLP panel was not trained for a linear refit); a supervised panel
    is refined on :func:`~genepanel.selectors.supervised_target`'s objective (a
    ridge-regularised, class-balanced least-squares analogue of its training loss), not
    on the gene refit error alone.
    """
    if not cfg.refine:
        return cae, {"enabled": False, "reason": "turned off (--no-refine)"}
    if cfg.model.decoder != "linear":
        return cae, {"enabled": False,
                     "reason": "MLP decoder: the swap search optimises the linear refit error"}
    weight, why = supervised_refit(cfg)
    if why:
        return cae, {"enabled": False, "reason": why}
    t = time.perf_counter()
    xc = refit_matrix(ds, weight)
    allowed = con.allowed.copy()
    allowed[list(con.include)] = True
    scale = xc.shape[0] * ds.n_genes if weight is None else 1.0
    greedy, _ = greedy_panel(ds, cfg.k, allowed if con.active else None, con.include, weight)
    lam, alpha = (0.0, 0.0) if weight is not None else search_penalty(xc, greedy)
    if lam > 0:
        start = ridge_greedy(xc, cfg.k, lam, allowed=allowed if con.active else None,
                             include=con.include)
        runs = {name: ridge_swap_refine(xc, p, lam, allowed=allowed, fixed=con.include)
                for name, p in (("cae", cae.indices), ("greedy", start))}
    else:
        runs = {name: swap_refine(xc, p, allowed=allowed, fixed=con.include)
                for name, p in (("cae", cae.indices), ("greedy", greedy))}
    gap = runs["cae"].objective_end / runs["greedy"].objective_end - 1.0
    kept = "cae" if gap < -TIE_RTOL else "greedy"
    final = runs[kept].panel
    # Node order: genes the autoencoder chose keep their node, new genes fill the rest.
    new = iter(g for g in final if g not in set(cae.indices.tolist()))
    fset = set(final.tolist())
    indices = np.array([g if g in fset else next(new) for g in cae.indices], np.int64)
    panel = Panel(indices=indices, probability=cae.probability.copy(), reassigned=cae.reassigned)
    genes = ds.data.genes
    changed = np.flatnonzero(indices != cae.indices)
    record = {
        "enabled": True,
        "method": "exact swap search on the training rows' linear refit error (best single "
                  "swap per round until none improves), from the autoencoder's panel and "
                  "from the greedy panel (greedy on the same objective); the lower training "
                  f"error is kept, ties within {TIE_RTOL:g} go to the greedy start",
        "objective": _refine_objective(weight, ds, lam=lam, alpha=alpha, rows=xc.shape[0]),
        "penalty": lam,
        "kept_start": kept,
        "genes_replaced": len(changed),
        "train_rows": int(xc.shape[0]),
        "train_refit_mse_cae": runs["cae"].objective_start / scale,
        "starts": {
            name: {"swaps": r.swaps, "converged": r.converged,
                   "train_refit_mse_before": r.objective_start / scale,
                   "train_refit_mse_after": r.objective_end / scale}
            for name, r in runs.items()
        },
        "train_refit_mse_final": runs[kept].objective_end / scale,
        "replaced": [{"node": int(i), "out": genes[int(cae.indices[i])],
                      "in": genes[int(indices[i])]} for i in changed],
        "seconds": time.perf_counter() - t,
    }
    return panel, record


def _refine_objective(
    weight: float | None, ds: Dataset, *, lam: float, alpha: float, rows: int
) -> str:
    """What the swap refinement minimised (``lam > 0``: ridge), in words (``run.json``)."""
    if weight is not None:
        return supervised_objective(ds)
    if lam > 0:
        return (f"training refit MSE + ridge penalty λ‖B‖², λ = {lam:.4g} ({alpha:.3g} × the "
                "mean eigenvalue of the greedy panel's covariance, chosen by GCV on the "
                "training rows as for the held-out refit)")
    why = (f"GCV chose a negligible penalty ({alpha:.3g} of the greedy panel's mean "
           f"eigenvalue, below {RIDGE_SEARCH_MIN_ALPHA:g})" if rows <= RIDGE_SEARCH_MAX_ROWS
           else f"more than {RIDGE_SEARCH_MAX_ROWS} training rows")
    return f"training refit MSE (least squares: {why})"


def _probabilities(logits: np.ndarray, panel: Panel) -> np.ndarray:
    from scipy.special import softmax

    probs = softmax(np.asarray(logits, np.float64), axis=-1)
    return probs[np.arange(len(panel.indices)), panel.indices].astype(np.float32)


def baseline_panels(
    ds: Dataset, cfg: SelectConfig, con: Constraints | None = None,
    names: tuple[str, ...] = ("greedy", "topvar", "hvg"), n_random: int = N_RANDOM_PANELS,
) -> tuple[dict[str, np.ndarray], dict[str, Selected]]:
    """Baseline panels from the selector registry (``random_0`` … for random panels).

    With constraints, greedy and top-variance panels choose among the allowed genes
    (the others ignore them).
    """
    allowed = con.selectable() if con is not None else None
    panels: dict[str, np.ndarray] = {}
    chosen: dict[str, Selected] = {}
    for name in names:
        if name == "random":
            t = time.perf_counter()
            for i, p in enumerate(random_panels(ds.n_genes, cfg.k, cfg.seed, n_random)):
                panels[f"random_{i}"] = p
            chosen["random"] = Selected("random", panels["random_0"],
                                        time.perf_counter() - t,
                                        f"mean ± sd of {n_random} panels")
            continue
        sel = run_selector(name, ds, cfg.k, seed=cfg.seed,
                           allowed=allowed if name in ("greedy", "topvar") else None)
        panels[name] = sel.indices
        chosen[name] = sel
    return panels, chosen


#: Baselines ``select`` scores beside the panel (``--baselines``).
SELECT_BASELINES = ("greedy", "topvar", "hvg", "random")


def _select_one(
    ds: Dataset,
    cfg: SelectConfig,
    con: Constraints,
    folder: Path | None,
    staging: Path | None,
    *,
    resume: bool,
    on_epoch: Callable[[dict[str, float]], None] | None,
    evaluate_baselines: bool,
    stop_after_epochs: int | None,
) -> SelectResult:
    data = ds.data
    timings = dict(ds.timings)
    tr = _train(ds, cfg, con, folder, staging, resume=resume, on_epoch=on_epoch,
                stop_after_epochs=stop_after_epochs)
    timings["train"] = tr.seconds
    result, n_lab = tr.result, len(ds.classes)

    panel, refinement = refine_panel(ds, cfg, con, tr.panel)
    refined = refinement.get("genes_replaced", 0) > 0
    moved = panel.indices != tr.panel.indices
    if refined:  # a replaced node's selector probability says nothing of its new gene
        prob = np.where(moved, np.nan, _probabilities(tr.logits, panel))
        panel = Panel(panel.indices, prob.astype(np.float32), panel.reassigned)
    table = panel_table(panel, data.genes, fixed=len(con.include))
    table["refined"] = moved
    if refined:
        lam = refinement.get("penalty", 0.0)
        if lam > 0:  # the objective the refinement minimised
            alt, cost = ridge_swap_alternatives(ds.train_centred(), panel.indices,
                                                cfg.n_related - 1, lam, allowed=con.allowed)
        else:
            alt, cost = swap_alternatives(refit_matrix(ds, supervised_refit(cfg)[0]),
                                          panel.indices, cfg.n_related - 1, allowed=con.allowed)
        groups = swap_groups(panel, alt, cost, data.genes, fixed=len(con.include))
    else:
        groups = related_groups(tr.logits, data.genes, panel, cfg.n_related)
    timings["refine"] = refinement.get("seconds", 0.0)

    t = time.perf_counter()
    chunk = eval_chunk(ds.test.n, tr.trainer.n_devices, tr.trainer.d)
    test_eval = tr.trainer.evaluate(result.params, ds.test, tr.panel.indices, chunk)
    panels: dict[str, np.ndarray] = {"cae": panel.indices}
    if refined:
        panels["cae_unrefined"] = tr.panel.indices
    chosen: dict[str, Selected] = {}
    if evaluate_baselines:
        extra, chosen = baseline_panels(ds, cfg, con, SELECT_BASELINES)
        panels.update(extra)
    timings["baselines"] = time.perf_counter() - t
    t = time.perf_counter()
    labels = None
    if n_lab:
        labels = np.where(ds.label_codes >= 0, ds.label_codes.astype(str), "")
    scores = score(ds, panels, pca_k=cfg.k if evaluate_baselines else None, labels=labels,
                   seed=cfg.seed)
    metrics = _metrics(scores, test_eval, refinement, chosen, refined=refined, n_lab=n_lab)
    timings["evaluate"] = time.perf_counter() - t

    model = _fitted_model(ds, cfg, tr, panel, scores, metrics, refined=refined)
    timings["total"] = sum(timings.values())
    run = _select_run_record(ds, cfg, con, tr, panel, scores, metrics, timings, refinement,
                             chosen)
    return SelectResult(genes=list(data.genes), panel=panel, panel_table=table, groups=groups,
                        fit=result, metrics=metrics, run=run, split=ds.split, model=model,
                        timings=timings, stability=tr.stability, cae_panel=tr.panel)


def _fitted_model(
    ds: Dataset, cfg: SelectConfig, tr: _Trained, panel: Panel, scores: Scores,
    metrics: dict[str, Any], *, refined: bool,
) -> FittedModel:
    """The saved model of one panel: its genes, decoder, linear refit and preprocessing."""
    data, result = ds.data, tr.result
    fits = scores.fits
    if refined:
        # The trained decoder reads the autoencoder's panel; the saved decoder must read
        # the final one: the refit linear decoder (the trained one is linear too).
        params = {"out": {"kernel": fits["cae"].coef, "bias": fits["cae"].intercept}}
        params = with_label_head(params, ds, panel.indices)  # supervised: label outputs
    else:
        params = result.params["decoder"]
    return FittedModel(
        panel_genes=[data.genes[i] for i in panel.indices],
        genes=list(data.genes),
        panel_index=panel.indices,
        hidden=tuple(cfg.model.hidden),
        params=params,
        linear=fits["cae"],
        pre=ds.pre,
        meta={"config": cfg.to_dict(), "seed": cfg.seed + tr.best, "versions": versions(),
              "source": data.source, "metrics": metrics, "label_classes": ds.classes,
              "labels_key": cfg.labels},
    )


def _select_run_record(
    ds: Dataset, cfg: SelectConfig, con: Constraints, tr: _Trained, panel: Panel,
    scores: Scores, metrics: dict[str, Any], timings: dict[str, float],
    refinement: dict[str, Any], chosen: dict[str, Selected],
) -> dict[str, Any]:
    """``run.json`` of one panel."""
    data, result, n_lab = ds.data, tr.result, len(ds.classes)
    run = _run_record(cfg, data, ds.split, result, panel, metrics, timings)
    trainer = tr.trainer
    run["training"]["candidate_genes"] = trainer.width
    run["training"]["constant_genes"] = ds.n_genes + n_lab - trainer.n_out
    run["training"]["prefilter"] = None if tr.prefilter is None else tr.prefilter.report
    run["training"]["status"] = convergence_note(
        result, cfg.train, n_genes=ds.n_genes, n_candidates=trainer.width,
        reassigned=tr.panel.reassigned)
    run["seed"] = cfg.seed + tr.best
    run["refinement"] = refinement
    run["panels"] = _panels_record(scores, chosen, data.genes)
    if cfg.include or cfg.exclude or cfg.candidates:
        run["constraints"] = con.report
    if tr.stability is not None:
        run["restarts"] = tr.stability["summary"]
    return run


def _prefilter(ds: Dataset, cfg: SelectConfig, con: Constraints) -> Any:
    """The candidate prefilter for this panel (``None``: the selector sees every gene)."""
    from genepanel.prefilter import candidate_columns, gene_variance

    n = cfg.train.prefilter and max(cfg.train.prefilter, 10 * cfg.k)
    if n <= 0 or int(con.allowed.sum()) <= n:
        return None
    if "variance" not in ds.cache:
        ds.cache["variance"] = gene_variance(ds.data, ds.pre, ds.split.train, seed=cfg.seed)
    return candidate_columns(ds.data, ds.pre, ds.split.train, n, allowed=con.allowed,
                             include=con.include, seed=cfg.seed, variance=ds.cache["variance"])


def _constant_genes(ds: Dataset) -> np.ndarray:
    """Per-gene training value where a gene is constant on the training rows, else NaN."""
    if "constant" not in ds.cache:
        from genepanel.prefilter import constant_genes

        ds.cache["constant"] = constant_genes(ds.train)[: ds.n_genes]
    return ds.cache["constant"]


def _metrics(
    scores: Scores, test_eval: dict[str, float], refinement: dict[str, Any],
    chosen: dict[str, Selected], *, refined: bool, n_lab: int,
) -> dict[str, Any]:
    """``run.json``'s metrics, rendered from the typed scores."""
    mse = {name: s.test_mse for name, s in scores.panels.items()}
    metrics: dict[str, Any] = {"linear_refit_test_mse": mse["cae"]}
    info = scores.panels["cae"].fit_info or {}
    if "alpha" in info:  # the refit's ridge penalty (GCV), relative and absolute
        metrics["linear_refit_penalty"] = {"alpha": info["alpha"],
                                           "lambda": info.get("penalty", info.get("ridge_lambda"))}
    if refined:
        metrics["trained_decoder_test_mse"] = mse["cae"]
        metrics["decoder"] = ("refit linear decoder of the final panel (the trained decoder "
                              "was fitted to the autoencoder's panel before refinement)")
        metrics["cae_trained_decoder_test_mse"] = test_eval["mse"]
    else:
        metrics["trained_decoder_test_mse"] = test_eval["mse"]
    metrics["cae_linear_refit_test_mse"] = mse.get("cae_unrefined", mse["cae"])
    if refinement.get("enabled"):
        refinement["cae_linear_refit_test_mse"] = metrics["cae_linear_refit_test_mse"]
        refinement["final_linear_refit_test_mse"] = mse["cae"]
    if n_lab:
        metrics["trained_decoder_test_accuracy"] = test_eval["accuracy"]
        metrics["trained_decoder_test_cross_entropy"] = test_eval["cross_entropy"]
    metrics.update(_baseline_metrics(scores, mse, chosen))
    if n_lab:
        metrics["extra_trees_test_accuracy"] = _tree_accuracies(scores)
    metrics["test_variance"] = scores.test_variance
    metrics["baselines_better_than_panel"] = beaten_by(scores)
    return metrics


def _baseline_metrics(
    scores: Scores, mse: dict[str, float], chosen: dict[str, Selected]
) -> dict[str, Any]:
    """The baselines' and the PCA bound's test errors, as ``run.json`` metrics."""
    metrics: dict[str, Any] = {}
    rand = np.array([v for name, v in mse.items() if name.startswith("random_")])
    if len(rand):
        metrics["random_panel_test_mse"] = {
            "mean": float(rand.mean()), "sd": float(rand.std(ddof=1)) if len(rand) > 1 else None,
            "min": float(rand.min()), "n_panels": len(rand),
        }
    for name in ("hvg", "topvar", "greedy"):
        if name in mse:
            metrics[f"{name}_panel_test_mse"] = mse[name]
    if "hvg" in chosen:
        metrics["hvg_method"] = chosen["hvg"].detail
    if scores.pca is not None:
        metrics["pca_bound_test_mse"] = scores.pca.test_mse
        metrics["pca_components"] = scores.pca.components
    return metrics


def _tree_accuracies(scores: Scores) -> dict[str, float | None]:
    """ExtraTrees test accuracy of the panel and the baselines (random: their mean)."""
    acc = {name: s.accuracy for name, s in scores.panels.items() if s.accuracy is not None}
    trees: dict[str, float | None] = {"cae": acc.get("cae")}
    racc = [v for name, v in acc.items() if name.startswith("random_")]
    if racc:
        trees["random_mean"] = float(np.mean(racc))
    for name in ("hvg", "topvar", "greedy"):
        if name in acc:
            trees[name] = acc[name]
    return trees


def beaten_by(scores: Scores, panel: str = "cae") -> list[dict[str, Any]]:
    """Baselines with a lower held-out refit error than ``panel`` (lowest first).

    Random panels count through their mean; panels whose refit is not determined
    (``k`` ≥ training rows − 1) never count.
    """
    own = scores.panels[panel]
    if not own.determined:
        return []
    cands: dict[str, float] = {}
    rand = [s.test_mse for n, s in scores.panels.items() if n.startswith("random_")]
    if rand:
        cands["random"] = float(np.mean(rand))
    for name, s in scores.panels.items():
        if name in (panel, "cae_unrefined") or name.startswith("random_") or not s.determined:
            continue
        cands[name] = s.test_mse
    return [{"method": m, "test_mse": v, "panel_test_mse": own.test_mse,
             "panel_higher_by": own.test_mse / v - 1.0}
            for m, v in sorted(cands.items(), key=lambda kv: kv[1]) if v < own.test_mse]


def _panels_record(
    scores: Scores, chosen: dict[str, Selected], genes: list[str]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, s in scores.panels.items():
        base = "random" if name.startswith("random_") else name
        rec: dict[str, Any] = {"test_mse": s.test_mse, "train_mse": s.train_mse,
                               "determined": s.determined,
                               "genes": [genes[int(i)] for i in s.indices]}
        if s.accuracy is not None:
            rec["extra_trees_test_accuracy"] = s.accuracy
        if base in chosen:
            rec["seconds"] = chosen[base].seconds
            rec["method"] = chosen[base].detail
        out[name] = rec
    if scores.pca is not None:
        out["pca_bound"] = {"test_mse": scores.pca.test_mse,
                            "components": scores.pca.components,
                            "fit_rows": scores.pca.fit_rows}
    return out


def _write_run(folder: Path, sel: SelectResult) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_tsv(folder / "panel.tsv", sel.panel_table)
    write_tsv(folder / "groups.tsv", sel.groups)
    epochs = pd.DataFrame([h for h in sel.fit.history if "epoch" in h])
    order = [c for c in HISTORY_COLUMNS if c in epochs.columns]
    write_tsv(folder / "history.tsv", epochs[order + sorted(set(epochs.columns) - set(order))])
    plot_history(sel.fit.history, folder / "history.png")
    if sel.stability is not None:
        write_tsv(folder / "stability.tsv", sel.stability["genes"])
        write_tsv(folder / "restarts.tsv", sel.stability["runs"])
    save_model(folder, sel.model)
    write_json(folder / "run.json", sel.run)


def _write_sizes(staging: Path, results: list[SelectResult]) -> None:
    rows = []
    for sel in results:
        m = sel.metrics
        rows.append({
            "k": len(sel.panel.indices),
            "linear_refit_test_mse": m["linear_refit_test_mse"],
            "trained_decoder_test_mse": m["trained_decoder_test_mse"],
            "random_panel_test_mse": m.get("random_panel_test_mse", {}).get("mean"),
            "hvg_panel_test_mse": m.get("hvg_panel_test_mse"),
            "topvar_panel_test_mse": m.get("topvar_panel_test_mse"),
            "greedy_panel_test_mse": m.get("greedy_panel_test_mse"),
            "cae_linear_refit_test_mse": m.get("cae_linear_refit_test_mse"),
            "pca_bound_test_mse": m.get("pca_bound_test_mse"),
            "converged": sel.fit.converged,
            "epochs_run": sel.fit.epochs_run,
        })
    table = pd.DataFrame(rows)
    write_tsv(staging / "sizes.tsv", table)
    plot_sizes(table, staging / "sizes.png")


def panel_stability(
    panels: list[np.ndarray], genes: list[str], val_mse: list[float], best: int, seed: int
) -> dict[str, Any]:
    """Agreement of panels trained from different seeds.

    Returns ``summary`` (mean and minimum pairwise Jaccard index, genes chosen every
    time, the kept run), ``genes`` (a table: how often each chosen gene was picked)
    and ``runs`` (one row per restart).
    """
    sets = [set(map(int, p)) for p in panels]
    pairs = [(i, j) for i in range(len(sets)) for j in range(i + 1, len(sets))]
    jac = [len(sets[i] & sets[j]) / len(sets[i] | sets[j]) for i, j in pairs]
    always = sorted(set.intersection(*sets))
    counts: dict[int, int] = {}
    for s_ in sets:
        for g in s_:
            counts[g] = counts.get(g, 0) + 1
    order = sorted(counts, key=lambda g: (-counts[g], genes[g]))
    gene_table = pd.DataFrame({
        "gene": [genes[g] for g in order],
        "times_selected": [counts[g] for g in order],
        "fraction": [counts[g] / len(sets) for g in order],
        "in_kept_panel": [g in sets[best] for g in order],
    })
    runs = pd.DataFrame({
        "restart": range(len(panels)),
        "seed": [seed + r for r in range(len(panels))],
        "val_mse": val_mse,
        "kept": [r == best for r in range(len(panels))],
        "genes": [",".join(genes[g] for g in p) for p in panels],
    })
    summary = {
        "n": len(panels),
        "kept_restart": best,
        "kept_seed": seed + best,
        "jaccard_mean": float(np.mean(jac)),
        "jaccard_min": float(np.min(jac)),
        "genes_in_every_panel": [genes[g] for g in always],
        "n_genes_in_every_panel": len(always),
    }
    return {"summary": summary, "genes": gene_table, "runs": runs}


def _check_resume_config(
    staging: Path, cfg: SelectConfig, ks: list[int], resume: bool,  # noqa: FBT001
    identity: dict[str, Any] | None = None,
) -> None:
    import json

    import flax.serialization

    path = staging / "checkpoints" / "config.json"
    want = {**cfg.to_dict(), "panel_sizes": ks}
    if resume and path.exists():
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            msg = (f"--resume: {path} is damaged ({exc.__class__.__name__}); start again "
                   "with --overwrite")
            raise DataError(msg) from exc
        before = saved.pop("input_identity", None) if isinstance(saved, dict) else None
        if identity is not None and before is not None and not _same_input(before, identity):
            msg = (
                f"--resume: the input differs from the interrupted run's "
                f"({_describe_input(before)} then, {_describe_input(identity)} now); resume "
                "with the same input or start again with --overwrite"
            )
            raise UsageError(msg)
        if saved != want:
            changed = sorted(k for k in set(saved) | set(want) if saved.get(k) != want.get(k))
            msg = (
                f"--resume: the options differ from the interrupted run ({', '.join(changed)}); "
                "resume with the same options or start again with --overwrite"
            )
            raise UsageError(msg)
        for ckpt in sorted(path.parent.glob("*.msgpack")):
            try:
                payload = flax.serialization.msgpack_restore(ckpt.read_bytes())
                ok = isinstance(payload, dict) and {"state", "meta"} <= set(payload)
            except Exception:  # any decoding failure means a damaged file
                ok = False
            if not ok:
                msg = (f"--resume: the checkpoint {ckpt} is damaged (not a genepanel "
                       "checkpoint); start again with --overwrite")
                raise DataError(msg)
            check_checkpoint_layout(payload, ckpt)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {**want, "input_identity": identity} if identity is not None else want)


def _same_input(before: dict[str, Any], now: dict[str, Any]) -> bool:
    keys = ("shape", "genes_sha256", "size", "head_tail_sha256")
    return all(before.get(k) == now.get(k) for k in keys)


def _describe_input(ident: dict[str, Any]) -> str:
    where = Path(ident["path"]).name if ident.get("path") else "data in memory"
    shape = " × ".join(map(str, ident.get("shape", [])))
    size = f", {ident['size']} bytes" if "size" in ident else ""
    return f"{where}: {shape}{size}"


def _run_record(
    cfg: SelectConfig,
    data: ExpressionData,
    split: Split,
    result: FitResult,
    panel: Panel,
    metrics: dict[str, Any],
    timings: dict[str, float],
) -> dict[str, Any]:
    return {
        "config": cfg.to_dict(),
        "data": {
            "source": data.source, "n_samples": data.shape[0], "n_genes": data.shape[1],
            "sparse": data.is_sparse, "split": split.sizes(),
        },
        "training": {
            "epochs_run": result.epochs_run,
            "converged": result.converged,
            "stop_epoch": result.stop_epoch,
            "stopping_rule": f"mean row-max probability > {cfg.train.stop_threshold}",
            "final_mean_max_prob": result.history[-1]["mean_max_prob"] if result.history else None,
            "collisions_resolved": result.collisions,
            "reassigned_at_extraction": panel.reassigned,
            "attempts": result.attempts,
            "data_placement": result.data_placement,
            "batch_size": result.batch_size,
            "max_epochs": result.history[-1]["epochs"] if result.history else None,
            "steps_per_epoch": result.steps_per_epoch,
            "devices": result.n_devices,
            "platform": jax.default_backend(),
            "compilations": result.compilations,
        },
        "metrics": metrics,
        "timings_seconds": timings,
        "seed": cfg.seed,
        "versions": versions(),
    }

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
from genepanel.data import Preprocessor, Split, label_codes, make_split, resolve_labels
from genepanel.errors import DataError, UsageError
from genepanel.evaluate import (
    fit_linear,
    hvg_panel,
    linear_test_mse,
    pca_bound,
    random_panels,
    test_variance,
)
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
from genepanel.panel import Panel, extract_panel, panel_table, related_groups
from genepanel.plots import plot_history, plot_sizes
from genepanel.runtime import data_mesh, is_main_process
from genepanel.saved import FittedModel, save_model, versions
from genepanel.train import (
    FitResult,
    RowSource,
    Trainer,
    convergence_note,
    eval_chunk,
    fit,
)

if TYPE_CHECKING:  # pragma: no cover
    import anndata as ad

log = logging.getLogger("genepanel")

N_RANDOM_PANELS = 5
VAL_ROWS = 8192
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


@dataclass
class _Prepared:
    """Loaded data, split, fitted preprocessing and row sources, shared by every panel."""

    data: ExpressionData
    split: Split
    pre: Preprocessor
    train: RowSource
    val: RowSource | None
    test: RowSource
    timings: dict[str, float]
    classes: list[str] = field(default_factory=list)
    label_codes: np.ndarray | None = None
    variance: np.ndarray | None = None  # per-gene training variance, for the prefilter
    constant: np.ndarray | None = None  # per-gene training value where constant, else NaN


def _prepare(data: ExpressionData, cfg: SelectConfig) -> _Prepared:
    t = time.perf_counter()
    n, d = data.shape
    split = make_split(n, cfg.split, cfg.seed, data.obs)
    pre = Preprocessor(kind=cfg.preprocess, target_sum=cfg.target_sum).fit(data, split.train)
    budget = cfg.train.device_memory_budget_gb * 2**30
    # Fast path: the training matrix lives on the device. Several processes stream
    # instead, each reading only its own rows of every minibatch.
    materialize = (
        len(split.train) * d * 4 <= budget and jax.process_count() == 1 and not data.is_backed
    )
    codes, classes = None, []
    if cfg.labels is not None:
        codes, classes = label_codes(resolve_labels(data, cfg.labels))
        if len(np.unique(codes[split.train][codes[split.train] >= 0])) < 2:
            msg = (f"labels column '{cfg.labels}' has fewer than two classes among the "
                   "training samples; supervised panels need at least two")
            raise DataError(msg)
    lab = {"labels": codes, "n_classes": len(classes)}
    # The per-epoch validation error (history, choice among restarts) uses at most
    # VAL_ROWS rows, so that an epoch never rereads a large validation set from disk.
    val_rows = split.val
    if len(val_rows) > VAL_ROWS:
        val_rows = np.sort(np.random.default_rng([cfg.seed, 17]).choice(val_rows, VAL_ROWS,
                                                                          replace=False))
    return _Prepared(
        data=data,
        split=split,
        pre=pre,
        train=RowSource(data, pre, split.train, materialize=materialize, **lab),
        val=(RowSource(data, pre, val_rows, materialize=materialize, **lab)
             if len(val_rows) else None),
        test=RowSource(data, pre, split.test, materialize=False, **lab),
        timings={"preprocess": time.perf_counter() - t},
        classes=classes,
        label_codes=codes,
    )


def _check_k(k: int, d: int) -> None:
    if k >= d:
        msg = f"--k {k} must be smaller than the number of genes ({d}); choose k < {d}"
        raise UsageError(msg)


def select_panel(
    data: ExpressionData | ad.AnnData | str | Path,
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
        ``cfg.input.layer``; see also :func:`genepanel.tl.select`) or a path to
        ``.h5ad``/HDF5/``.npz``.
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
        Also score random and highly-variable-gene panels and the PCA bound.
    stop_after_epochs
        Testing aid: interrupt (with a checkpoint) after that many epochs.
    """
    results = select_panels(
        data, cfg, [cfg.k], out, overwrite=overwrite, resume=resume, on_epoch=on_epoch,
        evaluate_baselines=evaluate_baselines, stop_after_epochs=stop_after_epochs,
    )
    return results[0]


def select_panels(
    data: ExpressionData | ad.AnnData | str | Path,
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
    src = None if isinstance(data, ExpressionData) else data
    if src is not None:
        data = load_input(src, cfg)
    load_s = time.perf_counter() - t0
    for k in ks:
        _check_k(k, data.shape[1])
    constraints = [
        resolve_constraints(data.genes, k, cfg.include, cfg.exclude, cfg.candidates) for k in ks
    ]
    hint = counts_hint(data, cfg.preprocess) if is_main_process() else None
    if hint:
        log.warning(hint)
    prep = _prepare(data, cfg)
    prep.timings["load"] = load_s

    main = is_main_process()
    staging = None
    if outdir is not None:
        # Only process 0 writes; the others train alongside it and write nothing.
        staging = outdir.prepare() if main else outdir.staging
        if main:
            _check_resume_config(staging, cfg, ks, resume, input_identity(data, src))
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
        if len(ks) > 1:
            _write_sizes(staging, results)
        committed = outdir.commit()
        for k, sel in zip(ks, results, strict=True):
            sel.out = committed if len(ks) == 1 else committed / f"k{k}"
    return results


def _select_one(
    prep: _Prepared,
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
    data, split, pre = prep.data, prep.split, prep.pre
    d = data.shape[1]
    timings = dict(prep.timings)
    t = time.perf_counter()
    n_lab = len(prep.classes)
    mask = con.mask(cfg.k) if con.active or n_lab else None
    if mask is not None and n_lab:  # the label columns are never selectable
        mask = np.concatenate([mask, np.zeros((cfg.k, n_lab), bool)], axis=1)
    pf = _prefilter(prep, cfg, con)
    if prep.constant is None:
        from genepanel.prefilter import constant_genes

        prep.constant = constant_genes(prep.train)[:d]
    trainer = Trainer(cfg.k, d + n_lab, cfg.model.hidden, cfg.train, cfg.seed, data_mesh(),
                      mask=mask, n_labels=n_lab, label_weight=cfg.label_weight,
                      columns=None if pf is None else pf.columns, constant=prep.constant)
    fits_by_seed, val_mse = [], []
    for r in range(cfg.train.restarts):
        ckpt = None
        if staging is not None:
            tag = "" if folder == staging else f"{folder.name}_"
            ckpt = staging / "checkpoints" / f"{tag}state{'' if r == 0 else f'_r{r}'}.msgpack"
        if on_epoch is not None and cfg.train.restarts > 1:
            on_epoch({"run": r + 1, "runs": cfg.train.restarts, "seed": cfg.seed + r})
        result = fit(trainer, prep.train, prep.val, on_epoch=on_epoch, checkpoint=ckpt,
                     resume=resume, stop_after_epochs=stop_after_epochs, seed=cfg.seed + r)
        fits_by_seed.append(result)
        last = result.history[-1] if result.history else {}
        val_mse.append(last.get("val_loss", float("nan")) if prep.val is not None
                       else last.get("train_loss", float("nan")))
    best = int(np.nanargmin(val_mse)) if np.isfinite(val_mse).any() else 0
    result = fits_by_seed[best]
    timings["train"] = time.perf_counter() - t

    t = time.perf_counter()
    logits = np.asarray(result.params["selector"]["logits"])[:, :d]
    panel = extract_panel(logits)
    table = panel_table(panel, data.genes, fixed=len(con.include))
    groups = related_groups(logits, data.genes, panel, cfg.n_related)
    stability = None
    if cfg.train.restarts > 1:
        panels = [extract_panel(np.asarray(f.params["selector"]["logits"])[:, :d]).indices
                  for f in fits_by_seed]
        stability = panel_stability(panels, data.genes, val_mse, best, cfg.seed)

    chunk = eval_chunk(prep.test.n, trainer.n_devices)
    test_eval = trainer.evaluate(result.params, prep.test, panel.indices, chunk)
    metrics: dict[str, Any] = {"trained_decoder_test_mse": test_eval["mse"]}
    if n_lab:
        metrics["trained_decoder_test_accuracy"] = test_eval["accuracy"]
        metrics["trained_decoder_test_cross_entropy"] = test_eval["cross_entropy"]
    panels_to_score = {"cae": panel.indices}
    # The HVG and PCA baselines see a random subset of training rows whose dense copy
    # stays within a quarter of the host memory budget.
    rows_cap = max(1000, int(cfg.input.host_memory_budget_gb * 2**30 / (4 * 4 * d)))
    if evaluate_baselines:
        for i, p in enumerate(random_panels(d, cfg.k, cfg.seed, N_RANDOM_PANELS)):
            panels_to_score[f"random_{i}"] = p
        panels_to_score["hvg"], hvg_method = hvg_panel(
            data, pre, split.train, cfg.k, max_rows=rows_cap, seed=cfg.seed
        )
    fits = fit_linear(data, pre, split.train, panels_to_score)
    mse = linear_test_mse(data, pre, split.test, fits)
    metrics["linear_refit_test_mse"] = mse["cae"]
    if evaluate_baselines:
        rand = np.array([mse[f"random_{i}"] for i in range(N_RANDOM_PANELS)])
        metrics["random_panel_test_mse"] = {
            "mean": float(rand.mean()), "sd": float(rand.std(ddof=1)),
            "min": float(rand.min()), "n_panels": N_RANDOM_PANELS,
        }
        metrics["hvg_panel_test_mse"] = mse["hvg"]
        metrics["hvg_method"] = hvg_method
        pca = pca_bound(data, pre, split.train, split.test, cfg.k, cfg.seed, max_rows=rows_cap)
        metrics["pca_bound_test_mse"] = pca["mse"]
        metrics["pca_components"] = pca["components"]
    if n_lab:
        metrics["extra_trees_test_accuracy"] = _extra_trees(prep, panels_to_score, cfg.seed)
    metrics["test_variance"] = test_variance(data, pre, split.test)
    timings["evaluate"] = time.perf_counter() - t

    model = FittedModel(
        panel_genes=[data.genes[i] for i in panel.indices],
        genes=list(data.genes),
        panel_index=panel.indices,
        hidden=tuple(cfg.model.hidden),
        params=result.params["decoder"],
        linear=fits["cae"],
        pre=pre,
        meta={"config": cfg.to_dict(), "seed": cfg.seed + best, "versions": versions(),
              "source": data.source, "metrics": metrics, "label_classes": prep.classes,
              "labels_key": cfg.labels},
    )
    timings["total"] = sum(timings.values())
    run = _run_record(cfg, data, split, result, panel, metrics, timings)
    run["training"]["candidate_genes"] = trainer.width
    run["training"]["constant_genes"] = d + n_lab - trainer.n_out
    run["training"]["prefilter"] = None if pf is None else pf.report
    run["training"]["status"] = convergence_note(
        result, cfg.train, n_genes=d, n_candidates=trainer.width, reassigned=panel.reassigned)
    run["seed"] = cfg.seed + best
    if cfg.include or cfg.exclude or cfg.candidates:
        run["constraints"] = con.report
    if stability is not None:
        run["restarts"] = stability["summary"]
    return SelectResult(genes=list(data.genes), panel=panel, panel_table=table, groups=groups,
                        fit=result, metrics=metrics, run=run, split=split, model=model,
                        timings=timings, stability=stability)


def _prefilter(prep: _Prepared, cfg: SelectConfig, con: Constraints) -> Any:
    """The candidate prefilter for this panel (``None``: the selector sees every gene)."""
    from genepanel.prefilter import candidate_columns, gene_variance

    n = cfg.train.prefilter and max(cfg.train.prefilter, 10 * cfg.k)
    if n <= 0 or int(con.allowed.sum()) <= n:
        return None
    if prep.variance is None:
        prep.variance = gene_variance(prep.data, prep.pre, prep.split.train, seed=cfg.seed)
    return candidate_columns(prep.data, prep.pre, prep.split.train, n, allowed=con.allowed,
                             include=con.include, seed=cfg.seed, variance=prep.variance)


def _extra_trees(prep: _Prepared, panels: dict[str, np.ndarray], seed: int) -> dict[str, float]:
    """ExtraTrees test accuracy on each panel's genes (the paper's classification metric)."""
    from genepanel.baselines import extra_trees_accuracy

    codes = prep.label_codes
    tr = prep.split.train[codes[prep.split.train] >= 0]
    te = prep.split.test[codes[prep.split.test] >= 0]
    if not len(te):
        return {}
    xtr = prep.pre.transform(prep.data.rows(tr))
    xte = prep.pre.transform(prep.data.rows(te))
    acc = {name: extra_trees_accuracy(xtr[:, p], codes[tr], xte[:, p], codes[te], seed=seed)
           for name, p in panels.items()}
    out = {"cae": acc.pop("cae")}
    rand = [v for name, v in acc.items() if name.startswith("random_")]
    if rand:
        out["random_mean"] = float(np.mean(rand))
    if "hvg" in acc:
        out["hvg"] = acc["hvg"]
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
            "data_path": result.path,
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

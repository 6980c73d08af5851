"""``genepanel benchmark``: the concrete autoencoder against the usual baselines, on one split.

Every method chooses ``k`` genes from the training rows of the same split; each panel
is then scored the same way: a linear regression from the panel to all genes, refitted
on the training rows (ridge, the penalty chosen by generalised cross-validation on them,
0 = least squares; :func:`genepanel.evaluate.ridge_refit`), and its mean squared error
over every entry of the preprocessed test matrix (the paper's Table 1 metric). With
labels, the panel is also scored by the test accuracy of an extremely randomised trees
classifier (the paper's Table 2). The PCA bound is not a panel: the best rank-``k`` linear
reconstruction, which no ``k``-gene panel with a linear decoder can beat.

Besides ``.h5ad`` and plain HDF5 (through :func:`genepanel.io.read_matrix`), the
benchmark reads ``.npz`` files holding ``X`` (samples × features), ``feature_names``
and optionally ``y`` and other per-sample vectors (the layout of the paper's benchmark
sets in ``shared/data``), see :func:`genepanel.io.read_npz`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from genepanel.config import SelectConfig
from genepanel.errors import DataError, UsageError
from genepanel.io import (
    ExpressionData,
    OutputDir,
    atomic_write,
    counts_hint,
    input_paths,
    write_json,
)
from genepanel.io import write_tsv as _write_tsv
from genepanel.selectors import DESCRIPTIONS

log = logging.getLogger("genepanel")

#: Every method the benchmark knows, in table order.
METHODS = ("cae", "greedy", "topvar", "random", "hvg", "laplacian", "pfa", "pca")


@dataclass
class BenchmarkResult:
    """What :func:`run_benchmark` returns (and, with ``out``, writes).

    Attributes
    ----------
    table
        One row per method: ``method``, ``description``, ``kind`` (``panel`` or
        ``bound``), ``k``, ``linear_test_mse`` (mean over random panels),
        ``linear_test_mse_sd``, ``accuracy``, ``accuracy_sd`` (NaN without labels),
        ``seconds`` (selection time) and ``detail``.
    panels
        Gene indices (sorted, ``[k]``) of each panel; random ones as ``random_0`` ….
    record
        Everything else, as written to ``benchmark.json``.
    """

    table: pd.DataFrame
    panels: dict[str, np.ndarray]
    record: dict[str, Any]
    out: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- input


def run_benchmark(
    data: ExpressionData | str | Path,
    cfg: SelectConfig,
    out: str | Path | None = None,
    *,
    labels: str | None = None,
    methods: Sequence[str] = METHODS,
    n_random: int = 5,
    overwrite: bool = False,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    seeds: int = 1,
) -> BenchmarkResult:
    """Select a panel with every method on one split and score them all the same way.

    Parameters
    ----------
    data
        An :class:`~genepanel.io.ExpressionData` ``[n, d]``, or a path to ``.h5ad``,
        plain HDF5 or ``.npz``.
    cfg
        Panel size ``k``, seed, split, preprocessing and the concrete autoencoder's
        training settings (as for ``genepanel select``, ``refine`` included).
    out
        Output folder, written atomically: ``benchmark.tsv``, ``benchmark.md``,
        ``benchmark.json``, ``benchmark.png`` and ``panels.tsv``.
    labels
        ``obs`` column with class labels; adds extremely-randomised-trees accuracy.
        Samples without a label are left out of the accuracy only.
    methods
        Subset of :data:`METHODS` to run.
    n_random
        Number of random panels (mean ± sd is reported).
    overwrite
        Replace an existing ``out``.
    on_epoch
        Progress callback for the concrete autoencoder's training.
    seeds
        Train the concrete autoencoder from this many seeds (``seed``, ``seed + 1``, …)
        on the same split; the table reports the first, ``benchmark.json`` the
        seed-to-seed stability (pairwise Jaccard index of the panels, spread of the
        held-out errors).

    Returns
    -------
    BenchmarkResult
    """
    from genepanel.api import baseline_panels
    from genepanel.evaluate import score

    methods = _check_options(methods, n_random, seeds)
    t0 = time.perf_counter()
    outdir = None
    if out is not None:
        outdir = OutputDir(out, overwrite=overwrite, command="benchmark",
                           inputs=input_paths(data, cfg.input.genes))
    if outdir is not None:
        outdir.check()
    ds = _dataset(data, cfg, labels)
    timings: dict[str, float] = {"load": time.perf_counter() - t0}
    cae = _Cae()
    if "cae" in methods:
        cae = _cae_panels(ds, cfg, seeds, on_epoch)
    seconds, panels, detail = dict(cae.seconds), dict(cae.panels), dict(cae.detail)
    timings["cae"] = seconds.get("cae", 0.0)

    names = tuple(m for m in methods if m not in ("cae", "pca"))
    extra, chosen = baseline_panels(ds, cfg, None, names, n_random)
    panels.update(extra)
    for name, sel in chosen.items():
        seconds[name] = sel.seconds
        detail[name] = sel.detail
    timings["baselines"] = sum(v for key, v in seconds.items() if not key.startswith("cae"))

    t = time.perf_counter()
    scores = score(ds, panels, pca_k=cfg.k if "pca" in methods else None,
                   labels=ds.eval_labels, seed=cfg.seed) if panels else None
    timings["score"] = time.perf_counter() - t
    if scores is not None and scores.pca is not None:
        detail["pca"] = f"{scores.pca.components} principal components"
    rows = [m for m in methods if m != "cae"]
    if "cae" in methods:
        rows = ["cae", "cae_unrefined", *rows]
    table = _table(rows, scores, seconds, detail, cfg.k, converged=cae.info.get("converged"))
    if cae.info and not cae.info["converged"]:  # marked in benchmark.md/.tsv and the plot
        cae_rows = table["method"].str.startswith("cae")
        table.loc[cae_rows, "description"] += " (NOT CONVERGED)"
    timings["total"] = time.perf_counter() - t0
    record = _record(ds, cfg, methods, table, scores, panels, n_random, labels=labels,
                     cae_info=cae.info, seeds=seeds, timings=timings)
    result = BenchmarkResult(table=table, panels=panels, record=record, timings=timings)
    if outdir is not None:
        staging = outdir.prepare()
        write_outputs(staging, result, ds.data.genes)
        result.out = outdir.commit()
    return result


def _check_options(methods: Sequence[str], n_random: int, seeds: int) -> tuple[str, ...]:
    """The validated method list; refuses a bad ``n_random`` or ``seeds``."""
    methods = _check_methods(methods)
    if n_random < 1 and "random" in methods:
        msg = f"--n-random must be ≥ 1, got {n_random}"
        raise UsageError(msg)
    if seeds < 1:
        msg = f"--seeds must be ≥ 1, got {seeds}"
        raise UsageError(msg)
    return methods


def _dataset(data: ExpressionData | str | Path, cfg: SelectConfig, labels: str | None) -> Any:
    """Load ``data`` and build the shared :class:`~genepanel.dataset.Dataset`.

    Refuses ``k`` not below the number of genes, and ``labels`` with too few labelled
    samples for an accuracy.
    """
    from genepanel.api import load_input
    from genepanel.dataset import Dataset

    if not isinstance(data, ExpressionData):
        data = load_input(data, cfg)
    d = data.shape[1]
    if cfg.k >= d:
        msg = f"--k {cfg.k} must be smaller than the number of genes ({d}); choose k < {d}"
        raise UsageError(msg)
    if hint := counts_hint(data, cfg.preprocess):
        log.warning(hint)
    ds = Dataset.build(data, cfg, eval_labels=labels)
    y = ds.eval_labels
    if y is not None:
        tr, te = y[ds.split.train], y[ds.split.test]
        if (tr != "").sum() < 2 or (te != "").sum() < 1 or len(np.unique(tr[tr != ""])) < 2:
            msg = (f"too few labelled samples for accuracy (train {(tr != '').sum()}, test "
                   f"{(te != '').sum()}, {len(np.unique(tr[tr != '']))} classes in train)")
            raise DataError(msg)
    return ds


@dataclass
class _Cae:
    """The concrete autoencoder's panels (every seed, refined and not) and their records."""

    panels: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    detail: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def _cae_panels(
    ds: Any, cfg: SelectConfig, seeds: int,
    on_epoch: Callable[[dict[str, float]], None] | None,
) -> _Cae:
    """Train (and refine) the concrete autoencoder from ``seeds`` seeds on ``ds``."""
    from genepanel.api import _train, refine_panel
    from genepanel.constraints import resolve

    con = resolve(ds.data.genes, cfg.k)
    runs = []
    for s in range(seeds):
        t = time.perf_counter()
        trained = _train(ds, cfg.replace(seed=cfg.seed + s), con, None, None, resume=False,
                         on_epoch=on_epoch, stop_after_epochs=None)
        final, refinement = refine_panel(ds, cfg, con, trained.panel)
        runs.append((trained, final, refinement, time.perf_counter() - t))
    trained, final, refinement, secs = runs[0]
    out = _Cae(seconds={"cae": secs, "cae_unrefined": trained.seconds})
    out.panels["cae"] = np.sort(final.indices)
    out.panels["cae_unrefined"] = np.sort(trained.panel.indices)
    for s, run in enumerate(runs[1:], start=1):
        out.panels[f"cae_seed{s}"] = np.sort(run[1].indices)
        out.panels[f"cae_unrefined_seed{s}"] = np.sort(run[0].panel.indices)
    fr = trained.result
    out.info = {
        "converged": fr.converged, "stop_epoch": fr.stop_epoch,
        "epochs_run": fr.epochs_run,
        "final_mean_max_prob": fr.history[-1]["mean_max_prob"] if fr.history else None,
        "batch_size": fr.batch_size, "steps_per_epoch": fr.steps_per_epoch,
        "learning_rate": cfg.train.learning_rate, "max_epochs": cfg.train.max_epochs,
        "decoder": cfg.model.decoder, "refinement": refinement,
    }
    state = (f"converged at epoch {fr.stop_epoch}" if fr.converged
             else f"not converged after {fr.epochs_run} epochs")
    out.detail["cae_unrefined"] = f"{cfg.model.decoder} decoder, {state}"
    out.detail["cae"] = (f"swap refinement kept the {refinement['kept_start']} start, "
                         f"{refinement['genes_replaced']} genes replaced"
                         if refinement.get("enabled") else refinement["reason"])
    return out


def _record(
    ds: Any, cfg: SelectConfig, methods: tuple[str, ...], table: pd.DataFrame, scores: Any,
    panels: dict[str, np.ndarray], n_random: int, *, labels: str | None,
    cae_info: dict[str, Any], seeds: int, timings: dict[str, float],
) -> dict[str, Any]:
    """``benchmark.json``: the table, every panel, the scores and how they were obtained."""
    from genepanel.saved import versions

    data = ds.data
    n, d = data.shape
    stability = None
    if seeds > 1 and scores is not None:
        stability = seed_stability(scores, seeds, cfg.seed)
    mse = {} if scores is None else {nm: s.test_mse for nm, s in scores.panels.items()}
    acc = {} if scores is None else {nm: s.accuracy for nm, s in scores.panels.items()
                                     if s.accuracy is not None}
    return {
        "data": {"source": data.source, "n_samples": n, "n_genes": d,
                 "split": ds.split.sizes()},
        "k": cfg.k, "seed": cfg.seed, "methods": list(methods),
        "metric": "linear regression refit on the training rows; test MSE over all entries "
                  "of the preprocessed matrix",
        "test_variance": None if scores is None else scores.test_variance,
        "results": _records(table),
        "random_panel_test_mse": [mse[f"random_{i}"] for i in range(n_random)
                                  if f"random_{i}" in mse],
        "random_panel_accuracy": [acc[f"random_{i}"] for i in range(n_random)
                                  if f"random_{i}" in acc],
        "panels": {name: {"indices": p.tolist(), "genes": [data.genes[i] for i in p]}
                   for name, p in panels.items()},
        "cae": cae_info,
        "stability": stability,
        "labels": None if scores is None or scores.accuracy_info is None
        else {**scores.accuracy_info, "column": labels},
        "config": cfg.to_dict(),
        "timings_seconds": timings, "versions": versions(),
    }


def seed_stability(scores: Any, seeds: int, seed: int) -> dict[str, Any]:
    """Agreement of the panels trained from ``seeds`` seeds on one split.

    For the final (refined) and the unrefined panels: mean and minimum pairwise Jaccard
    index of the gene sets, and the held-out errors with their relative spread
    ``(max − min) / min``.
    """
    out: dict[str, Any] = {"seeds": [seed + s for s in range(seeds)]}
    for kind in ("cae", "cae_unrefined"):
        names = [kind] + [f"{kind}_seed{s}" for s in range(1, seeds)]
        sets = [set(scores.panels[nm].indices.tolist()) for nm in names]
        jac = [len(a & b) / len(a | b) for i, a in enumerate(sets) for b in sets[i + 1:]]
        errs = [scores.panels[nm].test_mse for nm in names]
        out[kind] = {"jaccard_mean": float(np.mean(jac)), "jaccard_min": float(np.min(jac)),
                     "test_mse": errs,
                     "test_mse_spread": float((max(errs) - min(errs)) / min(errs))}
    return out


def _records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Table rows as dicts with ``None`` for NaN (strict JSON has no NaN)."""
    return [{key: (None if isinstance(v, float) and np.isnan(v) else v) for key, v in r.items()}
            for r in table.to_dict(orient="records")]


def _check_methods(methods: Sequence[str]) -> tuple[str, ...]:
    chosen = [m.strip().lower() for m in methods if m.strip()]
    unknown = [m for m in chosen if m not in METHODS]
    if unknown or not chosen:
        msg = (f"unknown method(s) {', '.join(unknown) or '(none given)'}; "
               f"choose from {', '.join(METHODS)}")
        raise UsageError(msg)
    return tuple(m for m in METHODS if m in chosen)


def _table(
    rows: Sequence[str], scores: Any, seconds: dict[str, float], detail: dict[str, str],
    k: int, *, converged: bool | None,
) -> pd.DataFrame:
    out = []
    nan = float("nan")
    for m in rows:
        row = {"method": m, "description": DESCRIPTIONS[m], "kind": "panel", "k": k,
               "linear_test_mse": nan, "linear_test_mse_sd": nan,
               "accuracy": nan, "accuracy_sd": nan,
               "seconds": seconds.get(m, nan), "detail": detail.get(m, ""),
               "converged": converged if m.startswith("cae") else None}
        if m == "random":
            names = [p for p in scores.panels if p.startswith("random_")]
            vals = np.array([scores.panels[p].test_mse for p in names])
            row["linear_test_mse"] = float(vals.mean())
            row["linear_test_mse_sd"] = float(vals.std(ddof=1)) if len(vals) > 1 else nan
            a = np.array([scores.panels[p].accuracy for p in names
                          if scores.panels[p].accuracy is not None])
            if len(a):
                row["accuracy"] = float(a.mean())
                row["accuracy_sd"] = float(a.std(ddof=1)) if len(a) > 1 else nan
        elif m == "pca":
            row["kind"] = "bound"
            row["linear_test_mse"] = scores.pca.test_mse if scores.pca is not None else nan
            row["seconds"] = nan
        else:
            s = scores.panels[m]
            row["linear_test_mse"] = s.test_mse
            row["accuracy"] = nan if s.accuracy is None else s.accuracy
            if not s.determined:
                row["detail"] = (row["detail"] + "; " if row["detail"] else "") + (
                    "k ≥ training rows − 1: refit not determined")
        out.append(row)
    return pd.DataFrame(out)


# --------------------------------------------------------------------------- outputs


def markdown_table(table: pd.DataFrame, *, with_accuracy: bool | None = None) -> str:
    """Format the benchmark table as GitHub Markdown (``±`` sd for random panels)."""
    if with_accuracy is None:
        with_accuracy = bool(table["accuracy"].notna().any())
    head = "| method | linear refit test MSE |"
    rule = "|---|---:|"
    if with_accuracy:
        head += " ExtraTrees accuracy |"
        rule += "---:|"
    head += " selection time (s) | notes |"
    rule += "---:|---|"
    lines = [head, rule]
    for r in table.itertuples():
        mse = _fmt(r.linear_test_mse, r.linear_test_mse_sd, "{:.4g}")
        cells = [r.description, mse]
        if with_accuracy:
            cells.append("—" if r.kind == "bound" else _fmt(r.accuracy, r.accuracy_sd, "{:.3f}"))
        cells += ["—" if np.isnan(r.seconds) else f"{r.seconds:.1f}", r.detail]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value: float, sd: float, spec: str) -> str:
    if value is None or np.isnan(value):
        return "—"
    text = spec.format(value)
    if sd is not None and not np.isnan(sd):
        text += " ± " + spec.format(sd)
    return text


def plot_benchmark(table: pd.DataFrame, path: Path, title: str = "") -> None:
    """Bar plot of test MSE (and accuracy, when present) per method; PCA as a line."""
    from genepanel.plots import pyplot, save_png

    plt = pyplot()

    panels = table[table["kind"] == "panel"]
    bound = table[table["kind"] == "bound"]
    with_acc = bool(panels["accuracy"].notna().any())
    fig, axes = plt.subplots(1, 2 if with_acc else 1, figsize=(10 if with_acc else 6, 4),
                             squeeze=False)
    colors = ["tab:blue" if m.startswith("cae") else "tab:gray" for m in panels["method"]]
    ypos = np.arange(len(panels))
    ax = axes[0, 0]
    ax.barh(ypos, panels["linear_test_mse"], xerr=panels["linear_test_mse_sd"].fillna(0),
            color=colors)
    ax.set_yticks(ypos, list(panels["description"]))
    ax.invert_yaxis()
    if len(bound) and np.isfinite(bound["linear_test_mse"].iloc[0]):
        ax.axvline(bound["linear_test_mse"].iloc[0], color="tab:red", ls="--",
                   label=f"PCA bound ({bound['linear_test_mse'].iloc[0]:.3g})")
        ax.legend(loc="lower right")
    ax.set_xlabel("linear refit test MSE (lower is better)")
    if with_acc:
        ax2 = axes[0, 1]
        ax2.barh(ypos, panels["accuracy"], xerr=panels["accuracy_sd"].fillna(0), color=colors)
        ax2.set_yticks(ypos, [""] * len(panels))
        ax2.invert_yaxis()
        ax2.set_xlim(0, 1)
        ax2.set_xlabel("ExtraTrees test accuracy (higher is better)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_png(fig, path)


def write_outputs(folder: Path, result: BenchmarkResult, genes: Sequence[str]) -> None:
    """Write the table (TSV, Markdown), the JSON record, the plot and the panels."""
    folder = Path(folder)
    _write_tsv(folder / "benchmark.tsv", result.table)
    rec = result.record
    header = (f"# genepanel benchmark: k = {rec['k']}, {rec['data']['n_samples']} samples × "
              f"{rec['data']['n_genes']} genes\n\nSplit (train/val/test): "
              f"{rec['data']['split']['train']}/{rec['data']['split']['val']}/"
              f"{rec['data']['split']['test']}; seed {rec['seed']}. Test variance "
              f"(MSE of predicting the mean): {rec['test_variance']:.4g}.\n\n")
    st = rec.get("stability")
    if st:
        for kind, what in (("cae", "final panels"), ("cae_unrefined", "unrefined panels")):
            header += (f"Seed-to-seed stability of the {what} ({len(st['seeds'])} seeds, same "
                       f"split): Jaccard mean {st[kind]['jaccard_mean']:.2f}, min "
                       f"{st[kind]['jaccard_min']:.2f}; held-out MSE spread "
                       f"{100 * st[kind]['test_mse_spread']:.2f}%.\n")
        header += "\n"
    with atomic_write(folder / "benchmark.md") as fh:
        fh.write(header + markdown_table(result.table))
    write_json(folder / "benchmark.json", rec)
    rows = [{"method": name, "index": int(g), "gene": genes[int(g)]}
            for name, p in result.panels.items() for g in p]
    _write_tsv(folder / "panels.tsv", pd.DataFrame(rows, columns=["method", "index", "gene"]))
    plot_benchmark(result.table, folder / "benchmark.png",
                   title=f"k = {rec['k']}: {Path(str(rec['data']['source'])).name}")

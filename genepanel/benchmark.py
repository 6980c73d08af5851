"""``genepanel benchmark``: the concrete autoencoder against the usual baselines, on one split.

Every method chooses ``k`` genes from the training rows of the same split; each panel
is then scored the same way: an unregularised linear regression from the panel to all
genes, refitted on the training rows, and its mean squared error over every entry of
the preprocessed test matrix (the paper's Table 1 metric). With labels, the panel is
also scored by the test accuracy of an extremely randomised trees classifier (the
paper's Table 2). The PCA bound is not a panel: the best rank-``k`` linear
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
from genepanel.data import resolve_labels
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

log = logging.getLogger("genepanel")

#: Every method the benchmark knows, in table order.
METHODS = ("cae", "random", "hvg", "laplacian", "pfa", "pca")

_LABELS = {
    "cae": "concrete autoencoder",
    "random": "random panels",
    "hvg": "highly variable genes",
    "laplacian": "Laplacian score",
    "pfa": "principal feature analysis",
    "pca": "PCA bound (not a panel)",
}


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
    max_rows: int = 10000,
) -> BenchmarkResult:
    """Select a panel with every method on one split and score them all the same way.

    Parameters
    ----------
    data
        An :class:`~genepanel.io.ExpressionData` ``[n, d]``, or a path to ``.h5ad``,
        plain HDF5 or ``.npz``.
    cfg
        Panel size ``k``, seed, split, preprocessing and the concrete autoencoder's
        training settings (as for ``genepanel select``).
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
    max_rows
        The Laplacian score's neighbour graph is built on at most this many training
        samples (a random subset), PFA's PCA on at most ``5 × max_rows``.

    Returns
    -------
    BenchmarkResult
    """
    from genepanel.api import select_panel
    from genepanel.baselines import laplacian_panel, pfa_panel
    from genepanel.data import Preprocessor, dense_rows, make_split
    from genepanel.evaluate import (
        fit_linear,
        hvg_panel,
        linear_test_mse,
        pca_bound,
        random_panels,
        test_variance,
    )

    methods = _check_methods(methods)
    if n_random < 1 and "random" in methods:
        msg = f"--n-random must be ≥ 1, got {n_random}"
        raise UsageError(msg)
    t0 = time.perf_counter()
    outdir = None
    if out is not None:
        outdir = OutputDir(out, overwrite=overwrite, command="benchmark",
                           inputs=input_paths(data, cfg.input.genes))
    if outdir is not None:
        outdir.check()
    if not isinstance(data, ExpressionData):
        from genepanel.api import load_input

        data = load_input(data, cfg)
    n, d = data.shape
    if cfg.k >= d:
        msg = f"--k {cfg.k} must be smaller than the number of genes ({d}); choose k < {d}"
        raise UsageError(msg)
    y = resolve_labels(data, labels) if labels is not None else None
    if hint := counts_hint(data, cfg.preprocess):
        log.warning(hint)
    timings: dict[str, float] = {"load": time.perf_counter() - t0}
    seconds: dict[str, float] = {}
    panels: dict[str, np.ndarray] = {}
    detail: dict[str, str] = {}
    cae_info: dict[str, Any] = {}

    if "cae" in methods:
        t = time.perf_counter()
        res = select_panel(data, cfg, None, on_epoch=on_epoch, evaluate_baselines=False)
        seconds["cae"] = time.perf_counter() - t
        split, pre = res.split, res.model.pre
        panels["cae"] = np.sort(np.asarray(res.panel.indices))
        tr = res.run["training"]
        cae_info = {
            "converged": tr["converged"], "stop_epoch": tr["stop_epoch"],
            "epochs_run": tr["epochs_run"], "final_mean_max_prob": tr["final_mean_max_prob"],
            "batch_size": tr["batch_size"],
            "steps_per_epoch": tr["steps_per_epoch"],
            "learning_rate": cfg.train.learning_rate, "max_epochs": cfg.train.max_epochs,
            "decoder": cfg.model.decoder,
            "trained_decoder_test_mse": res.metrics["trained_decoder_test_mse"],
        }
        state = (f"converged at epoch {tr['stop_epoch']}" if tr["converged"]
                 else f"not converged after {tr['epochs_run']} epochs")
        detail["cae"] = f"{cfg.model.decoder} decoder, {state}"
    else:
        split = make_split(n, cfg.split, cfg.seed, data.obs)
        pre = Preprocessor(kind=cfg.preprocess, target_sum=cfg.target_sum).fit(data, split.train)
    timings["cae"] = seconds.get("cae", 0.0)

    t = time.perf_counter()
    need_dense = {"laplacian", "pfa"} & set(methods)
    x_train = None
    if need_dense:
        x_train = dense_rows(data, pre, _cap(split.train, 5 * max_rows, cfg.seed))
    timings["dense_train"] = time.perf_counter() - t
    if "random" in methods:
        t = time.perf_counter()
        for i, p in enumerate(random_panels(d, cfg.k, cfg.seed, n_random)):
            panels[f"random_{i}"] = p
        seconds["random"] = time.perf_counter() - t
        detail["random"] = f"mean ± sd of {n_random} panels"
    if "hvg" in methods:
        t = time.perf_counter()
        panels["hvg"], detail["hvg"] = hvg_panel(data, pre, split.train, cfg.k)
        seconds["hvg"] = time.perf_counter() - t
    if "laplacian" in methods:
        t = time.perf_counter()
        panels["laplacian"] = laplacian_panel(x_train, cfg.k, max_rows=max_rows, seed=cfg.seed)
        seconds["laplacian"] = time.perf_counter() - t
        detail["laplacian"] = (f"5-NN heat-kernel graph on {min(len(x_train), max_rows)} "
                               "training samples")
    if "pfa" in methods:
        t = time.perf_counter()
        panels["pfa"] = pfa_panel(x_train, cfg.k, seed=cfg.seed)
        seconds["pfa"] = time.perf_counter() - t
        detail["pfa"] = f"k-means of z-scored PCA loadings (q = {cfg.k})"
    del x_train
    timings["baselines"] = sum(v for key, v in seconds.items() if key != "cae")

    t = time.perf_counter()
    mse: dict[str, float] = {}
    if panels:
        fits = fit_linear(data, pre, split.train, panels)
        mse = linear_test_mse(data, pre, split.test, fits)
    pca: dict[str, Any] | None = None
    if "pca" in methods:
        tp = time.perf_counter()
        pca = pca_bound(data, pre, split.train, split.test, cfg.k, cfg.seed)
        seconds["pca"] = time.perf_counter() - tp
        detail["pca"] = f"{pca['components']} principal components"
    timings["linear"] = time.perf_counter() - t

    t = time.perf_counter()
    acc: dict[str, float] = {}
    label_info: dict[str, Any] | None = None
    if y is not None and panels:
        acc, label_info = _accuracies(data, pre, split, panels, y, cfg.seed)
        label_info["column"] = labels
    timings["accuracy"] = time.perf_counter() - t

    table = _table(methods, panels, mse, acc, pca, seconds, detail, cfg.k)
    if cae_info and not cae_info["converged"]:  # marked in benchmark.md/.tsv and the plot
        table.loc[table["method"] == "cae", "description"] += " (NOT CONVERGED)"
    test_var = test_variance(data, pre, split.test)
    timings["total"] = time.perf_counter() - t0
    from genepanel.saved import versions

    record = {
        "data": {"source": data.source, "n_samples": n, "n_genes": d, "split": split.sizes()},
        "k": cfg.k, "seed": cfg.seed, "methods": list(methods),
        "metric": "linear regression refit on the training rows; test MSE over all entries "
                  "of the preprocessed matrix",
        "test_variance": test_var,
        "results": _records(table),
        "random_panel_test_mse": [mse[f"random_{i}"] for i in range(n_random)
                                  if f"random_{i}" in mse],
        "random_panel_accuracy": [acc[f"random_{i}"] for i in range(n_random)
                                  if f"random_{i}" in acc],
        "panels": {name: {"indices": p.tolist(), "genes": [data.genes[i] for i in p]}
                   for name, p in panels.items()},
        "cae": cae_info, "labels": label_info, "config": cfg.to_dict(),
        "timings_seconds": timings, "versions": versions(),
    }
    result = BenchmarkResult(table=table, panels=panels, record=record, timings=timings)
    if outdir is not None:
        staging = outdir.prepare()
        write_outputs(staging, result, data.genes)
        result.out = outdir.commit()
    return result


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


def _cap(rows: np.ndarray, max_rows: int, seed: int) -> np.ndarray:
    if len(rows) <= max_rows:
        return rows
    rng = np.random.default_rng([seed, 0xBE7C])
    return np.sort(rng.choice(rows, max_rows, replace=False))


def _panel_columns(data: ExpressionData, pre: Any, rows: np.ndarray, cols: np.ndarray,
                   batch: int = 4096) -> np.ndarray:
    """Preprocessed values ``[len(rows), len(cols)]`` of a few genes, built in row batches."""
    out = np.empty((len(rows), len(cols)), np.float32)
    for i in range(0, len(rows), batch):
        out[i : i + batch] = pre.transform(data.rows(rows[i : i + batch]))[:, cols]
    return out


def _accuracies(
    data: ExpressionData, pre: Any, split: Any, panels: dict[str, np.ndarray],
    y: np.ndarray, seed: int,
) -> tuple[dict[str, float], dict[str, Any]]:
    from genepanel.baselines import extra_trees_accuracy

    tr = split.train[y[split.train] != ""]
    te = split.test[y[split.test] != ""]
    if len(tr) < 2 or len(te) < 1 or len(np.unique(y[tr])) < 2:
        msg = (f"too few labelled samples for accuracy (train {len(tr)}, test {len(te)}, "
               f"{len(np.unique(y[tr]))} classes in train)")
        raise DataError(msg)
    union = np.unique(np.concatenate(list(panels.values())))
    pos = np.searchsorted(union, np.arange(data.shape[1]))
    xtr = _panel_columns(data, pre, tr, union)
    xte = _panel_columns(data, pre, te, union)
    acc = {
        name: extra_trees_accuracy(xtr[:, pos[p]], y[tr], xte[:, pos[p]], y[te], seed=seed)
        for name, p in panels.items()
    }
    info = {"n_train": len(tr), "n_test": len(te), "n_classes": len(np.unique(y[tr])),
            "classifier": "sklearn ExtraTreesClassifier(n_estimators=50)"}
    return acc, info


def _table(
    methods: Sequence[str], panels: dict[str, np.ndarray], mse: dict[str, float],
    acc: dict[str, float], pca: dict[str, Any] | None, seconds: dict[str, float],
    detail: dict[str, str], k: int,
) -> pd.DataFrame:
    rows = []
    nan = float("nan")
    for m in methods:
        row = {"method": m, "description": _LABELS[m], "kind": "panel", "k": k,
               "linear_test_mse": nan, "linear_test_mse_sd": nan,
               "accuracy": nan, "accuracy_sd": nan,
               "seconds": seconds.get(m, nan), "detail": detail.get(m, "")}
        if m == "random":
            names = [p for p in panels if p.startswith("random_")]
            vals = np.array([mse[p] for p in names])
            row["linear_test_mse"] = float(vals.mean())
            row["linear_test_mse_sd"] = float(vals.std(ddof=1)) if len(vals) > 1 else nan
            if acc:
                a = np.array([acc[p] for p in names])
                row["accuracy"] = float(a.mean())
                row["accuracy_sd"] = float(a.std(ddof=1)) if len(a) > 1 else nan
        elif m == "pca":
            row["kind"] = "bound"
            row["linear_test_mse"] = pca["mse"] if pca is not None else nan
        else:
            row["linear_test_mse"] = mse[m]
            row["accuracy"] = acc.get(m, nan)
        rows.append(row)
    return pd.DataFrame(rows)


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
    colors = ["tab:blue" if m == "cae" else "tab:gray" for m in panels["method"]]
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
    with atomic_write(folder / "benchmark.md") as fh:
        fh.write(header + markdown_table(result.table))
    write_json(folder / "benchmark.json", rec)
    rows = [{"method": name, "index": int(g), "gene": genes[int(g)]}
            for name, p in result.panels.items() for g in p]
    _write_tsv(folder / "panels.tsv", pd.DataFrame(rows, columns=["method", "index", "gene"]))
    plot_benchmark(result.table, folder / "benchmark.png",
                   title=f"k = {rec['k']}: {Path(str(rec['data']['source'])).name}")

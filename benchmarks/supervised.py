"""Supervised panels (``--labels``) against unsupervised panels and marker genes.

Issue 11, point 4(b): on scanpy's ``pbmc68k_reduced`` (``.raw``: log-normalised, 765
genes, 700 cells) with the labels ``bulk_labels`` (10 FACS-sorted types), at k = 25 and
50, the held-out accuracy of

- ``supervised``: ``genepanel select --labels bulk_labels`` with every other default;
- ``supervised_unrefined``: the same run's concrete-autoencoder panel before refinement;
- ``unsupervised``: ``genepanel select`` (no labels) with every default;
- ``hvg``, ``topvar``, ``greedy``: the baseline selectors on the training rows;
- ``markers``: scanpy ``rank_genes_groups`` (t-test, the default) on the training rows,
  each group's ranked genes pooled round-robin (rank 1 of every group, then rank 2, …),
  duplicates skipped, until k genes.

Accuracy: (1) logistic regression on the standardised panel (scaler and model fitted on
the training rows; ``LogisticRegression(max_iter=5000)``, default L2, C = 1), and (2)
``ExtraTreesClassifier(n_estimators=50)``; both on the test rows. Every split is the
default 72/8/20 row split drawn with ``seed`` (the training seed is the same number), so
the five seeds are five different splits; the table gives mean ± sd over them.

    python benchmarks/supervised.py --seeds 0,1,2,3,4 --ks 25,50   # runs, stores, reports
    python benchmarks/supervised.py --write-only                   # rebuild supervised.md

Results are stored per (seed, k) in ``benchmarks/results/supervised/``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "supervised"
OUT = ROOT / "benchmarks" / "supervised.md"
LABELS = "bulk_labels"
ORDER = ("supervised", "supervised_unrefined", "unsupervised", "markers", "hvg", "topvar",
         "greedy")
NAMES = {"supervised": "ours, `--labels` (default)",
         "supervised_unrefined": "ours, `--labels`, before refinement",
         "unsupervised": "ours, no labels (default)", "markers": "rank_genes_groups markers",
         "hvg": "HVG", "topvar": "top-variance", "greedy": "greedy subset selection"}


def load():
    import scanpy as sc

    from genepanel.io import ExpressionData

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = sc.datasets.pbmc68k_reduced()
    x = np.asarray(a.raw.X.toarray() if hasattr(a.raw.X, "toarray") else a.raw.X, np.float32)
    obs = a.obs[[LABELS]].copy()
    obs[LABELS] = obs[LABELS].astype(str)
    return ExpressionData(x, list(a.raw.var_names), obs, "scanpy pbmc68k_reduced .raw")


def marker_panel(x_train: np.ndarray, y_train: np.ndarray, genes: list[str], k: int) -> list[int]:
    """scanpy rank_genes_groups (t-test) on the training rows, pooled round-robin to k."""
    import anndata as ad
    import pandas as pd
    import scanpy as sc

    a = ad.AnnData(x_train.astype(np.float32),
                   obs=pd.DataFrame({"g": pd.Categorical(y_train)},
                                    index=[str(i) for i in range(len(y_train))]))
    a.var_names = genes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.tl.rank_genes_groups(a, "g", n_genes=len(genes))
    names = a.uns["rank_genes_groups"]["names"]  # structured array: one field per group
    pos = {g: i for i, g in enumerate(genes)}
    out: list[int] = []
    for row in names:
        for grp in names.dtype.names:
            i = pos[row[grp]]
            if i not in out:
                out.append(i)
            if len(out) == k:
                return out
    return out


def accuracies(xtr, ytr, xte, yte, seed: int) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from genepanel.baselines import extra_trees_accuracy

    sc = StandardScaler().fit(xtr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lr = LogisticRegression(max_iter=5000).fit(sc.transform(xtr), ytr)
    return {"logreg": float((lr.predict(sc.transform(xte)) == yte).mean()),
            "extratrees": extra_trees_accuracy(xtr, ytr, xte, yte, seed=seed)}


def run_one(seed: int, k: int, label_weight: float | None = None) -> dict:
    from genepanel.api import select_panel
    from genepanel.config import SelectConfig
    from genepanel.dataset import Dataset
    from genepanel.selectors import run_selector

    data = load()
    cfg = SelectConfig(k=k, seed=seed)
    y = data.obs[LABELS].to_numpy()
    panels: dict[str, list[int]] = {}
    seconds: dict[str, float] = {}
    extra: dict[str, object] = {}
    t = time.perf_counter()
    sup_cfg = cfg.replace(labels=LABELS)
    if label_weight is not None:
        sup_cfg = sup_cfg.replace(label_weight=label_weight)
    sup = select_panel(data, sup_cfg, evaluate_baselines=False)
    seconds["supervised"] = time.perf_counter() - t
    panels["supervised"] = sup.panel.indices.tolist()
    panels["supervised_unrefined"] = sup.cae_panel.indices.tolist()
    extra["supervised_refinement"] = sup.run.get("refinement")
    t = time.perf_counter()
    uns = select_panel(data, cfg, evaluate_baselines=False)
    seconds["unsupervised"] = time.perf_counter() - t
    panels["unsupervised"] = uns.panel.indices.tolist()
    split = sup.split
    assert np.array_equal(split.train, uns.split.train)
    ds = Dataset.build(data, cfg)
    for name in ("hvg", "topvar", "greedy"):
        sel = run_selector(name, ds, k, seed=seed)
        panels[name] = sel.indices.tolist()
        seconds[name] = sel.seconds
    x = data.X
    t = time.perf_counter()
    panels["markers"] = marker_panel(x[split.train], y[split.train], list(data.genes), k)
    seconds["markers"] = time.perf_counter() - t
    acc = {name: accuracies(x[np.ix_(split.train, p)], y[split.train],
                            x[np.ix_(split.test, p)], y[split.test], seed)
           for name, p in panels.items()}
    return {"seed": seed, "k": k, "n_train": len(split.train), "n_test": len(split.test),
            "label_weight": sup_cfg.label_weight, "accuracy": acc, "seconds": seconds,
            "panels": panels, **extra,
            "date": dt.date.today().isoformat(), "commit": _commit()}


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h", "--",
                               "genepanel"],  # the last commit that changed the code
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_report() -> str:
    recs = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("seed*_k*.json"))]
    ks = sorted({r["k"] for r in recs})
    import jax

    lines = [
        "# Supervised panels: held-out accuracy on pbmc68k_reduced `bulk_labels`",
        "",
        f"Written by `benchmarks/supervised.py` on {dt.date.today().isoformat()}; machine: "
        f"{platform.machine()}, {os.cpu_count()} CPU cores visible, jax {jax.__version__} "
        f"on {jax.default_backend()}. Commits measured: "
        f"{', '.join(sorted({r.get('commit', '?') for r in recs}))}.",
        "",
        "scanpy `pbmc68k_reduced().raw` (log-normalised, 700 cells × 765 genes), labels "
        "`bulk_labels` (10 types). Each seed is its own 72/8/20 row split (504 training, "
        "140 test cells) and the training seed. Accuracy on the 140 test cells: logistic "
        "regression on the standardised panel / ExtraTrees (50 trees). Mean ± sd over the "
        "seeds; the best mean per column in bold.",
        "",
    ]
    for k in ks:
        rs = [r for r in recs if r["k"] == k]
        seeds = sorted(r["seed"] for r in rs)
        lines += [f"## k = {k} (seeds {', '.join(map(str, seeds))})", "",
                  "| panel | logistic regression | ExtraTrees | seconds |",
                  "|---|---:|---:|---:|"]
        means = {}
        for m in ORDER:
            if not all(m in r["accuracy"] for r in rs):
                continue
            lr = np.array([r["accuracy"][m]["logreg"] for r in rs])
            et = np.array([r["accuracy"][m]["extratrees"] for r in rs])
            means[m] = (lr, et, np.mean([r["seconds"].get(m.replace("_unrefined", ""), np.nan)
                                         for r in rs]))
        best_lr = max(v[0].mean() for v in means.values())
        best_et = max(v[1].mean() for v in means.values())
        for m, (lr, et, s) in means.items():
            a = f"{lr.mean():.3f} ± {lr.std(ddof=1) if len(lr) > 1 else 0:.3f}"
            b = f"{et.mean():.3f} ± {et.std(ddof=1) if len(et) > 1 else 0:.3f}"
            a = f"**{a}**" if lr.mean() == best_lr else a
            b = f"**{b}**" if et.mean() == best_et else b
            sec = "" if m == "supervised_unrefined" else f"{s:.1f}"
            lines.append(f"| {NAMES[m]} | {a} | {b} | {sec} |")
        lines += ["", "Per seed (logistic regression / ExtraTrees):", "",
                  "| panel | " + " | ".join(f"seed {s}" for s in seeds) + " |",
                  "|---|" + "---:|" * len(seeds)]
        by_seed = {r["seed"]: r for r in rs}
        for m in means:
            cells = [f"{by_seed[s]['accuracy'][m]['logreg']:.3f} / "
                     f"{by_seed[s]['accuracy'][m]['extratrees']:.3f}" for s in seeds]
            lines.append(f"| {NAMES[m]} | " + " | ".join(cells) + " |")
        if "supervised" in means:
            lr_s, et_s = means["supervised"][0], means["supervised"][1]
            wins = []
            for m, (lr, et, _) in means.items():
                if m.startswith("supervised"):
                    continue
                wins.append(f"{NAMES[m]}: logistic regression higher in "
                            f"{int((lr_s > lr).sum())}/{len(lr)} seeds "
                            f"(tied {int((lr_s == lr).sum())}), ExtraTrees higher in "
                            f"{int((et_s > et).sum())}/{len(et)} (tied "
                            f"{int((et_s == et).sum())})")
            lines += ["", "Ours with `--labels` against each other panel, seed by seed: "
                      + "; ".join(wins) + ".", ""]
    text = "\n".join(lines) + "\n"
    from quality import write_keeping_notes

    write_keeping_notes(OUT, text)
    return text


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--ks", default="25,50")
    ap.add_argument("--write-only", action="store_true")
    ap.add_argument("--label-weight", type=float, default=None,
                    help="experiments: another --label-weight than the default")
    ap.add_argument("--results", default=None, help="experiments: store results here")
    args = ap.parse_args(argv)
    global RESULTS, OUT
    if args.results:
        RESULTS = Path(args.results)
        OUT = RESULTS / "supervised.md"
    sys.path.insert(0, str(ROOT))
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not args.write_only:
        for k in [int(v) for v in args.ks.split(",") if v]:
            for seed in [int(v) for v in args.seeds.split(",") if v]:
                t = time.perf_counter()
                rec = run_one(seed, k, args.label_weight)
                (RESULTS / f"seed{seed}_k{k}.json").write_text(json.dumps(rec, indent=1))
                print(f"k={k} seed={seed} ({time.perf_counter() - t:.0f} s): "
                      + ", ".join(f"{m} {a['logreg']:.3f}/{a['extratrees']:.3f}"
                                  for m, a in rec["accuracy"].items()), flush=True)
    print(write_report())


if __name__ == "__main__":
    main()

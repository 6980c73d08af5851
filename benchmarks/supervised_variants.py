"""Screen supervised-objective variants on training rows only (nested, no test rows).

Issue 11, point 4(b): which label target / label weight / start should ``--labels``
refine on so that its panel wins under logistic regression as well as ExtraTrees?
For each outer split (the default 72/8/20 split drawn with ``seed``, as in
``supervised.py``) only the 504 *training* rows are used: they are cut into ``--folds``
stratified folds; every panel is chosen on the inner-training folds and scored on the
held-out inner fold (logistic regression on the standardised panel, C = 1, and
ExtraTrees with 50 trees). The outer test rows are never read, so a variant chosen from
this table has not seen them.

Variants are greedy selection + exact swap search on
``(1 − w) · unexplained gene variance share + w · unexplained label-target share``:

- ``onehot``: the centred one-hot label matrix (today's objective);
- ``whiten``: the one-hot matrix whitened (``Y (YᵀY)^{-1/2}``), so the label term is one
  minus the mean squared canonical correlation of panel and classes (Pillai's trace,
  an LDA criterion: between-class variance relative to total, every class direction
  counting equally);
- prefix ``z-``: z-scored genes; prefix ``r<alpha>-``: z-scored genes and a ridge
  penalty ``alpha · n`` (``√λ·I`` rows appended), e.g. ``r3-whiten:0.5``, the objective
  ``genepanel.selectors.supervised_target`` now builds by default;
- suffix ``:gm``: the swap search also starts from the markers (lower objective kept).

References: rank_genes_groups markers pooled round-robin (as ``supervised.py``), HVG,
top-variance.

    python benchmarks/supervised_variants.py --seeds 0,1,2,3,4 --ks 25,50 --folds 3 \
        --variants onehot:0.5,whiten:0.5,r1-whiten:0.5,r3-whiten:0.5 --out screen.json

The four screens behind ``supervised.md``'s notes are stored in
``results/supervised_variants/screen{1,2,3,4}.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def label_matrix(codes: np.ndarray, mode: str) -> np.ndarray:
    n_cls = int(codes.max()) + 1
    y = np.zeros((len(codes), n_cls))
    y[np.arange(len(codes)), codes] = 1.0
    y -= y.mean(axis=0)
    if mode == "onehot":
        return y
    if mode == "whiten":
        lam, v = np.linalg.eigh(y.T @ y)
        keep = lam > 1e-9 * lam.max()
        return y @ (v[:, keep] / np.sqrt(lam[keep]))
    raise ValueError(mode)


def target(xc: np.ndarray, codes: np.ndarray, w: float, mode: str) -> np.ndarray:
    """``mode``: ``onehot``/``whiten``, optionally prefixed ``r<alpha>-`` (ridge on z-scored
    genes, penalty ``alpha · n``, by appending ``√λ I`` rows) or ``z-`` (z-scored genes)."""
    alpha = None
    if mode.startswith("z-"):
        alpha, mode = 0.0, mode[2:]
    elif mode.startswith("r"):
        a, mode = mode[1:].split("-", 1)
        alpha = float(a)
    y = label_matrix(codes, mode)
    if alpha is not None:
        sd = xc.std(axis=0)
        sd[sd == 0] = 1.0
        xc = xc / sd
        if alpha > 0:
            n, d = xc.shape
            xc = np.vstack([xc, np.sqrt(alpha * n) * np.eye(d)])
            y = np.vstack([y, np.zeros((d, y.shape[1]))])
    sx, sy = float((xc * xc).sum()), float((y * y).sum())
    return np.asfortranarray(np.hstack([np.sqrt((1 - w) / sx) * xc, np.sqrt(w / sy) * y]))


def panel_for(xc, codes, k, w, mode, starts=("greedy",), markers=None):
    from genepanel.selectors import greedy_css, refit_objective, swap_refine

    t = target(xc, codes, w, mode)
    allowed = np.ones(xc.shape[1], bool)
    best = None
    for s in starts:
        p0 = greedy_css(t, k, allowed=allowed) if s == "greedy" else np.asarray(markers)
        r = swap_refine(t, p0, allowed=allowed)
        obj = refit_objective(t, r.panel)
        if best is None or obj < best[0]:
            best = (obj, r.panel)
    return best[1]


def accuracies(xtr, ytr, xte, yte, seed):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from genepanel.baselines import extra_trees_accuracy

    sc = StandardScaler().fit(xtr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lr = LogisticRegression(max_iter=5000).fit(sc.transform(xtr), ytr)
    return (float((lr.predict(sc.transform(xte)) == yte).mean()),
            extra_trees_accuracy(xtr, ytr, xte, yte, seed=seed))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--ks", default="25,50")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--variants", default="onehot:0.5,whiten:0.5,whiten:0.8,onehot:0.8",
                    help="mode:weight[:starts], starts g (greedy), m (markers) or gm")
    ap.add_argument("--marker-start", action="store_true",
                    help="also start each variant's swap search from the markers")
    ap.add_argument("--out", default="/tmp/supervised_variants.json")
    args = ap.parse_args(argv)
    from sklearn.model_selection import StratifiedKFold
    from supervised import LABELS, load, marker_panel

    from genepanel.config import SelectConfig
    from genepanel.dataset import Dataset
    from genepanel.evaluate import hvg_panel
    from genepanel.selectors import centred, topvar_panel

    data = load()
    y_all = data.obs[LABELS].to_numpy()
    variants = []
    for v in args.variants.split(","):
        m, w, *st = v.split(":")
        variants.append((v, m, float(w), st[0] if st else ("gm" if args.marker_start else "g")))
    recs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        ds = Dataset.build(data, SelectConfig(k=25, seed=seed, labels=LABELS))
        train = np.asarray(ds.split.train)
        x = np.asarray(data.X, np.float64)
        _, codes_all = np.unique(y_all, return_inverse=True)
        skf = StratifiedKFold(args.folds, shuffle=True, random_state=seed)
        for fold, (a, b) in enumerate(skf.split(train, y_all[train])):
            itr, iva = train[a], train[b]
            xc = centred(x[itr])
            for k in [int(v) for v in args.ks.split(",")]:
                t0 = time.perf_counter()
                panels = {"markers": marker_panel(x[itr], y_all[itr], list(data.genes), k),
                          "hvg": hvg_panel(data, ds.pre, itr, k)[0].tolist(),
                          "topvar": topvar_panel(x[itr], k).tolist()}
                for name, m, w, st in variants:
                    starts = tuple({"g": "greedy", "m": "markers"}[c] for c in st)
                    panels[name] = panel_for(xc, codes_all[itr], k, w, m, starts,
                                             panels["markers"]).tolist()
                acc = {n: accuracies(x[np.ix_(itr, p)], y_all[itr], x[np.ix_(iva, p)],
                                     y_all[iva], seed) for n, p in panels.items()}
                recs.append({"seed": seed, "fold": fold, "k": k, "acc": acc, "panels": panels})
                print(f"seed {seed} fold {fold} k {k} ({time.perf_counter() - t0:.0f} s): "
                      + ", ".join(f"{n} {a[0]:.3f}/{a[1]:.3f}" for n, a in acc.items()),
                      flush=True)
    Path(args.out).write_text(json.dumps(recs))
    report(recs)


def report(recs):
    for k in sorted({r["k"] for r in recs}):
        rs = [r for r in recs if r["k"] == k]
        print(f"\nk = {k}: {len(rs)} inner folds; mean inner-validation accuracy LR / ET")
        for n in rs[0]["acc"]:
            lr = np.mean([r["acc"][n][0] for r in rs])
            et = np.mean([r["acc"][n][1] for r in rs])
            print(f"  {n:14s} {lr:.3f} / {et:.3f}")


if __name__ == "__main__":
    main()

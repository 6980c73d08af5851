"""Whole-transcriptome panels with default options: converged? how fast? how good?

Runs ``select_panel`` (the library call behind ``genepanel select``) on an ``.h5ad``
(default: the celltypist PBMC sample, 559 cells × 32,786 genes, ``--preprocess log1p``)
for each ``--k`` and each variant, and prints one Markdown row per run: converged (the
stopping rule fired and no node was reassigned at extraction), steps, training and total
seconds (wall and CPU), ms per step, and the refit test MSE of the panel (``select``'s
refit: ridge, penalty by GCV on the training rows) beside greedy selection, top-variance,
HVG, Laplacian-score and PFA panels (same split, same refit; the last three scored after
the timed run), the mean of 5 random panels and the PCA bound. Wall times on a shared
machine vary with the load; the CPU seconds (all threads) show how much of it was ours.

    PYTHONPATH=$PWD python benchmarks/scale_celltypist.py --k 50,100
    PYTHONPATH=$PWD python benchmarks/scale_celltypist.py --k 50 --variant before
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

DATA = "/work/shared/data/scrna_celltypist_sample_n559x32786_counts.h5ad"
VARIANTS = {
    "default": {},
    # 0.1.0's code path: the selector chooses among every gene.
    "before": {"train.prefilter": 0},
}


def other_baselines(res, data, cfg, k: int) -> dict[str, float]:
    """Refit test MSE (the same refit as ``select``'s) of the top-k variance genes of the
    preprocessed training rows, the Laplacian-score and the PFA panels (same split)."""
    from genepanel.dataset import Dataset
    from genepanel.evaluate import fit_linear, linear_test_mse
    from genepanel.selectors import run_selector

    pre, split = res.model.pre, res.split
    ds = Dataset.build(data, cfg, pre=pre)
    panels = {name: run_selector(name, ds, k, seed=cfg.seed).indices
              for name in ("topvar", "laplacian", "pfa")}
    fits = fit_linear(data, pre, split.train, panels)
    return linear_test_mse(data, pre, split.test, fits)


def most_detected(data, n: int):
    """``data`` restricted to the ``n`` genes detected (non-zero) in the most cells, in
    their original order (every row counted: a convergence and timing grid over the gene
    count, not a quality comparison)."""
    import scipy.sparse as sp

    from genepanel.io import ExpressionData

    x = data.X
    det = np.asarray((x != 0).sum(axis=0)).ravel() if sp.issparse(x) else (x != 0).sum(0)
    keep = np.sort(np.argsort(-det, kind="stable")[:n])
    return ExpressionData(x[:, keep], [data.genes[i] for i in keep], data.obs,
                          f"{data.source} ({n} most detected genes)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--preprocess", default="log1p")
    ap.add_argument("--k", default="50,100")
    ap.add_argument("--variant", default="default", help=",".join(VARIANTS) + " or key=value;…")
    ap.add_argument("--set", default="", help="extra config changes: key=value;key=value")
    ap.add_argument("--json", help="append one JSON record per run to this file")
    ap.add_argument("--genes", type=int, default=0,
                    help="keep only the N genes detected in the most cells (0: all)")
    args = ap.parse_args()

    from genepanel.api import load_input, select_panel
    from genepanel.config import SelectConfig

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from scale_synthetic import peak_gib

    changes = dict(VARIANTS.get(args.variant, {}))
    for item in filter(None, args.set.split(";")):
        key, value = item.split("=", 1)
        changes[key] = json.loads(value)
    base = SelectConfig(preprocess=args.preprocess).replace(**changes)
    data = load_input(args.data, base)
    if args.genes:
        data = most_detected(data, args.genes)
    print(f"# {os.path.basename(args.data)}: {data.shape[0]} × {data.shape[1]}, "
          f"variant {args.variant} {changes}", flush=True)
    print("| k | converged | reassigned | steps | train s | train CPU s | ms/step | total s "
          "| candidates | CAE test MSE | greedy | top-variance | HVG | Laplacian | PFA "
          "| random (mean) | PCA bound |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k in (int(v) for v in args.k.split(",")):
        cfg = base.replace(k=k)
        t, c = time.perf_counter(), time.process_time()
        res = select_panel(data, cfg, evaluate_baselines=True)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        peak = peak_gib()  # of the whole process so far: one k per process to read it per run
        tr, m = res.run["training"], res.metrics
        steps = tr["epochs_run"] * tr["steps_per_epoch"]
        ok = tr["converged"] and tr["reassigned_at_extraction"] == 0
        rec = {
            "k": k, "genes": data.shape[1], "variant": args.variant, "changes": changes,
            "converged": ok,
            "stop_rule_fired": tr["converged"], "reassigned": tr["reassigned_at_extraction"],
            "steps": steps, "train_s": res.timings["train"], "total_s": wall, "cpu_s": cpu,
            "ms_per_step": 1e3 * res.fit.seconds / max(steps, 1),
            "candidates": tr["candidate_genes"], "cae": m["linear_refit_test_mse"],
            "greedy": m["greedy_panel_test_mse"], "hvg": m["hvg_panel_test_mse"],
            **other_baselines(res, data, cfg, k),
            "random": m["random_panel_test_mse"]["mean"], "pca": m["pca_bound_test_mse"],
            "final_mean_max_prob": tr["final_mean_max_prob"], "status": tr["status"],
            "peak_gib": peak,
        }
        # CPU seconds of the training alone are not separable from the evaluation; the
        # share is estimated by the training's share of the wall time.
        train_cpu = cpu * res.timings["train"] / max(wall, 1e-9)
        print(f"| {k} | {'yes' if ok else 'NO'} | {rec['reassigned']} | {steps} | "
              f"{rec['train_s']:.0f} | {train_cpu:.0f} | {rec['ms_per_step']:.1f} | "
              f"{wall:.0f} | {rec['candidates']} | {rec['cae']:.5f} | "
              + " | ".join(f"{rec[b]:.5f}" for b in ("greedy", "topvar", "hvg", "laplacian",
                                                    "pfa", "random", "pca")) + " |",
              flush=True)
        if args.json:
            with open(args.json, "a") as fh:
                fh.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()

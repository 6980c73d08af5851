"""Whole `genepanel select` runs, timed as processes: time to a panel and its held-out error.

The issue-11 speed target: scanpy's ``pbmc68k_reduced().X`` (scaled, 700 × 765), k = 50,
default options with ``--no-baselines`` (the swap refinement still computes the greedy
panel as its second start), 72/8/20 split with seed 0. Each run is a fresh process
(imports, JIT compilation, training, refinement, scoring, writing); the table gives the
minimum and median wall time over ``--repeats`` runs and the held-out linear refit MSE
from ``run.json``::

    python benchmarks/bench_select_time.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np


def pbmc_scaled(path: Path) -> None:
    import scanpy as sc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pbmc = sc.datasets.pbmc68k_reduced()
    a = ad.AnnData(np.asarray(pbmc.X, np.float32), obs=pbmc.obs[["bulk_labels"]].copy())
    a.var_names = pbmc.var_names
    a.write_h5ad(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--k", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pbmc_scaled.h5ad"
        pbmc_scaled(data)
        rows = []
        for r in range(args.repeats):
            out = Path(tmp) / f"run{r}"
            cmd = [sys.executable, "-m", "genepanel", "select", str(data), "--k", str(args.k),
                   "--seed", "0", "--no-baselines", "-q", "--out", str(out)]
            t = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wall = time.perf_counter() - t
            run = json.loads((out / "run.json").read_text())
            rows.append((wall, run["metrics"]["linear_refit_test_mse"],
                         run["metrics"]["cae_linear_refit_test_mse"],
                         run["training"]["converged"], run["timings_seconds"]))
    walls = np.array([w for w, *_ in rows])
    print(f"pbmc68k_reduced .X, k = {args.k}, {args.repeats} runs, "
          f"genepanel select --no-baselines (whole process)")
    print("| wall s min | wall s median | held-out MSE | before refinement | converged | "
          "train s | refine s |")
    print("|---:|---:|---:|---:|---|---:|---:|")
    _, mse, cae, conv, tim = rows[int(np.argsort(walls)[len(walls) // 2])]
    print(f"| {walls.min():.1f} | {np.median(walls):.1f} | {mse:.4f} | {cae:.4f} | {conv} | "
          f"{tim['train']:.1f} | {tim.get('refine', 0.0):.1f} |")
    if len({round(r[1], 6) for r in rows}) != 1:
        print("note: the held-out MSE differed between runs: "
              + ", ".join(f"{r[1]:.4f}" for r in rows))


if __name__ == "__main__":
    main()

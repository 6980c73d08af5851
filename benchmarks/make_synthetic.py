"""Write a synthetic single-cell count matrix with planted gene modules (sparse ``.h5ad``).

Cells × genes counts, CSR, written in row blocks so memory stays small at 100,000 ×
30,000. Each of ``--modules`` modules is a set of ``--module-size`` genes driven by one
latent cell-level activity (gamma, capped, module-specific scale); the remaining genes are
background with gene-specific rates (a long-tailed mix, most of them rarely detected, as
in droplet data). Counts are Poisson(library size × rate × exp(loading × activity)).
``var['module']`` holds each gene's module (-1: background), ``var['driver']`` marks the
member most tightly coupled to its module's activity; ``uns['synthetic']`` the settings.

    python benchmarks/make_synthetic.py out.h5ad                      # 100,000 × 30,000
    python benchmarks/make_synthetic.py out.h5ad --cells 20000 --genes 30000
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np


def make(path: Path, cells: int, genes: int, modules: int, module_size: int, seed: int,
         block: int = 1000) -> None:
    import anndata as ad
    import h5py
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    n_mod_genes = modules * module_size
    if n_mod_genes > genes:
        msg = f"{modules} modules × {module_size} genes exceed {genes} genes"
        raise SystemExit(msg)
    perm = rng.permutation(genes)
    module = np.full(genes, -1, np.int32)
    for m in range(modules):
        module[perm[m * module_size : (m + 1) * module_size]] = m
    # Background rates: log-normal, most genes rare (median ~0.03 counts per cell at 5k UMI).
    base = np.exp(rng.normal(-12.0, 1.8, genes))
    base[module >= 0] = np.exp(rng.normal(-8.0, 0.7, n_mod_genes))
    loading = np.zeros(genes)
    loading[module >= 0] = rng.uniform(0.6, 1.4, n_mod_genes)
    driver = np.zeros(genes, bool)
    for m in range(modules):
        members = np.flatnonzero(module == m)
        top = members[np.argmax(loading[members])]
        loading[top] = 1.6
        driver[top] = True
    mod_scale = rng.uniform(0.5, 1.5, modules)
    tmp = Path(str(path) + ".partial")
    var = pd.DataFrame({"module": module, "driver": driver},
                       index=[f"G{i:05d}" for i in range(genes)])
    obs = pd.DataFrame(index=[f"C{i:06d}" for i in range(cells)])
    ad.AnnData(obs=obs, var=var,
               uns={"synthetic": {"cells": cells, "genes": genes, "modules": modules,
                                  "module_size": module_size, "seed": seed}}).write_h5ad(tmp)
    indptr = [0]
    with h5py.File(tmp, "a") as f:
        if "X" in f:
            del f["X"]
        g = f.create_group("X")
        g.attrs["encoding-type"] = "csr_matrix"
        g.attrs["encoding-version"] = "0.1.0"
        g.attrs["shape"] = (cells, genes)
        data_ds = g.create_dataset("data", (0,), np.float32, maxshape=(None,), chunks=(1 << 16,))
        idx_ds = g.create_dataset("indices", (0,), np.int32, maxshape=(None,), chunks=(1 << 16,))
        total = 0
        for start in range(0, cells, block):
            n = min(block, cells - start)
            act = np.minimum(rng.gamma(2.0, 0.5, (n, modules)), 4.0) * mod_scale  # activity
            act *= rng.random((n, modules)) < 0.5  # each module on in about half the cells
            lib = rng.lognormal(np.log(5000), 0.4, (n, 1))
            rate = np.broadcast_to(base.astype(np.float32), (n, genes)).copy()
            cols = module >= 0
            rate[:, cols] *= np.exp(loading[cols] * act[:, module[cols]])
            x = sp.csr_matrix(rng.poisson(lib * rate).astype(np.float32))
            x.sort_indices()
            data_ds.resize((total + x.nnz,))
            idx_ds.resize((total + x.nnz,))
            data_ds[total:] = x.data
            idx_ds[total:] = x.indices
            indptr.extend((x.indptr[1:] + total).tolist())
            total += x.nnz
        g.create_dataset("indptr", data=np.asarray(indptr, np.int64))
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--cells", type=int, default=100_000)
    ap.add_argument("--genes", type=int, default=30_000)
    ap.add_argument("--modules", type=int, default=200)
    ap.add_argument("--module-size", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    make(args.out, args.cells, args.genes, args.modules, args.module_size, args.seed)
    print(f"wrote {args.out}: {args.cells} cells × {args.genes} genes, {args.modules} modules "
          f"of {args.module_size} genes")


if __name__ == "__main__":
    main()

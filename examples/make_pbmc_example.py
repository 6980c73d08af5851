"""Write the PBMC example that ships inside scanpy as a plain .h5ad for the demo.

``scanpy.datasets.pbmc68k_reduced()`` reads a file from the scanpy wheel (no network):
700 cells × 765 genes. Its ``.X`` is scaled; ``.raw.X`` holds log1p-normalised values,
which is what a panel should be chosen on, so that becomes ``X`` here.
"""

import sys
import warnings
from pathlib import Path

import anndata as ad
import scanpy as sc

out = Path(sys.argv[1] if len(sys.argv) > 1 else "examples/pbmc68k.h5ad")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    pbmc = sc.datasets.pbmc68k_reduced()
adata = ad.AnnData(X=pbmc.raw.X.toarray() if hasattr(pbmc.raw.X, "toarray") else pbmc.raw.X,
                   obs=pbmc.obs[["bulk_labels", "louvain"]].copy(), var=pbmc.raw.var[[]].copy())
out.parent.mkdir(parents=True, exist_ok=True)
adata.write_h5ad(out)
print(f"wrote {out}: {adata.n_obs} cells × {adata.n_vars} genes")

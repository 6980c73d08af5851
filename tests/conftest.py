"""Shared fixtures: small synthetic data and the real data sets in ../shared/data."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of the real data sets (``../shared/data`` beside the checkout)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


def planted(
    n: int = 500, n_drivers: int = 5, followers: int = 9, noise: float = 0.6, seed: int = 0,
    weights: tuple[float, float] = (0.6, 1.0),
):
    """Genes driven by a few hidden drivers: each follower = weight · its driver + noise.

    Returns ``(X [n, d] float32, genes, driver_names, cluster)`` where ``cluster[i]`` is
    the driver index of gene ``i``; columns are shuffled. Measuring the drivers
    themselves is the best panel of size ``n_drivers``: a follower carries its own noise
    into every prediction.
    """
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, n_drivers))
    cols = [z]
    for j in range(n_drivers):
        w = rng.uniform(*weights, size=followers) * rng.choice([-1, 1], size=followers)
        cols.append(z[:, [j]] * w + noise * rng.normal(size=(n, followers)))
    x = np.concatenate(cols, axis=1).astype(np.float32)
    d = x.shape[1]
    perm = rng.permutation(d)
    x = x[:, perm]
    genes = [f"gene{i:03d}" for i in range(d)]
    drivers = sorted(genes[int(np.flatnonzero(perm == j)[0])] for j in range(n_drivers))
    modules = np.concatenate([np.arange(n_drivers), np.repeat(np.arange(n_drivers), followers)])
    return x, genes, drivers, modules[perm]


@pytest.fixture
def planted_h5ad(tmp_path: Path):
    """A planted-structure ``.h5ad`` file and its driver genes."""
    x, genes, drivers, _ = planted()
    a = ad.AnnData(x)
    a.var_names = genes
    path = tmp_path / "planted.h5ad"
    a.write_h5ad(path)
    return path, drivers

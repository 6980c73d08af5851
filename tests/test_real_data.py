"""On real expression data the panel beats random and highly-variable-gene panels."""

from __future__ import annotations

import numpy as np

from genepanel.api import load_input, select_panel
from genepanel.config import SelectConfig
from genepanel.io import ExpressionData


def test_flu_subset_panel_beats_random_and_hvg(shared_data):
    """Bulk influenza-challenge arrays (GSE30550), 252 samples × a fixed 500-gene subset.

    Few samples give few minibatches per epoch, so the annealing runs over more epochs
    (3000 cap; the stopping rule ends it near 1600) with a higher learning rate.
    """
    cfg = SelectConfig(k=20, seed=0).replace(
        **{"train.learning_rate": 0.01, "train.batch_size": 16, "train.max_epochs": 3000}
    )
    full = load_input(shared_data / "bulk_flu_gse30550_n252x4147.h5ad", cfg)
    cols = np.sort(np.random.default_rng(0).choice(full.shape[1], 500, replace=False))
    data = ExpressionData(full.X[:, cols], [full.genes[i] for i in cols], full.obs, "flu[500]")
    res = select_panel(data, cfg)
    m = res.metrics
    assert res.fit.converged
    assert m["linear_refit_test_mse"] < m["random_panel_test_mse"]["mean"]
    assert m["linear_refit_test_mse"] < m["hvg_panel_test_mse"]
    assert m["linear_refit_test_mse"] > m["pca_bound_test_mse"]

"""The notebook flow: genepanel.tl.select on scanpy's pbmc68k_reduced, in memory."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
import scanpy as sc

import genepanel as gp
from genepanel.errors import UsageError

FAST = {"anneal_steps": 1500, "seed": 0}


@pytest.fixture(scope="module")
def pbmc() -> ad.AnnData:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = sc.datasets.pbmc68k_reduced()
    return a.raw.to_adata()  # log-normalised, 700 × 765, sparse


@pytest.fixture(scope="module")
def annotated(pbmc):
    before = pbmc.X.copy()
    out, model = gp.tl.select(pbmc, 12, copy=True, **FAST)
    return pbmc, before, out, model


def test_tl_select_writes_var_and_uns(annotated, tmp_path):
    pbmc, before, out, model = annotated
    assert (pbmc.X != before).nnz == 0 and "genepanel" not in pbmc.var  # copy=True: untouched
    panel = list(out.var_names[out.var["genepanel"]])
    assert len(panel) == 12 and set(panel) == set(model.panel_genes)
    assert len(repr(model)) < 200 and "12 panel genes" in repr(model)  # no weights printed
    nodes = out.var["genepanel_node"]
    assert sorted(nodes[out.var["genepanel"]]) == list(range(12))
    assert (nodes[~out.var["genepanel"]] == -1).all()
    probs = out.var["genepanel_probability"]
    # the node's probability; NaN where the swap refinement replaced the node's gene
    refined = set(out.uns["genepanel"]["refined"])
    for gene, p in probs[out.var["genepanel"]].items():
        assert (np.isnan(p) and gene in refined) or (0 <= p <= 1 and gene not in refined)
    assert probs[~out.var["genepanel"]].isna().all()
    uns = out.uns["genepanel"]
    assert uns["config"]["k"] == 12 and uns["config"]["train"]["anneal_steps"] == 1500
    assert np.isfinite(uns["metrics"]["linear_refit_test_mse"])
    groups = gp.tl.groups_frame(out)
    assert set(groups.loc[groups["selected"], "gene"]) == set(panel)
    out.write_h5ad(tmp_path / "annotated.h5ad")  # everything written is h5ad-serialisable
    back = ad.read_h5ad(tmp_path / "annotated.h5ad")
    assert list(back.var_names[back.var["genepanel"]]) == list(out.var_names[out.var["genepanel"]])


def test_tl_model_imputes_the_same_cells(annotated):
    _, _, out, model = annotated
    measured = out[:, model.panel_genes].copy()
    full = gp.impute(measured, model)
    assert full.shape == (out.n_obs, out.n_vars)
    truth = out.X.toarray()
    err = float(np.mean((np.asarray(full.X) - truth) ** 2))
    assert err < float(np.mean((truth - truth.mean(0)) ** 2))  # better than the gene means


def test_select_panel_accepts_anndata(pbmc):
    from genepanel.config import SelectConfig

    res = gp.select_panel(pbmc, SelectConfig(k=5, train={"anneal_steps": 300}))  # dict section
    assert len(res.genes) == pbmc.n_vars and len(res.panel.indices) == 5
    assert repr(res).startswith("SelectResult(5 of 765 genes [") and len(repr(res)) < 200


def test_tl_select_refuses_unknown_option_and_layer(pbmc):
    with pytest.raises(UsageError, match="unknown option 'learning_rte'"):
        gp.tl.select(pbmc, 5, learning_rte=1e-3)
    with pytest.raises(UsageError, match="layer 'counts' not found"):
        gp.tl.select(pbmc, 5, layer="counts")

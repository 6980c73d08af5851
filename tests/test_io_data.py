"""Reading inputs, validating them, splits and preprocessing."""

from __future__ import annotations

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from genepanel.config import SplitConfig
from genepanel.data import Preprocessor, dense_rows, make_split
from genepanel.errors import DataError, UsageError
from genepanel.io import ExpressionData, read_matrix


def _counts(n=40, d=12, seed=0):
    rng = np.random.default_rng(seed)
    return rng.poisson(3.0, size=(n, d)).astype(np.float32)


def test_h5ad_dense_sparse_layer_and_gene_column(tmp_path):
    x = _counts()
    a = ad.AnnData(x)
    a.var_names = [f"ENSG{i}" for i in range(x.shape[1])]
    a.var["symbol"] = [f"G{i}" for i in range(x.shape[1])]
    a.layers["counts"] = sp.csr_matrix(x * 2)
    path = tmp_path / "a.h5ad"
    a.write_h5ad(path)
    dense = read_matrix(path)
    assert not dense.is_sparse and dense.genes[0] == "ENSG0"
    np.testing.assert_array_equal(dense.X, x)
    layer = read_matrix(path, layer="counts", gene_column="symbol")
    assert layer.is_sparse and layer.genes[3] == "G3"
    np.testing.assert_array_equal(layer.X.toarray(), x * 2)


def test_plain_hdf5_genes_dataset_text_file_and_transpose(tmp_path):
    x = _counts()
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as f:
        f["expr/matrix"] = x.T  # genes × samples
        f["expr/genes"] = np.array([f"g{i}" for i in range(x.shape[1])], dtype="S")
    data = read_matrix(path, dataset="/expr/matrix", genes="/expr/genes", genes_by_samples=True)
    np.testing.assert_array_equal(data.X, x)
    names = tmp_path / "genes.txt"
    names.write_text("\n".join(f"t{i}" for i in range(x.shape[1])))
    data = read_matrix(path, dataset="/expr/matrix", genes=str(names), genes_by_samples=True)
    assert data.genes[-1] == f"t{x.shape[1] - 1}"
    with pytest.raises(DataError, match="try --genes-by-samples"):
        read_matrix(path, dataset="/expr/matrix", genes=str(names))


def test_nan_values_are_refused(tmp_path):
    x = _counts()
    x[3, 2] = np.nan
    a = ad.AnnData(sp.csr_matrix(np.nan_to_num(x, nan=0.0) + 0))
    a.X.data[5] = np.inf
    a.var_names = [f"g{i}" for i in range(a.n_vars)]
    a.write_h5ad(tmp_path / "inf.h5ad")
    with pytest.raises(DataError, match="1 NaN or infinite value"):
        read_matrix(tmp_path / "inf.h5ad")
    b = ad.AnnData(x)
    b.var_names = [f"g{i}" for i in range(b.n_vars)]
    b.write_h5ad(tmp_path / "nan.h5ad")
    with pytest.raises(DataError, match="first at sample 3, gene g2"):
        read_matrix(tmp_path / "nan.h5ad")


def test_duplicate_gene_names_are_refused(tmp_path):
    import warnings

    a = ad.AnnData(_counts())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a.var_names = ["g0", "g0"] + [f"g{i}" for i in range(2, a.n_vars)]
        a.write_h5ad(tmp_path / "dup.h5ad")
    with pytest.raises(DataError, match=r"duplicate gene name\(s\).*g0 ×2"):
        read_matrix(tmp_path / "dup.h5ad")


def test_empty_gene_names_and_missing_things(tmp_path):
    a = ad.AnnData(_counts())
    a.var_names = [f"g{i}" for i in range(a.n_vars)]
    a.var["sym"] = [""] + [f"s{i}" for i in range(1, a.n_vars)]
    path = tmp_path / "a.h5ad"
    a.write_h5ad(path)
    with pytest.raises(DataError, match="empty gene name"):
        read_matrix(path, gene_column="sym")
    with pytest.raises(DataError, match="no layer 'raw'"):
        read_matrix(path, layer="raw")
    with pytest.raises(DataError, match="no var column"):
        read_matrix(path, gene_column="nope")
    with pytest.raises(DataError, match="not found"):
        read_matrix(tmp_path / "missing.h5ad")
    junk = tmp_path / "junk.h5ad"
    junk.write_text("gene\tvalue\n")
    with pytest.raises(DataError, match="cannot read"):
        read_matrix(junk)
    h5 = tmp_path / "m.h5"
    with h5py.File(h5, "w") as f:
        f["a"] = np.zeros((3, 4))
        f["b"] = np.zeros((5, 6))
        f["vec"] = np.zeros(7)
    with pytest.raises(UsageError, match="name the matrix with --dataset"):
        read_matrix(h5, genes="x")
    with pytest.raises(DataError, match="not a 2-D matrix"):
        read_matrix(h5, dataset="/vec", genes="x")
    with pytest.raises(DataError, match="no dataset"):
        read_matrix(h5, dataset="/c", genes="x")


def test_split_fractions_seed_and_column():
    s1 = make_split(100, SplitConfig(), seed=1)
    s2 = make_split(100, SplitConfig(), seed=1)
    assert s1.sizes() == {"train": 72, "val": 8, "test": 20}
    np.testing.assert_array_equal(s1.test, s2.test)
    assert not set(s1.train) & set(s1.test)
    assert len(set(s1.train) | set(s1.val) | set(s1.test)) == 100
    assert not np.array_equal(make_split(100, SplitConfig(), seed=2).test, s1.test)
    obs = pd.DataFrame({"part": ["train"] * 6 + ["validation"] * 2 + ["test"] * 2})
    s = make_split(10, SplitConfig(column="part"), seed=0, obs=obs)
    assert s.sizes() == {"train": 6, "val": 2, "test": 2}
    with pytest.raises(DataError, match="too few"):
        make_split(3, SplitConfig(), seed=0)
    with pytest.raises(DataError, match="expected only train"):
        make_split(2, SplitConfig(column="c"), 0, pd.DataFrame({"c": ["train", "hold"]}))


def test_log1p_matches_scanpy_and_sparse_equals_dense():
    import scanpy as sc

    x = _counts(30, 10)
    rows = np.arange(30)
    dense = ExpressionData(x, [f"g{i}" for i in range(10)], pd.DataFrame(), "d")
    sparse = ExpressionData(sp.csr_matrix(x), dense.genes, pd.DataFrame(), "s")
    pre = Preprocessor("log1p").fit(dense, rows)
    a = ad.AnnData(x.copy())
    sc.pp.normalize_total(a, target_sum=pre.target_sum)
    sc.pp.log1p(a)
    np.testing.assert_allclose(dense_rows(dense, pre, rows), a.X, rtol=1e-5, atol=1e-6)
    pre_s = Preprocessor("log1p+standardize").fit(sparse, rows)
    pre_d = Preprocessor("log1p+standardize").fit(dense, rows)
    np.testing.assert_allclose(
        dense_rows(sparse, pre_s, rows), dense_rows(dense, pre_d, rows), rtol=1e-5, atol=1e-5
    )
    z = dense_rows(dense, pre_d, rows)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-4)


def test_standardize_uses_training_rows_only():
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    data = ExpressionData(x, ["a", "b"], pd.DataFrame(), "x")
    pre = Preprocessor("standardize").fit(data, np.arange(5))
    np.testing.assert_allclose(pre.mean, x[:5].mean(0))


def test_log1p_refuses_negative_values():
    data = ExpressionData(np.array([[1.0, -1.0], [2.0, 3.0]], np.float32), ["a", "b"],
                          pd.DataFrame(), "x")
    with pytest.raises(UsageError, match="negative"):
        Preprocessor("log1p").fit(data, np.arange(2))


def test_hvg_baseline_same_for_sparse_and_dense():
    from genepanel.evaluate import hvg_panel

    rng = np.random.default_rng(0)
    x = rng.poisson(rng.gamma(1.0, 2.0, size=60), size=(200, 60)).astype(np.float32)
    dense = ExpressionData(x, [f"g{i}" for i in range(60)], pd.DataFrame(), "d")
    sparse = ExpressionData(sp.csr_matrix(x), dense.genes, pd.DataFrame(), "s")
    rows = np.arange(150)
    for kind in ("none", "log1p"):
        a, how = hvg_panel(dense, Preprocessor(kind).fit(dense, rows), rows, 10)
        b, _ = hvg_panel(sparse, Preprocessor(kind).fit(sparse, rows), rows, 10)
        np.testing.assert_array_equal(a, b)
        assert len(set(a)) == 10 and "scanpy" in how


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "csr"])
def test_streamed_rows_equal_loaded_rows(tmp_path, sparse):
    x = _counts(300, 20)
    x[7] = 0.0  # a row with no stored entries
    a = ad.AnnData(sp.csr_matrix(x) if sparse else x)
    a.var_names = [f"g{i}" for i in range(20)]
    a.write_h5ad(tmp_path / "a.h5ad", compression="gzip")
    loaded = read_matrix(tmp_path / "a.h5ad")
    streamed = read_matrix(tmp_path / "a.h5ad", stream=True)
    assert streamed.is_backed and streamed.is_sparse == sparse
    idx = np.random.default_rng(0).choice(300, 120, replace=False)  # unsorted, with gaps
    got = streamed.rows(idx)
    want = loaded.rows(idx)
    if sparse:
        got, want = got.toarray(), want.toarray()
    np.testing.assert_array_equal(got, want)
    # Whole ranges (the evaluation passes), past the end, and empty; an all-zero row.
    for sl in (slice(0, 300), slice(290, 400), slice(5, 5), slice(7, 8)):
        got, want = streamed.X[sl], x[sl]
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got.toarray() if sparse else got, want)


def test_streamed_input_trains_from_disk(tmp_path):
    from genepanel.api import select_panel
    from genepanel.config import SelectConfig
    from tests.conftest import planted

    x, genes, _, _ = planted(seed=8)
    a = ad.AnnData(sp.csr_matrix(x.clip(0)))
    a.var_names = genes
    a.write_h5ad(tmp_path / "p.h5ad")
    cfg = SelectConfig(k=5, seed=0).replace(
        **{"input.stream": "yes", "train.max_epochs": 5, "train.batch_size": 32}
    )
    res = select_panel(tmp_path / "p.h5ad", cfg, tmp_path / "out", evaluate_baselines=False)
    assert res.fit.data_placement == "streamed"
    assert "streamed" in res.run["data"]["source"]
    assert len(set(res.panel.indices)) == 5


def test_epoch_order_blocks_cover_every_row_once():
    from genepanel.train import epoch_order

    assert sorted(epoch_order(103, np.random.default_rng(0), block=8)) == list(range(103))
    order = epoch_order(104, np.random.default_rng(0), block=8)
    blocks = order.reshape(13, 8)
    assert (blocks[:, 0] % 8 == 0).all()  # whole blocks move ...
    assert (np.diff(blocks, axis=1) == 1).all()
    assert not np.array_equal(order, np.arange(104))  # ... in a random order

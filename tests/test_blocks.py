"""Evaluation passes read rows in blocks whose size is bounded in bytes, not only in rows."""

from __future__ import annotations

import numpy as np
import pandas as pd

from genepanel.config import SelectConfig
from genepanel.data import BLOCK_BYTES, block_rows
from genepanel.dataset import Dataset
from genepanel.evaluate import fit_linear, linear_test_mse
from genepanel.io import ExpressionData


def test_block_rows_bounds_the_bytes_of_a_block():
    assert block_rows(765) == 2048  # narrow data: the row count decides
    assert block_rows(30_000) * 30_000 * 8 <= BLOCK_BYTES  # 279 rows, not 2,048
    assert block_rows(10**9) == 16  # never fewer than 16 rows
    assert block_rows(100, batch=64) == 64


def test_wide_blocks_are_smaller_and_give_the_same_fit(monkeypatch):
    from genepanel import data as data_mod

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 40)).astype(np.float32)
    data = ExpressionData(x, [f"g{j}" for j in range(40)], pd.DataFrame(index=range(300)), "w")
    ds = Dataset.build(data, SelectConfig(k=3, seed=0))
    panels = {"p": np.array([1, 5, 9])}
    train, test = ds.split.train, ds.split.test
    ref = linear_test_mse(data, ds.pre, test, fit_linear(data, ds.pre, train, panels))["p"]
    # As if the 40 genes were wide: 8 · 40 · 20 bytes allow blocks of 20 rows.
    monkeypatch.setattr(data_mod, "BLOCK_BYTES", 8 * 40 * 20)
    assert {len(rows) for rows, _ in ds.blocks("train")} <= {20, len(train) % 20}
    small = linear_test_mse(data, ds.pre, test, fit_linear(data, ds.pre, train, panels))["p"]
    # the refit's predictions are float32, so another block split moves the sum at 1e-7
    np.testing.assert_allclose(small, ref, rtol=1e-5)


def test_gene_moments_read_in_small_blocks_are_the_same(monkeypatch):
    from genepanel import data as data_mod
    from genepanel.data import Preprocessor

    rng = np.random.default_rng(1)
    x = rng.poisson(2.0, size=(500, 30)).astype(np.float32)
    data = ExpressionData(x, [f"g{j}" for j in range(30)], pd.DataFrame(index=range(500)), "c")
    pre = Preprocessor(kind="log1p").fit(data, np.arange(500))
    ref = pre.row_moments(data, np.arange(500))
    monkeypatch.setattr(data_mod, "BLOCK_BYTES", 8 * 30 * 16)  # 16-row blocks
    sizes = []
    read = data.rows
    monkeypatch.setattr(data, "rows", lambda idx: sizes.append(len(idx)) or read(idx))
    small = pre.row_moments(data, np.arange(500))
    assert max(sizes) == 16  # was one 500-row read (4,096-row batches)
    np.testing.assert_allclose(small[0], ref[0], rtol=1e-12)  # float64 sums of float32 rows
    np.testing.assert_allclose(small[1], ref[1], rtol=1e-9, atol=1e-12)
    want = np.log1p(x / x.sum(1, keepdims=True) * pre.target_sum).astype(np.float64)
    np.testing.assert_allclose(small[1], want.var(0), rtol=1e-5)  # float32 transform


def test_centred_copy_built_in_column_blocks_equals_the_whole_array_formula():
    from genepanel.selectors import centred

    rng = np.random.default_rng(2)
    x = (rng.gamma(0.3, 2.0, size=(120, 50)) * (rng.random((120, 50)) < 0.3)).astype(np.float32)
    got = centred(x, block=7)  # blocks that do not divide the columns
    x64 = x.astype(np.float64)
    want = x64 - x64.mean(axis=0)
    assert got.dtype == np.float64 and got.flags.f_contiguous
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.mean(axis=0), 0.0, atol=1e-12)


def test_training_evaluation_chunks_are_bounded_on_wide_data():
    from genepanel.train import eval_chunk

    assert eval_chunk(8192, 1, 765) == 2048  # narrow: as before
    assert eval_chunk(8192, 1, 30_000) == block_rows(30_000)  # wide: 279 rows, not 2,048
    assert eval_chunk(8192, 4, 30_000) % 4 == 0  # still splits over the devices
    assert eval_chunk(100, 1, 30_000) == 100  # never more rows than there are

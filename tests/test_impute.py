"""genepanel impute: reproduces the trained decoder of select, streams, fails clearly."""

from __future__ import annotations

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

import genepanel
from genepanel.api import select_panel
from genepanel.cli import app
from genepanel.config import SelectConfig
from genepanel.errors import DataError, ModelError, UsageError
from genepanel.imputation import impute_file

from .conftest import planted

FAST = {"train.max_epochs": 30, "train.learning_rate": 0.01, "train.batch_size": 64}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A standardize run on planted data: (folder, SelectResult, raw X, genes, h5ad path)."""
    tmp = tmp_path_factory.mktemp("impute")
    x, genes, _ = planted(n=300)[:3]
    path = tmp / "planted.h5ad"
    a = ad.AnnData(x)
    a.var_names = genes
    a.write_h5ad(path)
    cfg = SelectConfig(k=5, preprocess="standardize", n_related=3).replace(**FAST)
    res = select_panel(path, cfg, tmp / "run", evaluate_baselines=False)
    return tmp / "run", res, x, genes, path


@pytest.fixture(scope="module")
def counts_run(tmp_path_factory):
    """A log1p+standardize run on sparse count data: (folder, SelectResult, counts, genes)."""
    tmp = tmp_path_factory.mktemp("impute_counts")
    rng = np.random.default_rng(3)
    z = rng.gamma(2.0, 1.0, size=(240, 4))
    load = rng.gamma(1.0, 1.0, size=(4, 40))
    counts = rng.poisson(z @ load * 3).astype(np.float32)
    genes = [f"g{i}" for i in range(40)]
    a = ad.AnnData(sp.csr_matrix(counts))
    a.var_names = genes
    path = tmp / "counts.h5ad"
    a.write_h5ad(path)
    cfg = SelectConfig(k=4, preprocess="log1p+standardize").replace(**FAST)
    res = select_panel(path, cfg, tmp / "run", evaluate_baselines=False)
    return tmp / "run", res, counts, genes


def _panel_only(x, genes, rows, panel_genes, shuffle=True, obs=None):
    cols = [genes.index(g) for g in panel_genes]
    if shuffle:
        cols = cols[::-1]
    a = ad.AnnData(x[np.ix_(rows, cols)], obs=obs)
    a.var_names = [genes[c] for c in cols]
    return a


def test_panel_only_input_reproduces_trained_decoder_of_select(run):
    folder, res, x, genes, _ = run
    model = res.model
    test = res.split.test
    measured = _panel_only(x, genes, test, model.panel_genes)  # panel genes, reversed order
    before = measured.X.copy()
    out = genepanel.impute(measured, folder, keep_measured=False)
    np.testing.assert_array_equal(measured.X, before)  # input untouched
    assert list(out.var_names) == model.genes
    assert out.shape == (len(test), len(genes))

    truth = model.pre.transform(x[test])
    expected = model.predict(truth[:, model.panel_index])
    np.testing.assert_allclose(out.X, expected, rtol=1e-6, atol=1e-6)
    mse = float(np.mean(np.square(out.X.astype(np.float64) - truth)))
    assert mse == pytest.approx(res.metrics["trained_decoder_test_mse"], rel=1e-5)

    # the same rows as select's run folder stored them
    stored = genepanel.load_model(folder).meta["metrics"]["trained_decoder_test_mse"]
    assert mse == pytest.approx(stored, rel=1e-5)


def test_keep_measured_and_linear_decoder(run):
    folder, res, x, genes, _ = run
    model = res.model
    rows = res.split.test[:7]
    measured = _panel_only(x, genes, rows, model.panel_genes)
    kept = genepanel.impute(measured, folder)
    truth = model.pre.transform(x[rows])
    np.testing.assert_allclose(kept.X[:, model.panel_index], truth[:, model.panel_index],
                               rtol=1e-6, atol=1e-6)
    assert kept.var["measured"].sum() == len(model.panel_genes)
    assert kept.var.loc[model.panel_genes, "panel_node"].tolist() == list(range(5))
    prov = kept.uns["genepanel_impute"]
    assert prov["decoder"] == "trained" and prov["measured_panel_genes"] == "kept as measured"
    assert list(prov["panel_genes"]) == model.panel_genes

    lin = genepanel.impute(measured, folder, decoder="linear", keep_measured=False)
    np.testing.assert_allclose(lin.X, model.linear.predict(truth[:, model.panel_index]),
                               rtol=1e-5, atol=1e-5)
    orig = genepanel.impute(measured, folder, original_scale=True)
    np.testing.assert_allclose(orig.X[:, model.panel_index], x[np.ix_(rows, model.panel_index)],
                               rtol=1e-4, atol=1e-4)


def test_impute_file_streams_batches_and_evaluates(run, tmp_path):
    folder, res, x, genes, path = run
    out = tmp_path / "imputed.h5ad"
    r = impute_file(path, folder, out, batch_size=7, evaluate=True, keep_measured=False)
    back = ad.read_h5ad(out)
    whole = genepanel.impute(ad.read_h5ad(path), folder, keep_measured=False)
    np.testing.assert_allclose(back.X, whole.X, rtol=1e-6, atol=1e-6)
    assert back.uns["genepanel_impute"]["input"].startswith(str(path))
    ev = r.evaluation.summary
    truth = res.model.pre.transform(x)
    non_panel = np.setdiff1d(np.arange(len(genes)), res.model.panel_index)
    err = np.square(back.X.astype(np.float64) - truth)
    assert ev["mse_non_panel"] == pytest.approx(err[:, non_panel].mean(), rel=1e-5)
    assert ev["mse_all_genes"] == pytest.approx(err.mean(), rel=1e-5)
    g = non_panel[0]
    r0 = np.corrcoef(truth[:, g], back.X[:, g])[0, 1]
    table = pd.read_csv(r.evaluation_files[1], sep="\t").set_index("gene")
    assert table.loc[genes[g], "pearson"] == pytest.approx(r0, abs=1e-4)
    assert len(table) == len(non_panel)
    # refuses to overwrite without the flag, and never leaves temporary files behind
    with pytest.raises(UsageError, match="exists"):
        impute_file(path, folder, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["imputed.h5ad", "imputed.evaluation.json", "imputed.evaluation.tsv"])


def test_log1p_needs_totals_for_panel_only_input(counts_run, tmp_path):
    folder, res, counts, genes = counts_run
    model = res.model
    rows = res.split.test
    full = ad.AnnData(sp.csr_matrix(counts[rows]))
    full.var_names = genes
    ref = genepanel.impute(full, folder, keep_measured=False)
    expected = model.predict(model.pre.transform(counts[rows])[:, model.panel_index])
    np.testing.assert_allclose(ref.X, expected, rtol=1e-5, atol=1e-5)

    obs = pd.DataFrame({"total_counts": counts[rows].sum(1)},
                       index=[str(i) for i in rows])
    panel_only = _panel_only(counts, genes, rows, model.panel_genes, obs=obs)
    with pytest.raises(UsageError, match=r"--totals-column.*total_counts"):
        genepanel.impute(panel_only, folder)
    out = genepanel.impute(panel_only, folder, keep_measured=False, totals_column="total_counts")
    np.testing.assert_allclose(out.X, ref.X, rtol=1e-5, atol=1e-5)
    assert "total_counts" in out.uns["genepanel_impute"]["totals"]


def test_missing_panel_genes_listed_with_alternatives(run):
    folder, res, x, genes, _ = run
    model = res.model
    groups = pd.read_csv(folder / "groups.tsv", sep="\t")
    lost = model.panel_genes[0]
    alt = groups[(groups["panel_gene"] == lost) & ~groups["selected"]]["gene"].iloc[0]
    keep = [g for g in genes if g != lost]
    a = ad.AnnData(x[:5, [genes.index(g) for g in keep]])
    a.var_names = keep
    with pytest.raises(DataError) as err:
        genepanel.impute(a, folder)
    text = str(err.value)
    assert "1 of 5 panel genes are missing" in text and lost in text
    assert f"{lost} → {alt}" in text
    assert "\n" not in text

    other = ad.AnnData(np.ones((3, 4), np.float32))
    other.var_names = ["A", "B", "C", "D"]
    with pytest.raises(DataError, match="shares no gene with the panel"):
        genepanel.impute(other, folder)


def test_cli_errors_have_exit_codes_and_one_line(run, tmp_path):
    folder, _res, _, _, path = run
    cli = CliRunner()
    r = cli.invoke(app, ["impute", str(path), "--run", str(tmp_path / "nope"),
                         "--out", str(tmp_path / "o.h5ad")])
    assert r.exit_code == 1
    assert "model folder" in r.output and "Traceback" not in r.output

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text("{}")
    with pytest.raises(ModelError, match="not a complete genepanel model folder"):
        genepanel.impute(ad.read_h5ad(path), broken)

    r = cli.invoke(app, ["impute", str(path), "--run", str(folder), "--out", str(path)])
    assert r.exit_code == 2 and "is the input file" in r.output
    r = cli.invoke(app, ["impute", str(path), "--run", str(folder),
                         "--out", str(tmp_path / "x.txt")])
    assert r.exit_code == 2 and "must end in .h5ad" in r.output
    r = cli.invoke(app, ["impute", str(path), "--run", str(folder),
                         "--out", str(tmp_path / "ok.h5ad"), "--fitted-decoder", "cubic"])
    assert r.exit_code == 2 and "--fitted-decoder" in r.output
    # the 0.1 names stay as hidden aliases for one release, with a deprecation line
    r = cli.invoke(app, ["impute", str(path), "--model", str(folder), "--decoder", "linear",
                         "--out", str(tmp_path / "old.h5ad"), "-q"])
    assert r.exit_code == 0, r.output
    assert "--model is deprecated" in r.output and "--decoder is deprecated" in r.output
    r = cli.invoke(app, ["impute", str(path), "--model", str(folder), "--run", str(folder),
                         "--out", str(tmp_path / "both.h5ad")])
    assert r.exit_code == 2 and "give only --run" in r.output
    r = cli.invoke(app, ["impute", str(path), "--out", str(tmp_path / "none.h5ad")])
    assert r.exit_code == 2 and "missing option --run" in r.output
    assert "--model" not in cli.invoke(app, ["impute", "--help"]).output
    r = cli.invoke(app, ["impute", str(path), "--run", str(folder),
                         "--out", str(tmp_path / "ok.h5ad"), "--evaluate"])
    assert r.exit_code == 0, r.output
    with h5py.File(tmp_path / "ok.h5ad") as f:
        assert f["X"].shape == (300, 50)
    assert (tmp_path / "ok.evaluation.json").is_file()


def test_real_flu_select_impute_evaluate(shared_data, tmp_path):
    """End to end on real microarray data: select → impute held-out rows → evaluate."""
    full = ad.read_h5ad(shared_data / "bulk_flu_gse30550_n252x4147.h5ad")
    a = ad.AnnData(np.asarray(full.X[:, :400], np.float32), obs=full.obs.copy())
    a.var_names = list(full.var_names[:400])
    cfg = SelectConfig(k=10, preprocess="standardize").replace(
        **{**FAST, "train.batch_size": 32, "train.max_epochs": 40})
    res = select_panel(_ed(a), cfg, tmp_path / "run", evaluate_baselines=False)
    test = a[res.split.test].copy()
    test.write_h5ad(tmp_path / "test.h5ad")
    r = impute_file(tmp_path / "test.h5ad", tmp_path / "run", tmp_path / "imp.h5ad",
                    evaluate=True, keep_measured=False, batch_size=16)
    s = r.evaluation.summary
    assert s["mse_all_genes"] == pytest.approx(res.metrics["trained_decoder_test_mse"], rel=1e-4)
    assert s["n_genes_evaluated"] == 390 and s["n_samples"] == len(res.split.test)
    # 10 measured genes predict the other 390 better than their training means do
    assert s["mse_all_genes"] < 0.9 * res.metrics["test_variance"]
    assert s["pearson_median"] > 0.3


def _ed(a):
    from genepanel.io import ExpressionData

    return ExpressionData(X=np.asarray(a.X, np.float32), genes=list(a.var_names), obs=a.obs,
                          source="flu subset")

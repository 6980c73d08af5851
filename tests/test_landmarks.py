"""L1000 landmark table, mapping onto real data sets, and genepanel compare-landmarks."""

from __future__ import annotations

import hashlib
import json
from importlib import resources

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from genepanel.api import select_panel
from genepanel.cli import app
from genepanel.compare import CompareConfig, compare_landmarks, pearson_per_gene
from genepanel.config import SelectConfig, from_dict
from genepanel.errors import DataError
from genepanel.landmarks import (
    load_landmarks,
    map_gene_list,
    map_landmarks,
    normalize_id,
    read_gene_list,
)

BLADDER = "bulk_bladder_gse3167_n57x22283.h5ad"
HSMM = "scrna_hsmm_trapnell2014_n271x26521_fpkm.h5ad"


def test_bundled_table_is_the_shared_copy(shared_data):
    table = load_landmarks()
    assert len(table) == 978 and table["entrez_id"].is_unique and table["symbol"].is_unique
    assert (table["in_dgex_943"] == "1").sum() == 943
    assert (table["symbol"] != table["symbol_2022"]).sum() == 47
    bundled = resources.files("genepanel").joinpath("resources/l1000_landmarks.tsv").read_bytes()
    shared = (shared_data / "l1000_landmarks.tsv").read_bytes()
    assert hashlib.sha256(bundled).hexdigest() == hashlib.sha256(shared).hexdigest()
    prov = resources.files("genepanel").joinpath("resources/L1000_PROVENANCE.md").read_text()
    assert "d1652c3223e49e68e3a71634909342b4a6dbf361" in prov


@pytest.mark.parametrize(
    ("raw", "norm"),
    [("ENSG00000000003.10", "ENSG00000000003"), (" tspan6 ", "TSPAN6"), ("7105.0", "7105"),
     ("-666", ""), (None, ""), (float("nan"), ""), ("200814_at", "200814_AT")],
)
def test_normalize_id(raw, norm):
    assert normalize_id(raw) == norm


def test_bladder_probes_map_all_978_and_dgex_subset_943(shared_data):
    a = ad.read_h5ad(shared_data / BLADDER, backed="r")
    var = a.var
    m = map_landmarks(list(var.index), var)
    assert m.n_found == 978 and m.not_found == []
    assert m.by_source == {"var_names = affy_probe_id": 978}
    assert var.iloc[m.indices]["is_l1000_landmark_probe"].all()

    sub = var[var["dgex_role"] != "none"]
    m = map_landmarks(list(sub.index), sub)
    assert m.n_found == 943
    assert set(sub.index[m.indices]) == set(sub.index[sub["dgex_role"] == "landmark"])
    assert len(m.not_found) == 35
    assert map_landmarks(list(sub.index), sub, dgex_only=True).n_found == 943


def test_myoblast_versioned_ensembl_and_symbols(shared_data):
    a = ad.read_h5ad(shared_data / HSMM, backed="r")
    var = a.var
    assert var.index[0].count(".") == 1  # versioned Ensembl IDs
    detected = set(var.index[var["is_l1000_landmark"]])
    # the versioned index alone: Ensembl IDs, version stripped
    by_id = map_landmarks(list(var.index))
    assert by_id.n_found >= 950
    assert set(var.index[by_id.indices]) <= detected
    assert all(s.startswith("var_names = ") and "ensembl" in s for s in by_id.by_source)
    # the symbol column alone (old or 2022 symbols)
    by_sym = map_landmarks(list(var["gene_short_name"].astype(str)))
    assert by_sym.n_found >= 940
    # everything: the best per landmark, exactly the 961 detected landmarks
    best = map_landmarks(list(var.index), var)
    assert best.n_found == 961
    assert set(var.index[best.indices]) == detected
    assert len(set(best.indices)) == best.n_found


def test_user_reference_file_and_threshold(tmp_path):
    genes = ["ENSG01.2", "ENSG02.1", "ENSG03.1", "ENSG04.7"]
    var = pd.DataFrame({"symbol": ["AA", "BB", "CC", "DD"]}, index=genes)
    ref = tmp_path / "panel.txt"
    ref.write_text("# my panel\nbb\tprobe 1\nENSG04\n\nZZ\nCC,x\n")
    names = read_gene_list(ref)
    assert names == ["bb", "ENSG04", "ZZ", "CC"]
    m = map_gene_list(names, genes, var, name="genes of panel.txt")
    assert m.table["gene"].tolist() == ["ENSG02.1", "ENSG04.7", "", "ENSG03.1"]
    assert m.not_found == ["ZZ"]
    m.check(0.75, "data")
    with pytest.raises(DataError, match=r"only 3 of 4 .* \(75%\).*lower --min-found"):
        m.check(0.8, "data")
    none = map_gene_list(["XX"], genes, var, name="genes")
    with pytest.raises(DataError, match="only 0 of 1"):
        none.check(0.01, "data")


@pytest.fixture(scope="module")
def bladder_run(shared_data, tmp_path_factory):
    """A fast CAE run on a small real subset: 120 landmark + 280 target D-GEX probes."""
    tmp = tmp_path_factory.mktemp("cmp")
    full = ad.read_h5ad(shared_data / BLADDER)
    lm = np.flatnonzero(full.var["dgex_role"] == "landmark")[:120]
    tg = np.flatnonzero(full.var["dgex_role"] == "target")[:280]
    a = full[:, np.sort(np.concatenate([lm, tg]))].copy()
    path = tmp / "bladder_small.h5ad"
    a.write_h5ad(path)
    cfg = SelectConfig(k=12, preprocess="standardize").replace(
        **{"train.max_epochs": 40, "train.learning_rate": 0.01, "train.batch_size": 8})
    select_panel(path, cfg, tmp / "run", evaluate_baselines=False)
    return tmp, path, a


def test_compare_landmarks_end_to_end_on_real_subset(bladder_run):
    tmp, path, a = bladder_run
    cfg = CompareConfig(mlp_hidden=((16,), (16, 16)), trials=2, epochs=15, patience=5,
                        batch_size=16, sweep=True, sweep_sizes=(4,), sweep_epochs=5)
    # 120 of 978 landmark probes are in this subset: refused unless the threshold is lowered
    with pytest.raises(DataError, match=r"only 1\d\d of 978 L1000 landmarks"):
        compare_landmarks(path, tmp / "run", None, config=cfg)
    cfg = CompareConfig(**{**cfg.__dict__, "min_found": 0.1})
    res = compare_landmarks(path, tmp / "run", tmp / "cmp", config=cfg)
    # every landmark probe of the subset is matched by its probe id; landmark genes whose
    # CMap probe was dropped may still be found through another probe of the same gene
    lm_idx = np.flatnonzero(a.var["dgex_role"].to_numpy() == "landmark")
    assert set(lm_idx) <= set(res.mapping.indices)
    assert res.mapping.by_source["var_names = affy_probe_id"] == 120
    out = res.out
    for f in ("report.md", "summary.tsv", "trials.tsv", "per_gene.tsv", "reference_mapping.tsv",
              "comparison.json", "mse_by_decoder.png", "sweep.tsv", "sweep.png"):
        assert (out / f).is_file(), f
    assert not (tmp / "cmp.partial").exists()
    info = json.loads((out / "comparison.json").read_text())
    n_ref = res.mapping.n_found
    assert info["reference_size"] == n_ref and info["candidate_size"] == 12
    assert info["same_split_as_panel_run"] is True
    assert info["fair"] is False and f"sizes differ (12 vs {n_ref}" in info["fairness"]
    assert "sizes differ" in (out / "report.md").read_text()
    summary = pd.read_csv(out / "summary.tsv", sep="\t")
    assert set(summary["decoder"]) == {"linear", "mlp[16]", "mlp[16,16]"}
    assert summary.loc[summary["decoder"] == "mlp[16]", "n_trials"].tolist() == [2, 2]
    trials = pd.read_csv(out / "trials.tsv", sep="\t")
    assert len(trials) == 2 + 2 * 2 * 2

    # the reference's linear numbers, recomputed independently from the same split: its
    # genes outnumber the training rows, so least squares would interpolate them (the
    # minimum-norm solution then depends on the CPU's rounding); it is ridge regression,
    # a well-conditioned problem, with the penalty the report records
    from genepanel.data import make_split
    from genepanel.io import read_matrix
    from genepanel.saved import load_model

    model = load_model(tmp / "run")
    data = read_matrix(path)
    split = make_split(data.shape[0], from_dict(model.meta["config"]).split, model.meta["seed"],
                       data.obs)
    ref_idx = np.sort(res.mapping.indices)
    assert len(ref_idx) + 1 >= len(split.train)
    row = trials[(trials["panel"] == "reference") & (trials["decoder"] == "linear")].iloc[0]
    assert row["linear_fit"] == "ridge" and row["ridge_lambda"] > 0
    cand_row = trials[(trials["panel"] == "candidate") & (trials["decoder"] == "linear")].iloc[0]
    assert cand_row["linear_fit"] == "gcv"  # 12 genes, ~40 training rows
    x = model.pre.transform(data.X[split.train]).astype(np.float64)
    mu = x.mean(0)
    xp = x[:, ref_idx] - mu[ref_idx]
    coef = np.linalg.solve(xp.T @ xp + row["ridge_lambda"] * np.eye(len(ref_idx)),
                           xp.T @ (x - mu))
    test = model.pre.transform(data.X[split.test]).astype(np.float64)
    pred = (test[:, ref_idx] - mu[ref_idx]) @ coef + mu
    assert row["mse_all"] == pytest.approx(np.mean(np.square(pred - test)), rel=1e-3)
    neither = np.ones(data.shape[1], bool)
    neither[ref_idx] = False
    neither[model.panel_index] = False
    assert row["mse_neither"] == pytest.approx(
        np.mean(np.square(pred - test)[:, neither]), rel=1e-3)
    r = pearson_per_gene(test[:, neither], pred[:, neither])
    assert row["pearson_mean_neither"] == pytest.approx(np.nanmean(r), rel=1e-3, abs=1e-4)
    assert "ridge" in (out / "report.md").read_text()

    # overlap and the sweep
    shared = set(model.panel_genes) & set(a.var_names[ref_idx])
    assert res.overlap["n"] == len(shared) and set(res.overlap["genes"]) == shared
    sweep = pd.read_csv(out / "sweep.tsv", sep="\t")
    assert sweep.loc[sweep["panel"] == "cae_sweep", "size"].tolist() == [4]
    assert "smallest_matching_size" in info["sweep_match"]


def test_compare_cli_refuses_bad_reference_and_existing_out(bladder_run, tmp_path):
    tmp, path, _ = bladder_run
    cli = CliRunner()
    ref = tmp_path / "ref.txt"
    ref.write_text("NOT_A_GENE\nALSO_NOT\n" + "\n".join(ad.read_h5ad(path).var_names[:1]))
    args = ["compare-landmarks", str(path), "--run", str(tmp / "run"), "--reference", str(ref),
            "--out", str(tmp_path / "c"), "--trials", "1", "--epochs", "2", "--mlp", "4", "-q"]
    r = cli.invoke(app, args)
    assert r.exit_code == 1
    assert "only 1 of 3 genes of ref.txt (33%)" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "c").exists() and not (tmp_path / "c.partial").exists()
    r = cli.invoke(app, [*args, "--min-found", "0.3"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "c" / "report.md").is_file()
    r = cli.invoke(app, [*args, "--min-found", "0.3"])
    assert r.exit_code == 2 and "already exists" in r.output
    r = cli.invoke(app, ["compare-landmarks", str(path), "--run", str(tmp_path / "nope"),
                         "--out", str(tmp_path / "d")])
    assert r.exit_code == 1 and "model folder" in r.output
    r = cli.invoke(app, [*args[:-1], "--trials", "0"])
    assert r.exit_code == 2 and "--trials" in r.output

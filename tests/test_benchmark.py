"""Baseline selectors (Laplacian score, PFA) and the ``genepanel benchmark`` command."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

from genepanel.baselines import (
    extra_trees_accuracy,
    knn_heat_graph,
    laplacian_panel,
    laplacian_score,
    pfa_panel,
)
from genepanel.cli import app
from genepanel.errors import DataError, UsageError
from genepanel.io import read_npz

runner = CliRunner()


# --------------------------------------------------------------------------- Laplacian score


def test_laplacian_score_matches_dense_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6))
    w = knn_heat_graph(x, n_neighbors=4)
    wd = w.toarray()
    assert np.allclose(wd, wd.T) and np.all(np.diag(wd) == 0)
    assert np.all((wd > 0).sum(axis=1) >= 4)
    dmat = np.diag(wd.sum(axis=1))
    lap = dmat - wd
    one = np.ones(len(x))
    expected = []
    for f in x.T:
        ft = f - (f @ dmat @ one) / (one @ dmat @ one) * one
        expected.append((ft @ lap @ ft) / (ft @ dmat @ ft))
    assert np.allclose(laplacian_score(x, graph=w), expected)


def test_laplacian_ranks_smooth_features_first():
    rng = np.random.default_rng(1)
    n = 300
    group = rng.integers(0, 3, size=n)
    centres = rng.normal(scale=6.0, size=(3, 4))
    smooth = centres[group] + 0.3 * rng.normal(size=(n, 4))  # cluster structure
    noise = rng.normal(size=(n, 6))  # unrelated to the neighbourhood graph
    const = np.full((n, 1), 2.5)
    x = np.concatenate([noise[:, :3], smooth, const, noise[:, 3:]], axis=1)
    score = laplacian_score(x)
    smooth_cols = [3, 4, 5, 6]
    assert np.isinf(score[7])
    assert score[smooth_cols].max() < np.delete(score, [*smooth_cols, 7]).min()
    assert laplacian_panel(x, 4).tolist() == smooth_cols


def test_knn_graph_handles_duplicate_rows():
    x = np.repeat(np.arange(10, dtype=float)[:, None], 2, axis=0)
    w = knn_heat_graph(x, n_neighbors=3)
    assert w.diagonal().sum() == 0
    assert np.all(np.diff(sp.csr_matrix(w).indptr) >= 3)


# --------------------------------------------------------------------------- PFA


def _clustered_features(n_groups=5, per_group=6, n=400, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, n_groups))
    cols, group_of = [], []
    for j in range(n_groups):
        for _ in range(per_group):
            cols.append(z[:, j] * rng.uniform(0.8, 1.2) + 0.15 * rng.normal(size=n))
            group_of.append(j)
    perm = rng.permutation(len(cols))
    x = np.stack(cols, axis=1)[:, perm]
    return x, np.asarray(group_of)[perm]


def test_pfa_picks_one_feature_per_cluster():
    x, group_of = _clustered_features()
    panel = pfa_panel(x, 5, seed=3)
    assert len(panel) == 5 and len(set(panel.tolist())) == 5
    assert sorted(group_of[panel].tolist()) == [0, 1, 2, 3, 4]


def test_pfa_skips_constant_features_and_fills_small_inputs():
    x, group_of = _clustered_features(n_groups=3, per_group=4)
    x = np.concatenate([np.zeros((len(x), 5)), x], axis=1)  # five constant features
    panel = pfa_panel(x, 3)
    assert panel.min() >= 5 and sorted(group_of[panel - 5].tolist()) == [0, 1, 2]
    tiny = np.concatenate([x[:, 5:7], np.zeros((len(x), 3))], axis=1)
    assert pfa_panel(tiny, 4).tolist() == [0, 1, 2, 3]  # two vary: constants fill the rest
    with pytest.raises(UsageError):
        pfa_panel(x, 0)


def test_extra_trees_accuracy_uses_the_panel():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=400)
    informative = y[:, None] + 0.1 * rng.normal(size=(400, 1))
    noise = rng.normal(size=(400, 1))
    good = extra_trees_accuracy(informative[:300], y[:300], informative[300:], y[300:])
    bad = extra_trees_accuracy(noise[:300], y[:300], noise[300:], y[300:])
    assert good > 0.95 and bad < 0.75


# --------------------------------------------------------------------------- input


def test_read_npz(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    path = tmp_path / "d.npz"
    np.savez(path, X=x, y=np.array([0, 1, 0, 1]), feature_names=np.array(["a", "b", "c"]),
             other=np.zeros(2))
    data = read_npz(path)
    assert data.genes == ["a", "b", "c"] and data.obs["y"].tolist() == [0, 1, 0, 1]
    assert "other" not in data.obs
    x[0, 0] = np.nan
    np.savez(path, X=x, feature_names=np.array(["a", "b", "c"]))
    with pytest.raises(DataError, match="NaN"):
        read_npz(path)
    with pytest.raises(DataError, match="not found"):
        read_npz(tmp_path / "missing.npz")


# --------------------------------------------------------------------------- command


def _drivers_and_followers(n=500, n_drivers=5, followers=9, noise=0.6, seed=0):
    """Each follower = weight · its driver + noise, so the drivers are the best panel."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, n_drivers))
    cols = [z]
    for j in range(n_drivers):
        w = rng.uniform(0.6, 1.0, size=followers) * rng.choice([-1, 1], size=followers)
        cols.append(z[:, [j]] * w + noise * rng.normal(size=(n, followers)))
    x = np.concatenate(cols, axis=1).astype(np.float32)
    perm = rng.permutation(x.shape[1])
    genes = [f"gene{i:03d}" for i in range(x.shape[1])]
    module = np.concatenate([np.arange(n_drivers), np.repeat(np.arange(n_drivers), followers)])
    return x[:, perm], genes, module[perm]


@pytest.fixture(scope="module")
def labelled_h5ad(tmp_path_factory):
    x, genes, module = _drivers_and_followers()
    a = ad.AnnData(x)
    a.var_names = genes
    driver = x[:, np.flatnonzero(module == 0)].mean(axis=1)
    a.obs["state"] = pd.Categorical(np.where(driver > 0, "high", "low"))
    a.obs["one"] = "same"
    path = tmp_path_factory.mktemp("bench") / "planted.h5ad"
    a.write_h5ad(path)
    return path, module


FAST = ["--epochs", "150", "--lr", "0.01", "--batch-size", "32", "--seed", "3", "-q"]


def test_benchmark_command_end_to_end(labelled_h5ad, tmp_path):
    path, module = labelled_h5ad
    out = tmp_path / "bench"
    res = runner.invoke(app, ["benchmark", str(path), "--k", "5", "--out", str(out),
                              "--accuracy-labels", "state", *FAST])
    assert res.exit_code == 0, res.output
    names = {p.name for p in out.iterdir()}
    assert {"benchmark.tsv", "benchmark.md", "benchmark.json", "benchmark.png",
            "panels.tsv"} <= names
    assert not (tmp_path / "bench.partial").exists()
    table = pd.read_csv(out / "benchmark.tsv", sep="\t").set_index("method")
    assert list(table.index) == ["cae", "cae_unrefined", "greedy", "topvar", "random", "hvg",
                                 "laplacian", "pfa", "pca"]
    mse = table["linear_test_mse"]
    rec = json.loads((out / "benchmark.json").read_text())
    assert mse["cae"] < min(rec["random_panel_test_mse"])
    assert mse["pca"] <= mse.drop("pca").min() + 1e-9
    assert table.loc[["cae", "greedy", "random", "hvg", "laplacian", "pfa"],
                     "accuracy"].between(0, 1).all()
    # the selector measures (nearly) every planted module once
    assert len(set(module[rec["panels"]["cae"]["indices"]].tolist())) >= 4
    assert rec["labels"]["column"] == "state" and len(rec["random_panel_test_mse"]) == 5
    md = (out / "benchmark.md").read_text()
    # 150 epochs of 11 steps stop at the cap: the table says so
    assert not rec["cae"]["converged"]
    assert "| concrete autoencoder + swap refinement (NOT CONVERGED) |" in md
    assert "ExtraTrees accuracy" in md
    assert (out / "benchmark.png").read_bytes()[:4] == b"\x89PNG"


def test_benchmark_without_cae_or_labels(labelled_h5ad, tmp_path):
    path, _ = labelled_h5ad
    out = tmp_path / "b"
    res = runner.invoke(app, ["benchmark", str(path), "--k", "5", "--out", str(out),
                              "--methods", "random,pfa,pca", "-q"])
    assert res.exit_code == 0, res.output
    table = pd.read_csv(out / "benchmark.tsv", sep="\t")
    assert table["method"].tolist() == ["random", "pfa", "pca"]
    assert table["accuracy"].isna().all()


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (["--accuracy-labels", "nope"], 1, "labels column 'nope' not found"),
        (["--accuracy-labels", "one"], 1, "at least two classes"),
        (["--methods", "cae,magic"], 2, "unknown method(s) magic"),
        (["--k", "500"], 2, "must be smaller than the number of genes"),
    ],
)
def test_benchmark_bad_input_is_one_line(labelled_h5ad, tmp_path, args, code, text):
    path, _ = labelled_h5ad
    out = tmp_path / "bad"
    res = runner.invoke(app, ["benchmark", str(path), "--k", "5", "--out", str(out),
                              *args, "-q"])
    assert res.exit_code == code
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and text in lines[0]
    assert "Traceback" not in res.output
    assert not out.exists() and not (tmp_path / "bad.partial").exists()


def test_benchmark_reports_seed_stability(labelled_h5ad, tmp_path):
    path, _ = labelled_h5ad
    out = tmp_path / "s"
    res = runner.invoke(app, ["benchmark", str(path), "--k", "5", "--out", str(out),
                              "--methods", "cae,greedy", "--seeds", "2", *FAST])
    assert res.exit_code == 0, res.output
    rec = json.loads((out / "benchmark.json").read_text())
    st = rec["stability"]
    assert st["seeds"] == [3, 4]
    for kind in ("cae", "cae_unrefined"):
        sets = [set(rec["panels"][n]["indices"]) for n in (kind, f"{kind}_seed1")]
        assert st[kind]["jaccard_min"] == pytest.approx(
            len(sets[0] & sets[1]) / len(sets[0] | sets[1]))
        assert len(st[kind]["test_mse"]) == 2 and st[kind]["test_mse_spread"] >= 0
    assert "Seed-to-seed stability" in (out / "benchmark.md").read_text()
    table = pd.read_csv(out / "benchmark.tsv", sep="\t")
    assert table["method"].tolist() == ["cae", "cae_unrefined", "greedy"]

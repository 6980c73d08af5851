"""Constraints (--include/--exclude/--candidates), restarts and several panel sizes."""

from __future__ import annotations

import fnmatch
import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from genepanel.api import select_panel
from genepanel.cli import app
from genepanel.config import SelectConfig
from genepanel.errors import UsageError
from genepanel.io import ExpressionData
from genepanel.saved import load_model
from tests.conftest import planted

FAST = {"train.learning_rate": 0.01, "train.batch_size": 32, "train.max_epochs": 60}


@pytest.fixture(scope="module")
def data():
    x, genes, drivers, module = planted(seed=3)
    return ExpressionData(x, genes, pd.DataFrame(index=range(len(x))), "planted"), drivers, module


def _cfg(**kw):
    return SelectConfig(k=5, seed=0).replace(**{**FAST, **kw})


def test_include_pins_genes_and_counts_towards_k(data):
    ed, drivers, module = data
    follower = next(g for i, g in enumerate(ed.genes) if g not in drivers and module[i] == 0)
    res = select_panel(ed, _cfg(include=[follower, drivers[1]]), evaluate_baselines=False)
    table = res.panel_table
    assert len(table) == 5 and table["gene"].is_unique
    assert table["gene"].tolist()[:2] == [follower, drivers[1]]
    assert table["fixed"].tolist() == [True, True, False, False, False]
    assert res.run["constraints"]["include"] == [follower, drivers[1]]
    # the pinned nodes never move and list no alternatives
    groups = res.groups[res.groups["node"] < 2]
    assert groups["selected"].all() and (groups["probability"] > 0.999).all()


def test_exclude_patterns_and_candidates_are_honoured(data):
    ed, _, _ = data
    res = select_panel(ed, _cfg(exclude=["gene00*", "gene01?"]), evaluate_baselines=False)
    chosen = res.panel_table["gene"].tolist()
    assert not [g for g in chosen if fnmatch.fnmatchcase(g, "gene00*")
                or fnmatch.fnmatchcase(g, "gene01?")]
    assert res.run["constraints"]["excluded_genes"] == 20
    res = select_panel(ed, _cfg(exclude=["zz*"], **{"train.max_epochs": 2}),
                       evaluate_baselines=False)
    assert res.run["constraints"]["exclude_patterns_matching_nothing"] == ["zz*"]
    cands = ed.genes[30:45]
    res = select_panel(ed, _cfg(candidates=cands), evaluate_baselines=False)
    assert set(res.panel_table["gene"]) <= set(cands)


def test_constraints_that_cannot_be_met(data):
    ed, _, _ = data
    with pytest.raises(UsageError, match="not in the data"):
        select_panel(ed, _cfg(include=["nope"]), evaluate_baselines=False)
    with pytest.raises(UsageError, match="raise --k"):
        select_panel(ed, _cfg(include=ed.genes[:6]), evaluate_baselines=False)
    with pytest.raises(UsageError, match="both name"):
        select_panel(ed, _cfg(include=["gene003"], exclude=["gene00*"]), evaluate_baselines=False)
    with pytest.raises(UsageError, match="only 3 genes are allowed"):
        select_panel(ed, _cfg(candidates=ed.genes[:3]), evaluate_baselines=False)


def test_include_from_file_via_cli(tmp_path, planted_h5ad):
    path, drivers = planted_h5ad
    listing = tmp_path / "vendor.txt"
    listing.write_text(f"# vendor panel\n{drivers[0]}\n{drivers[2]}\n")
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["select", str(path), "--k", "4", "--out", str(out),
                                   "--include", f"@{listing}", "--epochs", "20", "-q",
                                   "--no-baselines"])
    assert res.exit_code == 0, res.output
    panel = pd.read_csv(out / "panel.tsv", sep="\t")
    assert panel["gene"].tolist()[:2] == [drivers[0], drivers[2]]
    res = CliRunner().invoke(app, ["select", str(path), "--out", str(tmp_path / "x"),
                                   "--include", "@missing.txt"])
    assert res.exit_code == 2 and "not found" in res.stderr


def test_restarts_keep_the_best_and_report_agreement(data, tmp_path):
    ed, _, _ = data
    res = select_panel(ed, _cfg(**{"train.restarts": 3}), tmp_path / "r",
                       evaluate_baselines=False)
    st = res.stability["summary"]
    runs = pd.read_csv(tmp_path / "r" / "restarts.tsv", sep="\t")
    assert len(runs) == 3 and runs["kept"].sum() == 1
    assert runs.loc[runs["kept"], "val_mse"].item() == runs["val_mse"].min()
    assert runs["seed"].tolist() == [0, 1, 2]
    assert 0.0 <= st["jaccard_min"] <= st["jaccard_mean"] <= 1.0
    genes = pd.read_csv(tmp_path / "r" / "stability.tsv", sep="\t")
    every = set(genes.loc[genes["times_selected"] == 3, "gene"])
    assert every == set(st["genes_in_every_panel"])
    kept = runs.loc[runs["kept"], "genes"].item().split(",")
    # restarts.tsv lists the autoencoder's panels (before the swap refinement)
    assert kept == [res.genes[i] for i in res.cae_panel.indices]
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["restarts"]["kept_seed"] == run["seed"] == int(runs.loc[runs["kept"], "seed"].item())


def test_several_panel_sizes_in_one_run(planted_h5ad, tmp_path):
    path, _ = planted_h5ad
    out = tmp_path / "sizes"
    res = CliRunner().invoke(app, ["select", str(path), "--k", "3,6", "--out", str(out),
                                   "--epochs", "20", "--batch-size", "32", "-q"])
    assert res.exit_code == 0, res.output
    sizes = pd.read_csv(out / "sizes.tsv", sep="\t")
    assert sizes["k"].tolist() == [3, 6]
    assert (sizes["pca_bound_test_mse"].diff().dropna() < 0).all()  # more components, less error
    assert (out / "sizes.png").exists()
    for k in (3, 6):
        model = load_model(out / f"k{k}")
        assert len(model.panel_genes) == k
    bad = CliRunner().invoke(app, ["select", str(path), "--k", "3,x", "--out", str(tmp_path / "b")])
    assert bad.exit_code == 2 and "--k must be" in bad.stderr


def test_supervised_panel_predicts_labels(tmp_path):
    """Labels depend on one planted module only: a supervised panel of 2 measures it."""
    x, genes, drivers, module = planted(seed=9)
    rng = np.random.default_rng(0)
    driver = genes.index(drivers[2])
    z = x[:, driver]
    label = np.where(z > 0, "high", "low").astype(object)
    label[rng.choice(len(x), 20, replace=False)] = None  # unlabelled samples are allowed
    obs = pd.DataFrame({"state": label}, index=[f"c{i}" for i in range(len(x))])
    ed = ExpressionData(x, genes, obs, "planted")
    cfg = SelectConfig(k=2, seed=0, labels="state").replace(
        **{"train.learning_rate": 0.01, "train.batch_size": 32, "train.max_epochs": 80}
    )
    res = select_panel(ed, cfg, tmp_path / "sup")
    assert module[driver] in module[res.panel.indices]  # the panel measures the label's module
    assert res.metrics["trained_decoder_test_accuracy"] > 0.85
    trees = res.metrics["extra_trees_test_accuracy"]
    assert trees["cae"] > 0.85 and trees["cae"] > trees["random_mean"]
    model = load_model(tmp_path / "sup")
    assert model.label_classes == ["high", "low"]
    test = res.split.test
    xs = model.pre.transform(x[test])[:, model.panel_index]
    proba = model.predict_labels(xs)
    assert proba.shape == (len(test), 2)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)
    # The default label weight (0.5) refines the panel on genes and labels; the saved
    # decoder then predicts the labels with a logistic regression on the final panel.
    assert res.run["refinement"]["enabled"]
    assert "ridge" in res.run["refinement"]["objective"]  # few genes: the ridge objective
    known = label[test] != None  # noqa: E711 (object array)
    hits = np.array(model.label_classes)[proba.argmax(1)] == label[test]
    assert hits[known].mean() > 0.85
    assert model.predict(xs).shape == (len(test), len(genes))
    with pytest.raises(Exception, match="state"):
        select_panel(ed, cfg.replace(labels="nope"), evaluate_baselines=False)


def test_default_yaml_is_generated_from_the_dataclasses():
    import dataclasses
    from pathlib import Path

    import yaml

    from genepanel.config import _SECTIONS, OPTION_HELP, SelectConfig, default_yaml, from_dict

    fields = {f.name for f in dataclasses.fields(SelectConfig) if f.name not in _SECTIONS}
    fields |= {f"{s}.{f.name}" for s, cls in _SECTIONS.items() for f in dataclasses.fields(cls)}
    assert fields == set(OPTION_HELP), "every option needs one line of help in OPTION_HELP"
    text = (Path(__file__).resolve().parents[1] / "configs" / "default.yaml").read_text()
    assert text == default_yaml(), "configs/default.yaml drifted: run `make configs`"
    assert from_dict(yaml.safe_load(text)) == SelectConfig()

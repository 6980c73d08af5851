"""The ``genepanel select`` command: outputs, config handling and bad input."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from genepanel.cli import app
from tests.conftest import planted

runner = CliRunner()
FAST = ["--epochs", "30", "--batch-size", "32", "--lr", "0.01", "--seed", "1", "-q"]


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _one_line_error(result, code, pattern):
    assert result.exit_code == code, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    assert pattern in lines[0], lines[0]


def test_select_writes_every_output(planted_h5ad, tmp_path):
    path, _ = planted_h5ad
    out = tmp_path / "run"
    res = _run("select", path, "--k", 5, "--out", out, *FAST)
    assert res.exit_code == 0, res.output
    panel = pd.read_csv(out / "panel.tsv", sep="\t")
    assert list(panel.columns[:3]) == ["gene", "node", "probability"]
    assert len(panel) == 5 and panel["gene"].is_unique
    groups = pd.read_csv(out / "groups.tsv", sep="\t")
    assert (groups.groupby("node").size() == 3).all()
    assert groups.loc[groups["selected"], "gene"].tolist() == panel["gene"].tolist()
    run = json.loads((out / "run.json").read_text())
    assert run["data"]["n_samples"] == 500 and run["training"]["epochs_run"] <= 30
    for key in ("linear_refit_test_mse", "trained_decoder_test_mse", "hvg_panel_test_mse",
                "pca_bound_test_mse", "random_panel_test_mse"):
        assert key in run["metrics"]
    hist = pd.read_csv(out / "history.tsv", sep="\t")
    assert {"temperature", "mean_max_prob", "train_loss", "val_loss"} <= set(hist.columns)
    assert hist["temperature"].is_monotonic_decreasing
    assert (out / "history.png").stat().st_size > 1000
    model = json.loads((out / "model.json").read_text())
    assert model["panel_genes"] == panel["gene"].tolist()
    assert model["preprocess"]["kind"] == "none" and model["seed"] == 1
    assert "jax" in model["versions"]
    assert not (tmp_path / "run.partial").exists()


def test_config_file_and_flags_override(planted_h5ad, tmp_path):
    path, _ = planted_h5ad
    cfg = tmp_path / "c.yaml"
    cfg.write_text("k: 4\npreprocess: standardize\ntrain:\n  max_epochs: 5\n  batch_size: 16\n")
    out = tmp_path / "run"
    res = _run("select", path, "--config", cfg, "--out", out, "--epochs", 7, "-q",
               "--no-baselines")
    assert res.exit_code == 0, res.output
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["k"] == 4 and run["config"]["preprocess"] == "standardize"
    assert run["config"]["train"]["max_epochs"] == 7 and run["config"]["train"]["batch_size"] == 16
    assert "hvg_panel_test_mse" not in run["metrics"]


def test_existing_output_is_refused_then_overwritten(planted_h5ad, tmp_path):
    path, _ = planted_h5ad
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _one_line_error(_run("select", path, "--k", 3, "--out", out, *FAST), 2, "already exists")
    assert (out / "keep.txt").read_text() == "mine"
    # a folder genepanel did not write is never replaced, not even with --overwrite
    _one_line_error(_run("select", path, "--k", 3, "--out", out, *FAST, "--overwrite"), 2,
                    "genepanel did not write")
    assert (out / "keep.txt").read_text() == "mine"
    run = tmp_path / "run2"
    res = _run("select", path, "--k", 3, "--out", run, *FAST, "--no-baselines")
    assert res.exit_code == 0, res.output
    (run / "extra.txt").write_text("x")
    res = _run("select", path, "--k", 3, "--out", run, *FAST, "--overwrite", "--no-baselines")
    assert res.exit_code == 0, res.output
    assert not (run / "extra.txt").exists() and (run / "panel.tsv").exists()


def test_bad_inputs_give_one_line_and_exit_code(tmp_path, planted_h5ad):
    path, _ = planted_h5ad
    out = tmp_path / "o"
    _one_line_error(_run("select", tmp_path / "none.h5ad", "--out", out), 1, "not found")
    _one_line_error(_run("select", path, "--k", 0, "--out", out), 2, "--k must be")
    _one_line_error(_run("select", path, "--k", 50, "--out", out), 2, "smaller than the number")
    _one_line_error(_run("select", path, "--layer", "x", "--out", out), 1, "no layer 'x'")
    _one_line_error(_run("select", path, "--preprocess", "zscore", "--out", out), 2,
                    "--preprocess must be one of")
    _one_line_error(_run("select", path, "--batch-size", 0, "--out", out), 2, "--batch-size")
    bad_cfg = tmp_path / "c.yaml"
    bad_cfg.write_text("train:\n  epochs: 3\n")
    _one_line_error(_run("select", path, "--config", bad_cfg, "--out", out), 2,
                    "unknown config key(s) train.epochs")
    tiny = tmp_path / "tiny.h5ad"
    a = ad.AnnData(np.ones((2, 6), np.float32))
    a.var_names = [f"g{i}" for i in range(6)]
    a.write_h5ad(tiny)
    _one_line_error(_run("select", tiny, "--k", 2, "--out", out), 1, "too few")
    assert not out.exists() and not (tmp_path / "o.partial").exists()


def test_input_file_is_not_modified(planted_h5ad, tmp_path):
    path, _ = planted_h5ad
    before = path.read_bytes()
    res = _run("select", path, "--k", 3, "--out", tmp_path / "r", "--preprocess",
               "standardize", *FAST, "--no-baselines")
    assert res.exit_code == 0, res.output
    assert path.read_bytes() == before


def test_verbose_shows_traceback(tmp_path):
    res = _run("select", tmp_path / "none.h5ad", "--out", tmp_path / "o", "-v")
    assert res.exit_code == 1
    assert "Traceback" in res.stderr


@pytest.mark.parametrize("flag", ["--resume"])
def test_resume_without_partial_run(planted_h5ad, tmp_path, flag):
    path, _ = planted_h5ad
    _one_line_error(_run("select", path, "--out", tmp_path / "o", flag), 2, "no interrupted run")


def test_select_reads_npz(tmp_path):
    from tests.conftest import planted

    x, genes, _, _ = planted(seed=2)
    path = tmp_path / "set.npz"
    np.savez(path, X=x, feature_names=np.array(genes), y=np.arange(len(x)) % 3)
    out = tmp_path / "run"
    res = _run("select", path, "--k", 4, "--out", out, *FAST, "--no-baselines")
    assert res.exit_code == 0, res.output
    run = json.loads((out / "run.json").read_text())
    assert run["data"]["n_genes"] == len(genes)
    assert set(pd.read_csv(out / "panel.tsv", sep="\t")["gene"]) <= set(genes)


def test_sigterm_checkpoints_and_resume_finishes_the_same_run(planted_h5ad, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    path, _ = planted_h5ad
    args = ["select", str(path), "--k", "4", "--anneal-steps", "3000", "--seed", "2",
            "--no-baselines"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "genepanel", *args, "--out", str(tmp_path / "cut")]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stderr:  # one log line per epoch when stderr is not a terminal
        if line.startswith("epoch 20/"):
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 143, rest
    assert "resume with --resume" in rest
    assert (tmp_path / "cut.partial" / "checkpoints" / "state.msgpack").exists()
    assert not (tmp_path / "cut").exists()
    assert _run(*args, "--out", tmp_path / "cut", "--resume", "-q").exit_code == 0
    assert _run(*args, "--out", tmp_path / "full", "-q").exit_code == 0
    for name in ("panel.tsv", "history.tsv"):
        cut = pd.read_csv(tmp_path / "cut" / name, sep="\t")
        full = pd.read_csv(tmp_path / "full" / name, sep="\t")
        pd.testing.assert_frame_equal(cut.drop(columns="seconds", errors="ignore"),
                                      full.drop(columns="seconds", errors="ignore"))


def test_refinement_is_reported_and_the_saved_decoder_reads_the_final_panel(planted_h5ad,
                                                                             tmp_path):
    from genepanel.saved import load_model

    path, _ = planted_h5ad
    out = tmp_path / "run"
    res = runner.invoke(app, [str(a) for a in ("select", path, "--k", 5, "--out", out,
                                               "--epochs", 5, "--batch-size", 32, "--seed", 1)])
    assert res.exit_code == 0, res.output
    run = json.loads((out / "run.json").read_text())
    ref, m = run["refinement"], run["metrics"]
    assert ref["enabled"] and ref["train_refit_mse_final"] <= ref["train_refit_mse_cae"]
    assert "cae_linear_refit_test_mse" in m and "greedy_panel_test_mse" in m
    assert "topvar_panel_test_mse" in m and "baselines:" in res.output
    from genepanel.evaluate import PENALTY_GRID  # the refit's GCV penalty is reported

    assert m["linear_refit_penalty"]["alpha"] in PENALTY_GRID
    panel = pd.read_csv(out / "panel.tsv", sep="\t")
    assert sorted(panel["gene"]) == sorted(run["panels"]["cae"]["genes"])
    assert int(panel["refined"].sum()) == ref["genes_replaced"]
    model = load_model(out)
    assert model.panel_genes == panel["gene"].tolist()
    x = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
    if ref["genes_replaced"]:  # the saved decoder is the final panel's refit
        assert np.allclose(model.predict(x), model.predict(x, decoder="linear"), atol=1e-5)
        assert m["trained_decoder_test_mse"] == m["linear_refit_test_mse"]
    beaten = m["baselines_better_than_panel"]
    assert ("beat this panel" in res.output) == bool(beaten)
    if ref["genes_replaced"]:
        # a replaced node's selector probability is not reported for its new gene, and
        # groups.tsv lists, per panel gene, the genes that replace it at the least cost
        assert (panel["probability"].isna() == panel["refined"]).all()
        groups = pd.read_csv(out / "groups.tsv", sep="\t")
        _, genes, drivers, modules = planted()
        module = dict(zip(genes, modules, strict=True))
        assert sorted(panel["gene"]) == drivers  # the swap optimum measures the drivers
        for _, g in groups.groupby("node"):
            cost = g["refit_error_increase"].to_numpy()
            assert g["selected"].iloc[0] and cost[0] == 0 and (np.diff(cost) >= 0).all()
            best_alt = g["gene"].iloc[1]  # a follower of the same hidden driver
            assert module[best_alt] == module[g["panel_gene"].iloc[0]]

    out2 = tmp_path / "plain"
    res = _run("select", path, "--k", 5, "--out", out2, "--no-refine", *FAST)
    assert res.exit_code == 0, res.output
    run = json.loads((out2 / "run.json").read_text())
    assert not run["refinement"]["enabled"] and not pd.read_csv(
        out2 / "panel.tsv", sep="\t")["refined"].any()
    assert run["metrics"]["cae_linear_refit_test_mse"] == run["metrics"]["linear_refit_test_mse"]

"""compare-landmarks on synthetic data with planted landmark genes (no ../shared/data needed).

Planted structure (tests/conftest.py): a few driver genes, each followed by noisy genes.
Some followers carry real L1000 landmark symbols, so the default reference (the bundled
landmark table) maps onto them. A panel of the drivers must impute the genes in neither
panel better than the landmark followers do.
"""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from genepanel.api import select_panel
from genepanel.cli import app
from genepanel.compare import CompareConfig, compare_landmarks
from genepanel.config import SelectConfig
from genepanel.errors import DataError
from genepanel.landmarks import load_landmarks
from tests.conftest import planted

N_DRIVERS = 5


@pytest.fixture(scope="module")
def planted_landmarks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cmp_syn")
    x, genes, drivers, modules = planted(n=400, n_drivers=N_DRIVERS, followers=9, seed=3)
    symbols = list(load_landmarks()["symbol"])
    # two followers of every driver get landmark symbols: the planted "landmarks"
    names, used, landmark_idx = list(genes), 0, []
    for j in range(N_DRIVERS):
        followers = [i for i in np.flatnonzero(modules == j) if genes[i] not in drivers][:2]
        for i in followers:
            names[i] = symbols[used]
            used += 1
            landmark_idx.append(int(i))
    a = ad.AnnData(x)
    a.var_names = names
    path = tmp / "planted_landmarks.h5ad"
    a.write_h5ad(path)
    driver_idx = sorted(genes.index(g) for g in drivers)
    return tmp, path, names, driver_idx, sorted(landmark_idx)


def _panel_run(tmp, path, genes_wanted, name):
    """A select run whose panel is forced to ``genes_wanted`` (via --candidates)."""
    cfg = SelectConfig(k=len(genes_wanted), candidates=tuple(genes_wanted),
                       train={"anneal_steps": 1500})
    select_panel(path, cfg, tmp / name, evaluate_baselines=False)
    return tmp / name


def test_driver_panel_beats_planted_landmarks(planted_landmarks):
    tmp, path, names, driver_idx, landmark_idx = planted_landmarks
    run = _panel_run(tmp, path, [names[i] for i in driver_idx], "drivers")
    cfg = CompareConfig(mlp_hidden=((16,),), trials=1, epochs=30, patience=5, batch_size=32,
                        min_found=0.005, sweep=True, sweep_sizes=(3, 5), sweep_epochs=20)
    res = compare_landmarks(path, run, tmp / "cmp", config=cfg)
    assert res.mapping.n_found == len(landmark_idx)
    assert sorted(res.mapping.indices) == landmark_idx
    assert res.overlap["n"] == 0
    lin = res.summary[res.summary["decoder"] == "linear"].set_index("panel")
    # drivers: the noise of the imputed genes only; landmark followers add their own noise
    cand, ref = lin.loc["candidate", "mse_neither_mean"], lin.loc["reference", "mse_neither_mean"]
    assert cand < 0.85 * ref
    assert set(res.summary["decoder"]) >= {"linear", "mlp[16]"}
    assert list(res.sweep[res.sweep["panel"] == "cae_sweep"]["size"]) == [3, 5]
    # baselines at every swept size, scored the same way (linear refit, same rows)
    sweep = pd.read_csv(tmp / "cmp" / "sweep.tsv", sep="\t")
    assert "seconds" in sweep.columns
    for name in ("greedy", "topvar"):
        rows = sweep[sweep["panel"] == name]
        assert list(rows["size"]) == [3, 5], name
        assert np.isfinite(rows["mse_all_linear"]).all() and (rows["seconds"] >= 0).all()
        assert (rows["linear_fit"] == "gcv").all()
    ref_mse = float(sweep.loc[sweep["panel"] == "reference", "mse_all_linear"].iloc[0])
    greedy = sweep[sweep["panel"] == "greedy"].set_index("size")
    assert greedy.loc[N_DRIVERS, "mse_all_linear"] < ref_mse  # greedy finds the drivers
    assert greedy.loc[N_DRIVERS, "overlap_with_reference"] == 0
    assert isinstance(res.info["sweep_match"]["baselines"], list)
    report = (tmp / "cmp" / "report.md").read_text()
    assert "| greedy | 5 |" in report and "| topvar | 3 |" in report
    assert "counts CAE panels only" in report
    info = json.loads((tmp / "cmp" / "comparison.json").read_text())
    assert info["n_genes_neither"] == len(names) - N_DRIVERS - len(landmark_idx)
    for f in ("summary.tsv", "trials.tsv", "per_gene.tsv", "report.md", "sweep.tsv"):
        assert (tmp / "cmp" / f).stat().st_size > 0, f
    per_gene = pd.read_csv(tmp / "cmp" / "per_gene.tsv", sep="\t")
    assert per_gene["in_reference"].sum() == len(landmark_idx)
    assert "linear" in (tmp / "cmp" / "report.md").read_text()


def test_too_few_landmarks_refused_and_cli_reference_file(planted_landmarks, tmp_path):
    tmp, path, names, driver_idx, landmark_idx = planted_landmarks
    run = tmp / "drivers"
    if not run.exists():
        run = _panel_run(tmp, path, [names[i] for i in driver_idx], "drivers")
    with pytest.raises(DataError, match="L1000 landmarks"):
        compare_landmarks(path, run, None, config=CompareConfig(trials=1, epochs=2))
    ref = tmp_path / "ref.txt"
    ref.write_text("\n".join(names[i] for i in landmark_idx) + "\n")
    out = tmp_path / "cli_cmp"
    r = CliRunner().invoke(app, ["compare-landmarks", str(path), "--run", str(run),
                                 "--reference", str(ref), "--out", str(out), "--trials", "1",
                                 "--mlp", "8", "--epochs", "5", "-q"])
    assert r.exit_code == 0, r.output
    summary = pd.read_csv(out / "summary.tsv", sep="\t")
    assert set(summary["panel"]) == {"candidate", "reference"}
    r = CliRunner().invoke(app, ["compare-landmarks", str(path), "--panel", str(run),
                                 "--reference", str(ref), "--out", str(tmp_path / "old"),
                                 "--trials", "1", "--mlp", "8", "--epochs", "5", "-q"])
    assert r.exit_code == 0 and "--panel is deprecated" in r.output  # hidden 0.1 alias


def test_sweep_baselines_on_an_unconstrained_run(planted_landmarks):
    """Greedy chooses among every gene (the run has no constraints) and beats the reference."""
    tmp, path = planted_landmarks[:2]
    cfg = SelectConfig(k=N_DRIVERS, train={"anneal_steps": 300})
    select_panel(path, cfg, tmp / "free", evaluate_baselines=False)
    cmp = CompareConfig(mlp_hidden=(), trials=1, min_found=0.005, sweep=True,
                        sweep_sizes=(2, N_DRIVERS), sweep_epochs=10)
    res = compare_landmarks(path, tmp / "free", tmp / "cmp_free", config=cmp)
    sweep = res.sweep
    ref_mse = float(sweep.loc[sweep["panel"] == "reference", "mse_all_linear"].iloc[0])
    greedy = sweep[sweep["panel"] == "greedy"].set_index("size")
    topvar = sweep[sweep["panel"] == "topvar"].set_index("size")
    assert list(greedy.index) == list(topvar.index) == [2, N_DRIVERS]
    assert np.isfinite(greedy["mse_all_linear"]).all()
    assert np.isfinite(topvar["mse_all_linear"]).all()
    # the drivers: only the followers' own noise is left, below the landmark followers'
    assert greedy.loc[N_DRIVERS, "mse_all_linear"] < ref_mse
    assert greedy.loc[2, "mse_all_linear"] > greedy.loc[N_DRIVERS, "mse_all_linear"]
    # the greedy panel reaches the reference at N_DRIVERS genes: said in the report
    notes = res.info["sweep_match"]["baselines"]
    cae = sweep[sweep["panel"] == "cae_sweep"].set_index("size")
    cae_k = res.info["sweep_match"]["smallest_matching_size"]
    if cae_k is None or cae_k > N_DRIVERS:
        assert any("greedy panel reaches" in n for n in notes), notes
    if greedy.loc[N_DRIVERS, "mse_all_linear"] < cae.loc[N_DRIVERS, "mse_all_linear"]:
        assert any("greedy panel has a lower" in n for n in notes), notes
    report = (tmp / "cmp_free" / "report.md").read_text()
    for n in notes:
        assert n in report
    assert (tmp / "cmp_free" / "sweep.png").stat().st_size > 0


def test_ridge_guard_in_memory_run_and_extra_genes(planted_landmarks):
    """Fewer training rows than panel genes: ridge, never interpolation; said in the headline."""
    from genepanel.io import ExpressionData

    _, path, names, _, landmark_idx = planted_landmarks
    x = np.asarray(ad.read_h5ad(path).X[:40])
    data = ExpressionData(x, list(names), pd.DataFrame(index=range(40)), "first 40 rows")
    sel = select_panel(data, SelectConfig(k=30, train={"anneal_steps": 50, "max_epochs": 5}),
                       evaluate_baselines=False)
    # one extra gene the run never saw: dropped before the comparison
    wide = ExpressionData(np.concatenate([x, x[:, :1]], axis=1), [*names, "EXTRA"],
                          data.obs, "wide")
    cfg = CompareConfig(mlp_hidden=(), trials=1, sweep=True,
                        sweep_sizes=(35,), sweep_epochs=3)
    res = compare_landmarks(wide, sel.model, None, config=cfg,
                            reference=[names[i] for i in landmark_idx])
    assert res.info["panel_run"] == "in memory" and res.info["n_genes"] == len(names)
    lin = res.summary[res.summary["decoder"] == "linear"].set_index("panel")
    assert lin.loc["candidate", "fit"] == "ridge" and lin.loc["reference", "fit"] == "gcv"
    trials = res.trials[res.trials["decoder"] == "linear"].set_index("panel")
    assert trials.loc["candidate", "ridge_alpha"] > 0
    assert np.isfinite(lin.loc["candidate", "mse_all_mean"])
    assert any("candidate: ridge" in line for line in res.headline())
    cae = res.sweep[res.sweep["panel"] == "cae_sweep"]
    assert list(cae["linear_fit"]) == ["ridge"]
    assert any("35 genes: at least as many genes" in e for e in res.info["sweep_match"]["excluded"])

"""Whole-transcriptome paths: candidate prefilter, constant genes, unconverged wording."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from genepanel.api import select_panel
from genepanel.config import SelectConfig
from genepanel.constraints import MASKED_LOGIT
from genepanel.io import ExpressionData
from genepanel.prefilter import candidate_columns
from tests.conftest import planted

N_PLANTED = 50  # planted(): 5 drivers + 45 followers


def _wide(seed: int = 0) -> tuple[ExpressionData, np.ndarray]:
    """Planted genes, then 100 low-variance noise genes and 20 genes that are always 0."""
    x, genes, _, cluster = planted(seed=seed)
    rng = np.random.default_rng(seed)
    noise = 0.1 * rng.normal(size=(len(x), 100)).astype(np.float32)
    x = np.concatenate([x, noise, np.zeros((len(x), 20), np.float32)], axis=1)
    names = genes + [f"noise{i:03d}" for i in range(100)] + [f"zero{i:02d}" for i in range(20)]
    data = ExpressionData(x, names, pd.DataFrame(index=range(len(x))), "wide")
    return data, cluster


def _cfg(**changes) -> SelectConfig:
    base = {"train.learning_rate": 0.01, "train.batch_size": 32, "train.max_epochs": 30,
            "train.prefilter": 60}
    return SelectConfig(k=5, seed=3).replace(**{**base, **changes})


def test_candidate_columns_keep_top_variance_allowed_and_included():
    data, _ = _wide()
    from genepanel.data import Preprocessor

    rows = np.arange(400)
    pre = Preprocessor().fit(data, rows)
    allowed = np.ones(data.shape[1], bool)
    allowed[:3] = False
    pf = candidate_columns(data, pre, rows, 60, allowed=allowed, include=(160,))
    var = data.X[rows].var(axis=0)
    expect = np.argsort(-np.where(allowed, var, -np.inf), kind="stable")[:60]
    np.testing.assert_array_equal(pf.columns, np.union1d(expect, [160]))
    assert pf.report["candidates"] == 60 and pf.report["of_allowed_genes"] == 167
    assert candidate_columns(data, pre, rows, 0) is None
    assert candidate_columns(data, pre, rows, 1000) is None


def test_prefiltered_run_resumes_exactly_and_reports(tmp_path):
    from genepanel.train import Interrupted

    data, _ = _wide(seed=5)
    cfg = _cfg(**{"train.checkpoint_every": 7})
    full = select_panel(data, cfg, tmp_path / "full", evaluate_baselines=False)
    tr = full.run["training"]
    # max(60, 10 k) = 60 candidates of 170 genes; the 20 zero genes skip the decoder
    assert tr["candidate_genes"] == 60 and tr["prefilter"]["candidates"] == 60
    assert tr["constant_genes"] == 20
    logits = np.asarray(full.fit.params["selector"]["logits"])
    assert logits.shape == (5, 170)
    assert (logits[:, 150:] == MASKED_LOGIT).all()  # zero genes were never candidates
    assert set(full.panel.indices) <= set(np.flatnonzero((logits > MASKED_LOGIT).any(0)))
    out = full.fit.params["decoder"]["out"]
    assert out["kernel"].shape[-1] == 170
    assert (out["kernel"][:, 150:] == 0).all() and (out["bias"][150:] == 0).all()
    assert full.fit.compilations == {"epoch": 1, "step": 0, "eval": 1}
    with pytest.raises(Interrupted):
        select_panel(data, cfg, tmp_path / "cut", evaluate_baselines=False, stop_after_epochs=11)
    resumed = select_panel(data, cfg, tmp_path / "cut", resume=True, evaluate_baselines=False)
    np.testing.assert_array_equal(logits, resumed.fit.params["selector"]["logits"])
    assert full.metrics == resumed.metrics
    # the trained decoder's test error is computed over all 170 genes
    assert full.metrics["trained_decoder_test_mse"] > 0


def test_prefilter_off_sees_every_gene():
    data, _ = _wide(seed=2)
    res = select_panel(data, _cfg(**{"train.prefilter": 0, "train.max_epochs": 3}),
                       evaluate_baselines=False)
    assert res.run["training"]["candidate_genes"] == 170
    assert res.run["training"]["prefilter"] is None


def test_unconverged_run_says_so_and_what_to_change():
    data, _ = _wide(seed=1)
    res = select_panel(data, _cfg(**{"train.max_epochs": 2}), evaluate_baselines=False)
    tr = res.run["training"]
    assert not tr["converged"]
    assert tr["status"].startswith("NOT CONVERGED: stopped at the cap after 2 epochs")
    assert "drop --epochs" in tr["status"] and "--retry" in tr["status"]
    res = select_panel(data, _cfg(**{"train.max_epochs": None, "train.anneal_steps": 30}),
                       evaluate_baselines=False)
    assert "raise --anneal-steps (now 30; try 60)" in res.run["training"]["status"]


DEVICE_SCRIPT = """
import json, sys
import numpy as np, jax
from genepanel.api import select_panel
from tests.test_scale import _cfg, _wide
data, _ = _wide(seed=6)
# sharpen: its penalty acts from epoch 11 on (T <= 10 TB) and must shard like the loss
cfg = _cfg(**{"train.max_epochs": 15, "train.device_memory_budget_gb": float(sys.argv[1]),
              "train.sharpen": 0.01})
res = select_panel(data, cfg, evaluate_baselines=False)
print(json.dumps({"devices": jax.device_count(), "panel": res.panel.indices.tolist(),
    "candidates": res.run["training"]["candidate_genes"],
    "logits": np.asarray(res.fit.params["selector"]["logits"]).ravel()[::11].tolist(),
    "loss": [h["train_loss"] for h in res.fit.history],
    "mse": res.metrics["trained_decoder_test_mse"]}))
"""


@pytest.mark.parametrize("budget", [2.0, 0.0], ids=["device-path", "streamed-path"])
def test_prefiltered_run_on_four_fake_devices_equals_one(budget):
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    def run(n: int) -> dict:
        env = dict(os.environ, JAX_PLATFORMS="cpu",
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
        out = subprocess.run([sys.executable, "-c", DEVICE_SCRIPT, str(budget)], cwd=ROOT,
                             env=env, capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    one, four = run(1), run(4)
    assert one["devices"] == 1 and four["devices"] == 4
    assert one["candidates"] == four["candidates"] == 60
    assert one["panel"] == four["panel"]
    np.testing.assert_allclose(one["logits"], four["logits"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(one["loss"], four["loss"], rtol=1e-4)
    np.testing.assert_allclose(one["mse"], four["mse"], rtol=1e-4)

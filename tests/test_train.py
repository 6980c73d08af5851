"""Training behaviour: planted structure, devices, resume, determinism, compilation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from genepanel.api import select_panel
from genepanel.config import SelectConfig
from genepanel.io import ExpressionData
from genepanel.train import exclude_held_genes, resolve_collisions
from tests.conftest import ROOT, planted

FAST = {"train.learning_rate": 0.01, "train.batch_size": 32, "train.max_epochs": 150}


def _data(**kw) -> tuple[ExpressionData, list[str]]:
    import pandas as pd

    x, genes, drivers, _ = planted(**kw)
    return ExpressionData(x, genes, pd.DataFrame(index=range(len(x))), "planted"), drivers


def _cfg(**changes) -> SelectConfig:
    return SelectConfig(k=5, seed=3).replace(**{**FAST, **changes})


def test_planted_structure_is_recovered():
    import pandas as pd

    x, genes, drivers, cluster = planted()
    data = ExpressionData(x, genes, pd.DataFrame(index=range(len(x))), "planted")
    res = select_panel(data, _cfg(**{"train.max_epochs": 300}), evaluate_baselines=True)
    chosen = res.panel.indices
    # one node per hidden driver: every planted module is measured exactly once ...
    assert sorted(cluster[chosen]) == list(range(5))
    # ... and mostly by the driver itself, the noise-free member of its module
    assert len(set(res.panel_table["gene"]) & set(drivers)) >= 3
    m = res.metrics
    assert m["linear_refit_test_mse"] < m["random_panel_test_mse"]["min"]
    assert m["linear_refit_test_mse"] < m["hvg_panel_test_mse"]
    assert m["linear_refit_test_mse"] >= m["pca_bound_test_mse"]


def test_same_seed_same_panel_and_different_seed_runs():
    data, _ = _data(seed=1)
    a = select_panel(data, _cfg(**{"train.max_epochs": 40}), evaluate_baselines=False)
    b = select_panel(data, _cfg(**{"train.max_epochs": 40}), evaluate_baselines=False)
    np.testing.assert_array_equal(a.panel.indices, b.panel.indices)
    np.testing.assert_array_equal(
        a.fit.params["selector"]["logits"], b.fit.params["selector"]["logits"]
    )
    assert [h["train_loss"] for h in a.fit.history] == [h["train_loss"] for h in b.fit.history]


def test_streamed_path_equals_device_path():
    data, _ = _data(seed=2)
    cfg = _cfg(**{"train.max_epochs": 20})
    fast = select_panel(data, cfg, evaluate_baselines=False)
    streamed = select_panel(data, cfg.replace(**{"train.device_memory_budget_gb": 0.0}),
                            evaluate_baselines=False)
    assert fast.fit.data_placement == "device" and streamed.fit.data_placement == "streamed"
    np.testing.assert_allclose(
        fast.fit.params["selector"]["logits"], streamed.fit.params["selector"]["logits"],
        rtol=1e-4, atol=1e-5,
    )


def test_no_recompilation_across_epochs():
    data, _ = _data(seed=4)
    res = select_panel(data, _cfg(**{"train.max_epochs": 12}), evaluate_baselines=False)
    assert res.fit.epochs_run == 12
    assert res.fit.compilations["epoch"] == 1
    assert res.fit.compilations["eval"] == 1
    streamed = select_panel(
        data, _cfg(**{"train.max_epochs": 5, "train.device_memory_budget_gb": 0.0}),
        evaluate_baselines=False,
    )
    assert streamed.fit.compilations["step"] == 1


@pytest.mark.parametrize("sharpen", [0.0, 0.01], ids=["default", "sharpen"])
def test_resume_equals_uninterrupted(tmp_path, sharpen):
    from genepanel.train import Interrupted

    data, _ = _data(seed=5)
    # with sharpen the penalty acts from epoch 21 on (T <= 10 TB), after the resume
    cfg = _cfg(**{"train.max_epochs": 30, "train.checkpoint_every": 7,
                  "train.sharpen": sharpen})
    full = select_panel(data, cfg, tmp_path / "full", evaluate_baselines=False)
    with pytest.raises(Interrupted, match="resume"):
        select_panel(data, cfg, tmp_path / "cut", evaluate_baselines=False, stop_after_epochs=11)
    assert not (tmp_path / "cut").exists()
    assert (tmp_path / "cut.partial" / "checkpoints" / "state.msgpack").exists()
    resumed = select_panel(data, cfg, tmp_path / "cut", resume=True, evaluate_baselines=False)
    np.testing.assert_array_equal(
        full.fit.params["selector"]["logits"], resumed.fit.params["selector"]["logits"]
    )
    assert full.metrics == resumed.metrics
    assert [h["train_loss"] for h in full.fit.history] == [
        h["train_loss"] for h in resumed.fit.history
    ]
    assert (tmp_path / "cut" / "panel.tsv").read_text() == (
        tmp_path / "full" / "panel.tsv"
    ).read_text()
    assert not (tmp_path / "cut.partial").exists()


def test_resolve_pushes_less_confident_duplicate_away():
    logits = np.full((3, 6), -5.0, np.float32)
    logits[0, 2] = 5.0  # confident on gene 2
    logits[1, 2] = 3.0  # less confident, also gene 2, next best gene 4
    logits[1, 4] = 2.0
    logits[2, 0] = 4.0
    new, n = resolve_collisions(logits, np.float32(0.2), np.bool_(False))
    new = np.asarray(new)
    assert int(n) == 1
    assert new[1].argmax() == 4
    np.testing.assert_array_equal(new[0], logits[0])
    np.testing.assert_array_equal(new[2], logits[2])


def test_late_push_steers_the_node_off_genes_other_nodes_hold():
    # Node 2 collides with node 0 on gene 0; its next best gene (1) is node 1's, the one
    # after that (5) is free. Early in the anneal the push leaves it on gene 1 (a
    # collision again at the next check); in the sharpening phase it lands on gene 5.
    logits = np.full((3, 6), -5.0, np.float32)
    logits[0, 0], logits[1, 1] = 6.0, 6.0
    logits[2, 0], logits[2, 1], logits[2, 5] = 4.0, 3.0, 2.0
    early, n_early = resolve_collisions(logits, np.float32(0.2), np.bool_(False))
    late, n_late = resolve_collisions(logits, np.float32(0.2), np.bool_(True))
    assert int(n_early) == int(n_late) == 1
    assert np.asarray(early)[2].argmax() == 1
    assert np.asarray(late)[2].argmax() == 5
    for new in (early, late):  # the nodes that were not pushed keep their logits
        np.testing.assert_array_equal(np.asarray(new)[:2], logits[:2])
    assert exclude_held_genes(0.1, 0.01) and not exclude_held_genes(0.11, 0.01)


DEVICE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np, pandas as pd, jax
    from genepanel.api import select_panel
    from genepanel.config import SelectConfig
    from genepanel.io import ExpressionData
    from tests.conftest import planted
    x, genes, _, _ = planted(seed=6)
    data = ExpressionData(x, genes, pd.DataFrame(index=range(len(x))), "planted")
    cfg = SelectConfig(k=5, seed=3).replace(**{"train.learning_rate": 0.01,
          "train.batch_size": 32, "train.max_epochs": 25,
          "train.device_memory_budget_gb": float(sys.argv[1])})
    res = select_panel(data, cfg, evaluate_baselines=False)
    print(json.dumps({"devices": jax.device_count(), "path": res.fit.data_placement,
        "panel": res.panel.indices.tolist(),
        "logits": np.asarray(res.fit.params["selector"]["logits"]).ravel()[::7].tolist(),
        "loss": [h["train_loss"] for h in res.fit.history]}))
    """
)


def _run_devices(n: int, budget: float) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run(
        [sys.executable, "-c", DEVICE_SCRIPT, str(budget)], cwd=ROOT, env=env,
        capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("budget", [2.0, 0.0], ids=["device-path", "streamed-path"])
def test_four_fake_devices_equal_one(budget):
    one = _run_devices(1, budget)
    four = _run_devices(4, budget)
    assert one["devices"] == 1 and four["devices"] == 4
    assert one["panel"] == four["panel"]
    np.testing.assert_allclose(one["logits"], four["logits"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(one["loss"], four["loss"], rtol=1e-4)

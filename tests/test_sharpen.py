"""The sharpening penalty (``train.sharpen``, on by default): modules of near-identical genes."""

from __future__ import annotations

import numpy as np
import pandas as pd

from genepanel.api import select_panel
from genepanel.config import SelectConfig
from genepanel.io import ExpressionData


def _modules(n: int = 400, m: int = 4, size: int = 12, seed: int = 0):
    """``m`` modules of ``size`` genes, each ``w · z + noise`` of one latent ``z`` (no
    noise-free member, so the members are nearly interchangeable), then 40 noise genes."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, m))
    w = rng.uniform(0.6, 1.4, size=m * size)
    x = np.concatenate([np.repeat(z, size, axis=1) * w + 0.6 * rng.normal(size=(n, m * size)),
                        0.3 * rng.normal(size=(n, 40))], axis=1).astype(np.float32)
    module = np.concatenate([np.repeat(np.arange(m), size), np.full(40, -1)])
    genes = [f"g{i:03d}" for i in range(x.shape[1])]
    return ExpressionData(x, genes, pd.DataFrame(index=range(n)), "modules"), module


def test_sharpen_converges_on_interchangeable_module_genes():
    # 10,000 steps: the default ends with its nodes split among members of their modules
    # (mean max probability 0.82-0.86 over seeds 0-2 when this test was written); with
    # the penalty every node settles (8.3k-8.6k steps), each module measured once.
    data, module = _modules(seed=0)
    cfg = SelectConfig(k=4, seed=0, refine=False).replace(
        **{"train.anneal_steps": 10_000, "train.batch_size": 8})
    runs = {}
    for sharpen in (0.0, 0.01):
        res = select_panel(data, cfg.replace(**{"train.sharpen": sharpen}),
                           evaluate_baselines=False)
        runs[sharpen] = res
        assert sorted(module[res.panel.indices]) == [0, 1, 2, 3]
    base, sharp = runs[0.0].run["training"], runs[0.01].run["training"]
    cap = base["epochs_run"]
    assert not base["converged"] and base["status"].startswith("NOT CONVERGED")
    assert sharp["converged"] and sharp["reassigned_at_extraction"] == 0
    assert sharp["epochs_run"] < cap


def test_sharpen_penalty_is_off_above_ten_tb_and_pulls_towards_the_leader():
    import jax
    import jax.numpy as jnp

    from genepanel.constraints import MASKED_LOGIT
    from genepanel.train import sharpen_penalty

    logits = jnp.array([[2.0, 1.0, 0.0, MASKED_LOGIT], [0.0, 0.0, 0.0, 0.0]])
    for temp in (10.0, 1.0, 0.11):  # off: exactly zero, and so is its gradient
        assert float(sharpen_penalty(logits, jnp.float32(temp), 0.01, 0.01)) == 0.0
        grad = jax.grad(sharpen_penalty)(logits, jnp.float32(temp), 0.01, 0.01)
        assert not np.asarray(grad).any()
    grad = np.asarray(jax.grad(sharpen_penalty)(logits, jnp.float32(0.1), 0.01, 0.01))
    assert np.isfinite(grad).all()
    # a descent step raises the leader's logit and lowers the others'; a uniform node
    # and a masked gene feel no pull
    assert grad[0, 0] < 0 < grad[0, 2] and grad[0, 3] == 0
    np.testing.assert_allclose(grad[1], 0.0, atol=1e-7)


def test_sharpen_must_not_be_negative():
    import pytest

    from genepanel.errors import UsageError

    with pytest.raises(UsageError, match="--sharpen must be ≥ 0"):
        SelectConfig(train={"sharpen": -0.1})


def test_unconverged_note_suggests_sharpen_only_when_nearly_settled():
    from genepanel.train import FitResult, convergence_note

    def note(p: float, sharpen: float = 0.0) -> str:
        res = FitResult(params={}, history=[{"mean_max_prob": p}], converged=False,
                        stop_epoch=None, epochs_run=100, collisions=0, attempts=1,
                        data_placement="device", batch_size=16, steps_per_epoch=10,
                        n_devices=1)
        cfg = SelectConfig(train={"sharpen": sharpen}).train
        return convergence_note(res, cfg, n_genes=100, n_candidates=100)

    assert "try --sharpen 0.01" in note(0.97)
    assert "--sharpen" not in note(0.5)  # far from settled: more steps, not sharpening
    assert "--sharpen" not in note(0.97, sharpen=0.01)

"""TrainState, the pure step functions and the named random streams (seconds each)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from genepanel.config import SelectConfig, TrainConfig
from genepanel.data import Preprocessor
from genepanel.errors import DataError
from genepanel.io import ExpressionData
from genepanel.runtime import data_mesh
from genepanel.train import (
    RowSource,
    Trainer,
    TrainState,
    fit,
    key_words,
    noise_key,
    random_streams,
    row_order_rng,
)
from tests.conftest import planted

#: Enough optimiser steps to cover the old collision (the init key of attempt a was the
#: noise key of step 1000 + a) and then some.
STEPS = 4096


def _word_set(keys: jax.Array) -> set[tuple[int, ...]]:
    words = np.asarray(jax.random.key_data(keys)).reshape(-1, np.asarray(
        jax.random.key_data(jax.random.key(0))).size)
    return {tuple(w) for w in words.tolist()}


def _noise_words(streams, steps: int = STEPS) -> set[tuple[int, ...]]:
    keys = jax.vmap(lambda s: noise_key(streams.noise, s))(jnp.arange(steps))
    return _word_set(keys)


def test_the_init_key_is_never_a_noise_key():
    for seed in (0, 3):
        noise, inits = set(), set()
        for attempt in range(3):
            s = random_streams(seed, attempt)
            noise |= _noise_words(s)
            inits |= _word_set(s.init) | _word_set(s.rows)
        assert len(noise) == 3 * STEPS  # no key repeats within or across attempts
        assert not inits & noise


def test_a_retry_draws_fresh_noise_initialisation_and_row_order():
    first, retry = random_streams(3, 0), random_streams(3, 1)
    assert not _noise_words(first) & _noise_words(retry)
    assert _word_set(first.init) != _word_set(retry.init)
    assert not np.array_equal(row_order_rng(key_words(first.rows), 0).permutation(50),
                              row_order_rng(key_words(retry.rows), 0).permutation(50))
    # the same (seed, attempt) gives the same streams: resumable
    again = random_streams(3, 1)
    assert _word_set(again.noise) == _word_set(retry.noise)
    np.testing.assert_array_equal(row_order_rng(key_words(retry.rows), 4).permutation(50),
                                  row_order_rng(key_words(again.rows), 4).permutation(50))


def _source(n: int = 200) -> RowSource:
    x, genes, _, _ = planted(n=n, seed=8)
    data = ExpressionData(x, genes, pd.DataFrame(index=range(n)), "planted")
    return RowSource(data, Preprocessor("none"), np.arange(n), materialize=True)


def _trainer(d: int, seed: int = 3, **cfg) -> Trainer:
    train_cfg = TrainConfig(**{"learning_rate": 0.01, "batch_size": 32, "max_epochs": 4, **cfg})
    return Trainer(5, d, (), train_cfg, seed, data_mesh())


def test_state_holds_the_attempts_streams_and_steps_use_them():
    src = _source()
    tr = _trainer(src.dense.shape[1])
    state = tr.init_state(3, 1)
    assert isinstance(state, TrainState) and int(state.step) == 0
    assert _word_set(state.keys.noise) == _word_set(random_streams(3, 1).noise)
    # a fresh attempt or seed starts from other parameters; the same one from the same
    for other in (tr.init_state(3, 0), tr.init_state(4, 1)):
        assert not np.allclose(other.params["selector"]["logits"],
                               state.params["selector"]["logits"])
    np.testing.assert_array_equal(tr.init_state(3, 1).params["selector"]["logits"],
                                  state.params["selector"]["logits"])
    # each optimiser step draws the noise of its own step from the state's noise stream
    xb, temp = src.dense[:32], np.float32(2.0)
    for t in range(2):
        want = tr.loss_fn(state.params, xb, temp, noise_key(state.keys.noise, t))
        state, loss = tr.step_fn(state, xb, temp)
        assert int(state.step) == t + 1
        np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)


def test_fit_leaves_the_trainer_alone_and_reuses_the_compiled_steps():
    src = _source()
    tr = _trainer(src.dense.shape[1])
    before = dict(vars(tr))
    a = fit(tr, src, None, seed=7)
    assert vars(tr) == before and tr.seed == 3
    b = fit(tr, src, None)  # the trainer's own seed
    c = fit(tr, src, None, seed=7)
    assert c.compilations["epoch"] == 1
    np.testing.assert_array_equal(a.params["selector"]["logits"], c.params["selector"]["logits"])
    assert not np.array_equal(a.params["selector"]["logits"], b.params["selector"]["logits"])


def test_every_retry_starts_from_fresh_streams(monkeypatch):
    src = _source()
    tr = _trainer(src.dense.shape[1], max_epochs=2, stop_threshold=0.999,
                  retry_unconverged=True, max_retries=2)
    seen = []
    original = Trainer.init_state

    def spy(self, seed=None, attempt=0):
        state = original(self, seed, attempt)
        seen.append((seed, attempt, _word_set(state.keys.noise), _word_set(state.keys.init)))
        return state

    monkeypatch.setattr(Trainer, "init_state", spy)
    res = fit(tr, src, None, seed=5)
    assert res.attempts == 3 and not res.converged
    assert [(s, a) for s, a, _, _ in seen] == [(5, 0), (5, 1), (5, 2)]
    noise = set().union(*(n for _, _, n, _ in seen))
    init = set().union(*(i for _, _, _, i in seen))
    assert len(noise) == len(init) == 3 and not noise & init


def test_a_checkpoint_of_the_old_layout_is_refused_in_one_line(tmp_path):
    import flax.serialization

    from genepanel.api import select_panel
    from genepanel.train import Interrupted

    x, genes, _, _ = planted(n=200, seed=9)
    data = ExpressionData(x, genes, pd.DataFrame(index=range(len(x))), "planted")
    cfg = SelectConfig(k=5, seed=1, train={"learning_rate": 0.01, "batch_size": 32,
                                           "max_epochs": 10})
    with pytest.raises(Interrupted):
        select_panel(data, cfg, tmp_path / "run", evaluate_baselines=False,
                     stop_after_epochs=2)
    ckpt = tmp_path / "run.partial" / "checkpoints" / "state.msgpack"
    payload = flax.serialization.msgpack_restore(ckpt.read_bytes())
    new = payload["state"]
    old = {"state": {"params": new["params"], "opt": new["opt_state"], "step": new["step"]},
           "meta": {k: v for k, v in payload["meta"].items() if k != "layout"}}
    ckpt.write_bytes(flax.serialization.msgpack_serialize(old))
    with pytest.raises(DataError, match="rerun without --resume") as err:
        select_panel(data, cfg, tmp_path / "run", resume=True, evaluate_baselines=False)
    assert "\n" not in str(err.value) and "older genepanel" in str(err.value)

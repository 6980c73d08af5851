"""The fused Gumbel noise equals ``jax.random.gumbel`` bit for bit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genepanel.model import ConcreteAutoencoder, gumbel_noise


@pytest.mark.parametrize("shape", [(7,), (10, 64), (3, 5, 11), (943, 129)])
@pytest.mark.parametrize("seed", [0, 12345])
def test_gumbel_noise_is_bit_identical_to_jax(shape, seed):
    key = jax.random.fold_in(jax.random.key(seed), 3)
    ours = jax.jit(lambda k: gumbel_noise(k, shape))(key)
    ref = jax.jit(lambda k: jax.random.gumbel(k, shape, jnp.float32))(key)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))


def test_gumbel_noise_falls_back_for_other_key_impls():
    key = jax.random.key(0, impl="rbg")
    ours = gumbel_noise(key, (4, 9))
    ref = jax.random.gumbel(key, (4, 9), jnp.float32)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))


def test_model_output_same_for_both_noise_sources():
    k, d = 3, 40
    x = jax.random.normal(jax.random.key(1), (8, d))
    key, temp = jax.random.key(2), jnp.float32(0.7)
    fused = ConcreteAutoencoder(k, d)
    params = fused.init(key, x, temp, key)
    out_fused = fused.apply(params, x, temp, key)
    out_jax = ConcreteAutoencoder(k, d, noise="jax").apply(params, x, temp, key)
    np.testing.assert_array_equal(np.asarray(out_fused), np.asarray(out_jax))
    with pytest.raises(ValueError, match="noise must be"):
        ConcreteAutoencoder(k, d, noise="nope").apply(params, x, temp, key)

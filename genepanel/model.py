"""Flax modules: the concrete selector layer and the decoders.

Shapes: ``x`` is ``[batch, d]`` (all genes), the selector holds logits ``[k, d]`` (log α)
and emits ``u = x @ Mᵀ`` of shape ``[batch, k]``; the decoder maps ``u`` back to
``[batch, d]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class ConcreteSelector(nn.Module):
    """k nodes, each a Gumbel-softmax (Concrete) distribution over ``d`` genes.

    One Gumbel draw ``G ~ Gumbel[k, d]`` is shared by the whole minibatch, as in the
    reference implementation; ``M = softmax((L + G) / T)`` row-wise.
    """

    k: int
    d: int

    @nn.compact
    def __call__(self, x: jax.Array, temperature: jax.Array, key: jax.Array) -> jax.Array:
        """Soft selection ``[batch, d] -> [batch, k]`` at ``temperature`` with noise ``key``."""
        logits = self.param("logits", nn.initializers.glorot_normal(), (self.k, self.d))
        gumbel = jax.random.gumbel(key, logits.shape, logits.dtype)
        weights = jax.nn.softmax((logits + gumbel) / temperature, axis=-1)
        return jnp.einsum("bd,kd->bk", x, weights)


class Decoder(nn.Module):
    """Reconstruct all ``d_out`` genes from ``k`` inputs: linear, or an MLP.

    ``hidden`` empty means one linear layer (with bias); otherwise each hidden layer is
    Dense + LeakyReLU(0.2) as in the reference code, followed by a linear output layer.
    """

    d_out: int
    hidden: Sequence[int] = ()

    @nn.compact
    def __call__(self, u: jax.Array) -> jax.Array:
        """``[batch, k] -> [batch, d_out]``."""
        h = u
        for i, width in enumerate(self.hidden):
            h = nn.Dense(width, name=f"hidden_{i}")(h)
            h = nn.leaky_relu(h, negative_slope=0.2)
        return nn.Dense(self.d_out, name="out")(h)


class ConcreteAutoencoder(nn.Module):
    """Concrete selector followed by a decoder, trained end to end."""

    k: int
    d: int
    hidden: Sequence[int] = ()

    def setup(self) -> None:
        self.selector = ConcreteSelector(self.k, self.d)
        self.decoder = Decoder(self.d, tuple(self.hidden))

    def __call__(self, x: jax.Array, temperature: jax.Array, key: jax.Array) -> jax.Array:
        """Training forward pass with soft (Concrete) selection: ``[b, d] -> [b, d]``."""
        return self.decoder(self.selector(x, temperature, key))

    def decode(self, u: jax.Array) -> jax.Array:
        """Test-time path: ``u`` is the measured panel ``[b, k]``; returns ``[b, d]``."""
        return self.decoder(u)


def decoder_apply(params: dict, u: jax.Array, d_out: int, hidden: Sequence[int]) -> jax.Array:
    """Apply a decoder's parameters (``params['decoder']`` subtree) to a panel ``[b, k]``."""
    return Decoder(d_out, tuple(hidden)).apply({"params": params}, u)

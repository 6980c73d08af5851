"""Flax modules: the concrete selector layer and the decoders.

Shapes: ``x`` is ``[batch, d]`` (all genes), the selector holds logits ``[k, d]`` (log α)
and emits ``u = x @ Mᵀ`` of shape ``[batch, k]``; the decoder maps ``u`` back to
``[batch, d]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Threefry-2x32 rotation schedule and key-schedule constant (Salmon et al., 2011).
_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_THREEFRY_PARITY = np.uint32(0x1BD11BDA)


def _fused_path_applies(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype) -> bool:
    return (
        str(jax.random.key_impl(key)) == "threefry2x32"
        and jax.config.jax_threefry_partitionable
        and not jax.config.jax_high_dynamic_range_gumbel
        and jnp.dtype(dtype) == jnp.float32
        and len(shape) >= 1
        and 0 < math.prod(shape) < 2**32
    )


def _threefry_bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """``jax.random.bits(key, shape, uint32)`` for a threefry key, as unrolled elementwise ops.

    JAX lowers threefry on CPU as a rolled 5-iteration loop whose body materialises
    two ``uint32`` arrays of ``shape`` per iteration; unrolled, the 20 rounds fuse into
    one elementwise kernel. The counter of element ``i`` (row-major) is the pair
    ``(0, i)``, as in JAX's partitionable threefry, so the bits are identical.
    """
    k0, k1 = jax.random.key_data(key)
    ks = (k0, k1, k0 ^ k1 ^ _THREEFRY_PARITY)
    strides = np.cumprod((1, *shape[:0:-1]))[::-1]
    count = sum(
        jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * np.uint32(stride)
        for axis, stride in enumerate(strides)
    )
    x0 = jnp.broadcast_to(ks[0], shape)
    x1 = count + ks[1]
    for i in range(5):
        for r in _THREEFRY_ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = ((x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r))) ^ x0
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0 ^ x1


def gumbel_noise(
    key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype = jnp.float32
) -> jax.Array:
    """Draw standard Gumbel noise of ``shape``, equal bit for bit to ``jax.random.gumbel``.

    For float32 and threefry keys (JAX's defaults) the bits come from
    :func:`_threefry_bits`, which XLA fuses with the uniform-to-Gumbel transform into
    one elementwise kernel (about 3× faster than ``jax.random.gumbel`` on CPU for a
    ``[943, 10463]`` draw); any other key, dtype or setting falls back to
    ``jax.random.gumbel``.
    """
    if not _fused_path_applies(key, shape, dtype):
        return jax.random.gumbel(key, shape, dtype)
    bits = _threefry_bits(key, shape)
    # Same construction as jax.random.uniform(minval=tiny, maxval=1) and gumbel(mode="low").
    tiny = np.float32(np.finfo(np.float32).tiny)
    one = np.float32(1.0)
    mantissa = (bits >> np.uint32(9)) | np.uint32(0x3F800000)
    floats = jax.lax.bitcast_convert_type(mantissa, jnp.float32) - one
    uniform = jnp.maximum(tiny, floats * (one - tiny) + tiny)
    return -jnp.log(-jnp.log(uniform))


class ConcreteSelector(nn.Module):
    """k nodes, each a Gumbel-softmax (Concrete) distribution over ``d`` genes.

    One Gumbel draw ``G ~ Gumbel[k, d]`` is shared by the whole minibatch, as in the
    reference implementation; ``M = softmax((L + G) / T)`` row-wise. ``noise`` picks how
    ``G`` is computed: ``"fused"`` (:func:`gumbel_noise`, the default) or ``"jax"``
    (``jax.random.gumbel``); both give the same numbers, ``"jax"`` is kept for
    benchmarks.
    """

    k: int
    d: int
    noise: str = "fused"

    @nn.compact
    def __call__(self, x: jax.Array, temperature: jax.Array, key: jax.Array) -> jax.Array:
        """Soft selection ``[batch, d] -> [batch, k]`` at ``temperature`` with noise ``key``."""
        logits = self.param("logits", nn.initializers.glorot_normal(), (self.k, self.d))
        if self.noise == "jax":
            gumbel = jax.random.gumbel(key, logits.shape, logits.dtype)
        elif self.noise == "fused":
            gumbel = gumbel_noise(key, logits.shape, logits.dtype)
        else:
            msg = f"noise must be 'fused' or 'jax', got {self.noise!r}"
            raise ValueError(msg)
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
    """Concrete selector followed by a decoder, trained end to end.

    The selector chooses among ``d`` candidate genes; the decoder reconstructs ``d_out``
    genes (default ``d``). With a candidate prefilter ``d < d_out``: the caller passes
    the candidate columns to the selector and compares the output with all genes.
    """

    k: int
    d: int
    hidden: Sequence[int] = ()
    noise: str = "fused"
    d_out: int | None = None

    def setup(self) -> None:
        """Build the selector and the decoder."""
        self.selector = ConcreteSelector(self.k, self.d, self.noise)
        self.decoder = Decoder(self.d if self.d_out is None else self.d_out, tuple(self.hidden))

    def __call__(self, x: jax.Array, temperature: jax.Array, key: jax.Array) -> jax.Array:
        """Training forward pass with soft (Concrete) selection: ``[b, d] -> [b, d_out]``."""
        return self.decoder(self.selector(x, temperature, key))

    def decode(self, u: jax.Array) -> jax.Array:
        """Test-time path: ``u`` is the measured panel ``[b, k]``; returns ``[b, d]``."""
        return self.decoder(u)


def decoder_apply(params: dict, u: jax.Array, d_out: int, hidden: Sequence[int]) -> jax.Array:
    """Apply a decoder's parameters (``params['decoder']`` subtree) to a panel ``[b, k]``."""
    return Decoder(d_out, tuple(hidden)).apply({"params": params}, u)

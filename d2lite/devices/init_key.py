"""A key for initial parameters whose programs compile fast."""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.random import define_prng_impl


def _mix(x):
    """murmur3's 32-bit finalizer: a bijection in which every output bit depends on every input bit."""
    x = (x ^ (x >> 16)) * jnp.uint32(0x85EBCA6B)
    x = (x ^ (x >> 13)) * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def _keyed_hash(key, counter):
    """32 random bits for each uint32 `counter`: a bijection of the counters for every key."""
    return _mix(_mix(counter ^ key[0]) + key[1])


def _hash_bits(key, bit_width, shape):
    words = _keyed_hash(key, lax.iota(jnp.uint32, max(1, bit_width // 32) * int(np.prod(shape))))
    if bit_width == 64:
        pairs = words.reshape(-1, 2).astype(jnp.uint64)
        return ((pairs[:, 0] << 32) | pairs[:, 1]).reshape(shape)
    return words.astype(f"uint{bit_width}").reshape(shape)


_TWO_WORDS = np.arange(2, dtype=np.uint32)
_HASH_PRNG = define_prng_impl(
    key_shape=(2,),
    seed=lambda seed: _mix(jnp.asarray(seed).astype(jnp.uint32) + _TWO_WORDS + 1),
    split=lambda key, shape: _hash_bits(key, 32, (*shape, 2)) ^ jnp.uint32(0x5BD1E995),
    random_bits=_hash_bits,
    fold_in=lambda key, data: _keyed_hash(
        key, jnp.asarray(data, jnp.uint32) + _TWO_WORDS * jnp.uint32(0x9E3779B9)
    ),
    name="d2lite_hash",
    tag="d2h",
)


def init_key(key):
    """A key for drawing initial parameters, derived from the JAX key `key`.

    JAX's threefry draws each parameter with its own block of hashing rounds, which XLA
    compiles parameter by parameter, and XLA's RngBitGenerator expands into a loop per
    parameter. This generator draws bit i of a tensor as a keyed hash of i (murmur3's
    finalizer, twice), one multiply-xor kernel per tensor, which compiles several times
    faster (README: "Initial parameters", per chapter). Its bits are not for cryptography
    or long simulations, only for the few million numbers of an initialisation, which need no
    more than independent-looking values and distinct keys.
    """
    words = _keyed_hash(jax.random.key_data(key).ravel()[-2:], _TWO_WORDS)
    return jax.random.wrap_key_data(words, impl=_HASH_PRNG)

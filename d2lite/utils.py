"""Compilation: JAX's persistent cache, on by default, a counter of compilations, and a key
for initial parameters whose programs compile fast.

A ResNet-18 train step takes seconds to compile on a CPU, every run. With the cache, XLA's
executables for programs that took over MIN_COMPILE_SECONDS to compile are kept in d2lite's
user cache (`~/.cache/d2lite/jax`, $XDG_CACHE_HOME honoured) and loaded by the next run.
JAX's own threshold, a second, would leave out a fit's smaller programs (LeNet's validation
step and epoch permutation: 0.7 and 0.5 s on a CPU), which every run would then compile
again; below a tenth of a second are single eager operations, which would only fill the
cache. A directory chosen for JAX itself (JAX_COMPILATION_CACHE_DIR) is left as it is, with
JAX's settings; D2LITE_COMPILE_CACHE=0 turns the cache off. It must be set before the first
compilation, so `import d2lite` sets it.
"""

import contextlib
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.random import define_prng_impl

MIN_COMPILE_SECONDS = 0.1  # unless JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS says otherwise


def user_cache(name):
    """The folder `name` in d2lite's user cache: ~/.cache/d2lite/NAME ($XDG_CACHE_HOME honoured)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "d2lite" / name


def enable_compile_cache():
    """Point JAX's persistent cache at the user cache dir; return the dir in use (or None)."""
    if os.environ.get("D2LITE_COMPILE_CACHE", "1").strip().lower() in ("0", "false", "off", "no"):
        return None
    if jax.config.jax_compilation_cache_dir:  # the user chose one for JAX
        return jax.config.jax_compilation_cache_dir
    path = user_cache("jax")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: run without the cache rather than fail
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return str(path)


_counts = [0, 0.0]  # compilations and their seconds since the first count_compiles()
_listening = []  # the one process-wide listener, once registered: JAX offers no way to remove one


def _on_event(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
        _counts[0] += 1
        _counts[1] += duration


class CompileCount:
    """How many XLA compilations, and how many seconds of them, a `count_compiles()` block saw."""

    def __init__(self):
        self._start, self._end = list(_counts), None

    @property
    def count(self):
        return (self._end or _counts)[0] - self._start[0]

    @property
    def seconds(self):
        return (self._end or _counts)[1] - self._start[1]


@contextlib.contextmanager
def count_compiles():
    """Count backend compilations (a load from the persistent cache counts too) with JAX's events.

    >>> with count_compiles() as compiles:
    ...     step(state)
    >>> compiles.count
    """
    if not _listening:
        jax.monitoring.register_event_duration_secs_listener(_on_event)
        _listening.append(_on_event)
    counter = CompileCount()
    try:
        yield counter
    finally:
        counter._end = list(_counts)


# ---------------------------------------------------------------------- initial parameters
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
    parameter: compiling GoogLeNet's init program took 24 s with threefry and 14-18 s with
    RngBitGenerator on a 2-core CPU (ResNet-18's 10 s and 4-5 s). This generator draws bit i
    of a tensor as a keyed hash of i (murmur3's finalizer, twice), one multiply-xor kernel
    per tensor: 6-7 s for GoogLeNet, 1.6-1.8 s for ResNet-18. Its bits are not for cryptography
    or long simulations, only for the few million numbers of an initialisation, which need no
    more than independent-looking values and distinct keys.
    """
    words = _keyed_hash(jax.random.key_data(key).ravel()[-2:], _TWO_WORDS)
    return jax.random.wrap_key_data(words, impl=_HASH_PRNG)

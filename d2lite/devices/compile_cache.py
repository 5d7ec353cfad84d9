"""JAX's persistent compilation cache, on by default.

A ResNet-18 train step takes seconds to compile on a CPU, every run. With the cache, XLA's
executables for programs that took over MIN_COMPILE_SECONDS to compile are kept in d2lite's
user cache (`~/.cache/d2lite/jax`, $XDG_CACHE_HOME honoured) and loaded by the next run. JAX's
own threshold, a second, would leave out a fit's smaller programs (LeNet's validation step and
epoch permutation, README), which every run would then compile again; below a tenth of a
second are single eager operations, which would only fill the cache. A directory chosen for
JAX itself (JAX_COMPILATION_CACHE_DIR) is left as it is, with JAX's settings;
D2LITE_COMPILE_CACHE=0 turns the cache off. It must be set before the first compilation, so
`import d2lite` sets it.
"""

import os
from pathlib import Path

import jax

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

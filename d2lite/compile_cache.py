"""JAX's persistent compilation cache, on by default: each program compiles once per machine.

A ResNet-18 train step takes seconds to compile on a CPU, every run. With the cache,
XLA's executables for programs that took over a second to compile are kept in
`~/.cache/d2lite/jax` ($XDG_CACHE_HOME honoured) and loaded by the next run. A cache
directory chosen for JAX itself (JAX_COMPILATION_CACHE_DIR) is left as it is;
D2LITE_COMPILE_CACHE=0 turns the cache off. It must be set before the first compilation,
so `import d2lite` sets it.
"""

import os

import jax

from .utils import user_cache

OFF = ("0", "false", "off", "no")


def default_cache_dir():
    return user_cache("jax")


def enable_compile_cache():
    """Point JAX's persistent cache at the user cache dir; return the dir in use (or None)."""
    if os.environ.get("D2LITE_COMPILE_CACHE", "1").strip().lower() in OFF:
        return None
    if jax.config.jax_compilation_cache_dir:  # the user chose one for JAX
        return jax.config.jax_compilation_cache_dir
    path = default_cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: run without the cache rather than fail
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    return str(path)

"""Small helpers: d2lite's user cache folder, and a compilation counter for tests and benchmarks."""

import contextlib
import os
from pathlib import Path

import jax


def user_cache(name):
    """The folder `name` in d2lite's user cache: ~/.cache/d2lite/NAME ($XDG_CACHE_HOME honoured)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "d2lite" / name


_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compiles = 0
_compile_seconds = 0.0
_listening = False


def _on_event(event, duration, **kwargs):
    global _compiles, _compile_seconds
    if event == _COMPILE_EVENT:
        _compiles += 1
        _compile_seconds += duration


class CompileCount:
    """How many XLA compilations, and how many seconds of them, a `count_compiles()` block saw."""

    def __init__(self):
        self._start = (_compiles, _compile_seconds)
        self._end = None

    @property
    def count(self):
        return (_compiles if self._end is None else self._end[0]) - self._start[0]

    @property
    def seconds(self):
        return (_compile_seconds if self._end is None else self._end[1]) - self._start[1]


@contextlib.contextmanager
def count_compiles():
    """Count backend compilations (a load from the persistent cache counts too) with JAX's events.

    >>> with count_compiles() as compiles:
    ...     step(state)
    >>> compiles.count
    """
    global _listening
    if not _listening:  # one process-wide listener; JAX offers no way to remove one
        jax.monitoring.register_event_duration_secs_listener(_on_event)
        _listening = True
    counter = CompileCount()
    try:
        yield counter
    finally:
        counter._end = (_compiles, _compile_seconds)

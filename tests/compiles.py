"""Counting XLA compilations, for the tests and the benchmark: JAX's monitoring events."""

import contextlib

import jax

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

"""The persistent compilation cache: on by default in the user cache dir, reused, can be turned off."""

import os
import subprocess
import sys

import pytest

PROGRAM = """
import jax, jax.numpy as jnp, numpy as np
import d2lite as d2l
events = []
jax.monitoring.register_event_listener(lambda event, **kwargs: events.append(event))
jax.jit(lambda x: jnp.sin(x) @ x.T)(np.ones((8, 8), np.float32)).block_until_ready()
print(jax.config.jax_compilation_cache_dir, events.count("/jax/compilation_cache/cache_hits"))
print(jax.config.jax_persistent_cache_min_compile_time_secs)
"""


def run(tmp_path, threshold=True, **env):
    unset = (
        "D2LITE_COMPILE_CACHE",
        "JAX_COMPILATION_CACHE_DIR",
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
    )
    environment = {k: v for k, v in os.environ.items() if k not in unset}
    if threshold:  # cache even this small program, which compiles in well under d2lite's threshold
        environment["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    environment.update(XDG_CACHE_HOME=str(tmp_path), **env)
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM], env=environment, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    cache_dir, hits, seconds = done.stdout.split()
    if not threshold:
        return float(seconds)
    assert float(seconds) == 0  # the environment's setting, not d2lite's
    return cache_dir, int(hits)


def test_the_second_run_loads_what_the_first_compiled(tmp_path):
    cache_dir, hits = run(tmp_path)
    assert cache_dir == str(tmp_path / "d2lite" / "jax")
    assert hits == 0 and any((tmp_path / "d2lite" / "jax").iterdir())
    assert run(tmp_path) == (cache_dir, 1)  # loaded from the cache


@pytest.mark.parametrize("off", ["0", "off", "false"])
def test_the_cache_can_be_turned_off(tmp_path, off):
    assert run(tmp_path, D2LITE_COMPILE_CACHE=off) == ("None", 0)
    assert not (tmp_path / "d2lite").exists()


def test_a_cache_dir_chosen_for_jax_is_kept(tmp_path):
    chosen = tmp_path / "mine"
    assert run(tmp_path, JAX_COMPILATION_CACHE_DIR=str(chosen)) == (str(chosen), 0)
    assert any(chosen.iterdir()) and not (tmp_path / "d2lite").exists()


def test_programs_of_a_tenth_of_a_second_are_cached_unless_jax_is_told_otherwise(tmp_path):
    # JAX's own threshold is a second, which leaves out a fit's validation step; the runs above
    # show that JAX's setting (0 there) wins.
    assert run(tmp_path, threshold=False) == 0.1

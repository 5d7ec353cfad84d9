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
"""


def run(tmp_path, **env):
    unset = ("D2LITE_COMPILE_CACHE", "JAX_COMPILATION_CACHE_DIR")
    environment = {k: v for k, v in os.environ.items() if k not in unset}
    # Cache even this small program (by default only those compiling for over a second).
    environment.update(XDG_CACHE_HOME=str(tmp_path), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", **env)
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM], env=environment, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    cache_dir, hits = done.stdout.split()
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

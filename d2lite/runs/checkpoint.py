"""Checkpoints of a run: orbax-checkpoint, one folder per training step.

Each checkpoint holds two items: `state`, the arrays (parameters, optimizer state, BatchNorm
statistics, step and keys), and `meta`, JSON (epoch, position in the epoch, history, plot
points, the settings the run must keep).

orbax is imported on first use: it takes seconds, and runs without a directory never need it.
"""

import contextlib
import hashlib
import json
import logging
import shutil
from pathlib import Path

import jax
import numpy as np

from ..board import write_atomic
from ..errors import D2LiteError, first_line

CHECKSUMS = "d2lite-sha256.json"


class Checkpoints:
    """The checkpoints in `directory`, keeping the newest `keep` (orbax's CheckpointManager)."""

    def __init__(self, directory, keep=3):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = Path(directory).absolute()
        # Folders of saves that never committed (the process died): orbax removes them below.
        self.unfinished = sorted(p.name for p in self.directory.glob("*.orbax-checkpoint-tmp*"))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=False,  # saved between epochs: nothing to overlap with
            cleanup_tmp_directories=True,  # what a killed save left behind
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))
        self._verified = set()

    def steps(self):
        return sorted(self._manager.all_steps())

    def path(self, step):
        return self.directory / str(step)

    def save(self, step, arrays, meta):
        """Write `arrays` (a pytree) and `meta` (JSON) as checkpoint `step`; False (orbax's answer)
        if it is not newer than the latest one, which is never overwritten."""
        args = self._ocp.args
        host = _to_host(arrays)
        try:
            with _errors_not_logged():
                saved = self._manager.save(
                    step, args=args.Composite(state=args.StandardSave(host), meta=args.JsonSave(meta))
                )
                self._manager.wait_until_finished()
        except BaseException:  # a full disk: the caller says so in one line; nothing half-written stays
            for unfinished in self.directory.glob(f"{step}.orbax-checkpoint-tmp*"):
                shutil.rmtree(unfinished, ignore_errors=True)
            raise
        # Orbax's atomic commit comes first: it writes the checkpoint into a temporary folder and
        # renames it to `<step>/` once every file is on disk; a save cut off before that leaves
        # only the temporary folder, which orbax never reads and removes (cleanup_tmp_directories).
        # The sha256 file on top, written after the commit and checked before each read, is only
        # for what orbax cannot detect: damage to the committed files later, which then gets a
        # clear error instead of whatever tensorstore raises (it also prints stray tracebacks). A
        # checkpoint killed between the commit and this file is complete, and read unchecked.
        if saved:
            write_atomic(self.path(step) / CHECKSUMS, json.dumps(_file_hashes(self.path(step)), indent=0))
            self._verified.add(step)
        return saved

    def read_meta(self, step):
        return self._read(step, meta=self._ocp.args.JsonRestore())["meta"]

    def restore(self, step, like):
        """The arrays of checkpoint `step`, in the structure, dtypes and key types of `like`."""
        target = _to_host(like)
        arrays = self._read(step, state=self._ocp.args.StandardRestore(target))["state"]
        return jax.tree.map(_like, arrays, like)

    def discard_after(self, step):
        """Delete the checkpoints newer than `step`: resuming from `step` abandons them."""
        for later in self.steps():
            if later > step:
                self._manager.delete(later)

    def close(self):
        self._manager.close()

    def _verify(self, step):
        listed = self.path(step) / CHECKSUMS
        if step in self._verified or not listed.is_file():
            return
        try:
            expected = json.loads(listed.read_text())
        except ValueError as error:
            raise self._unreadable(step, error) from None
        found = _file_hashes(self.path(step))
        for name, digest in expected.items():
            if found.get(name) != digest:
                problem = "is missing" if name not in found else "changed since it was saved"
                raise self._unreadable(step, OSError(f"{name} {problem}"))
        self._verified.add(step)

    def _read(self, step, **items):
        self._verify(step)
        try:
            return self._manager.restore(step, args=self._ocp.args.Composite(**items))
        except Exception as error:  # orbax and tensorstore raise many types for a bad folder
            raise self._unreadable(step, error) from error

    def _unreadable(self, step, error):
        reason = first_line(error, 160)
        earlier = [s for s in self.steps() if s < step]
        fallback = (
            f"resume from the previous checkpoint instead with --resume {self.path(earlier[-1])} "
            f"(resume={str(self.path(earlier[-1]))!r}), which discards this one"
            if earlier
            else "there is no earlier checkpoint: start a new run"
        )
        return D2LiteError(
            f"checkpoint {self.path(step)} cannot be read: it may be corrupted, or not a d2lite checkpoint "
            f"({type(error).__name__}: {reason}); {fallback}"
        )


def _file_hashes(folder):
    hashes = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != CHECKSUMS:
            with open(path, "rb") as f:
                hashes[path.relative_to(folder).as_posix()] = hashlib.file_digest(f, "sha256").hexdigest()
    return hashes


def _is_key(leaf):
    return isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _to_host(tree):
    """NumPy copies of the leaves, in one transfer; typed PRNG keys become their uint32 data."""
    tree = jax.tree.map(lambda leaf: jax.random.key_data(leaf) if _is_key(leaf) else leaf, tree)
    return jax.tree.map(np.asarray, jax.device_get(tree))


def _like(restored, like):
    if _is_key(like):
        return jax.random.wrap_key_data(restored, impl=jax.random.key_impl(like))
    dtype = like.dtype if hasattr(like, "dtype") else jax.dtypes.canonicalize_dtype(np.asarray(like).dtype)
    return jax.device_put(np.asarray(restored, dtype=dtype))


@contextlib.contextmanager
def _errors_not_logged():
    """Orbax logs a failed write with its traceback (through absl's logger) before it raises the
    error, which the run directory then reports in one line: the log is held back meanwhile."""
    logger = logging.getLogger("absl")
    below_errors = lambda record: record.levelno < logging.ERROR  # noqa: E731
    logger.addFilter(below_errors)
    try:
        yield
    finally:
        logger.removeFilter(below_errors)

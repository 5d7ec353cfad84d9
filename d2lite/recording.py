"""The run-directory half of the Trainer: config, metrics, checkpoints and exact resume.

`RecordedRun` is a mixin of `Trainer`: it reads and writes the Trainer's state (`self.state`,
`self.epoch`, `self.history`, the board) between epochs and never runs inside the jit.
A run resumes exactly: epoch e's batches come from the permutation `fold_in(shuffle_key, e)`
and step s's dropout key from `fold_in(dropout_rng, s)`, so restoring the TrainState, the
shuffle key and the position in the epoch continues the same stream of batches and keys.
"""

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from . import runs
from .errors import D2LiteError


class RecordedRun:
    """Run directory, checkpoints and resume for `Trainer` (see runs.py and checkpoint.py)."""

    def _run_location(self):
        """(run directory or None, checkpoint step to resume from or None)."""
        if self.resume not in (None, False, True):
            run_dir, step = runs.resume_target(self.resume)
            if self.run_dir is not None and Path(self.run_dir).resolve() != run_dir.resolve():
                raise D2LiteError(f"resume={str(self.resume)!r} is not in run_dir={str(self.run_dir)!r}")
            return run_dir, step
        return (None if self.run_dir is None else Path(self.run_dir)), None

    def _settings(self):
        """What a resumed run must share with the run it continues."""
        trainer = {
            k: self.hparams[k]
            for k in ("gradient_clip_val", "seed", "limit_train_batches", "limit_val_batches")
        }
        return {
            "model": runs.model_settings(self.model),
            "data": runs.data_settings(self.data),
            "trainer": runs.describe(trainer),
        }

    def _open_run(self, step):
        """Open the run's checkpoints; for a resume, check it and return the checkpoint's meta."""
        self.checkpoints = None
        if self.run_path is None:
            return None
        from .checkpoint import Checkpoints  # imports orbax, which takes seconds

        self.checkpoints = Checkpoints(self.run_path / runs.CHECKPOINTS, keep=self.keep_checkpoints)
        steps = self.checkpoints.steps()
        if not self.resume:
            if steps:
                raise D2LiteError(
                    f"{self.run_path} already holds a run (checkpoint {steps[-1]}): resume "
                    "it (--resume, resume=True) or use another run directory"
                )
            print(f"run directory: {self.run_path}", flush=True)
            return None
        for name in self.checkpoints.unfinished:
            print(f"removed {name}: a checkpoint whose writing was cut off", flush=True)
        if not steps:
            raise D2LiteError(
                f"{self.run_path} has no checkpoint to resume from (the run stopped before "
                "one was saved): start a new run"
            )
        step = steps[-1] if step is None else step
        if step not in steps:
            raise D2LiteError(f"{self.run_path} has no checkpoint {step}; it has {steps}")
        meta = self.checkpoints.read_meta(step)
        meta["step"] = step
        differences = runs.mismatches(meta["settings"], self._settings())
        if differences:
            raise D2LiteError(
                f"cannot resume {self.run_path} with different settings: "
                f"{'; '.join(differences)} (resume with the run's settings, or start a "
                "new run)"
            )
        return meta

    def _write_config(self, resumed=None):
        kept = resumed and (self.run_path / runs.CONFIG).is_file()
        config = (
            runs.read_config(self.run_path)
            if kept
            else {
                "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                **(runs.describe(self.run_info) or {}),
                **self._settings(),
                "parameters": sum(int(p.size) for p in jax.tree.leaves(self.state.params)),
                "environment": runs.environment(),
                "resumed": [],
            }
        )
        config["trainer"] = runs.describe(
            {
                k: v
                for k, v in self.hparams.items()
                if k not in ("run_dir", "resume", "out_dir", "run_info", "progress", "plot")
            }
        )
        if resumed:
            config.setdefault("resumed", []).append(resumed)
        runs.write_config(self.run_path, config)

    def _save_checkpoint(self, partial=None):
        """Save what fit needs to continue; return the checkpoint's path (None without a run).

        At the end of an epoch `partial` is None; after Ctrl-C in the middle of one it is
        (the losses of its steps so far, seconds so far).
        """
        if self.checkpoints is None:
            return None
        losses, seconds = partial or ([], 0.0)
        position = len(losses)
        finished = self.epoch if partial else self.epoch + 1
        if not partial:
            runs.write_metrics(self.run_path, self.history)
        step = finished * self.num_train_batches + position
        meta = {
            "epoch": finished,
            "position": position,
            "seconds_in_epoch": seconds,
            "losses_in_epoch": losses,
            "wall_time": self._wall_time(),
            "history": self.history,
            "board": {"data": self.board.data, "raw_points": self.board.raw_points},
            "settings": self._settings(),
        }
        arrays = self._checkpoint_arrays()
        meta["arrays"] = _shapes(arrays)
        self.checkpoints.save(step, arrays, meta)
        return self.checkpoints.path(step)

    def _checkpoint_arrays(self):
        return {"state": serialization.to_state_dict(self.state), "shuffle_key": self._shuffle_key}

    def _restore(self, meta):
        like = self._checkpoint_arrays()
        saved, now = meta.get("arrays", {}), _shapes(like)
        if saved != now:  # same hyperparameters, yet other parameters: the model's code changed
            differ = [k for k in set(saved) | set(now) if saved.get(k) != now.get(k)]
            name = min(differ, key=lambda k: ("['params']" not in k, k))  # parameters first
            raise D2LiteError(
                f"checkpoint {self.checkpoints.path(meta['step'])} holds other arrays than this model "
                f"has ({name}: {saved.get(name)} in the checkpoint, {now.get(name)} now): resume with "
                "the model code the run was trained with"
            )
        arrays = self.checkpoints.restore(meta["step"], like)
        self.state = self.parallel.replicate(serialization.from_state_dict(self.state, arrays["state"]))
        self._shuffle_key = self.parallel.replicate(arrays["shuffle_key"])
        self.checkpoints.discard_after(meta["step"])  # a resume from an older checkpoint forks
        self.epoch, position = meta["epoch"], meta["position"]
        self.history = meta["history"]
        self._wall_time_before = meta["wall_time"]
        if position:
            self._partial_epoch = (meta["losses_in_epoch"], meta["seconds_in_epoch"])
        self.train_batch_idx = self.epoch * self.num_train_batches + position
        self.val_batch_idx = self.epoch * self.num_val_batches
        # Put the plotted points back, and those still to be averaged into the next one
        # (checkpoints of d2lite 0.1 hold only the plotted points).
        board = meta["board"] if "raw_points" in meta["board"] else {"data": meta["board"], "raw_points": {}}
        for name, lines in board.items():
            setattr(self.board, name, {label: [tuple(p) for p in line] for label, line in lines.items()})
        runs.write_metrics(self.run_path, self.history)
        self._write_config(
            resumed={
                "at": time.strftime("%Y-%m-%d %H:%M:%S"),
                "step": meta["step"],
                "epoch": self.epoch,
                "position": position,
            }
        )
        where = f"epoch {self.epoch + 1}" + (f", step {position + 1}" if position else "")
        if self.epoch >= self.max_epochs:
            where = f"its end: all {self.max_epochs} epochs are done (raise max_epochs, --epochs, to go on)"
        print(f"resuming {self.run_path} from checkpoint {meta['step']} at {where}", flush=True)


def _shapes(arrays):
    """{'path': 'shape dtype'} of a pytree's leaves, to tell whether a checkpoint fits a model."""
    return {
        jax.tree_util.keystr(path): f"{tuple(np.shape(leaf))} {jnp.result_type(leaf)}"
        for path, leaf in jax.tree_util.tree_leaves_with_path(arrays)
    }

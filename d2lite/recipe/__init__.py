"""Beyond the book: the ingredients of a modern training recipe, each off unless asked for.

`Trainer(..., recipe=Recipe(...))` adds them to any chapter's training; `Recipe()` is the
book's recipe. All of them run inside the jitted programs, and a chapter without them
compiles exactly the programs it did before.

- Augmentation (`crop_padding`, `flip`, `erase`): each training image is shifted by up to
  `crop_padding` pixels (a random crop of the zero-padded image), mirrored left-right with
  probability 1/2, and with probability `erase` has a random rectangle blanked out. The
  keys come from the step number, so a run is the same for a seed and resumes exactly.
- A learning-rate schedule (`schedule`): "cosine" rises linearly over `warmup_epochs`, then
  falls along a half cosine to 0 at the last step; "onecycle" rises over the first 30% (or
  `warmup_epochs`) and falls likewise. It scales the model's optimizer's updates, which for
  SGD, momentum and Adam alike is the same as scaling its learning rate.
- `label_smoothing`: the cross-entropy's target puts `1 - label_smoothing` on the true class
  and spreads the rest evenly, so the network is not pushed to ever larger logits.
- `weight_decay`: L2 on the kernels only, added to the gradients before the model's
  optimizer. Biases and BatchNorm scales and offsets are left free: decaying them only
  fights normalisation.
- `ema`: evaluation uses an exponential moving average of the weights (and BatchNorm
  statistics) over the steps, which smooths out the last steps' noise.
- `tta_flip`: evaluation averages the logits of each image and its mirror image.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax

from ..errors import D2LiteError, model_name
from ..module import Classifier, smoothed_cross_entropy  # noqa: F401 (the smoothed loss lives with the Classifier)
from ..trainer import StepTransform

SCHEDULES = ("cosine", "onecycle")
ONECYCLE_RISE = 0.3  # of the steps, when no warmup_epochs is given
EMA_WARMUP = 10  # the average's decay starts low: min(ema, (1 + t) / (EMA_WARMUP + t)) at step t


@dataclasses.dataclass(frozen=True)
class Recipe:
    crop_padding: int = 0
    flip: bool = False
    erase: float = 0.0
    schedule: str | None = None
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    weight_decay: float = 0.0
    ema: float | None = None
    tta_flip: bool = False

    def __post_init__(self):
        rules = {  # field: (whether its value is valid, what a valid value is)
            "crop_padding": (
                isinstance(self.crop_padding, int) and self.crop_padding >= 0,
                "an integer >= 0",
            ),
            "erase": (0 <= self.erase <= 1, "a probability in [0, 1]"),
            "warmup_epochs": (self.warmup_epochs >= 0, ">= 0"),
            "label_smoothing": (0 <= self.label_smoothing < 1, "in [0, 1)"),
            "weight_decay": (self.weight_decay >= 0, ">= 0"),
            "ema": (self.ema is None or 0 < self.ema < 1, "a decay in (0, 1), or None"),
        }
        for name, (valid, expected) in rules.items():
            if not valid:
                raise D2LiteError(f"{name} must be {expected}, got {getattr(self, name)!r}")
        if self.schedule not in (None, *SCHEDULES):
            raise D2LiteError(
                f"schedule must be one of {', '.join(SCHEDULES)} or None, got {self.schedule!r}"
            )
        if self.warmup_epochs and self.schedule is None:
            raise D2LiteError("warmup_epochs needs a schedule (schedule='cosine' or 'onecycle')")

    @property
    def augments(self):
        return bool(self.crop_padding or self.flip or self.erase)

    def describe(self):
        """The ingredients in use, e.g. 'crop 2, flip, cosine (warmup 1 epoch)'; 'the book's' for none."""
        warmup = f" (warmup {self.warmup_epochs:g} epoch{'s' * (self.warmup_epochs != 1)})"
        parts = [
            (self.crop_padding, f"crop {self.crop_padding}"),
            (self.flip, "flip"),
            (self.erase, f"erase {self.erase:g}"),
            (self.schedule, f"{self.schedule}{warmup * bool(self.warmup_epochs)}"),
            (self.label_smoothing, f"label smoothing {self.label_smoothing:g}"),
            (self.weight_decay, f"weight decay {self.weight_decay:g}"),
            (self.ema, f"EMA {self.ema}"),
            (self.tta_flip, "flip TTA"),
        ]
        return ", ".join(text for used, text in parts if used) or "the book's"

    # ------------------------------------------------------------------ the training step
    def augment(self, key, images):
        """A batch of (B, H, W, C) images, augmented; the same key gives the same batch."""
        _check_images(images, "augmentation")
        crop_key, flip_key, erase_key = jax.random.split(key, 3)
        B, H, W, _ = images.shape
        if self.crop_padding:
            p = self.crop_padding
            padded = jnp.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
            corners = jax.random.randint(crop_key, (B, 2), 0, 2 * p + 1)
            crop = lambda image, corner: jax.lax.dynamic_slice(image, (*corner, 0), (H, W, image.shape[-1]))  # noqa: E731
            images = jax.vmap(crop)(padded, corners)
        if self.flip:
            mirrored = jax.random.bernoulli(flip_key, 0.5, (B, 1, 1, 1))
            images = jnp.where(mirrored, images[:, :, ::-1], images)
        if self.erase:
            images = images * ~random_rectangles(erase_key, B, H, W, self.erase)[..., None]
        return images

    def optimizer(self, tx, steps_per_epoch, epochs):
        """The model's optimizer `tx` with weight decay before it and the schedule after it."""
        if self.weight_decay:
            kernels = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)  # noqa: E731
            tx = optax.chain(optax.add_decayed_weights(self.weight_decay, mask=kernels), tx)
        if self.schedule:
            tx = optax.chain(tx, optax.scale_by_schedule(self.learning_rate_factor(steps_per_epoch, epochs)))
        return tx

    def learning_rate_factor(self, steps_per_epoch, epochs):
        """The schedule: step -> the factor on the learning rate (an optax schedule)."""
        total = steps_per_epoch * epochs
        if self.warmup_epochs:
            warmup = round(self.warmup_epochs * steps_per_epoch)
        else:
            warmup = round(ONECYCLE_RISE * total) if self.schedule == "onecycle" else 0
        warmup = min(warmup, total - 1)
        if self.schedule == "onecycle":  # a linear rise and fall, as Smith's one-cycle policy
            return optax.linear_onecycle_schedule(total, 1.0, warmup / total, div_factor=25.0)
        # From 1/(warmup + 1) (the first step learns a little), never 0 before the end.
        return optax.warmup_cosine_decay_schedule(1 / (warmup + 1), 1.0, warmup, total, 0.0)

    def update_average(self, average, new, step):
        """The EMA of the weights after step `step` (counted from 0)."""
        decay = jnp.minimum(self.ema, (1.0 + step) / (EMA_WARMUP + step))
        return jax.tree.map(lambda a, n: decay * a + (1 - decay) * n, average, new)

    # ------------------------------------------------------------------------ evaluation
    def evaluation_apply(self, apply):
        """`apply` for evaluation: with `tta_flip`, the mean logits of each image and its mirror."""
        if not self.tta_flip:
            return apply

        def flip_averaged(variables, X, *rest, **kwargs):
            _check_images(X, "tta_flip")
            out, mirrored = (
                apply(variables, X, *rest, **kwargs),
                apply(variables, X[:, :, ::-1], *rest, **kwargs),
            )
            if isinstance(out, tuple):  # (logits, variable updates)
                return ((out[0] + mirrored[0]) / 2, *out[1:])
            return (out + mirrored) / 2

        return flip_averaged


def _check_images(X, what):
    if X.ndim != 4:
        raise D2LiteError(f"{what} needs images of shape (batch, height, width, channels), got {X.shape}")


def random_rectangles(key, batch, height, width, probability, area=(0.02, 0.25), aspect=(0.3, 3.3)):
    """(batch, height, width) masks, True inside one random rectangle per image, with
    `probability`: its area a uniform fraction in `area` of the image, its aspect ratio
    (height / width) log-uniform in `aspect`, clipped to the image."""
    keys = jax.random.split(key, 5)
    fraction = jax.random.uniform(keys[0], (batch,), minval=area[0], maxval=area[1])
    ratio = jnp.exp(
        jax.random.uniform(keys[1], (batch,), minval=math.log(aspect[0]), maxval=math.log(aspect[1]))
    )
    h = jnp.sqrt(fraction * height * width * ratio)
    w = jnp.sqrt(fraction * height * width / ratio)
    top = jax.random.uniform(keys[2], (batch,)) * (height - h)
    left = jax.random.uniform(keys[3], (batch,)) * (width - w)
    rows = jnp.arange(height)[None, :] + 0.5
    cols = jnp.arange(width)[None, :] + 0.5
    inside_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])
    inside_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])
    chosen = jax.random.bernoulli(keys[4], probability, (batch,))
    return inside_rows[:, :, None] & inside_cols[:, None, :] & chosen[:, None, None]


class RecipeSteps(StepTransform):
    """A `Recipe` inside the Trainer's jitted programs."""

    def __init__(self, recipe):
        self.recipe = recipe

    def optimizer(self, tx, trainer):
        return self.recipe.optimizer(tx, trainer.num_train_batches, trainer.max_epochs)

    def initial_state(self, state, trainer):
        smoothing = self.recipe.label_smoothing
        if smoothing and not trainer.model.smooths_labels():
            raise D2LiteError(
                f"label_smoothing needs the Classifier's loss; {model_name(trainer.model)} has its own"
            )
        average = None
        if self.recipe.ema:  # its own buffers: the state is donated, and a buffer only once
            average = jax.tree.map(jnp.copy, {"params": state.params, "batch_stats": state.batch_stats})
        return state.replace(average=average, label_smoothing=smoothing)

    def augment(self, batch, key):
        if not self.recipe.augments:
            return batch
        return (self.recipe.augment(key, batch[0]), *batch[1:])

    def update(self, after, before):
        if not self.recipe.ema:
            return after
        latest = {"params": after.params, "batch_stats": after.batch_stats}
        return after.replace(average=self.recipe.update_average(before.average, latest, before.step))

    def apply(self, apply_fn, training):
        return apply_fn if training else self.recipe.evaluation_apply(apply_fn)

    def evaluation_state(self, state):
        """Averaged weights with an EMA, and the plain loss (no label smoothing)."""
        state = state.replace(label_smoothing=0.0)
        return state if state.average is None else state.replace(**state.average)

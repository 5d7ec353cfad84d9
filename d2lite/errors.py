"""The one exception type users see: a one-line message naming the problem and the fix; and the
diagnostics that write the messages for a model that cannot take its inputs."""

import jax
import jax.numpy as jnp


class D2LiteError(ValueError):
    """Bad input or a missing resource. Command-line entry points print it as one line."""


def first_line(error, limit=None):
    """The first line of an error's message (its type's name when it has none), cut to `limit`
    characters: what a one-line error quotes of the error behind it."""
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:limit]


def model_name(model):
    """The class name of the model a user wrote (the NNX face's adapter names the one it holds)."""
    return getattr(model, "display_name", None) or type(model).__name__


def input_error(model, input_shape, problem):
    """The error for inputs a model (in evaluation mode) cannot take, most often images resized
    too small."""
    shape, name, problem = tuple(input_shape), model_name(model), first_line(problem)
    smallest = smallest_image_size(model, shape)
    if smallest:
        return D2LiteError(
            f"{name} cannot run on inputs of shape {shape} ({problem}): its layers shrink the image to "
            f"nothing; resize it to at least {smallest} (--resize {smallest})"
        )
    return D2LiteError(
        f"{name} cannot run on inputs of shape {shape}: {problem} (if the inputs are too small for the "
        "model, use a larger resize)"
    )


def raise_traced(model, input_shape, error):
    """Raise for `error`, raised while `model` was built or traced on inputs of `input_shape`:
    the one-line input error when the inputs are the trouble (an empty shape, or an image too
    small that a larger one cures), else the error itself, whose traceback shows the model's own
    line (a typo in a layer is no input-size problem)."""
    shape = tuple(input_shape)
    if 0 in shape or smallest_image_size(model, shape):
        raise input_error(model, shape, error) from error
    raise error


def smallest_image_size(model, shape, largest=1024):
    """The smallest square image the model runs on, if larger than `shape`'s (N, H, W, C) and
    at most `largest`; else None. Found by bisection on traced shapes: nothing is computed."""
    if len(shape) != 4 or shape[1] != shape[2]:
        return None
    key = jax.random.PRNGKey(0)

    def runs(size):
        image = jax.ShapeDtypeStruct((1, size, size, shape[3]), jnp.float32)
        try:
            traced = jax.eval_shape(lambda x: model.init(key, x, capture_intermediates=True), image)
        except (TypeError, ValueError, ZeroDivisionError):
            return False
        return all(0 not in leaf.shape for leaf in jax.tree.leaves(traced))

    if runs(shape[1]):  # the trouble is not the size
        return None
    too_small, large_enough = shape[1], shape[1] * 2 or 1
    while not runs(large_enough):  # a layer's output grows with its input, so bisecting works
        too_small, large_enough = large_enough, large_enough * 2
        if large_enough > largest:
            return None
    while large_enough - too_small > 1:
        middle = (too_small + large_enough) // 2
        too_small, large_enough = (too_small, middle) if runs(middle) else (middle, large_enough)
    return large_enough


def check_outputs(model, data, inputs, outputs, intermediates, classifier):
    """A layer that outputs nothing (the inputs are too small), or a classifier's outputs that
    do not match the data's classes, as a one-line error; traced shapes only."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(intermediates):
        if 0 in leaf.shape:
            layer = jax.tree_util.keystr(path[1:-1]) or "a layer"
            raise input_error(model, inputs[0].shape, f"{layer} outputs shape {leaf.shape}")
    classes = getattr(data, "num_classes", None)
    if classifier and classes and (outputs.ndim != 2 or outputs.shape[-1] != classes):
        raise D2LiteError(
            f"{model_name(model)} outputs shape {outputs.shape} but {type(data).__name__} has {classes} "
            f"classes: make the last layer output {classes} values (e.g. num_classes={classes})"
        )

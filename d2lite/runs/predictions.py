"""Look at the predictions: validation images with true and predicted labels, mistakes first.

The book (D2L 4.4, 7.6) shows the mistakes of a batch with `data.visualize`, titled with the
true label over the predicted one; here the mistakes come first, titled in red, then correct
predictions fill the grid.
"""

import math

import jax
import numpy as np
from jax import lax

from ..book import show_images
from ..errors import D2LiteError, model_name


def predict_validation(trainer, max_examples=2048):
    """(inputs, labels, predicted labels) of the first validation examples, as NumPy arrays.

    The inputs are what the model saw (after `preprocess`); the trained `trainer.state`
    predicts in evaluation mode, one validation batch per call.
    """
    if trainer.state is None:
        raise D2LiteError("predictions need a trained state: call trainer.fit(model, data) first")
    batch_size, preprocess = trainer.batch_size, trainer.data.preprocess
    model = trainer.model

    @jax.jit
    def predict(state, arrays, index):
        rows = tuple(lax.dynamic_slice_in_dim(a, index * batch_size, batch_size) for a in arrays)
        batch = preprocess(rows)
        state = trainer.evaluation_state(state)  # as validation sees it (averaged weights, TTA)
        outputs = model.predict(state.params, batch[:-1], state)
        return batch[0], batch[-1], outputs

    num_batches = min(trainer.num_val_batches, math.ceil(max_examples / batch_size))
    with trainer.tracing():  # as the Trainer traces its programs
        parts = [jax.device_get(predict(trainer.state, trainer.resident.val, i)) for i in range(num_batches)]
    X, y, outputs = (np.concatenate(p)[: trainer.num_val_examples] for p in zip(*parts, strict=True))
    if outputs.ndim != 2:
        raise D2LiteError(
            f"{model_name(model)} outputs shape {outputs.shape[1:]} per example: "
            "predictions need a classifier's (num_classes,) scores"
        )
    return X, y.reshape(-1), outputs.argmax(axis=1)


def plot_predictions(trainer, path=None, num_rows=4, num_cols=8, scale=1.5):
    """A grid of validation images titled 'true / predicted', mistakes first (titles in red).

    Returns the matplotlib Figure; saves it to `path` when given.
    """
    X, y, predicted = predict_validation(trainer)
    wrong = predicted != y
    order = np.concatenate([np.flatnonzero(wrong), np.flatnonzero(~wrong)])[: num_rows * num_cols]
    names = getattr(trainer.data, "text_labels", lambda labels: [str(int(i)) for i in labels])
    titles = [f"{t}\n{p}" for t, p in zip(names(y[order]), names(predicted[order]), strict=True)]
    images = np.clip(X[order], 0, 1)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    axes = show_images(images, num_rows, num_cols, titles=titles, scale=scale)
    fig = axes[0].figure
    for ax, mistake in zip(axes, wrong[order], strict=False):
        if mistake:
            ax.title.set_color("C3")
    fig.suptitle(
        f"{int(wrong.sum())} mistakes in {len(y)} validation images (titles: true label, then predicted)",
        fontsize=9,
    )
    fig.set_size_inches(num_cols * scale, num_rows * (scale + 0.4) + 0.3)  # room for 2-line titles
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))
    if path is not None:
        fig.savefig(path, bbox_inches="tight")
    return fig

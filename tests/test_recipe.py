"""The recipe beyond the book (recipe.py): each ingredient does what it says, and resumes exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import Blobs, TinyCNN
from test_checkpoint import CTRL_C, CtrlC, assert_same_run

import d2lite as d2l
from d2lite.recipe import Recipe, random_rectangles, smoothed_cross_entropy

EVERYTHING = Recipe(
    crop_padding=1,
    flip=True,
    erase=0.5,
    schedule="cosine",
    warmup_epochs=1,
    label_smoothing=0.1,
    weight_decay=5e-4,
    ema=0.9,
    tta_flip=True,
)


def images(batch=64, size=6, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(0.1, 1, (batch, size, size, 2)), jnp.float32)


def shifted(image, dy, dx):
    """`image` moved down by dy and right by dx pixels, zeros coming in."""
    size = image.shape[0]
    out = np.zeros_like(image)
    out[max(dy, 0) : size + min(dy, 0), max(dx, 0) : size + min(dx, 0)] = image[
        max(-dy, 0) : size + min(-dy, 0), max(-dx, 0) : size + min(-dx, 0)
    ]
    return out


def test_crops_shift_each_image_by_at_most_the_padding_and_repeat_for_a_key():
    X = images()
    out = np.asarray(Recipe(crop_padding=2).augment(jax.random.PRNGKey(1), X))
    shifts = set()
    for before, after in zip(np.asarray(X), out, strict=True):
        found = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if np.array_equal(after, shifted(before, dy, dx))
        ]
        assert len(found) == 1
        shifts.add(found[0])
    assert len(shifts) > 10  # of the 25 possible, over 64 images
    np.testing.assert_array_equal(out, Recipe(crop_padding=2).augment(jax.random.PRNGKey(1), X))
    assert not np.array_equal(out, Recipe(crop_padding=2).augment(jax.random.PRNGKey(2), X))


def test_flips_mirror_about_half_of_the_images_left_to_right():
    X = np.asarray(images(batch=400))
    out = np.asarray(Recipe(flip=True).augment(jax.random.PRNGKey(0), X))
    mirrored = np.array([np.array_equal(a, x[:, ::-1]) for a, x in zip(out, X, strict=True)])
    kept = np.array([np.array_equal(a, x) for a, x in zip(out, X, strict=True)])
    assert (mirrored ^ kept).all()
    assert 160 < mirrored.sum() < 240


def test_erasing_blanks_one_rectangle_in_the_chosen_images():
    masks = np.asarray(random_rectangles(jax.random.PRNGKey(0), 1000, 28, 28, probability=0.5))
    erased = masks.any(axis=(1, 2))
    assert 430 < erased.sum() < 570
    for mask in masks[erased]:
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        assert mask.sum() == len(rows) * len(cols)  # one solid rectangle
        assert np.ptp(rows) == len(rows) - 1 and np.ptp(cols) == len(cols) - 1
        assert 0.3 * 0.02 * 784 < mask.sum() < 1.5 * 0.25 * 784  # its area, up to rounding to pixels
    X = images(batch=200, size=28)
    out = np.asarray(Recipe(erase=1.0).augment(jax.random.PRNGKey(0), X))
    assert ((out == 0) | (out == np.asarray(X))).all()
    assert (out == 0).any(axis=(1, 2, 3)).all()  # every image, with probability 1


def test_the_cosine_schedule_warms_up_then_falls_to_zero():
    factor = Recipe(schedule="cosine", warmup_epochs=1).learning_rate_factor(steps_per_epoch=10, epochs=5)
    values = np.array([float(factor(t)) for t in range(51)])
    assert values[0] == pytest.approx(1 / 11)
    assert (np.diff(values[:11]) > 0).all() and values[10] == pytest.approx(1.0)
    assert (np.diff(values[10:]) < 0).all() and values[50] == pytest.approx(0.0)
    assert values[30] == pytest.approx(0.5)  # halfway down the cosine
    onecycle = Recipe(schedule="onecycle").learning_rate_factor(steps_per_epoch=10, epochs=5)
    values = np.array([float(onecycle(t)) for t in range(51)])
    assert values.argmax() == 15 and values.max() == pytest.approx(1.0) and values[0] < 0.05


def test_the_schedule_scales_the_learning_rate_of_momentum_sgd_exactly():
    recipe = Recipe(schedule="cosine", warmup_epochs=1)
    factor = recipe.learning_rate_factor(4, 3)
    tx = recipe.optimizer(optax.sgd(0.1, momentum=0.9), 4, 3)
    params, velocity = jnp.ones(3), jnp.zeros(3)
    state, expected = tx.init(params), params
    rng = np.random.default_rng(0)
    for t in range(12):
        grads = jnp.asarray(rng.normal(size=3), jnp.float32)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        velocity = 0.9 * velocity + grads  # SGD with momentum at learning rate 0.1 * factor(t)
        expected = expected - 0.1 * float(factor(t)) * velocity
    np.testing.assert_allclose(params, expected, rtol=1e-5)


def test_weight_decay_shrinks_kernels_only():
    variables = TinyCNN().init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
    params = variables["params"]
    tx = Recipe(weight_decay=0.5).optimizer(optax.sgd(0.1), 1, 1)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    for path, update in jax.tree_util.tree_leaves_with_path(updates):
        value = params
        for key in path:
            value = value[key.key]
        name = jax.tree_util.keystr(path)
        expected = -0.1 * 0.5 * value if value.ndim > 1 else jnp.zeros_like(value)
        np.testing.assert_allclose(update, expected, rtol=1e-6, err_msg=name)
    assert any("kernel" in jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params))


def test_label_smoothing_trains_on_smoothed_targets_and_validates_on_the_plain_loss(quiet_trainer):
    logits, labels = jnp.array([[2.0, 0.0, -1.0]]), jnp.array([0])
    p = jax.nn.log_softmax(logits)[0]
    expected = -(0.9 + 0.1 / 3) * p[0] - (0.1 / 3) * (p[1] + p[2])
    assert float(smoothed_cross_entropy(logits, labels, 0.1)[0]) == pytest.approx(float(expected), rel=1e-6)
    trainer = quiet_trainer(max_epochs=1, recipe=Recipe(label_smoothing=0.2))
    trainer.fit(TinyCNN(), Blobs())
    model, state, batch = trainer.model, trainer.state, Blobs().preprocess(Blobs().arrays(False))
    smoothed = model.loss(
        state.params, batch[:-1], batch[-1], state.replace(apply_fn=trainer.eval_model.apply)
    )[0]
    plain = model.loss(state.params, batch[:-1], batch[-1], trainer.evaluation_state(state))[0]
    assert float(plain) == pytest.approx(trainer.evaluate()["loss"], rel=1e-5)
    assert float(smoothed) > float(plain)


def test_label_smoothing_needs_the_classifiers_loss(quiet_trainer):
    class OwnLoss(TinyCNN):
        def loss(self, y_hat, y):
            return optax.softmax_cross_entropy_with_integer_labels(y_hat, y).mean()

    with pytest.raises(
        d2l.D2LiteError, match="label_smoothing needs the Classifier's loss; OwnLoss has its own"
    ):
        quiet_trainer(recipe=Recipe(label_smoothing=0.1)).fit(OwnLoss(), Blobs())


def test_the_weight_average_follows_every_step_and_is_what_evaluation_uses(quiet_trainer):
    trainer = quiet_trainer(max_epochs=1, recipe=Recipe(ema=0.8), limit_train_batches=3)
    trainer.fit(TinyCNN(), Blobs())
    # Replay the 3 steps with the trainer's own programs, averaging by hand.
    state = trainer.init_state(jax.random.split(jax.random.PRNGKey(0))[0])
    on_host = lambda s: jax.device_get({"params": s.params, "batch_stats": s.batch_stats})  # noqa: E731
    expected = on_host(state)  # the state's buffers are donated to each step
    order = trainer.epoch_order(trainer.shuffle_key, 0)
    for t in range(3):
        state, _ = trainer.train_chunk(state, trainer.resident.train, order, t, num_steps=1)
        decay = min(0.8, (1 + t) / (10 + t))
        expected = jax.tree.map(lambda a, n, d=decay: d * a + (1 - d) * n, expected, on_host(state))
    assert trainer.state.step == 3
    for a, b in zip(jax.tree.leaves(trainer.state.average), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # Evaluation is the plain accuracy of the averaged weights and statistics.
    X, y = Blobs().preprocess(Blobs().arrays(False))
    averaged = trainer.state.replace(apply_fn=trainer.eval_model.apply, **trainer.state.average)
    accuracy = trainer.model.accuracy(averaged.params, (X,), y, averaged)
    assert trainer.evaluate()["acc"] == pytest.approx(float(accuracy), rel=1e-6)
    assert not np.allclose(jax.tree.leaves(trainer.state.params)[0], jax.tree.leaves(expected)[0])


def test_flip_tta_averages_the_logits_of_each_image_and_its_mirror():
    model = TinyCNN(training=False)
    X = images(batch=4, size=8)[..., :1]
    variables = model.init(jax.random.PRNGKey(0), X)
    averaged = Recipe(tta_flip=True).evaluation_apply(model.apply)(variables, X)
    expected = (model.apply(variables, X) + model.apply(variables, X[:, :, ::-1])) / 2
    np.testing.assert_allclose(averaged, expected, rtol=1e-6)
    assert not np.allclose(averaged, model.apply(variables, X))
    apply = model.apply
    assert Recipe().evaluation_apply(apply) is apply


def test_every_ingredient_together_learns_and_resumes_exactly(tmp_path, capsys):
    def fit(run_dir, resume=None):
        trainer = d2l.Trainer(
            max_epochs=2, progress=False, plot=False, recipe=EVERYTHING, run_dir=run_dir, resume=resume
        )
        trainer.fit(CtrlC(dropout=0.2), Blobs())
        return trainer

    reference = fit(None)
    # Well above chance (1/3): over 32 seeds, these 2 epochs reached 0.57 to 0.93.
    assert reference.history[-1]["val_acc"] > 0.5
    assert reference.history[-1]["train_loss"] < reference.history[0]["train_loss"]
    CTRL_C["epoch"] = 1
    with pytest.raises(d2l.TrainingInterrupted):
        fit(tmp_path / "run")
    assert_same_run(fit(None, resume=tmp_path / "run"), reference)
    with pytest.raises(d2l.D2LiteError, match=r"recipe ema: 0\.9 in the run, None now"):
        d2l.Trainer(max_epochs=2, progress=False, run_dir=tmp_path / "run", resume=True).fit(
            CtrlC(dropout=0.2), Blobs()
        )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"crop_padding": -1}, r"crop_padding must be an integer >= 0, got -1"),
        ({"erase": 1.5}, r"erase must be a probability in \[0, 1\], got 1\.5"),
        ({"schedule": "linear"}, r"schedule must be one of cosine, onecycle or None, got 'linear'"),
        ({"warmup_epochs": 1}, r"warmup_epochs needs a schedule"),
        ({"label_smoothing": 1.0}, r"label_smoothing must be in \[0, 1\), got 1\.0"),
        ({"ema": 1.0}, r"ema must be a decay in \(0, 1\), or None, got 1\.0"),
    ],
)
def test_bad_recipes_are_one_line_errors(kwargs, message):
    with pytest.raises(d2l.D2LiteError, match=message):
        Recipe(**kwargs)


def test_image_ingredients_on_other_inputs_are_one_line_errors():
    with pytest.raises(
        d2l.D2LiteError,
        match=r"augmentation needs images of shape \(batch, height, width, channels\), got \(4, 2\)",
    ):
        Recipe(flip=True).augment(jax.random.PRNGKey(0), jnp.zeros((4, 2)))
    with pytest.raises(d2l.D2LiteError, match="tta_flip needs images"):
        Recipe(tta_flip=True).evaluation_apply(lambda v, X: X)({}, jnp.zeros((4, 2)))


def test_a_recipe_describes_its_ingredients():
    assert Recipe().describe() == "the book's"
    assert EVERYTHING.describe() == (
        "crop 1, flip, erase 0.5, cosine (warmup 1 epoch), label smoothing 0.1, weight decay 0.0005, "
        "EMA 0.9, flip TTA"
    )

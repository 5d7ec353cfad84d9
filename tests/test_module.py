"""HyperParameters, the book's helpers, Module and Classifier outside the Trainer."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TinyCNN

import d2lite as d2l


def test_save_hyperparameters_captures_the_constructor_arguments():
    class Thing(d2l.HyperParameters):
        def __init__(self, a, b=2, _private=3, skipped=4):
            local = "not an argument"  # noqa: F841
            self.save_hyperparameters(ignore=["skipped"])

    thing = Thing(1, b=5)
    assert thing.hparams == {"a": 1, "b": 5}
    assert (thing.a, thing.b) == (1, 5)
    assert not hasattr(thing, "skipped") and not hasattr(thing, "local")


def test_add_to_class_adds_a_method():
    class Box:
        pass

    @d2l.add_to_class(Box)
    def twice(self, x):
        return 2 * x

    assert Box().twice(4) == 8


def test_layer_summary_reports_each_top_level_layer(capsys):
    summary = TinyCNN().layer_summary((2, 8, 8, 1))
    assert [name for name, _ in summary] == ["Conv", "BatchNorm", "relu", "lambda", "Dense"]
    assert [shape for _, shape in summary][-2:] == [(2, 256), (2, 3)]
    assert "Conv output shape:\t (2, 8, 8, 4)" in capsys.readouterr().out


def test_layer_summary_refuses_inputs_that_are_too_small():
    with pytest.raises(d2l.D2LiteError, match=r"TinyCNN cannot run on inputs of shape \(1, 0, 8, 1\)"):
        TinyCNN().layer_summary((1, 0, 8, 1))


def fixed_outputs(outputs):
    """A TrainState stand-in whose apply function returns `outputs` whatever the input."""

    def apply(variables, *X, mutable=False, rngs=None):
        return (outputs, {}) if mutable else outputs

    return SimpleNamespace(apply_fn=apply, batch_stats={}, dropout_rng=None)


def test_classifier_loss_and_accuracy_against_hand_computed_values():
    model = d2l.Classifier()
    logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    labels = jnp.array([0, 1])
    state, X = fixed_outputs(logits), (jnp.zeros((2, 4)),)
    log_softmax = jax.nn.log_softmax(logits)
    expected = -np.array([log_softmax[0, 0], log_softmax[1, 1]])
    losses, updates = model.loss(None, X, labels, state, averaged=False)
    np.testing.assert_allclose(losses, expected, rtol=1e-6)
    assert float(model.loss(None, X, labels, state)[0]) == pytest.approx(expected.mean(), rel=1e-6)
    np.testing.assert_array_equal(model.accuracy(None, X, labels, state, averaged=False), [1.0, 0.0])
    assert float(model.accuracy(None, X, labels, state)) == 0.5


def test_objective_runs_either_kind_of_loss():
    logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    batch, state = (jnp.zeros((2, 4)), jnp.array([0, 1])), fixed_outputs(logits)

    class Predictions(d2l.Classifier):  # d2lite's style: the loss of the predictions
        def loss(self, Y_hat, Y, averaged=True):
            return (Y_hat[jnp.arange(2), Y] ** 2).sum()

    class Scalar(d2l.Module):  # the book's linear regression style: a bare loss, no updates
        def loss(self, params, X, Y, state):
            return params * state.apply_fn({}, *X).sum()

    assert float(Predictions().objective(None, batch, state)[0]) == 4.0
    assert Scalar().objective(3.0, batch, state) == (15.0, {})
    classifier = d2l.Classifier()
    assert classifier.objective(None, batch, state)[0] == classifier.loss(None, batch[:1], batch[1], state)[0]


def test_setting_the_books_attributes_on_a_built_model():
    model = TinyCNN()
    model.training = False  # the book's loop switches modes this way
    model.trainer = "a trainer"
    assert model.training is False and model.trainer == "a trainer"
    assert model.board is not TinyCNN().board  # one board per model

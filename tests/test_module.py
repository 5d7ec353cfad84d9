"""HyperParameters, the book's helpers, Module and Classifier outside the Trainer."""
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


def test_get_key_gives_fresh_keys():
    keys = [np.asarray(d2l.get_key()).tobytes() for _ in range(3)]
    assert len(set(keys)) == 3


def test_layer_summary_reports_each_top_level_layer(capsys):
    summary = TinyCNN().layer_summary((2, 8, 8, 1))
    assert [name for name, _ in summary] == ["Conv", "BatchNorm", "relu", "lambda", "Dense"]
    assert [shape for _, shape in summary][-2:] == [(2, 256), (2, 3)]
    assert "Conv output shape:\t (2, 8, 8, 4)" in capsys.readouterr().out


def test_layer_summary_refuses_inputs_that_are_too_small():
    with pytest.raises(d2l.D2LiteError, match=r"TinyCNN cannot run on inputs of shape \(1, 0, 8, 1\)"):
        TinyCNN().layer_summary((1, 0, 8, 1))


def test_classifier_loss_and_accuracy_against_hand_computed_values():
    model = d2l.Classifier()
    logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    labels = jnp.array([0, 1])
    log_softmax = jax.nn.log_softmax(logits)
    expected = -np.array([log_softmax[0, 0], log_softmax[1, 1]])
    np.testing.assert_allclose(model.loss(logits, labels, averaged=False), expected, rtol=1e-6)
    assert float(model.loss(logits, labels)) == pytest.approx(expected.mean(), rel=1e-6)
    np.testing.assert_array_equal(model.accuracy(logits, labels, averaged=False), [1.0, 0.0])
    assert float(model.accuracy(logits, labels)) == 0.5

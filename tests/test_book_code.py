"""The book's LeNet code (D2L 7.6, JAX tab) runs with only its import line changed."""
import textwrap

import d2lite

BOOK_LENET = textwrap.dedent('''
    from types import FunctionType
    import jax
    import optax
    from flax import linen as nn
    from jax import numpy as jnp
    import d2lite as d2l


    class LeNet(d2l.Classifier):  #@save
        """The LeNet-5 model."""
        lr: float = 0.1
        num_classes: int = 10
        kernel_init: FunctionType = nn.initializers.xavier_uniform

        def setup(self):
            self.net = nn.Sequential([
                nn.Conv(features=6, kernel_size=(5, 5), padding='SAME',
                        kernel_init=self.kernel_init()),
                nn.sigmoid,
                lambda x: nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2)),
                nn.Conv(features=16, kernel_size=(5, 5), padding='VALID',
                        kernel_init=self.kernel_init()),
                nn.sigmoid,
                lambda x: nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2)),
                lambda x: x.reshape((x.shape[0], -1)),  # flatten
                nn.Dense(features=120, kernel_init=self.kernel_init()),
                nn.sigmoid,
                nn.Dense(features=84, kernel_init=self.kernel_init()),
                nn.sigmoid,
                nn.Dense(features=self.num_classes, kernel_init=self.kernel_init())
            ])


    @d2l.add_to_class(d2l.Classifier)  #@save
    def layer_summary(self, X_shape, key=d2l.get_key()):
        X = jnp.zeros(X_shape)
        params = self.init(key, X)
        bound_model = self.clone().bind(params, mutable=['batch_stats'])
        _ = bound_model(X)
        for layer in bound_model.net.layers:
            X = layer(X)
            print(layer.__class__.__name__, 'output shape:\\t', X.shape)

    model = LeNet()
    model.layer_summary((1, 28, 28, 1))

    trainer = d2l.Trainer(max_epochs=10, num_gpus=1)
    data = d2l.FashionMNIST(batch_size=128)
    model = LeNet(lr=0.1)
    trainer.fit(model, data)
''')


def test_the_books_lenet_code_runs(monkeypatch, tmp_path, capsys):
    # Shrink only the run, not the code: 10 epochs of 2 batches, validation on 256 images.
    original_trainer, original_data = d2lite.Trainer.__init__, d2lite.FashionMNIST.__init__
    monkeypatch.setattr(d2lite.Trainer, "__init__", lambda self, *a, **k: original_trainer(
        self, *a, **k, limit_train_batches=2, out_dir=str(tmp_path), progress=False))
    monkeypatch.setattr(d2lite.FashionMNIST, "__init__", lambda self, *a, **k: original_data(
        self, *a, **k, num_train=256, num_val=256))
    original_summary = d2lite.Classifier.layer_summary
    try:
        namespace = {}
        exec(compile(BOOK_LENET, "book_lenet.py", "exec"), namespace)
    finally:
        d2lite.Classifier.layer_summary = original_summary  # the book replaces it
    out = capsys.readouterr().out
    assert "output shape:\t (1, 5, 5, 16)" in out and "output shape:\t (1, 10)" in out
    trainer = namespace["trainer"]
    assert len(trainer.history) == 10
    assert trainer.evaluate().keys() == {"loss", "acc"}

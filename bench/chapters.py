"""Seconds per training step of every chapter's model at the book's resolution and batch, and
what that makes a full epoch of the 60,000 training images (validation not included).

    python -m bench.chapters [name ...]

Each model trains 2 epochs of a few batches through `d2lite.Trainer`; the step time is
epoch 2's (compiled) training time per step. Parameters are counted from the variables.
The persistent compilation cache is off, so "first epoch s" includes real compilation.
"""

import os
import sys
import time

os.environ["D2LITE_COMPILE_CACHE"] = "0"  # before d2lite is imported: it reads this then

import jax  # noqa: E402
from flax import nnx  # noqa: E402

import d2lite as d2l  # noqa: E402
from d2lite import nnx as nnx_face  # noqa: E402


def chapter_models():
    from chapters import (
        alexnet,
        batchnorm,
        densenet,
        googlenet,
        lenet,
        nin,
        regnet,
        resnet,
        resnet_nnx,
        resnext,
        vgg,
    )

    return {  # name: (model, resolution, batch, batches per epoch)
        "softmax_regression": (d2l.SoftmaxRegression(num_outputs=10, lr=0.1), 28, 256, 20),
        "lenet": (lenet.LeNet(lr=0.003, optimizer="adam"), 28, 128, 20),
        "alexnet": (alexnet.AlexNet(), 224, 128, 2),
        "vgg": (vgg.VGG(arch=vgg.SMALL_VGG11_ARCH), 224, 128, 2),
        "nin": (nin.NiN(), 224, 128, 2),
        "googlenet": (googlenet.GoogleNet(), 96, 128, 2),
        "batchnorm": (batchnorm.BNLeNet(), 28, 128, 20),
        "resnet": (resnet.ResNet18(lr=0.01), 96, 128, 2),
        "resnext": (resnext.ResNeXt(lr=0.01), 96, 128, 2),
        "densenet": (densenet.DenseNet(lr=0.01), 96, 128, 2),
        "regnet": (regnet.RegNetX32(lr=0.05), 96, 128, 2),
        "resnet_nnx": (resnet_nnx.ResNet18(lr=0.01), 96, 128, 2),
    }


def main(names):
    models = chapter_models()
    print(
        f"{'chapter':20} {'params':>11} {'input':>7} {'batch':>5} {'s/step':>7} {'ex/s':>7} "
        f"{'min/epoch':>9} {'first epoch s':>13}"
    )
    for name in names or models:
        model, size, batch, batches = models[name]
        data = d2l.FashionMNIST(
            batch_size=batch, resize=(size, size), num_train=batch * batches, num_val=batch
        )
        face = nnx_face if isinstance(model, nnx.Module) else d2l  # the NNX chapter's Trainer is the face's
        trainer = face.Trainer(max_epochs=2, progress=False, plot=False)
        started = time.perf_counter()
        trainer.fit(model, data)
        params = sum(p.size for p in jax.tree.leaves(trainer.state.params))
        step = trainer.history[-1]["seconds"] / trainer.num_train_batches
        first = time.perf_counter() - started - trainer.history[-1]["seconds"]
        print(
            f"{name:20} {params:11,} {size:4}x{size:<3} {batch:5} {step:7.4g} {batch / step:7.0f} "
            f"{step * (60000 // batch) / 60:9.3g} {first:13.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])

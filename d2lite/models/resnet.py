"""The book's ResNet template (section 8.6): a stem, one stage of residual blocks per entry of
`arch`, a global average pool and a dense layer. Saved here because ResNeXt (8.6.5) and the
paper's family (chapters/resnet.py) fill it with other blocks."""

from flax import linen as nn

from ..book import BatchNorm, Residual, max_pool
from ..module import Classifier
from . import global_avg_pool


class ResNet(Classifier, kw_only=True):
    """The ResNet template: stem `b1`, one stage per `(num_residuals, num_channels)` in `arch`, head.

    `self.net` has one top-level layer per part, so `layer_summary` shows the stem, each
    stage and the head. Subclasses change the parts by overriding `conv`, `norm`, `block`
    or `head`. The fields are keyword-only (`ResNet(arch=...)`): `arch` has no default and
    follows fields of `d2l.Module` that have one.
    """

    arch: tuple
    lr: float = 0.1
    num_classes: int = 10
    training: bool = True

    def setup(self):
        self.net = self.create_net()

    def conv(self, num_channels, kernel_size, strides=(1, 1)):
        return nn.Conv(num_channels, kernel_size, strides=strides, padding="SAME")

    def norm(self):
        return BatchNorm(not self.training)

    def b1(self):
        """7x7/2 convolution to 64 channels, BatchNorm, ReLU, 3x3/2 max pool: a quarter of the size."""
        return nn.Sequential(
            [
                self.conv(64, (7, 7), strides=(2, 2)),
                self.norm(),
                nn.relu,
                lambda x: max_pool(x, window_shape=(3, 3), strides=(2, 2), padding="SAME"),
            ]
        )

    def block(self, num_residuals, num_channels, first_block=False):
        """A stage; its first block halves the resolution, except in the first stage (after b1)."""
        blk = []
        for i in range(num_residuals):
            if i == 0 and not first_block:
                blk.append(Residual(num_channels, use_1x1conv=True, strides=(2, 2), training=self.training))
            else:
                blk.append(Residual(num_channels, training=self.training))
        return nn.Sequential(blk)

    def head(self):
        return nn.Sequential([global_avg_pool, nn.Dense(self.num_classes)])

    def create_net(self):
        stages = [self.block(*b, first_block=(i == 0)) for i, b in enumerate(self.arch)]
        return nn.Sequential([self.b1(), *stages, self.head()])


class ResNet18(ResNet):
    """The book's ResNet-18: four stages of two residual blocks, 64 to 512 channels."""

    arch: tuple = ((2, 64), (2, 128), (2, 256), (2, 512))

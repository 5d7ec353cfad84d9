"""Where and how the step computes: devices and sharding (sharding.py), steps per dispatch
(dispatch.py), precision (precision.py), the compile cache (compile_cache.py), the CPU
stand-ins for slow XLA:CPU kernels (cpu_kernels.py) and the fast-compiling key for initial
parameters (init_key.py); the last two as step transforms here."""

from ..trainer import StepTransform
from . import cpu_kernels
from .init_key import init_key


class CpuKernels(StepTransform):
    """Flax's convolutions and pools trace as XLA:CPU runs them fast (cpu_kernels.py)."""

    def tracing(self):
        return cpu_kernels.cpu_kernels(True)


class FastInitKey(StepTransform):
    """Initial parameters drawn with `init_key`, whose programs compile faster than threefry's."""

    def initial_key(self, key):
        return init_key(key)

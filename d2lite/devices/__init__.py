"""Where and how the step computes: devices and sharding, precision, the compile cache, the CPU
stand-ins for slow XLA:CPU kernels."""

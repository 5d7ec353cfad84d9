"""Steps per dispatch under `steps_per_dispatch="auto"`: one call per step, or loops of them."""

import math

import jax

# Off CPU, a step lighter than LIGHT_STEP_FLOPS runs up to AUTO_STEPS_PER_DISPATCH to a call.
AUTO_STEPS_PER_DISPATCH = 32
LIGHT_STEP_FLOPS = 10e9


def auto_dispatch_steps(trainer):
    """Training steps per call under `steps_per_dispatch="auto"`.

    One on a CPU. Off it, several only for a light step, under LIGHT_STEP_FLOPS in its
    products and convolutions (LeNet's), which a GPU runs in less time than Python needs to
    dispatch it. A heavier step keeps the device busy one call at a time, so a loop of steps
    would only add compile time (README, "Steps per dispatch"). A light epoch is cut into equal chunks of at
    most 32 steps where its length allows, so that one program runs them all: 468 batches
    make 18 chunks of 26, not 14 of 32 and one of 20, which would compile a second program.
    """
    if trainer.unroll_chunks:  # on a CPU
        return 1
    order = trainer.epoch_order(trainer.place(jax.random.PRNGKey(0)), 0)
    # Counted on a trace, not a compiled program; a heavy step's first call reuses the trace.
    step = trainer.train_chunk.trace(trainer.state, trainer.resident.train, order, 0, num_steps=1)
    if matmul_flops(step.jaxpr) >= LIGHT_STEP_FLOPS:
        return 1
    return equal_chunks(trainer.num_train_batches)


def equal_chunks(steps, most=AUTO_STEPS_PER_DISPATCH):
    """Steps per chunk: the most, up to `most`, that cut `steps` into equal chunks, if that is
    at least 8 (or all of them); else `most`, and a shorter last chunk."""
    divisor = max(d for d in range(1, most + 1) if steps % d == 0)
    return divisor if divisor >= 8 or divisor == steps else min(most, steps)


def matmul_flops(jaxpr):
    """Floating-point operations of the matrix products and convolutions in a jaxpr (2 per
    multiply-add), inner jaxprs included: what decides a step's time on an accelerator.

    Every tap of a kernel counts, over padding and over the zeros that strided convolutions'
    gradients insert too, so this is an upper bound: for the chapters' steps 3-33% above XLA's
    cost analysis, which a program offers before compiling only on some backends (not
    through the PJRT plugins that run GPUs).
    """
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)  # a ClosedJaxpr's
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in ("dot_general", "conv_general_dilated"):
            lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
            outputs = math.prod(eqn.outvars[0].aval.shape)
            if name == "dot_general":
                (contracting, _), _ = eqn.params["dimension_numbers"]
                total += 2 * outputs * math.prod(lhs[d] for d in contracting)
            else:  # each output sums the kernel's taps over its input features
                total += 2 * outputs * math.prod(rhs) // rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
        repeat = eqn.params.get("length", 1) if name == "scan" else 1
        for value in eqn.params.values():
            for inner in value if isinstance(value, list | tuple) else [value]:
                if hasattr(inner, "eqns") or hasattr(getattr(inner, "jaxpr", None), "eqns"):
                    total += repeat * matmul_flops(inner)
    return total

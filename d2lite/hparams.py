"""HyperParameters and add_to_class: the book's two idioms for building classes in a notebook."""

import inspect


def add_to_class(Class):
    """Register the decorated function as a method of `Class` (the book's notebook idiom).

    Unlike the book's, the decorator returns the function, so its name stays usable.
    """

    def register(function):
        setattr(Class, function.__name__, function)
        return function

    return register


class HyperParameters:
    """Base class whose `save_hyperparameters` stores the caller's arguments as attributes.

    Flax modules are dataclasses and do not need it; the Trainer and the data modules do.
    """

    def save_hyperparameters(self, ignore=()):
        """Save the arguments of the calling `__init__` in `self.hparams` and as attributes."""
        caller = inspect.currentframe().f_back
        try:
            code = caller.f_code
            # Only the parameters, not whatever else __init__ has computed so far.
            names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
            skip = set(ignore) | {"self"}
            self.hparams = {
                name: caller.f_locals[name] for name in names if name not in skip and not name.startswith("_")
            }
        finally:
            del caller  # frames hold references to every local: do not keep them alive
        for name, value in self.hparams.items():
            setattr(self, name, value)

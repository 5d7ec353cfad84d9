"""HyperParameters: the book's way of turning constructor arguments into attributes."""
import inspect


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
                name: caller.f_locals[name]
                for name in names
                if name not in skip and not name.startswith("_")
            }
        finally:
            del caller  # frames hold references to every local: do not keep them alive
        for name, value in self.hparams.items():
            setattr(self, name, value)

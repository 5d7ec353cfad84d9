"""The one exception type users see: a one-line message naming the problem and the fix."""


class D2LiteError(ValueError):
    """Bad input or a missing resource. Command-line entry points print it as one line."""

"""The one exception type users see: a one-line message naming the problem and the fix."""


class D2LiteError(ValueError):
    """Bad input or a missing resource. Command-line entry points print it as one line."""


def first_line(error, limit=None):
    """The first line of an error's message (its type's name when it has none), cut to `limit`
    characters: what a one-line error quotes of the error behind it."""
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:limit]

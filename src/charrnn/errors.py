"""The one error type the entry points print as a single line instead of a traceback."""


class CharRNNError(Exception):
    """A mistake the user can fix: the message names the bad value and what to do."""

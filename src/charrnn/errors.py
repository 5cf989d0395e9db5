"""The one error type the entry points print as a single line instead of a traceback."""

import os
import sys


class CharRNNError(Exception):
    """A mistake the user can fix: the message names the bad value and what to do."""


def whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def one_of(choices) -> tuple:
    return (lambda v: str(v) in choices), f"choose one of {', '.join(choices)}"


def check(value_of, rules: dict, prefix: str = "") -> None:
    """The one form of a bad-value error: `rules` maps a key to (test, what to use instead);
    `value_of(key)` is the value a user gave (None when unset)."""
    for key, (ok, allowed) in rules.items():
        if not ok(value := value_of(key)):
            raise CharRNNError(f"{prefix}{key}: {value!r} is not allowed; {allowed}")


def exit_with(err: CharRNNError, printer=None):
    """One `error:` line (stderr, or `printer`), exit code 1; a traceback with HYDRA_FULL_ERROR=1."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise err
    sys.stdout.flush()
    (printer or (lambda line: print(line, file=sys.stderr)))(f"error: {err}")
    sys.exit(1)

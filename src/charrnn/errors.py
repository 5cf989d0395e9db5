"""The one error type the entry points print as a single line instead of a traceback."""

import os
import sys


class CharRNNError(Exception):
    """A mistake the user can fix: the message names the bad value and what to do."""


def exit_with(err: CharRNNError):
    """Ends a command on a user mistake: one `error:` line on stderr, exit code 1; the traceback
    only with HYDRA_FULL_ERROR=1."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise err
    sys.stdout.flush()
    print(f"error: {err}", file=sys.stderr)
    sys.exit(1)

"""The one error type the entry points print as a single line instead of a traceback."""

import os
import sys


class CharRNNError(Exception):
    """A mistake the user can fix: the message names the bad value and what to do."""


def exit_with(err: CharRNNError, printer=None):
    """One `error:` line (stderr, or `printer`), exit code 1; a traceback with HYDRA_FULL_ERROR=1."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise err
    sys.stdout.flush()
    (printer or (lambda line: print(line, file=sys.stderr)))(f"error: {err}")
    sys.exit(1)


def run_command(command, cfg):
    """An entry point's command: a user mistake ends in one line, a closed pipe (`| head`) quietly."""
    try:
        return command(cfg)
    except CharRNNError as err:
        exit_with(err)
    except BrokenPipeError:
        sys.stderr.close()
        os._exit(0)

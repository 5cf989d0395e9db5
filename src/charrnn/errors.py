"""The one error type the entry points print as a single line instead of a traceback."""

import os
import sys


class CharRNNError(Exception):
    """A mistake the user can fix: the message names the bad value and what to do."""


def exit_with(err: CharRNNError, printer=None):
    """Ends a command on a user mistake: one `error:` line (on stderr, or through `printer`, e.g. a
    run's logger), exit code 1; the traceback only with HYDRA_FULL_ERROR=1."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise err
    sys.stdout.flush()
    (printer or (lambda line: print(line, file=sys.stderr)))(f"error: {err}")
    sys.exit(1)


def run_command(command, cfg):
    """Runs an entry point's command: a user mistake ends it in one `error:` line (exit_with), a
    reader that went away (`... | head`) quietly."""
    try:
        return command(cfg)
    except CharRNNError as err:
        exit_with(err)
    except BrokenPipeError:
        sys.stderr.close()
        os._exit(0)

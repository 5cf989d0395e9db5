"""The one way charrnn writes a file: a failure never leaves half a file or destroys the old one."""

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

PART = ".part"  # suffix of the temp file beside the target while it is written


def write_atomically(path: Path, write: Callable[[str], None]) -> Path:
    """Calls write(temp_path) beside `path`, fsyncs it and renames it onto `path`; if `write`
    raises (a failed check, a full disk, Ctrl-C) what was at `path` stays as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=PART)
    os.close(fd)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())  # the data is on disk before the name points at it
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # make the rename itself durable (POSIX)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def remove_stale_parts(directory: Path, name_glob: str = "*") -> None:
    """Deletes the temp files a killed write_atomically left in `directory` (for matching names)."""
    for stale in Path(directory).glob(f".{name_glob}.*{PART}"):
        with contextlib.suppress(OSError):
            stale.unlink()

"""One training process per run directory.

Two processes training into one folder would interleave their metrics, overwrite each other's
checkpoints and prune the other's newest one. :func:`hold_run_dir` takes an exclusive ``flock``
on ``RUN/.lock`` for as long as the run trains and refuses, naming the holder, when another
process has it. The kernel drops the lock when its holder exits, however it exits (a crash, a
kill, Ctrl-C), so a stopped run never leaves a stale lock behind; the file itself stays and is
harmless.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from cat.errors import ConfigError

LOCK_NAME = ".lock"


@contextlib.contextmanager
def hold_run_dir(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the body; ConfigError at once if another process holds it."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no advisory locks to take
        yield
        return
    run_dir = Path(run_dir)
    path = run_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            raise ConfigError(
                f"{run_dir} is in use: {holder} is training there (it holds {path}). Wait for it to "
                f"finish or stop it, or choose another --output-dir."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {os.uname().nodename}".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # before the unlock, so no later holder's name is wiped
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)

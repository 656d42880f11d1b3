"""Library messages go through Python ``logging`` under the ``cat`` logger (``cat.run.trainer``,
``cat.worlds.arith``, ...); nothing in the library prints.

:func:`console` is what ``cat-rl`` and ``cat.train`` install: progress (INFO) on stdout, warnings
and errors on stderr, the bare message, prefixed ``[rank r/N]`` under a multi-process launcher.
An application that configures logging itself keeps its own handlers: :func:`console` adds
nothing when the ``cat`` logger already has one, and ``propagate`` stays on.
"""

from __future__ import annotations

import logging
import os
import sys


class _Console(logging.Handler):
    """Writes to whatever ``sys.stdout`` / ``sys.stderr`` are at the time of the message (so
    redirections made after setup, as in tests and notebooks, are honoured)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stdout if record.levelno < logging.WARNING else sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - logging must never raise into the run
            self.handleError(record)


def rank_tag() -> str:
    """``[rank r/N] `` under a multi-process launcher (torchrun and accelerate set RANK, WORLD_SIZE)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return f"[rank {os.environ.get('RANK', '0')}/{world}] " if world > 1 else ""


def console(level: int = logging.INFO) -> logging.Logger:
    """Show ``cat``'s messages on the console (idempotent)."""
    logger = logging.getLogger("cat")
    if not logger.handlers:
        handler = _Console()
        handler.setFormatter(logging.Formatter(rank_tag().replace("%", "%%") + "%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False  # the root logger's handlers would print each message again
    if logger.level == logging.NOTSET or logger.level > level:
        logger.setLevel(level)
    return logger

"""Files written whole or not at all.

A run directory's small files (``config.yaml``, ``eval.json``, ``compare.json``, a test-time
result, a report page and its figures) are written to a hidden temporary file beside their destination, flushed
to disk, and renamed over it: a crash, kill or Ctrl-C at any moment leaves either the old file or
the new one, never a torn one. Checkpoints have their own, stronger protocol (``cat.run.checkpoint``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """``data`` at ``path``, whole or not at all; the folder is created if need be."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """``text`` (UTF-8) at ``path``, whole or not at all; the folder is created if need be."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, obj, *, indent: int | None = 2) -> None:
    """``obj`` as JSON at ``path``, whole or not at all."""
    write_text_atomic(path, json.dumps(obj, indent=indent))

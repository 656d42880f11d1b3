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


def test_gpu_check_says_when_there_is_no_gpu():
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--model", "tiny"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 2 and "no GPU is visible to torch: run with --cpu" in done.stderr

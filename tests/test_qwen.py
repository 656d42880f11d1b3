"""Qwen2.5-Coder-0.5B-Instruct, the paper's vocabulary size (151,936), end to end. Slow: these run
when selected (``pytest -m slow tests/test_qwen.py``) and the model is in
models/Qwen2.5-Coder-0.5B-Instruct (``cat-rl fetch-model qwen2.5-coder-0.5b``, 2.5 GB)."""

import json

import pytest
import torch
from conftest import ROOT, cli

pytestmark = pytest.mark.slow

CONFIG = str(ROOT / "experiments" / "qwen05_chain_sum_testtime.yaml")


@pytest.fixture(scope="module")
def qwen05():
    from cat.models.gguf import KNOWN, read_record

    folder = ROOT / "models" / KNOWN["qwen2.5-coder-0.5b"].folder
    if (read_record(folder) or {}).get("sha256") != KNOWN["qwen2.5-coder-0.5b"].sha256:
        pytest.skip(f"{folder} does not hold the converted model: cat-rl fetch-model qwen2.5-coder-0.5b")
    return folder


def test_testtime_on_eight_prompts(tmp_path, qwen05):
    """Test-time CaT on 8 chain_sum prompts (hf backend, G = 4): answers are read, every estimator
    is graded on the same rollouts, and no selection beats pass@G."""
    out_file = tmp_path / "tt.json"
    out = cli("testtime", CONFIG, "--estimators", "single,majority_vote,synthesis", "--group-sizes", "2,4",
              "--output", str(out_file), f"model.name_or_path={qwen05}", "generation.backend=hf", "eval.limit=8",
              "generation.num_generations=4", "generation.max_new_tokens=64", "anchor.max_new_tokens=48")
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out_file.read_text())
    assert result["n"] == 8
    rollouts = [r for ex in result["examples"] for r in ex["rollouts"]]
    assert sum(r["answer"] is not None for r in rollouts) >= 0.75 * len(rollouts)
    references = [ex["references"]["synthesis@4"] for ex in result["examples"]]
    assert sum(r["answer"] is not None for r in references) >= 6
    acc = result["accuracy"]
    assert all(0 <= v <= acc[f"oracle_pass@{k.rpartition('@')[2]}"] for k, v in acc.items())
    assert "| synthesis |" in out.stdout


def test_one_lora_cat_step_at_the_papers_vocabulary(tmp_path, qwen05):
    """One CaT step with a LoRA adapter (label-free: pi_0 synthesizes the references): groups are
    scored, the loss and gradient are finite, and the adapter moves."""
    run_dir = tmp_path / "run"
    out = cli("train", CONFIG, f"model.name_or_path={qwen05}", "generation.backend=hf", "--output-dir", str(run_dir),
              "model.lora.r=8", "model.lora.alpha=16", "optim.lr=1e-4", "generation.num_generations=4",
              "generation.max_new_tokens=48", "anchor.max_new_tokens=48", "run.prompts_per_step=2", "run.steps=1",
              "run.preflight_prompts=0", "eval.path=null", "--no-progress")
    assert out.returncode == 0, out.stderr[-3000:]
    [row] = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert row["groups/scored"] >= 1 and torch.isfinite(torch.tensor(row["reward/mean"]))
    assert torch.isfinite(torch.tensor(row["loss"])) and row["grad_norm"] > 0
    from safetensors.torch import load_file

    adapter = load_file(run_dir / "checkpoints" / "step-000001" / "adapter" / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and any(v.abs().max() > 0 for v in lora_b)  # B starts at zero: any non-zero entry is the update

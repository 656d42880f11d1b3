"""Mixed precision on the real tiny model: fp32 master weights, bf16 compute.

Pure-bf16 training loses small updates (an AdamW step of lr 5e-7 is below half a bf16 ulp of
almost every weight); with fp32 master weights the same update lands on every weight that has a
gradient, and a bf16-compute run follows the fp32 run.
"""

import json

import pytest
import torch
from test_trainer import checkpoint_after_first_step, make_trainer

from cat.run.loop import RunLoop


def flat(module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


def test_bf16_compute_keeps_fp32_master_and_a_tiny_update_moves_every_weight(tmp_path, tiny_world):
    t = make_trainer(tmp_path, tiny_world, "model.dtype=bfloat16", "optim.lr=5e-7", "grpo.beta=0.01")
    assert all(p.dtype == torch.float32 for p in t.policy.parameters())
    assert all(p.dtype == torch.bfloat16 for p in t.initial_policy.parameters())  # frozen pi_0: compute dtype
    before = flat(t.policy)
    t.step(0)
    after = flat(t.policy)
    grad = torch.cat([p.grad.flatten() for p in t.policy.parameters()])
    # AdamW's first step is lr * g / (|g| + eps): for |g| well above eps (1e-8) it is ~lr. Entries
    # whose gradient is ~eps or below get a far smaller step in any precision (measured: the ~1%
    # that did not move all have |g| ~ 1e-10).
    has_grad = grad.abs() > 1e-7
    assert has_grad.float().mean() > 0.2
    moved = (after != before)[has_grad].float().mean().item()
    assert moved == 1.0, moved
    assert (after != before)[grad != 0].float().mean().item() > 0.98
    # The same update applied to bf16 weights (pure-bf16 training) rounds away almost entirely:
    as_bf16 = (before.bfloat16().float() + (after - before)).bfloat16()
    lost = (as_bf16 == before.bfloat16())[has_grad].float().mean().item()
    assert lost > 0.9, lost


def run_steps(tmp_path, tiny_world, dtype: str, steps: int):
    t = make_trainer(tmp_path / dtype, tiny_world, f"model.dtype={dtype}", "optim.lr=3e-5", "grpo.beta=0.01",
                     "run.prompts_per_step=8")
    rows = [t.step(s).metrics for s in range(steps)]
    return rows, flat(t.policy)


def test_bf16_run_tracks_the_fp32_run(tmp_path, tiny_world):
    """Same seed, gold rewards, 6 steps. Each row draws from its own uniform stream, so the two runs
    sample the same tokens wherever bf16's ~0.4% logit error does not move a CDF boundary past
    the row's uniform: the groups stay mostly the same and so do their losses.

    Tolerance: the dapo loss is -mean(A * w) over ~2,000 tokens with |A| <= ~2.5, so a
    per-token relative error of the bf16 ratio (~2^-8) moves it by well under 0.01; a flipped
    sample in one group of 8 can move one group's advantages, which bounds the per-step gap at
    about 0.05. Reward means must agree within 0.1 (one rollout of 64 flipping moves it 0.016).
    """
    fp32, w32 = run_steps(tmp_path, tiny_world, "float32", 6)
    bf16, w16 = run_steps(tmp_path, tiny_world, "bfloat16", 6)
    for a, b in zip(fp32, bf16, strict=True):
        assert abs(a["loss"] - b["loss"]) < 0.05, (a["loss"], b["loss"])
        assert abs(a["reward/mean"] - b["reward/mean"]) < 0.1
        assert abs(a["kl"] - b["kl"]) < 0.01
    drift32 = (w32 - w16).abs().max().item()
    assert drift32 < 1e-2  # both moved by ~6 * lr per weight (AdamW), in the same direction


def test_bf16_checkpoint_exports_bf16_and_resumes_from_fp32_master(tmp_path, tiny_world):
    from safetensors import safe_open

    from cat.run.checkpoint import master_weights_dir

    t = make_trainer(tmp_path, tiny_world, "model.dtype=bfloat16")
    path = checkpoint_after_first_step(t)
    config = json.loads((path / "model" / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    with safe_open(str(path / "model" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    assert master_weights_dir(path) == path / "master"
    saved = flat(t.policy)
    fresh = make_trainer(tmp_path, tiny_world, "model.dtype=bfloat16")
    RunLoop(fresh).restore(path)
    assert torch.equal(flat(fresh.policy), saved)  # bit for bit: the fp32 master, not the bf16 export
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(path / "model")
    assert next(exported.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_sampler_logprobs_match_trainer_scoring_in_compute_dtype(tmp_path, tiny_world, dtype):
    """The hf engine samples under the same autocast as the trainer scores, so the logged mismatch is
    small: |logp_sampler - logp_trainer| on the order of the compute dtype's rounding."""
    t = make_trainer(tmp_path, tiny_world, f"model.dtype={dtype}")
    m = t.step(0).metrics
    bound = 1e-4 if dtype == "float32" else 0.05
    assert 0 <= m["mismatch/abs_logp_diff"] < bound, m["mismatch/abs_logp_diff"]
    assert m["mismatch/capped_frac"] == 0.0 and m["mismatch/kl"] >= 0

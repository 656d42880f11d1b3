"""cat.algo.grpo (and the GRPO objective that composes it) against hand-derived numbers and an
independent, loop-based implementation."""

import itertools
import math

import pytest
import torch

from cat.algo.grpo import advantages, aggregate, token_losses
from cat.algo.objectives import GRPO
from cat.config import GRPOConfig


def test_group_advantages_hand_derived():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    a = advantages(r, scale="group", eps=1e-4)
    std = math.sqrt(1 / 3)  # Bessel: sum of squares 4 * 0.25 over 3
    expected = 0.5 / (std + 1e-4)
    assert a[0].tolist() == pytest.approx([expected, -expected, -expected, expected], abs=1e-6)
    assert torch.equal(a[1], torch.zeros(4))  # zero spread -> exactly 0


def test_batch_and_none_scaling():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    none = advantages(r, scale="none")
    assert none[0].tolist() == [0.5, -0.5, -0.5, 0.5]
    batch = advantages(r, scale="batch", eps=1e-4)
    std = math.sqrt(1.5 / 7)  # all 8 rewards, mean 0.75
    assert batch[0, 0].item() == pytest.approx(0.5 / (std + 1e-4), abs=1e-6)
    assert torch.equal(batch[1], torch.zeros(4))


def test_zero_spread_non_integer_rewards_are_exactly_zero():
    r = torch.full((3, 5), 0.1)
    assert torch.equal(advantages(r, scale="group"), torch.zeros(3, 5))
    assert torch.equal(advantages(torch.tensor([[0.7]]), scale="group"), torch.zeros(1, 1))  # G = 1


def test_bad_scale_and_shape():
    with pytest.raises(ValueError, match="scale"):
        advantages(torch.zeros(2, 2), scale="std")
    with pytest.raises(ValueError, match="num_groups"):
        advantages(torch.zeros(4), scale="group")


def grpo_loss(logp, old, ref, adv, mask, *, loss_type, max_completion_length=None, epsilon_low=0.2,
                epsilon_high=None, **settings):
    """The loss the trainer's GRPO objective computes on one whole batch, and its statistics' means."""
    section = GRPOConfig(loss_type=loss_type, epsilon=epsilon_low, epsilon_high=epsilon_high, **settings)
    objective = GRPO(section, temperature=1.0, sampler_correction=False, pad_id=0,
                     max_completion_length=max_completion_length or logp.shape[1])
    loss, stats = objective.loss(logp, old, ref, adv, mask, sampler_weights=None, total_sequences=logp.shape[0],
                                 total_tokens=float(mask.sum()))
    return loss, stats.means()


def _inputs():
    logp = torch.zeros(2, 2)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv = torch.tensor([1.0, -3.0])
    return logp, mask, adv


@pytest.mark.parametrize(
    "loss_type,expected",
    [("grpo", 1.0), ("bnpo", 1 / 3), ("dapo", 1 / 3), ("dr_grpo", 1 / 8)],
)
def test_loss_types_hand_derived(loss_type, expected):
    # ratio 1 everywhere: per-token loss = -A: seq 1 -> (-1, -1), seq 2 -> (3, masked)
    logp, mask, adv = _inputs()
    loss, stats = grpo_loss(logp, logp, None, adv, mask, loss_type=loss_type, max_completion_length=4)
    assert loss.item() == pytest.approx(expected, abs=1e-7)
    assert stats["ratio"] == pytest.approx(1.0)
    assert stats["clip_ratio/low"] == 0 and stats["clip_ratio/high"] == 0


def test_dr_grpo_defaults_to_T():
    logp, mask, adv = _inputs()
    loss, _ = grpo_loss(logp, logp, None, adv, mask, loss_type="dr_grpo")
    assert loss.item() == pytest.approx(1 / 4)


def test_clipping_hand_derived():
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.5, 1.5, 0.5, 0.5]]))
    mask = torch.ones(1, 4)
    # Two sequences would need two advantages; use one sequence per sign instead.
    pos, _ = grpo_loss(logp[:, :2], old[:, :2], None, torch.tensor([2.0]), mask[:, :2], loss_type="bnpo")
    assert pos.item() == pytest.approx(-1.2 * 2.0)  # clipped at 1 + 0.2
    neg, stats = grpo_loss(logp[:, 2:], old[:, 2:], None, torch.tensor([-2.0]), mask[:, 2:], loss_type="bnpo")
    assert neg.item() == pytest.approx(0.8 * 2.0)  # clipped at 1 - 0.2
    assert stats["clip_ratio/low"] == 1.0
    _, stats = grpo_loss(logp[:, :2], old[:, :2], None, torch.tensor([2.0]), mask[:, :2], loss_type="bnpo")
    assert stats["clip_ratio/high"] == 1.0
    # clip-higher: 1.5 is inside [0.8, 1.6]
    hi, stats = grpo_loss(logp[:, :2], old[:, :2], None, torch.tensor([2.0]), mask[:, :2], loss_type="bnpo", epsilon_high=0.6)
    assert hi.item() == pytest.approx(-1.5 * 2.0)
    assert stats["clip_ratio/high"] == 0.0
    # a ratio above the clip with a negative advantage is not clipped (pessimistic bound)
    unclipped, _ = grpo_loss(logp[:, :2], old[:, :2], None, torch.tensor([-2.0]), mask[:, :2], loss_type="bnpo")
    assert unclipped.item() == pytest.approx(1.5 * 2.0)


def test_kl_k3_hand_derived():
    logp = torch.zeros(1, 1)
    ref = torch.log(torch.tensor([[2.0]]))
    loss, stats = grpo_loss(logp, logp, ref, torch.tensor([0.0]), torch.ones(1, 1), loss_type="bnpo", beta=0.1)
    k3 = 2.0 - math.log(2.0) - 1.0
    assert stats["kl"] == pytest.approx(k3, abs=1e-6)
    assert loss.item() == pytest.approx(0.1 * k3, abs=1e-7)
    # unbiased KL multiplies k3 by the ratio (1.5 here)
    new = torch.log(torch.tensor([[1.5]]))
    loss_u, _ = grpo_loss(new, logp, ref, torch.tensor([0.0]), torch.ones(1, 1), loss_type="bnpo", beta=0.1, unbiased_kl=True)
    d = math.log(2.0) - math.log(1.5)
    assert loss_u.item() == pytest.approx(0.1 * 1.5 * (math.exp(d) - d - 1), abs=1e-7)


def test_sequence_level_ratio_is_geometric_mean():
    old = torch.zeros(1, 3)
    logp = torch.tensor([[0.1, -0.1, 0.3]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # third token masked: not in the mean
    loss, stats = grpo_loss(logp, old, None, torch.tensor([1.0]), mask, loss_type="bnpo", importance_sampling_level="sequence")
    assert stats["ratio"] == pytest.approx(1.0)  # exp(mean(0.1, -0.1)) = 1
    assert loss.item() == pytest.approx(-1.0)


def test_beta_needs_reference():
    logp, mask, adv = _inputs()
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_loss(logp, logp, None, adv, mask, loss_type="grpo", beta=0.1)
    with pytest.raises(ValueError, match="loss_type must be one of"):
        aggregate(logp, mask, loss_type="ppo", total_sequences=2, total_tokens=3.0)


# ---- independent implementation: explicit loops over sequences and tokens ---------------------


def _reference_loss(logp, old, ref, adv, mask, loss_type, el, eh, beta, unbiased, level, max_len):
    B, T = logp.shape
    per_seq_means, total, n_tokens = [], 0.0, 0.0
    for b in range(B):
        toks = [t for t in range(T) if mask[b, t] > 0]
        if level == "sequence":
            mean_lr = sum(logp[b, t] - old[b, t] for t in toks) / max(len(toks), 1)
        seq_sum = 0.0
        for t in toks:
            rho = math.exp(mean_lr) if level == "sequence" else math.exp(logp[b, t] - old[b, t])
            a = adv[b]
            term = -min(rho * a, min(max(rho, 1 - el), 1 + eh) * a)
            if beta:
                d = ref[b, t] - logp[b, t]
                k3 = math.exp(d) - d - 1
                term += beta * (k3 * rho if unbiased else k3)
            seq_sum += term
        total += seq_sum
        n_tokens += len(toks)
        per_seq_means.append(seq_sum / max(len(toks), 1))
    if loss_type == "grpo":
        return sum(per_seq_means) / B
    if loss_type in ("bnpo", "dapo"):
        return total / max(n_tokens, 1)
    return total / (B * max_len)


OPTIONS = list(itertools.product(
    ["grpo", "bnpo", "dr_grpo", "dapo"], ["token", "sequence"], [0.0, 0.04], [False, True], [0.2, 0.28]
))


@pytest.mark.parametrize("loss_type,level,beta,unbiased,eh", OPTIONS)
def test_matches_independent_implementation(loss_type, level, beta, unbiased, eh):
    g = torch.Generator().manual_seed(hash((loss_type, level, beta, unbiased, eh)) % 2**31)
    B, T = 5, 7
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 2
    old = logp + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    ref = logp + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).double()
    got, _ = grpo_loss(logp, old, ref, adv, mask, loss_type=loss_type, epsilon_low=0.2, epsilon_high=eh, beta=beta,
                         max_completion_length=10, unbiased_kl=unbiased, importance_sampling_level=level)
    want = _reference_loss(logp, old, ref, adv.tolist(), mask, loss_type, 0.2, eh, beta, unbiased, level, 10)
    assert got.item() == pytest.approx(float(want), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_micro_batches_give_the_full_batch_gradient(loss_type, level):
    g = torch.Generator().manual_seed(3)
    B, T = 8, 6
    base = -torch.rand(B, T, generator=g, dtype=torch.float64)
    old = base + 0.2 * torch.randn(B, T, generator=g, dtype=torch.float64)
    ref = base + 0.2 * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).double()
    kwargs = {"epsilon_low": 0.2, "epsilon_high": 0.28, "beta": 0.05, "importance_sampling_level": level}

    full = base.clone().requires_grad_(True)
    loss, _ = grpo_loss(full, old, ref, adv, mask, loss_type=loss_type, max_completion_length=T, **kwargs)
    loss.backward()

    parts = base.clone().requires_grad_(True)
    total_tokens = float(mask.sum())
    for s in range(0, B, 3):  # uneven micro-batches: 3, 3, 2
        per_token, _ = token_losses(parts[s:s + 3], old[s:s + 3], ref[s:s + 3], adv[s:s + 3], mask[s:s + 3], **kwargs)
        aggregate(per_token, mask[s:s + 3], loss_type=loss_type, total_sequences=B, total_tokens=total_tokens,
                  max_completion_length=T).backward()
    assert torch.allclose(full.grad, parts.grad, rtol=1e-12, atol=1e-14)


def test_truncated_is_weights_against_hand_derived_numbers():
    """Three tokens: trainer - sampler log-probs of +0.5, -1.0 and 0; a fourth off the mask."""
    from cat.algo.grpo import truncated_is_weights

    trainer = torch.tensor([[-1.0, -2.0, -0.5, -3.0]])
    sampler = torch.tensor([[-1.5, -1.0, -0.5, -0.1]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    weights, stats = truncated_is_weights(trainer, sampler, mask, cap=1.5)
    # exp(0.5) = 1.6487 -> capped at 1.5; exp(-1) = 0.36788; exp(0) = 1; off the mask: 0
    torch.testing.assert_close(weights, torch.tensor([[1.5, math.exp(-1.0), 1.0, 0.0]]), rtol=0, atol=1e-6)
    means = stats.means()
    assert means["mismatch/abs_logp_diff"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    # k3 = r - log r - 1 per token: (e^0.5 - 1.5) + (e^-1 + 1 - 1) + 0
    assert means["mismatch/kl"] == pytest.approx((math.exp(0.5) - 1.5 + math.exp(-1.0)) / 3, rel=1e-6)
    assert means["mismatch/capped_frac"] == pytest.approx(1 / 3)


def test_sampler_weights_multiply_the_surrogate_not_the_kl():
    """At ratio 1 the surrogate is -A per token; the weights scale it, the beta * k3 term is added unscaled."""
    from cat.algo.grpo import token_losses

    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -2.0]])
    adv = torch.tensor([2.0])
    mask = torch.ones(1, 2)
    w = torch.tensor([[0.5, 2.0]])
    loss, _ = token_losses(logp, logp, ref, adv, mask, beta=0.1, sampler_weights=w)
    k3 = math.exp(-0.5) + 0.5 - 1  # exp(ref - logp) - (ref - logp) - 1 on the first token; 0 on the second
    torch.testing.assert_close(loss, torch.tensor([[-2.0 * 0.5 + 0.1 * k3, -2.0 * 2.0]]), rtol=0, atol=1e-6)


def test_dual_clip_hand_derived():
    """Dual-clip bounds a negative-advantage token's loss by c * |A|: ratio 5 with A = -2 would
    give loss 10; c = 3 caps it at 6 with zero gradient there; ratios below c are as before."""
    old = torch.zeros(2, 2)
    logp = torch.log(torch.tensor([[5.0, 1.5], [5.0, 0.5]])).requires_grad_(True)
    mask = torch.ones(2, 2)
    adv = torch.tensor([-2.0, 2.0])
    plain, _ = grpo_loss(logp, old, None, adv, mask, loss_type="bnpo")
    assert plain.item() == pytest.approx((5.0 * 2 + 1.5 * 2 - 1.2 * 2 - 0.5 * 2) / 4)
    dual, stats = grpo_loss(logp, old, None, adv, mask, loss_type="bnpo", dual_clip=3.0)
    assert dual.item() == pytest.approx((3.0 * 2 + 1.5 * 2 - 1.2 * 2 - 0.5 * 2) / 4)  # 10 -> 6; A > 0 untouched
    assert stats["clip_ratio/dual"] == 0.25
    (grad,) = torch.autograd.grad(dual, logp)
    assert grad[0, 0].item() == 0.0 and grad[0, 1].item() == pytest.approx(1.5 * 2 / 4)  # d(rho * 2)/dlogp = 2 rho
    assert grad[1, 1].item() == pytest.approx(-0.5 * 2 / 4)  # A > 0, rho 0.5 below the clip: the unclipped term
    with pytest.raises(ValueError, match="dual_clip must be above 1"):
        token_losses(logp, old, None, adv, mask, dual_clip=1.0)


def test_reward_and_advantage_clipping_hand_derived():
    from cat.algo.batch import build_batch
    from cat.types import Completion, Group, GroupScore, Prompt

    prompt = Prompt(index=0, text="q", messages=({"role": "user", "content": "q"},))
    comps = tuple(Completion(text=str(i), token_ids=(1,), logprobs=(0.0,), finish_reason="stop") for i in range(4))
    group = Group(prompt=prompt, prompt_ids=(1,), completions=comps)
    score = GroupScore((0.0, 0.0, 0.0, 100.0))  # one long-tailed reward

    def adv(**clip):
        return build_batch([group], [score], pad_id=0, scale="none", eps=1e-4, mask_truncated=False, **clip).advantages

    assert adv().tolist() == [-25.0, -25.0, -25.0, 75.0]
    assert adv(reward_clip=4.0).tolist() == [-1.0, -1.0, -1.0, 3.0]  # rewards 0, 0, 0, 4
    assert adv(advantage_clip=10.0).tolist() == [-10.0, -10.0, -10.0, 10.0]
    batch = build_batch([group], [score], pad_id=0, scale="none", eps=1e-4, mask_truncated=False, reward_clip=4.0)
    assert batch.rewards.tolist() == [0.0, 0.0, 0.0, 100.0]  # the logged rewards are the scored ones

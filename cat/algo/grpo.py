"""GRPO maths: group advantages and the clipped policy loss, as pure tensor functions.

Shapes: ``B`` sequences, ``T`` completion positions, ``mask[B, T]`` is 1 on real completion tokens.
Semantics follow TRL's GRPOTrainer and verl's core_algos (docs/grpo.md), with two choices
stated here:

* A group whose rewards are all equal gets advantage exactly 0 (never NaN, never 1e-17 noise).
* Normalisers are explicit. The trainer splits a batch into micro-batches and calls
  ``token_losses`` + ``aggregate`` (through ``cat.algo.objectives``) with the *whole* batch's
  sequence and token counts, so accumulated gradients equal the full-batch gradient for every
  loss_type (TRL and verl both shipped bugs here). ``bnpo`` and ``dapo`` therefore coincide
  in a single process; with several processes ``dapo`` counts the tokens of all of them.

Nothing here knows about models, tokenizers or configs.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
SCALES = ("group", "batch", "none")


def advantages(rewards: torch.Tensor, scale: str = "group", eps: float = 1e-4) -> torch.Tensor:
    """Group-relative advantages.

    rewards: [num_groups, G] -> advantages [num_groups, G].
    A_i = r_i - mean(group), divided by the group's (Bessel-corrected) std + eps for ``group``,
    by the std of all rewards in the batch + eps for ``batch``, not divided for ``none``.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [num_groups, G], got shape {tuple(rewards.shape)}")
    rewards = rewards.to(torch.float64) if rewards.dtype == torch.float64 else rewards.float()
    mean = rewards.mean(dim=1, keepdim=True)  # [N, 1]
    centred = rewards - mean  # [N, G]
    flat = (rewards == rewards[:, :1]).all(dim=1, keepdim=True)  # [N, 1] zero-spread groups
    if scale == "group":
        std = rewards.std(dim=1, keepdim=True) if rewards.shape[1] > 1 else torch.zeros_like(mean)
        centred = centred / (std + eps)
    elif scale == "batch":
        std = rewards.std() if rewards.numel() > 1 else torch.zeros(())
        centred = centred / (std + eps)
    return torch.where(flat, torch.zeros_like(centred), centred)


@dataclass(frozen=True)
class TokenSums:
    """Sums over tokens, so that micro-batches and ranks add up exactly; ``tokens`` is the first
    field, the count the others are divided by for their means.

    Fields are floats or 0-d tensors on the loss's device: the loss returns tensors, so that adding
    up micro-batches never waits on the device; ``floats()`` reads them all at once.
    """

    tokens: float

    def __add__(self, other: TokenSums) -> TokenSums:
        return type(self)(*(a + b for a, b in zip(self.as_tuple(), other.as_tuple(), strict=True)))

    def as_tuple(self) -> tuple[float, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))

    def floats(self) -> tuple[float, ...]:
        return to_floats(self.as_tuple())


@dataclass(frozen=True)
class LossStats(TokenSums):
    """Token-level diagnostics of one loss evaluation.

    Divide by ``tokens`` for means: ``clip_low / tokens`` is the fraction of active tokens whose
    ratio fell below 1 - epsilon_low with a negative advantage, and so on.
    """

    clip_low: float
    clip_high: float
    kl: float
    ratio: float
    clip_dual: float = 0.0

    def means(self) -> dict[str, float]:
        tokens, clip_low, clip_high, kl, ratio, clip_dual = self.floats()
        n = max(tokens, 1.0)
        low, high = clip_low / n, clip_high / n
        return {
            "clip_ratio/low": low,
            "clip_ratio/high": high,
            "clip_ratio/region": low + high,
            "clip_ratio/dual": clip_dual / n,
            "kl": kl / n,
            "ratio": ratio / n,
        }


def token_losses(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    beta: float = 0.0,
    unbiased_kl: bool = False,
    importance_sampling_level: str = "token",
    sampler_weights: torch.Tensor | None = None,
    dual_clip: float | None = None,
) -> tuple[torch.Tensor, LossStats]:
    """Per-token clipped surrogate plus KL, before aggregation.

    logprobs, old_logprobs, ref_logprobs, mask: [B, T]; advantages: [B].
    ``dual_clip`` c > 1 (dual-clip PPO, Ye et al. 2020): where A < 0 the surrogate is also bounded
    by c * |A|, so a token whose ratio has grown far past 1 + epsilon while its advantage is
    negative cannot push the loss, and the gradient, without bound.
    ``sampler_weights`` [B, T] (``truncated_is_weights``) multiply the clipped surrogate, as TRL's
    vLLM importance-sampling correction does; the KL term is not reweighted.
    Returns (loss [B, T] with zeros off the mask, summed stats).
    """
    mask = mask.to(logprobs.dtype)
    adv = advantages.to(logprobs.dtype).unsqueeze(1)  # [B, 1]
    log_ratio = (logprobs - old_logprobs) * mask  # [B, T]
    if importance_sampling_level == "token":
        log_weight = log_ratio  # [B, T]
    elif importance_sampling_level == "sequence":
        log_weight = (log_ratio.sum(1) / mask.sum(1).clamp(min=1.0)).unsqueeze(1)  # [B, 1] (GSPO)
    else:
        raise ValueError(f"importance_sampling_level must be 'token' or 'sequence', got {importance_sampling_level!r}")
    ratio = torch.exp(log_weight).expand_as(logprobs)  # [B, T]
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)  # [B, T]
    loss = -torch.min(ratio * adv, clipped * adv)  # [B, T]
    dual = torch.zeros_like(loss, dtype=torch.bool)
    if dual_clip is not None:
        if dual_clip <= 1:
            raise ValueError(f"dual_clip must be above 1, got {dual_clip}")
        bound = -dual_clip * adv  # [B, 1], positive where A < 0
        dual = (adv < 0) & (loss > bound)  # [B, T]
        loss = torch.where(dual, bound.expand_as(loss), loss)
    if sampler_weights is not None:
        loss = loss * sampler_weights.to(loss.dtype)
    kl = torch.zeros_like(loss)
    if beta != 0.0:
        if ref_logprobs is None:
            raise ValueError("beta > 0 needs ref_logprobs")
        delta = ref_logprobs - logprobs  # [B, T]
        kl = torch.exp(delta) - delta - 1  # k3, >= 0
        kl_term = kl * ratio if unbiased_kl else kl
        loss = loss + beta * kl_term
    loss = loss * mask
    with torch.no_grad():
        low = ((ratio < 1 - epsilon_low) & (adv < 0)).to(mask.dtype) * mask
        high = ((ratio > 1 + epsilon_high) & (adv > 0)).to(mask.dtype) * mask
        stats = LossStats(tokens=mask.sum(), clip_low=low.sum(), clip_high=high.sum(), kl=(kl * mask).sum(),
                          ratio=(ratio * mask).sum(), clip_dual=(dual.to(mask.dtype) * mask).sum())
        # (0-d tensors: no wait on the device here)
    return loss, stats


def to_floats(values) -> tuple[float, ...]:
    """Floats and 0-d tensors -> floats, reading the tensors from their device in one transfer."""
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    if not tensors:
        return tuple(float(v) for v in values)
    device = tensors[0].device
    stacked = torch.stack([v.detach().to(device, torch.float64) if isinstance(v, torch.Tensor)
                           else torch.tensor(float(v), dtype=torch.float64, device=device) for v in values])
    return tuple(stacked.tolist())


@dataclass(frozen=True)
class MismatchStats(TokenSums):
    """How far the rollout engine's log-probs are from the trainer's, for ``means()``:
    ``mismatch/abs_logp_diff`` (mean |logp_sampler - logp_trainer|), ``mismatch/kl`` (k3 estimate
    of KL(sampler || trainer) on the sampled tokens) and ``mismatch/capped_frac`` (tokens whose
    importance ratio exceeded the cap)."""

    abs_diff: float
    kl: float
    capped: float

    def means(self) -> dict[str, float]:
        tokens, abs_diff, kl, capped = self.floats()
        n = max(tokens, 1.0)
        return {"mismatch/abs_logp_diff": abs_diff / n, "mismatch/kl": kl / n, "mismatch/capped_frac": capped / n}


def truncated_is_weights(
    trainer_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, mask: torch.Tensor, *, cap: float
) -> tuple[torch.Tensor, MismatchStats]:
    """Truncated importance weights min(exp(logp_trainer - logp_sampler), cap) per token.

    trainer_logprobs (the policy before the update), sampler_logprobs (the engine's, as
    sampled), mask: [B, T] -> (weights [B, T], detached, 0 off the mask; mismatch sums).
    """
    with torch.no_grad():
        mask = mask.to(torch.float32)
        delta = (trainer_logprobs.float() - sampler_logprobs.float()) * mask  # [B, T] log(p_trainer / p_sampler)
        ratio = torch.exp(delta)  # [B, T]
        weights = torch.clamp(ratio, max=cap) * mask  # [B, T]
        stats = MismatchStats(
            tokens=mask.sum(),
            abs_diff=(delta.abs() * mask).sum(),
            kl=((ratio - delta - 1) * mask).sum(),  # k3 under tokens drawn from the sampler
            capped=((ratio > cap).float() * mask).sum(),
        )  # 0-d tensors, as LossStats
    return weights, stats


def aggregate(
    loss: torch.Tensor,
    mask: torch.Tensor,
    *,
    loss_type: str,
    total_sequences: int,
    total_tokens: float,
    max_completion_length: int | None = None,
) -> torch.Tensor:
    """Reduce per-token losses [B, T] to a scalar with a normaliser fixed by the whole batch.

    ``total_sequences`` / ``total_tokens`` describe the full batch this slice belongs to, so the
    sum of ``aggregate`` over slices equals ``aggregate`` of the full batch.
    """
    mask = mask.to(loss.dtype)
    if loss_type == "grpo":
        per_seq = loss.sum(1) / mask.sum(1).clamp(min=1.0)  # [B]
        return per_seq.sum() / max(total_sequences, 1)
    if loss_type in ("bnpo", "dapo"):
        return loss.sum() / max(total_tokens, 1.0)
    if loss_type == "dr_grpo":
        length = max_completion_length if max_completion_length is not None else loss.shape[1]
        return loss.sum() / (max(total_sequences, 1) * length)
    raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")


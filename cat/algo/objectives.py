"""What one update minimises: ``GRPO`` (reinforce the step's rollouts by their group-relative
advantages) or ``SFT`` (raise the likelihood of each group's target), behind one interface.

An objective decides what the update is given and how it reads it: the batch it builds from the
step's scored groups, the temperature log-probs are scored at, the per-token loss and its
normaliser, which of the sampler's corrections apply, and the metrics it names. It runs no model:
the trainer's update (``cat.run.trainer.Trainer.update``) is the same for both.

Departure from the paper's CaT-SFT: SFT is the GRPO surrogate at ratio 1 with advantage 1 (dapo),
whose gradient is exactly the token-mean NLL's (``tests/test_sft.py``), so the KL term (``grpo.beta``)
applies to it as to GRPO; the NLL is what it logs as its loss.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from cat.algo.batch import Batch, build_batch, build_sft_batch
from cat.algo.grpo import LossStats, MismatchStats, aggregate, token_losses
from cat.config import GRPOConfig, SFTConfig
from cat.types import Group, GroupScore, Reference


class Objective(ABC):
    """The contract the update reads. Attributes:

    ``temperature``: log-probs (the policy's, pi_0's, the old policy's) are scored at it.
    ``skip_zero_advantage``: rows whose advantage is 0 may be left out (their gradient is 0).
    ``old_logprobs``: ``trainer`` (the policy before the update, scored again when
    ``num_iterations > 1``) or ``sampler`` (the rollout engine's).
    ``sampler_correction``: reweight the loss by truncated importance ratios against the sampler.
    ``needs_spread``: it learns only from groups whose rewards differ (the run's watch says so
    when none did).
    ``loss_type``: ``aggregate``'s normaliser.
    """

    temperature: float
    skip_zero_advantage: bool
    old_logprobs: str
    sampler_correction: bool
    needs_spread: bool
    loss_type: str

    def __init__(self, grpo: GRPOConfig, *, max_completion_length: int):
        self.grpo = grpo
        self.max_completion_length = max_completion_length

    @abstractmethod
    def batch(self, groups: list[Group], references: list[Reference],
              scores: list[GroupScore]) -> tuple[Batch | None, dict]:
        """(the rows the update trains on, None when there are none; the metrics building them adds)."""

    @abstractmethod
    def logged_loss(self, loss: torch.Tensor, logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The 0-d sum one micro-batch adds to the loss the step logs (``loss``: its aggregated
        surrogate; logprobs, mask: [b, T]); :meth:`loss_metrics` reads the total."""

    @abstractmethod
    def loss_metrics(self, logged: float, total_tokens: float) -> dict:
        """The loss metrics from the step's total of :meth:`logged_loss`."""

    @abstractmethod
    def mismatch_metrics(self, mismatch: MismatchStats) -> dict:
        """The sampler-mismatch metrics it logs (``truncated_is_weights``' sums over the step)."""

    @abstractmethod
    def rollout_advantages(self, batch: Batch | None) -> dict[int, list[float]]:
        """{group index: its rollouts' advantages} for samples.jsonl (empty when the rows are not the rollouts)."""

    def loss(self, logprobs: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor | None,
             advantages: torch.Tensor, mask: torch.Tensor, *, sampler_weights: torch.Tensor | None,
             total_sequences: int, total_tokens: float) -> tuple[torch.Tensor, LossStats]:
        """One micro-batch's share of the whole batch's loss (normalised by the whole batch's
        ``total_sequences`` / ``total_tokens``) and its token statistics.
        logprobs, old_logprobs, ref_logprobs, mask, sampler_weights: [b, T]; advantages: [b]."""
        g = self.grpo
        per_token, stats = token_losses(
            logprobs, old_logprobs, ref_logprobs, advantages, mask,
            epsilon_low=g.epsilon, epsilon_high=g.epsilon_high if g.epsilon_high is not None else g.epsilon,
            beta=g.beta, unbiased_kl=g.unbiased_kl, importance_sampling_level=g.importance_sampling_level,
            sampler_weights=sampler_weights, dual_clip=g.dual_clip,
        )  # [b, T]
        loss = aggregate(per_token, mask, loss_type=self.loss_type, total_sequences=total_sequences,
                         total_tokens=total_tokens, max_completion_length=self.max_completion_length)
        return loss, stats


class GRPO(Objective):
    """Group-relative advantages on the rollouts, the clipped surrogate (``grpo`` section), at the
    sampling temperature; the sampler's log-probs and correction as the section sets them."""

    needs_spread = True

    def __init__(self, grpo: GRPOConfig, *, temperature: float, sampler_correction: bool, pad_id: int,
                 max_completion_length: int):
        super().__init__(grpo, max_completion_length=max_completion_length)
        self.temperature = temperature
        self.sampler_correction = sampler_correction
        self.pad_id = pad_id
        # a zero advantage makes a row's surrogate (and its gradient) exactly 0; a KL term does not
        self.skip_zero_advantage = grpo.skip_zero_advantage and grpo.beta == 0
        self.old_logprobs = grpo.old_logprobs
        self.loss_type = grpo.loss_type

    def batch(self, groups, references, scores):
        g = self.grpo
        batch = build_batch(groups, scores, pad_id=self.pad_id, scale=g.scale_rewards, eps=g.advantage_eps,
                            mask_truncated=g.mask_truncated_completions, reward_clip=g.reward_clip,
                            advantage_clip=g.advantage_clip)
        return batch, {}

    def logged_loss(self, loss, logprobs, mask):
        return loss.detach()

    def loss_metrics(self, logged, total_tokens):
        return {"loss": logged}

    def mismatch_metrics(self, mismatch):
        return mismatch.means()

    def rollout_advantages(self, batch):
        out: dict[int, list[float]] = {}
        if batch is not None:
            for gi, a in zip(batch.group_index.tolist(), batch.advantages.tolist(), strict=True):
                out.setdefault(gi, []).append(a)
        return out


class SFT(Objective):
    """``algorithm: sft``: one target per group (``sft`` section, :func:`cat.algo.batch.sft_target`)
    with advantage 1, scored at temperature 1 and averaged over all its tokens (dapo). No sampler
    correction and no mismatch (targets were not all sampled); logs the token-mean NLL as
    ``loss`` and ``sft/nll``, and the groups with a target as ``sft/groups``."""

    temperature = 1.0
    skip_zero_advantage = False
    old_logprobs = "trainer"
    sampler_correction = False
    needs_spread = False  # it learns from any scored reference
    loss_type = "dapo"

    def __init__(self, sft: SFTConfig, grpo: GRPOConfig, tokenizer, *, max_completion_length: int,
                 require_answer: bool):
        super().__init__(grpo, max_completion_length=max_completion_length)
        self.target = sft.target
        self.tokenizer = tokenizer
        self.require_answer = require_answer

    def batch(self, groups, references, scores):
        batch, targets = build_sft_batch(groups, references, scores, self.tokenizer, target=self.target,
                                         max_new_tokens=self.max_completion_length,
                                         require_answer=self.require_answer)
        return batch, {"sft/groups": targets}

    def logged_loss(self, loss, logprobs, mask):
        return -(logprobs.detach() * mask).sum()  # the surrogate's value is -1 at ratio 1: the NLL is what is minimised

    def loss_metrics(self, logged, total_tokens):
        nll = logged / max(total_tokens, 1.0)
        return {"loss": nll, "sft/nll": nll}

    def mismatch_metrics(self, mismatch):
        return {}

    def rollout_advantages(self, batch):
        return {}

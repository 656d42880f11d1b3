"""From scored groups to the padded tensors the policy update consumes.

Layout of one row: ``[pad ... prompt | completion ... pad]``: prompts left-padded to P, completions
right-padded to T. Position ids come from the attention mask, as ``generate`` computes them, so
the trainer scores tokens at the positions they were sampled at.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from cat.algo.grpo import advantages as group_advantages
from cat.teacher.anchor_format import response_part
from cat.types import Completion, Group, GroupScore, Reference


@dataclass(frozen=True)
class Batch:
    """B = (scored groups) x G rows.

    input_ids, attention_mask: [B, P + T]; completion_mask: [B, T] (1 on completion tokens that
    carry loss); advantages, rewards: [B]; truncated: [B] bool (finish_reason == "length");
    group_index: [B] index of the row's group in the step's group list; sampler_logprobs: [B, T]
    the rollout engine's log-probs of the sampled tokens (0 on padding).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    advantages: torch.Tensor
    rewards: torch.Tensor
    truncated: torch.Tensor
    group_index: torch.Tensor
    sampler_logprobs: torch.Tensor

    @property
    def completion_length(self) -> int:
        return self.completion_mask.shape[1]

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def rows(self, start: int, stop: int) -> Batch:
        return Batch(*(t[start:stop] for t in self._fields()))

    def select(self, index: torch.Tensor) -> Batch:
        """The rows at ``index`` (a 1-D long tensor), in that order."""
        return Batch(*(t[index] for t in self._fields()))

    def longest_first(self) -> torch.Tensor:
        """A row order [B] that puts the groups with the longest rows (prompt + completion) first,
        keeping each group's rows together and in order: micro-batches cut from it hold rows of
        similar length, so :meth:`trimmed` removes most of their padding."""
        lengths = self.attention_mask.sum(1).tolist()
        groups = self.group_index.tolist()
        longest: dict[int, int] = {}
        for g, n in zip(groups, lengths, strict=True):
            longest[g] = max(longest.get(g, 0), n)
        return torch.tensor(sorted(range(len(groups)), key=lambda r: (-longest[groups[r]], groups[r], r)),
                            dtype=torch.long)

    def trimmed(self) -> Batch:
        """The same rows without the columns that are padding in every row: the prompt columns
        left of the longest prompt and the completion columns right of the longest completion."""
        if len(self) == 0:
            return self
        T = self.completion_length
        P = self.input_ids.shape[1] - T
        attention = self.attention_mask
        lead = int(attention[:, :P].cumsum(1).eq(0).sum(1).min())  # pad columns every prompt has
        width = max(1, int(attention[:, P:].sum(1).max()))  # the longest completion
        if lead == 0 and width == T:
            return self
        return dataclasses.replace(
            self, input_ids=self.input_ids[:, lead:P + width], attention_mask=attention[:, lead:P + width],
            completion_mask=self.completion_mask[:, :width], sampler_logprobs=self.sampler_logprobs[:, :width])

    def _fields(self) -> tuple[torch.Tensor, ...]:
        return (self.input_ids, self.attention_mask, self.completion_mask, self.advantages,
                self.rewards, self.truncated, self.group_index, self.sampler_logprobs)


def build_batch(
    groups: list[Group],
    scores: list[GroupScore],
    *,
    pad_id: int,
    scale: str,
    eps: float,
    mask_truncated: bool,
    reward_clip: float | None = None,
    advantage_clip: float | None = None,
) -> Batch | None:
    """Advantages per group and padded tensors; groups with ``rewards is None`` are left out.
    ``reward_clip`` c: rewards clamped to [-c, c] before the advantages; ``advantage_clip`` c:
    advantages clamped to [-c, c] after their scaling.

    Returns None when no group was scored.
    """
    kept = [i for i, s in enumerate(scores) if s.rewards is not None]
    if not kept:
        return None
    rewards = torch.tensor([scores[i].rewards for i in kept], dtype=torch.float32)  # [N, G]
    clipped = rewards.clamp(-reward_clip, reward_clip) if reward_clip is not None else rewards
    adv = group_advantages(clipped, scale=scale, eps=eps)  # [N, G]
    if advantage_clip is not None:
        adv = adv.clamp(-advantage_clip, advantage_clip)
    rows = [(i, c) for i in kept for c in groups[i].completions]
    P = max(len(groups[i].prompt_ids) for i in kept)
    T = max(1, max(len(c.token_ids) for _, c in rows))
    ids, attn, logprobs = [], [], []  # rows as lists, made tensors once
    for gi, completion in rows:
        prompt, tokens = groups[gi].prompt_ids, completion.token_ids
        n, left, right = len(tokens), P - len(groups[gi].prompt_ids), T - len(tokens)
        ids.append([pad_id] * left + list(prompt) + list(tokens) + [pad_id] * right)
        attn.append([0] * left + [1] * (len(prompt) + n) + [0] * right)
        logprobs.append((list(completion.logprobs) if len(completion.logprobs) == n else [0.0] * n) + [0.0] * right)
    input_ids = torch.tensor(ids, dtype=torch.long)
    attention = torch.tensor(attn, dtype=torch.long)
    completion_mask = attention[:, P:].float()
    sampler_logprobs = torch.tensor(logprobs, dtype=torch.float32)
    truncated = torch.tensor([c.finish_reason == "length" for _, c in rows], dtype=torch.bool)
    group_index = torch.tensor([gi for gi, _ in rows], dtype=torch.long)
    if mask_truncated:
        completion_mask[truncated] = 0.0
    return Batch(
        input_ids=input_ids,
        attention_mask=attention,
        completion_mask=completion_mask,
        advantages=adv.reshape(-1).float(),
        rewards=rewards.reshape(-1),
        truncated=truncated,
        group_index=group_index,
        sampler_logprobs=sampler_logprobs,
    )


def sft_target(group: Group, ref: Reference, score: GroupScore, tokenizer, *, target: str,
               max_new_tokens: int, require_answer: bool = True) -> Completion | None:
    """What ``algorithm: sft`` fine-tunes one group on, or None (the group is left out).

    ``agreeing_rollout``: the first rollout with the group's best reward, if above 0.
    ``reference``: the rollout the reference is (majority_vote, self_bon: same tokens), or the
    response a synthesis stands for (after ``UNIFIED RESPONSE:``), tokenized and ended with EOS;
    None when it is longer than ``max_new_tokens`` (a cut answer would teach stopping mid-way) or,
    with ``require_answer`` (verifiable tasks), when no final answer was extracted from it.
    """
    if target == "agreeing_rollout":
        rewards = [r for r in score.rewards or () if r is not None]
        if not rewards or max(rewards) <= 0:
            return None
        return group.completions[score.rewards.index(max(rewards))]
    if (require_answer and ref.answer is None) or not ref.text.strip():
        return None
    index = ref.meta.get("index")
    if isinstance(index, int) and 0 <= index < len(group.completions) and group.completions[index].text == ref.text:
        return group.completions[index]
    text = response_part(ref.text)
    if not text:
        return None
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return Completion(text, tuple(ids), (), "stop") if len(ids) <= max_new_tokens else None


def build_sft_batch(groups: list[Group], references: list[Reference], scores: list[GroupScore], tokenizer, *,
                    target: str, max_new_tokens: int, require_answer: bool = True) -> tuple[Batch | None, int]:
    """One row per group that has a target (:func:`sft_target`), with advantage 1: the GRPO
    update's gradient on it (ratio 1, dapo) is then exactly the token-mean NLL's. ``group_index``
    keeps each row's position in ``groups``. Returns (batch or None, groups with a target)."""
    rows = []
    for group, ref, score in zip(groups, references, scores, strict=True):
        t = sft_target(group, ref, score, tokenizer, target=target, max_new_tokens=max_new_tokens,
                       require_answer=require_answer)
        rows.append((Group(group.prompt, group.prompt_ids, (t,) if t else group.completions[:1]),
                     GroupScore((1.0,) if t else None)))
    batch = build_batch([g for g, _ in rows], [s for _, s in rows], pad_id=tokenizer.pad_token_id,
                        scale="none", eps=0.0, mask_truncated=False)
    if batch is not None:
        batch = dataclasses.replace(batch, advantages=torch.ones(len(batch)))
    return batch, sum(s.rewards is not None for _, s in rows)

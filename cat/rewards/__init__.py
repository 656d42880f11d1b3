"""Rewards: group-level callables ``(group, reference) -> GroupScore``.

A reward sees the whole group and the group's reference (the anchor's synthesis, a majority
answer, the gold label ... whatever the estimator produced) and returns one score per rollout,
or ``rewards=None`` when the group cannot be scored: the trainer then drops the group from the
update and counts it, it never becomes reward 0.

Register your own with ``@register_reward("name")`` on a class taking the run's Config; a
per-completion function in TRL's style plugs in through ``from_completion_fn``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from cat.registry import Registry
from cat.rewards.math import answers_match, extract_answer
from cat.types import Group, GroupScore, Reference


class Reward(Protocol):
    def __call__(self, group: Group, reference: Reference) -> GroupScore: ...


REWARDS: Registry[Callable[..., Reward]] = Registry("reward")
register_reward = REWARDS.register


@register_reward("math_equivalence")
class MathEquivalence:
    """1 when a rollout's last boxed answer is equivalent to the reference's answer, else 0.

    No reference answer -> the group is not scored (no signal), never all zeros.
    """

    def __init__(self, config):
        self.mode = config.reward.mode
        self.timeout_s = config.reward.timeout_s

    def __call__(self, group: Group, reference: Reference) -> GroupScore:
        if reference.answer is None:
            return GroupScore(rewards=None, reason="reference has no final answer")
        answers = [extract_answer(c.text) for c in group.completions]
        rewards = tuple(
            1.0 if answers_match(a, reference.answer, mode=self.mode, timeout_s=self.timeout_s) else 0.0
            for a in answers
        )
        answered = sum(a is not None for a in answers) / max(len(answers), 1)
        return GroupScore(rewards=rewards, info={"answer_rate": answered})


def from_completion_fn(fn: Callable[..., list[float | None]]) -> type:
    """Adapt a TRL-style ``f(prompts, completions, **columns) -> list[float | None]``.

    ``None`` for any rollout marks the whole group unscored (a group needs all G rewards for its
    baseline). The reference text is passed as the ``reference`` column.
    """

    class _Adapted:
        def __init__(self, config):
            self.config = config

        def __call__(self, group: Group, reference: Reference) -> GroupScore:
            prompts = [group.prompt.text] * len(group.completions)
            scores = fn(prompts, group.texts, reference=[reference.text] * len(prompts), **{
                k: [v] * len(prompts) for k, v in group.prompt.meta.items()
            })
            if len(scores) != len(prompts):
                raise ValueError(f"reward function {fn.__name__} returned {len(scores)} scores for {len(prompts)} completions")
            if any(s is None for s in scores):
                return GroupScore(rewards=None, reason=f"{fn.__name__} returned None")
            return GroupScore(rewards=tuple(float(s) for s in scores))

    _Adapted.__name__ = f"Adapted_{fn.__name__}"
    return _Adapted


from cat.rewards import rubric as _rubric  # noqa: E402,F401  (registers rubric rewards)

__all__ = ["REWARDS", "Reward", "register_reward", "from_completion_fn", "answers_match", "extract_answer"]

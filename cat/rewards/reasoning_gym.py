"""The ``reasoning_gym`` reward: a reasoning-gym task's own scorer on each rollout's answer.

Reference-based: the scorer compares against the row's generated answer (the label), so the
reward is for the ``gold`` estimator only, the reference-based GRPO baseline on reasoning-gym
data. Label-free runs on the same data (``synthesis``, ``majority_vote``) score with
``math_equivalence`` against their reference's answer and never reach the scorer. The guard is
twofold: ``preflight`` refuses any estimator but ``gold``, and a reference whose source is not
``gold`` stops the step (a plug-in could still assemble one by hand).

Rewards are the scorer's values in [0, 1], partial credits included (reasoning-gym's own RL
reward); evaluation counts only full credit as correct (``cat.tasks.evaluate.grade``).
"""

from __future__ import annotations

from cat.errors import ConfigError
from cat.rewards.base import GroupReward, RewardError, RewardSettings, register_reward
from cat.types import Group, GroupScore, Reference


@register_reward("reasoning_gym")
class ReasoningGymScore(GroupReward):
    """Per rollout: the task's ``score_answer`` of the answer the run's answer chain reads (no
    answer: 0). A prompt without a task scorer (not from ``reasoning-gym:``) stops the step."""

    def __init__(self, settings: RewardSettings):
        super().__init__(settings)
        self.answer_of = self.settings.answer_of

    @classmethod
    def preflight(cls, config) -> None:
        from cat.tasks.reasoning_gym import is_gym

        if config.estimator.name != "gold":
            raise ConfigError(f"reward reasoning_gym grades with the task's answer (a label), so it runs with the gold "
                              f"estimator only, not {config.estimator.name!r}; label-free estimators score against "
                              "their reference with reward.name=math_equivalence")
        if not is_gym(config.data.path):
            raise ConfigError(f"reward reasoning_gym needs reasoning-gym training data (data.path: reasoning-gym:TASK), "
                              f"not {config.data.path!r}")

    def score_group(self, group: Group, reference: Reference) -> GroupScore:
        if reference.source != "gold":
            raise RewardError(f"reward reasoning_gym got a {reference.source!r} reference: it grades with the label, "
                              "so only gold references may reach it")
        scorer = group.prompt.scorer
        if scorer is None:
            raise RewardError(f"reward reasoning_gym: prompt {group.prompt.text[:60]!r} has no reasoning-gym scorer")
        answers = [self.answer_of(c.text) for c in group.completions]
        rewards = tuple(scorer.score(a) for a in answers)
        # answer rates are the trainer's own (answer/rollout_rate); partial credits are this reward's
        return GroupScore(rewards=rewards, info={"partial_credit_rate": sum(0.0 < r < 1.0 for r in rewards) / len(rewards)})

"""Rewards: how each rollout of a group is scored against the group's reference.

The contract (``Reward``, ``RewardFunction``, ``GroupReward``), the registry (``REWARDS``,
``@register_reward``) and the weighted combination of a run's reward functions are in
``cat.rewards.base``; this package re-exports them, so that a plug-in writes ``from cat.rewards
import GroupReward, register_reward``, and imports the built-in rewards so that they are
registered: ``math_equivalence`` and ``length_penalty`` (``base``), ``reasoning_gym``
(``reasoning_gym``), ``rubric`` and ``judge_equivalence`` (``rubric``). Beside them: reading a
reply's final answer (``answers``), math equivalence (``math``), the judge (``judge``), and rubric
records, parsing and proposal (``criteria``).
"""

from cat.rewards import reasoning_gym as _reasoning_gym  # noqa: F401  (registers the reasoning_gym reward)
from cat.rewards import rubric as _rubric  # noqa: F401  (registers rubric rewards)
from cat.rewards.answers import ANSWER_RULES, AnswerChain, Extraction, register_answer_rule
from cat.rewards.base import (
    REWARDS,
    GroupReward,
    Reward,
    RewardContext,
    RewardError,
    RewardFunction,
    RewardSettings,
    Scored,
    WeightedRewards,
    build_rewards,
    from_completion_fn,
    preflight_rewards,
    register_reward,
    reward_names,
)
from cat.rewards.math import answers_match

__all__ = ["REWARDS", "Reward", "RewardFunction", "RewardSettings", "GroupReward", "RewardContext", "Scored", "RewardError",
           "WeightedRewards", "register_reward", "from_completion_fn", "build_rewards", "preflight_rewards",
           "reward_names", "answers_match", "AnswerChain", "Extraction", "ANSWER_RULES", "register_answer_rule"]

"""Records that cross module boundaries. Frozen; shapes and meanings in each docstring."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol


class Scorer(Protocol):
    """A dataset's own grader of one row (a reasoning-gym task's ``score_answer`` bound to its
    entry, ``cat.tasks.reasoning_gym.GymEntry``). It knows the gold answer."""

    def score(self, answer: str | None) -> float:
        """The score in [0, 1] of a final answer already read from a reply (None: no answer)."""
        ...


@dataclass(frozen=True)
class Prompt:
    """One training or evaluation prompt.

    ``messages`` is the chat the policy answers; ``text`` is the raw problem (what an anchor that
    sees the question is shown). ``gold`` is the dataset label when it has one: read only by the
    ``gold`` estimator and by diagnostics, never by a label-free reward.
    """

    index: int
    text: str
    messages: tuple[dict[str, str], ...]
    gold: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    rubric: tuple[Any, ...] | None = None
    """The dataset's own rubric (HealthBench physician criteria,
    ``cat.rewards.criteria.Criterion``): read only by ``rubric.source: dataset`` (the
    reference-based baseline) and by evaluation."""
    tags: tuple[str, ...] = ()
    conversational: bool = False
    """The row gave its prompt as chat messages (TRL's conversational ``prompt`` column): a TRL-style
    reward then receives prompts and completions as messages, as TRL passes them."""
    scorer: Scorer | None = None
    """The dataset's own answer scorer for this row (reasoning-gym): it holds the gold answer, so like
    ``gold`` it is read only by evaluation and by the ``reasoning_gym`` reward, which refuses every
    estimator but ``gold``."""


@dataclass(frozen=True)
class Completion:
    """One sampled completion.

    token_ids: [L] generated ids, including the EOS that ended it (if any).
    logprobs: [L] log-probabilities under the sampling distribution (after temperature/top-k/p),
    as the engine computed them while sampling.
    finish_reason: ``stop`` (EOS or a stop string) or ``length`` (hit max_new_tokens).
    num_tokens: set only where ids are unknown (a remote endpoint reports just its token usage).
    """

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    finish_reason: Literal["stop", "length"]
    num_tokens: int | None = None

    @property
    def length(self) -> int:
        """Tokens generated."""
        return len(self.token_ids) if self.num_tokens is None else self.num_tokens


@dataclass(frozen=True)
class Group:
    """A prompt and its G rollouts: the unit a reference estimator and a reward see."""

    prompt: Prompt
    prompt_ids: tuple[int, ...]
    completions: tuple[Completion, ...]

    @property
    def texts(self) -> list[str]:
        return [c.text for c in self.completions]


@dataclass(frozen=True)
class Reference:
    """What an estimator produced for one group.

    ``text`` is the reference solution (for synthesis: the anchor's output), ``answer`` its
    extracted final answer (None when none could be extracted: the group then gets no learning
    signal), ``source`` the estimator's name, ``meta`` estimator diagnostics (e.g. chosen index,
    anchor tokens, truncation), ``answer_rule`` the answer-chain rule that read ``answer`` from
    ``text`` (None for an answer not read from a text, such as a gold label).
    """

    text: str
    answer: str | None
    source: str
    meta: dict[str, Any] = field(default_factory=dict)
    answer_rule: str | None = None


@dataclass(frozen=True)
class GroupScore:
    """A reward function's verdict on one group.

    ``rewards`` has one float per rollout, or is None when the group could not be scored (no
    usable reference, teacher failure): such a group is dropped from the update and counted,
    never scored 0. ``info`` holds per-group diagnostics, summed/averaged by the trainer.
    """

    rewards: tuple[float, ...] | None
    info: dict[str, float] = field(default_factory=dict)
    reason: str | None = None

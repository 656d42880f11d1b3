"""What the task reads of a run's configuration.

The task (``cat.tasks.task.Task``), the split loader (``load_split``) and the evaluation
(``evaluate_config``) are built from these settings, not from the whole Config: their data and
evaluation sections, how the model formats a prompt and how long its context is, how evaluation
samples, the answer chain and comparison that grade a reply, and whether training rows need a
gold answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cat.config import AnswerConfig, Config, DataConfig, EvalConfig, GenerationConfig, ModelConfig


@dataclass(frozen=True)
class TaskSettings:
    data: DataConfig
    eval: EvalConfig
    model: ModelConfig
    generation: GenerationConfig
    """Evaluation samples with its top_p, top_k, stop and max_new_tokens; prompts must leave room
    for max_new_tokens in the model's context."""
    answer: AnswerConfig
    """The chain that reads a reply's final answer for grading and for the teacher diagnostics."""
    mode: str
    """How an answer is compared with the gold one (``reward.mode``)."""
    timeout_s: int
    """The longest an answer comparison may take (``reward.timeout_s``)."""
    seed: int
    """The run's seed (``run.seed``): evaluation samples from a seed derived from it."""
    train_needs_answers: bool
    """Every training row must carry a gold answer: the ``gold`` estimator reads it."""

    @classmethod
    def from_config(cls, config: Config) -> TaskSettings:
        return cls(data=config.data, eval=config.eval, model=config.model, generation=config.generation,
                   answer=config.answer, mode=config.reward.mode, timeout_s=config.reward.timeout_s,
                   seed=config.run.seed, train_needs_answers=config.estimator.name == "gold")

    @property
    def needs_judge(self) -> bool:
        """HealthBench evaluations are graded by a judge on each example's rubric."""
        return self.data.format == "healthbench"

"""The task: what a run trains on and how it is graded.

A ``Task`` holds the training and evaluation prompts, formatted and tokenized, with prompts too
long for the model skipped (never truncated: a cut question is a different question) and
counted. It evaluates a generator on the evaluation prompts: gold-answer accuracy, or, for
HealthBench data, the rubric score from a judge. It owns what a step measures of the teacher
(``diagnose``): answer diagnostics where replies end in a final answer, none on HealthBench. The
data format's branches live here and in ``cat.tasks.data`` / ``cat.tasks.evaluate``, not in the
algorithm. It is built from ``TaskSettings`` (``cat.tasks.settings``), the sections it reads.
"""

from __future__ import annotations

import logging

from cat.config import ModelConfig
from cat.errors import ConfigError
from cat.models.load import context_length
from cat.rewards.answers import AnswerChain
from cat.tasks.data import encode_prompt, load_split
from cat.tasks.evaluate import evaluate_config
from cat.tasks.settings import TaskSettings
from cat.teacher.diagnostics import NO_DIAGNOSTICS, AnswerDiagnostics, Diagnostics
from cat.types import Prompt

logger = logging.getLogger(__name__)


class Task:
    def __init__(self, settings: TaskSettings, tokenizer, *, log=None):
        self.settings, self.tokenizer, self.log = settings, tokenizer, log or logger.info
        self.prompt_limit = prompt_limit(settings)
        self.prompts = load_split(settings, "train")
        self.prompts, self.prompt_ids, self.skipped_long = fit_prompts(
            self.prompts, tokenizer, settings.model, self.prompt_limit, which="training", log=self.log)
        self.eval_prompts: list[Prompt] = []
        self.eval_ids: list[list[int]] = []
        self.eval_skipped_long = 0
        if settings.eval.path is not None:
            self.eval_prompts, self.eval_ids, self.eval_skipped_long = fit_prompts(
                load_split(settings, "eval"), tokenizer, settings.model, self.prompt_limit, which="evaluation",
                log=self.log)
        self.diagnose: Diagnostics = task_diagnostics(settings)
        """What a step measures of the teacher, against gold where there is one; the trainer passes
        it the step's whole groups, references and scores."""

    @property
    def needs_judge(self) -> bool:
        """HealthBench evaluations are graded by a judge on each example's rubric."""
        return self.settings.needs_judge

    def evaluate(self, generator, judge=None) -> dict:
        """The evaluation summary of ``generator`` on the evaluation prompts (``judge``: when
        ``needs_judge``); ``skipped_long`` counts the prompts left out for their length, and
        ``per_prompt`` holds each prompt's row index, accuracy over its samples and greedy hit."""
        result = evaluate_config(self.settings, generator, self.eval_prompts, self.eval_ids,
                                 judge if self.needs_judge else None)
        examples = result.pop("examples", None)
        if examples:  # what compare pairs arms on: the same prompts, scored one by one
            result["per_prompt"] = {
                "index": [ex["index"] for ex in examples],
                "accuracy": [sum(ex["correct"]) / len(ex["correct"]) for ex in examples],
                **({"greedy": [int(ex["greedy_correct"]) for ex in examples]} if "greedy_correct" in examples[0] else {}),
            }
        result["skipped_long"] = self.eval_skipped_long
        return result


def task_diagnostics(settings: TaskSettings) -> Diagnostics:
    """The teacher diagnostics of the task: answers read by the run's answer chain and compared as
    its reward compares them, except on HealthBench, whose replies have no final answer."""
    if settings.needs_judge:
        return NO_DIAGNOSTICS
    return AnswerDiagnostics(AnswerChain.from_config(settings.answer), mode=settings.mode, timeout_s=settings.timeout_s)


def prompt_limit(settings: TaskSettings, model_path: str | None = None) -> int | None:
    """Longest prompt kept, in tokens: data.max_prompt_tokens, else the context of the model at
    ``model_path`` (default: model.name_or_path) minus the completion budget; None when unknown."""
    if settings.data.max_prompt_tokens is not None:
        return settings.data.max_prompt_tokens
    m = settings.model
    context = context_length(model_path or m.name_or_path, trust_remote_code=m.trust_remote_code)
    return None if context is None else context - settings.generation.max_new_tokens


def fit_prompts(prompts: list[Prompt], tokenizer, model: ModelConfig, limit: int | None, *, which: str,
                log) -> tuple[list[Prompt], list[list[int]], int]:
    """The prompts at most ``limit`` tokens long, their token ids, and how many were left out
    (never truncated: a cut question is a different question). ``log`` gets one line when any
    is left out; none fitting is a ConfigError. ``which`` names the prompts ("training")."""
    kept, kept_ids = [], []
    for p in prompts:
        ids = encode_prompt(p, tokenizer, use_chat_template=model.chat_template,
                            chat_template_kwargs=model.chat_template_kwargs)
        if limit is None or len(ids) <= limit:
            kept.append(p)
            kept_ids.append(ids)
    skipped = len(prompts) - len(kept)
    if prompts and not kept:
        raise ConfigError(f"every {which} prompt is longer than {limit} tokens "
                          "(data.max_prompt_tokens, or the model's context minus generation.max_new_tokens)")
    if skipped:
        log(f"skipped {skipped} of {len(prompts)} {which} prompt(s) longer than {limit} tokens")
    return kept, kept_ids, skipped

"""The task: what a run trains on and how it is graded.

A ``Task`` holds the training and evaluation prompts, formatted and tokenized, with prompts too
long for the model skipped (never truncated: a cut question is a different question) and
counted. It evaluates a generator on the evaluation prompts: gold-answer accuracy, or, for
HealthBench data, the rubric score from a judge. The data format's branches live here and in
``cat.data`` / ``cat.evaluate``, not in the algorithm.
"""

from __future__ import annotations

import logging

from cat.config import Config
from cat.data import encode_prompt, load_split
from cat.errors import ConfigError
from cat.evaluate import evaluate_config
from cat.models import context_length
from cat.types import Prompt

logger = logging.getLogger(__name__)


class Task:
    def __init__(self, config: Config, tokenizer, *, log=None):
        self.config, self.tokenizer, self.log = config, tokenizer, log or logger.info
        self.prompt_limit = self._prompt_limit()
        self.prompts = load_split(config, "train")
        self.prompt_ids, self.skipped_long = self._encode(self.prompts)
        if not self.prompt_ids:
            raise ConfigError(f"every training prompt is longer than {self.prompt_limit} tokens "
                              "(data.max_prompt_tokens, or the model's context minus generation.max_new_tokens)")
        self.eval_prompts: list[Prompt] = []
        self.eval_ids: list[list[int]] = []
        if config.eval.path is not None:
            self.eval_prompts = load_split(config, "eval")
            self.eval_ids, _ = self._encode(self.eval_prompts)

    @property
    def needs_judge(self) -> bool:
        """HealthBench evaluations are graded by a judge on each example's rubric."""
        return self.config.data.format == "healthbench"

    def evaluate(self, generator, judge=None) -> dict:
        """The evaluation summary of ``generator`` on the evaluation prompts (``judge``: when
        ``needs_judge``)."""
        result = evaluate_config(self.config, generator, self.eval_prompts, self.eval_ids,
                                 judge if self.needs_judge else None)
        result.pop("examples", None)
        return result

    def _prompt_limit(self) -> int | None:
        """Longest prompt kept: data.max_prompt_tokens, else the model's context minus the
        completion budget."""
        if self.config.data.max_prompt_tokens is not None:
            return self.config.data.max_prompt_tokens
        m = self.config.model
        context = context_length(m.name_or_path, trust_remote_code=m.trust_remote_code)
        return None if context is None else context - self.config.generation.max_new_tokens

    def _encode(self, prompts: list[Prompt]) -> tuple[list[list[int]], int]:
        """Token ids of the prompts that fit; the others are removed from ``prompts`` and counted."""
        m, limit = self.config.model, self.prompt_limit
        kept, kept_ids = [], []
        for p in prompts:
            ids = encode_prompt(p, self.tokenizer, use_chat_template=m.chat_template,
                                chat_template_kwargs=m.chat_template_kwargs)
            if limit is not None and len(ids) > limit:
                continue
            kept.append(p)
            kept_ids.append(ids)
        skipped = len(prompts) - len(kept)
        if skipped:
            self.log(f"skipped {skipped} of {len(prompts)} prompt(s) longer than {limit} tokens")
        prompts[:] = kept
        return kept_ids, skipped

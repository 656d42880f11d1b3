"""The anchor: a frozen teacher reading a group's rollouts. By default the initial policy pi_0.

It
* synthesizes a reference from the G rollouts with a template from ``anchors/`` (by default
  without the question, as in the paper; ``anchor.include_question`` shows it);
* scores text (mean token NLL) for the min-perplexity and mutual-predictability estimators;
* answers a selection prompt for self best-of-N, and writes rubrics (``cat.rewards.criteria``).

Every call goes through the generation seam (``cat.generation``): a ``ChatModel`` for text and,
for scoring, a ``Generator``. So the anchor runs on the rollout engine's backend: with
``generation.backend: vllm`` pi_0 synthesizes on vLLM (the trainer swaps pi_0's weights into the
rollout engine for the anchor's calls, see ``cat.generation.SharedEngine``). ``anchor.model``
points it at another local model, ``anchor.backend: openai`` at any OpenAI-compatible endpoint
(a stronger or weaker teacher); pi_0 stays the default and the KL reference either way.

Context budget: when the rendered prompt would not fit ``anchor.max_context_tokens`` (default:
the model's context minus the synthesis budget), every rollout is cut to the same token budget,
keeping its head and its tail (where the final answer is) around a ``[...]`` marker; the number
of cut rollouts is reported in each Reference's meta (``truncated_rollouts``). For a remote
anchor the tokens are counted with the policy's tokenizer, an estimate.

What it is not: a trainable model. Nothing here computes gradients.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from cat.config import accepts_whole_config
from cat.errors import ConfigError, TeacherError
from cat.generation import Generator, SamplingParams
from cat.generation.chat import ChatModel, LocalChat, Messages, RequestBudget
from cat.teacher.anchor_format import format_rollouts
from cat.templates import Template, load_template
from cat.types import Completion, Group

if TYPE_CHECKING:
    from cat.config import AnchorConfig, ModelConfig

TRUNCATION_MARK = "\n[...]\n"


@dataclass(frozen=True)
class AnchorOutput:
    """One anchor completion from a template (a synthesis, a selection) and its costs."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    truncated_rollouts: int
    finish_reason: str


@accepts_whole_config("anchor_template(config.anchor)", lambda config: ((config.anchor,), {}))
def anchor_template(anchor: AnchorConfig) -> Template:
    """The ``anchor`` section's synthesis template, validated: it must show the question iff
    ``include_question``."""
    return synthesis_template(anchor.template, with_question=anchor.include_question)


def synthesis_template(name_or_path: str, *, with_question: bool) -> Template:
    """A synthesis template (a name in anchors/ or a path): ``{{rollouts}}``, and ``{{question}}``
    exactly when ``with_question``."""
    required = {"rollouts", "question"} if with_question else {"rollouts"}
    return load_template(name_or_path, kind="anchors", required=required, allowed={"num_rollouts"})


@accepts_whole_config(
    "build_anchor(config.anchor, config.model, policy_tokenizer, seed=config.run.seed, device=..., "
    "pi0_generator=..., make_generator=...)",
    lambda config, *args, **kwargs: ((config.anchor, config.model, *args), {"seed": config.run.seed, **kwargs}))
def build_anchor(anchor: AnchorConfig, policy: ModelConfig, policy_tokenizer, *, seed: int, device, pi0_generator,
                 make_generator) -> Anchor:
    """The teacher the ``anchor`` section names, on the generation seam. ``policy``: the policy's
    ``model`` section (pi_0 is its initial weights; a local teacher is loaded in its dtype, with
    its ``trust_remote_code`` and chat-template settings); ``seed``: ``run.seed``.

    ``pi0_generator()``: the engine serving pi_0 (the default anchor; on vLLM a view of the shared
    rollout engine). ``make_generator(model, tokenizer)``: an engine on the rollout backend for
    another local teacher (``anchor.model``). ``anchor.backend: openai``: an endpoint, checked now
    with one real chat request (the trainer builds it before the initial evaluation).
    """
    from cat.generation.chat import OpenAIChat
    from cat.models.load import context_length, load_model, load_tokenizer

    a, m = anchor, policy
    if a.backend == "openai":
        chat = OpenAIChat(a.model, base_url=a.base_url, api_key_env=a.api_key_env, timeout_s=a.timeout_s,
                          max_retries=a.max_retries, backoff_s=a.backoff_s, max_wait_s=a.max_wait_s,
                          max_concurrency=a.max_concurrency, role="anchor")
        chat.check()  # one real request: an endpoint that cannot chat stops the run here, with its answer quoted
        return Anchor.from_config(a, chat, policy_tokenizer, seed=seed, context_length=None,
                                  shares_policy_tokenizer=False)
    if a.model is None:
        name, tokenizer, generator = f"pi_0 ({m.name_or_path})", policy_tokenizer, pi0_generator()
    else:
        name = a.model
        tokenizer = load_tokenizer(a.model, trust_remote_code=m.trust_remote_code)
        teacher = load_model(a.model, dtype=m.dtype, device=device, trust_remote_code=m.trust_remote_code, frozen=True)
        generator = make_generator(teacher, tokenizer)
    chat = LocalChat(generator, tokenizer, name=name, use_chat_template=m.chat_template,
                     chat_template_kwargs=m.chat_template_kwargs)
    return Anchor.from_config(a, chat, tokenizer, seed=seed,
                              context_length=context_length(a.model or m.name_or_path, trust_remote_code=m.trust_remote_code),
                              scorer=generator, shares_policy_tokenizer=a.model is None)


class Anchor:
    def __init__(self, chat: ChatModel, tokenizer, *, template: Template, include_question: bool,
                 params: SamplingParams, context_length: int | None, max_context_tokens: int | None = None,
                 scorer: Generator | None = None, shares_policy_tokenizer: bool = True):
        self.chat = chat
        self.tokenizer = tokenizer
        self.template = template
        self.include_question = include_question
        self.params = params
        self.scorer = scorer
        self.shares_policy_tokenizer = shares_policy_tokenizer
        if max_context_tokens is None and context_length is None:
            raise ConfigError("anchor.max_context_tokens must be set when the anchor's context length is unknown "
                              "(an OpenAI-compatible anchor)")
        self.max_context_tokens = max_context_tokens or max(64, context_length - params.max_new_tokens)
        self._mark_tokens = len(tokenizer(TRUNCATION_MARK, add_special_tokens=False)["input_ids"])

    @classmethod
    @accepts_whole_config(
        "Anchor.from_config(config.anchor, chat, tokenizer, seed=config.run.seed, context_length=...)",
        lambda config, *args, **kwargs: ((config.anchor, *args), {"seed": config.run.seed, **kwargs}))
    def from_config(cls, anchor: AnchorConfig, chat: ChatModel, tokenizer, *, seed: int, context_length: int | None,
                    scorer: Generator | None = None, shares_policy_tokenizer: bool = True) -> Anchor:
        """The anchor the ``anchor`` section sets up (template, sampling, context budget) over
        ``chat``; ``seed`` (``run.seed``) seeds its sampling."""
        params = SamplingParams(n=1, max_new_tokens=anchor.max_new_tokens, temperature=anchor.temperature,
                                greedy=anchor.greedy, seed=seed)
        return cls(chat, tokenizer, template=anchor_template(anchor), include_question=anchor.include_question,
                   params=params, context_length=context_length, max_context_tokens=anchor.max_context_tokens,
                   scorer=scorer, shares_policy_tokenizer=shares_policy_tokenizer)

    def close(self) -> None:
        """Release the teacher's engine (``scorer``: a local teacher's own, or the rollout engine's
        view serving pi_0); an endpoint holds nothing to release."""
        if self.scorer is not None:
            self.scorer.close()

    def at(self, *, seed: int, row_offset: int = 0) -> Anchor:
        """This anchor sampling from the streams of ``seed``, its first group being group
        ``row_offset`` of the step (a rank's shard starts there): a sampled anchor's references do
        not depend on how a step is split across processes."""
        return self.with_params(seed=seed, row_offset=row_offset)

    def with_params(self, **changes) -> Anchor:
        """This anchor with its sampling settings changed (``greedy=False``, a seed, ...)."""
        view = copy.copy(self)
        view.params = replace(self.params, **changes)
        return view

    def with_question(self, template: str) -> Anchor:
        """This anchor shown the question, through ``template`` (a name in anchors/ or a path,
        with ``{{question}}``): the paper's synthesis with the question, beside the default without."""
        view = copy.copy(self)
        view.template = synthesis_template(template, with_question=True)
        view.include_question = True
        return view

    # ---- prompts -----------------------------------------------------------------------------

    @staticmethod
    def messages(user: str) -> Messages:
        return [{"role": "user", "content": user}]

    def count_tokens(self, user: str) -> int:
        """Prompt tokens of one user message to the anchor (exact for a local anchor)."""
        if isinstance(self.chat, LocalChat):
            return len(self.chat.ids(self.messages(user)))
        return len(self.tokenizer(user, add_special_tokens=False)["input_ids"]) + 8

    def render(self, template: Template, texts: list[str], question: str | None) -> tuple[str, int, int]:
        """The filled template as the user message, its token count, and how many rollouts had to
        be cut to fit."""
        values = {"num_rollouts": str(len(texts))}
        if "question" in template.placeholders:
            values["question"] = question or ""
        user = template.render(rollouts=format_rollouts(texts), **values)
        n = self.count_tokens(user)
        if n <= self.max_context_tokens:
            return user, n, 0
        overhead = self.count_tokens(template.render(rollouts=format_rollouts([""] * len(texts)), **values))
        room = self.max_context_tokens - overhead
        if room < 8 * len(texts):
            raise TeacherError(
                f"anchor template {template.source} with {len(texts)} rollouts needs {overhead} tokens before any "
                f"rollout text, over anchor.max_context_tokens={self.max_context_tokens}"
            )
        encoded = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        budget = room // len(texts)
        while True:
            cut, truncated = [], 0
            for text, tokens in zip(texts, encoded, strict=True):
                if len(tokens) > budget:
                    head = budget // 2
                    tail = max(budget - head - self._mark_tokens, 1)
                    text = self.tokenizer.decode(tokens[:head]) + TRUNCATION_MARK + self.tokenizer.decode(tokens[-tail:])
                    truncated += 1
                cut.append(text)
            user = template.render(rollouts=format_rollouts(cut), **values)
            n = self.count_tokens(user)
            if n <= self.max_context_tokens or budget <= 8:
                return user, n, truncated
            # decode/re-encode at the cut points can cost a few tokens: shrink and retry
            budget -= max(1, (n - self.max_context_tokens) // len(texts) + 1)

    def prompt_ids(self, group: Group) -> list[int]:
        """The group's prompt as ids in the anchor's vocabulary (the policy's ids for pi_0)."""
        if self.shares_policy_tokenizer:
            return list(group.prompt_ids)
        return self._local().ids(list(group.prompt.messages))

    def completion_ids(self, completion: Completion) -> list[int]:
        """A rollout as ids in the anchor's vocabulary (exactly the sampled ids for pi_0)."""
        if self.shares_policy_tokenizer:
            return list(completion.token_ids)
        return self.tokenizer(completion.text, add_special_tokens=False)["input_ids"]

    def ids(self, user: str) -> list[int]:
        """Token ids of one user message to a local anchor."""
        return self._local().ids(self.messages(user))

    def _local(self) -> LocalChat:
        if not isinstance(self.chat, LocalChat):
            raise ConfigError(f"this estimator scores tokens with the anchor, which needs a local anchor model; "
                              f"anchor.backend is an endpoint ({self.chat.name})")
        return self.chat

    # ---- jobs ----------------------------------------------------------------------------------

    def complete(self, users: list[str], params: SamplingParams,
                 budgets: list[RequestBudget] | None = None) -> list[Completion | None]:
        """One anchor completion per user message (None: a remote request that failed). ``budgets``:
        one per message, shared with a caller that asks again (the rubric proposer); None, a fresh
        one each (``anchor.max_retries + 1`` requests)."""
        return self.chat.complete([self.messages(u) for u in users], params, budgets)

    def synthesize(self, groups: list[Group], template: Template | None = None, *, seed: int | None = None) -> list[AnchorOutput]:
        """One anchor completion per group from ``template`` (default: the synthesis template)."""
        template = template or self.template
        rendered = [self.render(template, g.texts, g.prompt.text if self.include_question else None) for g in groups]
        params = self.params if seed is None else replace(self.params, seed=seed)
        outputs = self.complete([user for user, _, _ in rendered], params)
        return [
            AnchorOutput(text=o.text if o else "", prompt_tokens=n, completion_tokens=o.length if o else 0,
                      truncated_rollouts=cut, finish_reason=o.finish_reason if o else "failed")
            for (_, n, cut), o in zip(rendered, outputs, strict=True)
        ]

    def mean_nll(self, contexts: list[list[int]], continuations: list[list[int]]) -> list[float]:
        """Mean negative log-likelihood per token of each continuation given its context."""
        self._local()
        logps = self.scorer.score(contexts, continuations)
        return [-sum(lp) / len(lp) if lp else float("inf") for lp in logps]

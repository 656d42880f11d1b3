"""The anchor: the frozen initial policy pi_0 reading a group's rollouts.

It is the same frozen module the trainer uses as the KL reference (loaded once). It
* synthesizes a reference from the G rollouts with a template from ``anchors/`` (by default
  without the question, as in the paper; ``anchor.include_question`` shows it);
* scores text (mean token NLL) for the min-perplexity and mutual-predictability estimators;
* answers a selection prompt for self best-of-N.

Context budget: when the rendered prompt would not fit ``anchor.max_context_tokens`` (default:
the model's context minus the synthesis budget), every rollout is cut to the same token budget,
keeping its head and its tail (where the final answer is) around a ``[...]`` marker; the number
of cut rollouts is reported in each Reference's meta (``truncated_rollouts``).

What it is not: a trainable model. Nothing here computes gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cat.anchor_format import format_rollouts
from cat.batch import token_logprobs
from cat.data import chat_ids
from cat.errors import TeacherError
from cat.generation import SamplingParams
from cat.generation.hf import HFGenerator
from cat.templates import Template, load_template
from cat.types import Group

TRUNCATION_MARK = "\n[...]\n"


@dataclass(frozen=True)
class Synthesis:
    """One anchor output and its costs."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    truncated_rollouts: int
    finish_reason: str


def anchor_template(config) -> Template:
    """The synthesis template, validated: it must show the question iff include_question."""
    a = config.anchor
    if a.include_question:
        return load_template(a.template, kind="anchors", required={"rollouts", "question"}, allowed={"num_rollouts"})
    return load_template(a.template, kind="anchors", required={"rollouts"}, allowed={"num_rollouts"})


class Anchor:
    def __init__(self, model, tokenizer, *, template: Template, include_question: bool, params: SamplingParams,
                 max_context_tokens: int | None = None, use_chat_template: bool = True,
                 chat_template_kwargs: dict | None = None, batch_size: int = 16):
        self.model = model
        self.tokenizer = tokenizer
        self.template = template
        self.include_question = include_question
        self.params = params
        self.use_chat_template = use_chat_template
        self.chat_template_kwargs = chat_template_kwargs or {}
        self.generator = HFGenerator(model, tokenizer, batch_size=batch_size)
        context = getattr(model.config, "max_position_embeddings", None) or 4096
        self.max_context_tokens = max_context_tokens or max(64, context - params.max_new_tokens)
        self._mark_tokens = len(tokenizer(TRUNCATION_MARK, add_special_tokens=False)["input_ids"])

    @classmethod
    def from_config(cls, config, model, tokenizer) -> Anchor:
        a = config.anchor
        template = anchor_template(config)
        params = SamplingParams(n=1, max_new_tokens=a.max_new_tokens, temperature=a.temperature, greedy=a.greedy,
                                seed=config.run.seed)
        return cls(model, tokenizer, template=template, include_question=a.include_question, params=params,
                   max_context_tokens=a.max_context_tokens, use_chat_template=config.model.chat_template,
                   chat_template_kwargs=config.model.chat_template_kwargs, batch_size=config.generation.batch_size)

    # ---- prompts -----------------------------------------------------------------------------

    def chat_ids(self, user: str) -> list[int]:
        """Token ids of one user message to the anchor."""
        return chat_ids(self.tokenizer, [{"role": "user", "content": user}], use_chat_template=self.use_chat_template,
                        chat_template_kwargs=self.chat_template_kwargs)

    def render(self, template: Template, texts: list[str], question: str | None) -> tuple[list[int], int]:
        """Token ids of the filled template, and how many rollouts had to be cut to fit."""
        values = {"num_rollouts": str(len(texts))}
        if "question" in template.placeholders:
            values["question"] = question or ""
        ids = self.chat_ids(template.render(rollouts=format_rollouts(texts), **values))
        if len(ids) <= self.max_context_tokens:
            return ids, 0
        overhead = len(self.chat_ids(template.render(rollouts=format_rollouts([""] * len(texts)), **values)))
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
            ids = self.chat_ids(template.render(rollouts=format_rollouts(cut), **values))
            if len(ids) <= self.max_context_tokens or budget <= 8:
                return ids, truncated
            # decode/re-encode at the cut points can cost a few tokens: shrink and retry
            budget -= max(1, (len(ids) - self.max_context_tokens) // len(texts) + 1)

    # ---- jobs ----------------------------------------------------------------------------------

    def synthesize(self, groups: list[Group], template: Template | None = None, *, seed: int | None = None) -> list[Synthesis]:
        """One anchor completion per group from ``template`` (default: the synthesis template)."""
        template = template or self.template
        rendered = [self.render(template, g.texts, g.prompt.text if self.include_question else None) for g in groups]
        params = self.params if seed is None else SamplingParams(**{**self.params.__dict__, "seed": seed})
        outputs = self.generator.generate([ids for ids, _ in rendered], params)
        return [
            Synthesis(text=o[0].text, prompt_tokens=len(ids), completion_tokens=len(o[0].token_ids),
                      truncated_rollouts=cut, finish_reason=o[0].finish_reason)
            for (ids, cut), o in zip(rendered, outputs, strict=True)
        ]

    @torch.no_grad()
    def mean_nll(self, contexts: list[list[int]], continuations: list[list[int]], batch_size: int = 16) -> list[float]:
        """Mean negative log-likelihood per token of each continuation given its context."""
        device = self.model.device
        pad = self.tokenizer.pad_token_id
        out: list[float] = []
        for s in range(0, len(contexts), batch_size):
            ctx, cont = contexts[s : s + batch_size], continuations[s : s + batch_size]
            P = max(len(c) for c in ctx)
            T = max(1, max(len(c) for c in cont))
            ids = torch.full((len(ctx), P + T), pad, dtype=torch.long)
            att = torch.zeros_like(ids)
            mask = torch.zeros((len(ctx), T))
            for i, (c, x) in enumerate(zip(ctx, cont, strict=True)):
                ids[i, P - len(c) : P] = torch.tensor(c)
                att[i, P - len(c) : P] = 1
                if x:
                    ids[i, P : P + len(x)] = torch.tensor(x)
                    att[i, P : P + len(x)] = 1
                    mask[i, : len(x)] = 1
            logp, _ = token_logprobs(self.model, ids.to(device), att.to(device), T, 1.0)
            logp = logp.cpu()
            for i in range(len(ctx)):
                n = mask[i].sum().item()
                out.append(float(-(logp[i] * mask[i]).sum().item() / n) if n else float("inf"))
        return out

"""A rubric's criteria: validated criterion records, strict parsing of model output, proposal by
the anchor (the rubric rewards that use them are ``cat.rewards.rubric``).

Format (documented in docs/rubrics.md and in ``rubrics/rubric_proposal.txt``): the *last* complete
``<rubric> ... </rubric>`` block of the output, holding ``<criterion>text</criterion>`` elements,
optionally ``<criterion weight="2">``. Parsing is strict:
* no complete block is an error;
* text between criteria is ignored, but a criterion with nested tags, an empty criterion, one
  over ``MAX_CRITERION_CHARS`` (500), or an unclosed criterion is an error;
* whitespace inside a criterion (line wraps included) collapses to single spaces;
* duplicates are dropped;
* fewer than ``min_criteria`` is an error, and criteria beyond ``max_criteria`` are dropped and
  counted.

A failed parse is retried (a new sample) up to ``rubric.max_attempts``; after that the group
gets no rubric and is dropped from the update, counted, never scored 0. An anchor on an endpoint
repeats a transient failure itself; both draw on one budget per proposal (``RequestBudget``),
``max(rubric.max_attempts, anchor.max_retries + 1)`` requests in all, so they never multiply.

The 500-character limit and the whitespace folding belong to self-proposed rubrics only. A
dataset's own criteria (HealthBench physician and consensus criteria, some several thousand
characters over many lines) are ``Criterion`` records kept exactly as written.
"""

from __future__ import annotations

import html
import logging
import re
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cat.config import Config, accepts_whole_config, warn_whole_config
from cat.display import excerpt
from cat.generation.chat import RequestBudget
from cat.templates import Template, load_template

if TYPE_CHECKING:
    from cat.config import AnchorConfig, RubricConfig

logger = logging.getLogger(__name__)

MAX_CRITERION_CHARS = 500
RUBRIC_FIX = ("use an anchor that writes the rubric format (anchor.model), or give rubric.template one it follows "
              "(rubric.max_new_tokens if its rubrics are cut off; rubric.min_criteria if it writes too few)")
"""What to change when the anchor's rubrics do not parse (the warning and the run's stop say it)."""
_BLOCK = re.compile(r"<rubric>(.*?)</rubric>", re.S | re.I)
_CRITERION = re.compile(r"<criterion(?:\s+weight\s*=\s*\"([^\"]*)\")?\s*>(.*?)</criterion>", re.S | re.I)


class RubricParseError(ValueError):
    """The output is not a valid rubric; the message says why."""


class Criterion(BaseModel):
    """One binary criterion. ``points`` is its weight (HealthBench: may be < 0); ``tags`` are
    the dataset's (``axis:accuracy``, ``level:cluster``, ``cluster:...``).

    The text is kept as given, line breaks included; only leading and trailing whitespace is
    removed. Length limits are the proposal parser's business (``parse_rubric``), not this record's.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    text: str = Field(min_length=1)
    points: float = 1.0
    tags: tuple[str, ...] = ()

    @field_validator("text")
    @classmethod
    def _clean(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("empty criterion")
        return v


class Rubric(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    criteria: tuple[Criterion, ...]
    dropped: int = 0
    """Criteria beyond max_criteria, or duplicates, that were dropped."""


def parse_rubric(text: str, *, min_criteria: int = 5, max_criteria: int = 20) -> Rubric:
    blocks = _BLOCK.findall(text or "")
    if not blocks:
        raise RubricParseError("no complete <rubric>...</rubric> block")
    body = blocks[-1]
    if body.lower().count("<criterion") != body.lower().count("</criterion>"):
        raise RubricParseError("a <criterion> is not closed")
    criteria: list[Criterion] = []
    seen: set[str] = set()
    dropped = 0
    for weight, raw in _CRITERION.findall(body):
        if "<" in raw and re.search(r"</?\w", raw):
            raise RubricParseError(f"criterion contains markup: {raw[:80]!r}")
        content = " ".join(html.unescape(raw).split())
        if not content:
            raise RubricParseError("empty criterion")
        if len(content) > MAX_CRITERION_CHARS:
            raise RubricParseError(f"criterion longer than {MAX_CRITERION_CHARS} characters")
        try:
            points = float(weight) if weight else 1.0
        except ValueError:
            raise RubricParseError(f"criterion weight {weight!r} is not a number") from None
        criterion = Criterion(text=content, points=points)
        if criterion.text.lower() in seen:
            dropped += 1
            continue
        seen.add(criterion.text.lower())
        criteria.append(criterion)
    if len(criteria) < min_criteria:
        raise RubricParseError(f"{len(criteria)} criteria, fewer than the {min_criteria} required")
    if len(criteria) > max_criteria:
        dropped += len(criteria) - max_criteria
        criteria = criteria[:max_criteria]
    return Rubric(criteria=tuple(criteria), dropped=dropped)


@accepts_whole_config("proposal_template(config.rubric)", lambda config: ((config.rubric,), {}))
def proposal_template(rubric: RubricConfig) -> Template:
    """The ``rubric`` section's proposal template, validated: ``{{reference}}``, and
    ``{{question}}`` exactly when ``include_question``."""
    r = rubric
    if r.include_question:
        return load_template(r.template, kind="rubrics", required={"reference", "question"}, allowed={"min_criteria"})
    return load_template(r.template, kind="rubrics", required={"reference"}, allowed={"min_criteria"})


def propose_rubrics(anchor, groups, references, rubric: RubricConfig | None = None, *, seed: int,
                    anchor_settings: AnchorConfig | None = None, config=None) -> tuple[list[Rubric | None], dict]:
    """The anchor turns each reference into a rubric; bounded retries; None where all failed.

    ``rubric``: the ``rubric`` section; ``anchor_settings``: the ``anchor`` section (its
    temperature, greedy and max_retries). Each proposal has one request budget,
    ``max(rubric.max_attempts, anchor.max_retries + 1)``, which the anchor endpoint's retries of
    transient failures share. The whole ``Config`` in ``rubric``'s place (or as ``config=``)
    still works, with a DeprecationWarning.

    Returns the rubrics and counts: ``rubric/attempts``, ``rubric/failures`` (groups with a
    reference whose proposals all failed), ``rubric/no_reference`` (groups with an empty
    reference, never proposed for), ``rubric/parse_rate``, ``rubric/dropped_criteria``, and the
    anchor's ``rubric/prompt_tokens`` and ``rubric/completion_tokens`` (beside the synthesis's
    ``anchor/...``).
    """
    from cat.generation import SamplingParams

    whole = config if config is not None else rubric if isinstance(rubric, Config) else None
    if whole is not None:
        warn_whole_config("propose_rubrics", "propose_rubrics(anchor, groups, references, config.rubric, "
                          "anchor_settings=config.anchor, seed=...)")
        rubric, anchor_settings = whole.rubric, whole.anchor
    if rubric is None or anchor_settings is None:
        raise TypeError("propose_rubrics needs the rubric section and anchor_settings (the anchor section)")
    r, a = rubric, anchor_settings
    template = proposal_template(r)
    rubrics: list[Rubric | None] = [None] * len(groups)
    pending = [i for i, ref in enumerate(references) if ref.text.strip()]
    budgets = {i: RequestBudget(max(r.max_attempts, a.max_retries + 1)) for i in pending}
    spent = anchor.chat.usage.snapshot()
    attempts = 0
    errors: dict[int, str] = {}
    replies: dict[int, str] = {}  # each group's last reply, quoted when it did not parse
    for attempt in range(r.max_attempts):
        pending = [i for i in pending if budgets[i].left]
        if not pending:
            break
        prompts = []
        for i in pending:
            values = {"reference": references[i].text, "min_criteria": str(r.min_criteria)}
            if r.include_question:
                values["question"] = groups[i].prompt.text
            prompts.append(template.render(**values))
        params = SamplingParams(n=1, max_new_tokens=r.max_new_tokens, temperature=max(a.temperature, 0.7),
                                greedy=attempt == 0 and a.greedy, seed=seed + attempt)
        outputs = anchor.complete(prompts, params, [budgets[i] for i in pending])
        attempts += len(pending)
        still = []
        for i, out in zip(pending, outputs, strict=True):
            if out is not None:
                replies[i] = out.text
            try:
                if out is None:
                    raise RubricParseError("the anchor's request failed")
                rubrics[i] = parse_rubric(out.text, min_criteria=r.min_criteria, max_criteria=r.max_criteria)
            except RubricParseError as exc:
                errors[i] = str(exc)
                still.append(i)
        pending = still
    proposed = list(budgets)  # the groups with a reference to write a rubric from
    failed = [i for i in proposed if rubrics[i] is None]
    if failed:
        logger.warning(f"{len(failed)} of {len(proposed)} rubric proposals failed after up to {r.max_attempts} attempts "
                       f"(those groups are left unscored, never scored 0); the last reason: {errors[failed[0]]}; a "
                       f"reply: {excerpt(replies.get(failed[0], ''))!r}. Fix: {RUBRIC_FIX}")
    stats = {  # ints, so that ranks' counts add up
        "rubric/attempts": attempts,
        "rubric/failures": len(failed),
        "rubric/no_reference": len(groups) - len(proposed),  # an empty synthesis: no rubric was asked for
        "rubric/dropped_criteria": sum(rb.dropped for rb in rubrics if rb is not None),
        "rubric/parse_rate": (len(proposed) - len(failed)) / attempts if attempts else float("nan"),  # proposals that parsed
        **anchor.chat.usage.since(spent, "rubric"),
    }
    return rubrics, stats

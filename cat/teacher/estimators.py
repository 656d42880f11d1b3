"""Reference estimators: how a group of G rollouts becomes one reference.

Every estimator is a class registered with ``@register_estimator(name)``. It is built once per run
from the run's :class:`EstimatorSettings` (what an estimator may read of the config, built in one
place: ``build_estimator``) and called on a batch of groups (so anchor calls batch across prompts):

    estimator(groups: list[Group], anchor: Anchor | None) -> list[Reference]

``needs_anchor = True`` asks the trainer for the frozen pi_0 anchor. A reference whose ``answer`` is
None gives its group no learning signal (the math reward refuses to score it). Answers are read
with the run's answer chain (config ``answer``, ``cat.rewards.answers``), as the reward reads them.

Built in: ``synthesis`` (CaT), ``majority_vote`` (TTRL), ``self_bon``, ``judge_bon``, ``min_perplexity``,
``mutual_predictability``, ``single``, ``gold`` (reference-based GRPO: the only one that reads
labels). Write your own in any module and name it in the config's ``plugins``; see docs/plugins.md.
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

from cat.config import ReadsThroughToConfig
from cat.generation import row_seed
from cat.registry import Registry
from cat.rewards.answers import AnswerChain
from cat.rewards.judge import JudgeOpener
from cat.rewards.math import answers_match
from cat.templates import load_template, score_template
from cat.types import Group, Reference

if TYPE_CHECKING:
    from cat.config import Config, EstimatorConfig
    from cat.rewards.judge import Judge
    from cat.teacher.anchor import AnchorOutput

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EstimatorSettings(ReadsThroughToConfig):
    """What a reference estimator is built from: the few settings of the run it may read, not the
    whole config tree (``from_config`` picks them, in this one place).

    ``estimator``: the config's ``estimator`` section itself. ``answer_of``: the run's answer chain
    (config ``answer``), which reads a final answer as the reward reads it. ``mode`` and
    ``timeout_s``: how two answers are compared (``reward.mode``, ``reward.timeout_s``), as the
    reward compares them. ``orders``: how many orders the synthesis reads each group in
    (``anchor.orders``). ``judge_score_template``: the rating template of best-of-N by judge score
    (``judge.score_template``); ``open_judge()`` builds the run's judge (config ``judge``), to be
    called on first use, since an estimator is built before the run loads any model.

    A plug-in estimator written as ``cls(config)`` that reads the whole Config keeps working for
    now: a name that is not one of these fields is read from the run's Config, with a
    DeprecationWarning that names the field to read instead (``config.reward.mode`` -> ``mode``).
    """

    estimator: EstimatorConfig
    answer_of: AnswerChain
    mode: str
    timeout_s: int
    orders: int
    judge_score_template: str
    open_judge: Callable[[], Judge] | None = field(default=None, repr=False, compare=False)
    _config: Config | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_config(cls, config: Config) -> EstimatorSettings:
        """The settings a run of ``config`` builds its estimator with."""
        return cls(estimator=config.estimator, answer_of=AnswerChain.from_config(config.answer),
                   mode=config.reward.mode, timeout_s=config.reward.timeout_s, orders=config.anchor.orders,
                   judge_score_template=config.judge.score_template, open_judge=JudgeOpener(config),
                   _config=config)

    _KIND: ClassVar[str] = "a reference estimator"
    _READ_INSTEAD: ClassVar[dict[str, str]] = {  # where the settings an estimator read from the whole Config are now
        "answer": "settings.answer_of (the run's AnswerChain, built from config.answer)",
        "reward": "settings.mode and settings.timeout_s (reward.mode, reward.timeout_s)",
        "anchor": "settings.orders (anchor.orders)",
        "judge": "settings.judge_score_template and settings.open_judge() (judge.score_template, the judge itself)",
    }


def estimator_settings(settings) -> EstimatorSettings:
    """``settings`` as :class:`EstimatorSettings`: a whole Config (a built-in estimator built the old
    way, ``cls(config)``) is turned into them with a DeprecationWarning."""
    if isinstance(settings, EstimatorSettings):
        return settings
    warnings.warn("a reference estimator is built from EstimatorSettings, not the whole Config: build it with "
                  "cat.teacher.estimators.build_estimator(config), or cls(EstimatorSettings.from_config(config))",
                  DeprecationWarning, stacklevel=3)
    return EstimatorSettings.from_config(settings)


def build_estimator(config: Config, name: str | None = None) -> Estimator:
    """The run's reference estimator (``estimator.name``, or ``name``), built from its settings."""
    return ESTIMATORS.get(name or config.estimator.name)(EstimatorSettings.from_config(config))


@runtime_checkable
class Estimator(Protocol):
    """The contract of a reference estimator (a class registered with ``@register_estimator``).

    ``needs_anchor``: True to be called with the frozen pi_0 :class:`~cat.teacher.anchor.Anchor`
    (None otherwise). Built once per run as ``cls(settings)`` with the run's
    :class:`EstimatorSettings` (its answer chain, answer comparison, ``anchor.orders``, judge); an
    older plug-in written as ``cls(config)`` still reads the whole Config through them, with a
    DeprecationWarning naming the field to read. Called once per step on the step's groups
    (in a multi-process run, this rank's), it returns one Reference per group, in order.
    Optional ``decodes_with_anchor = False``: the estimator only scores with the anchor, so
    ``cat-rl synthesize --anchor-decoding greedy,sampled`` runs it once, not once per decoding.
    Optional ``last_stats``: a dict of counts (ints add up across ranks) and rates the latest call
    spent (``judge_bon``: its judge's calls, failures and tokens), logged with the step's metrics
    and kept in a test-time result's ``judge``. Optional ``open()``: build what the estimator
    loads (a model, an engine) now rather than at its first call; the trainer calls it on the
    update thread before async rollouts first run the estimator on the rollout thread."""

    needs_anchor: bool

    def __call__(self, groups: list[Group], anchor) -> list[Reference]: ...


def _check_estimator(name: str, obj) -> None:
    if not (isinstance(obj, type) and any("__call__" in vars(k) for k in obj.__mro__[:-1])):
        raise TypeError(f"reference estimator '{name}' must be a class built as cls(settings) and called as "
                        "estimator(groups, anchor) -> list[Reference]")
    if not isinstance(getattr(obj, "needs_anchor", None), bool):
        raise TypeError(f"reference estimator '{name}' must declare needs_anchor = True or False "
                        "(True: it is called with the frozen pi_0 anchor)")


ESTIMATORS: Registry[type] = Registry("reference estimator", check=_check_estimator)
register_estimator = ESTIMATORS.register


def majority_answer(answers: Sequence[str | None], *, mode: str = "equivalence", timeout_s: int = 3) -> tuple[str | None, int, int]:
    """Most frequent answer up to equivalence: (answer, index of its first holder, votes).

    Answers are clustered greedily in rollout order (each joins the first equivalent cluster).
    Ties go to the cluster whose first member came first, so the result is deterministic.
    Unparsable answers (None) never vote; all None -> (None, -1, 0).
    """
    clusters: list[list[int]] = []
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        for cluster in clusters:
            if answers_match(answer, answers[cluster[0]], mode=mode, timeout_s=timeout_s):
                cluster.append(i)
                break
        else:
            clusters.append([i])
    if not clusters:
        return None, -1, 0
    best = max(clusters, key=lambda c: (len(c), -c[0]))
    return answers[best[0]], best[0], len(best)


def read_reference(text: str, answer_of: AnswerChain, source: str, meta: dict | None = None) -> Reference:
    """A reference whose answer the run's answer chain reads from ``text`` (``meta["answer_refused"]``:
    the answer ``answer.form`` refused, when it refused one)."""
    extraction = answer_of.extract(text)
    meta = {**(meta or {}), **({"answer_refused": extraction.refused} if extraction.refused is not None else {})}
    return Reference(text=text, answer=extraction.answer, source=source, meta=meta, answer_rule=extraction.rule)


@register_estimator("gold")
class Gold:
    """The dataset's gold answer: ordinary reference-based GRPO (the baseline CaT must beat)."""

    needs_anchor = False

    def __init__(self, settings: EstimatorSettings):
        pass

    def __call__(self, groups: list[Group], anchor=None) -> list[Reference]:
        out = []
        for group in groups:
            gold = group.prompt.gold
            out.append(Reference(text=gold or "", answer=gold or None, source="gold"))
        return out


@register_estimator("majority_vote")
class MajorityVote:
    """TTRL: the most frequent equivalent final answer among the G rollouts."""

    needs_anchor = False

    def __init__(self, settings: EstimatorSettings):
        settings = estimator_settings(settings)
        self.mode, self.timeout_s = settings.mode, settings.timeout_s
        self.answer_of = settings.answer_of

    def __call__(self, groups: list[Group], anchor=None) -> list[Reference]:
        out = []
        for group in groups:
            read = [self.answer_of.extract(t) for t in group.texts]
            answer, index, votes = majority_answer([r.answer for r in read], mode=self.mode, timeout_s=self.timeout_s)
            text = group.texts[index] if index >= 0 else ""
            out.append(Reference(text=text, answer=answer, source="majority_vote", meta={"index": index, "votes": votes},
                                 answer_rule=read[index].rule if index >= 0 else None))
        return out


@register_estimator("single")
class Single:
    """One rollout (the first) as the reference: the no-aggregation control."""

    needs_anchor = False

    def __init__(self, settings: EstimatorSettings):
        self.answer_of = estimator_settings(settings).answer_of

    def __call__(self, groups: list[Group], anchor=None) -> list[Reference]:
        return [read_reference(g.texts[0], self.answer_of, "single", {"index": 0}) for g in groups]


def _anchor_meta(output: AnchorOutput, seconds: float) -> dict:
    """What one anchor output cost, for a reference's meta."""
    return {
        "anchor_prompt_tokens": output.prompt_tokens,
        "anchor_completion_tokens": output.completion_tokens,
        "anchor_seconds": seconds,
        "truncated_rollouts": output.truncated_rollouts,
        "finish_reason": output.finish_reason,
    }


@register_estimator("synthesis")
class Synthesis:
    """CaT: the frozen anchor reconciles the G rollouts into one new reference (Eq. 1).

    The reference may disagree with every rollout. Its answer is what the run's answer chain
    reads from the anchor's output; an output with none leaves the group without a reference (no
    signal). With ``anchor.orders`` k > 1 the anchor reads each group k times, in k rotations of
    its rollouts, and the reference is the synthesis with the answer most of the k give
    (permutation self-consistency); meta ``order_answers`` / ``order_texts`` hold the k answers and
    syntheses, ``last_read`` the rollout the chosen synthesis read last.
    """

    needs_anchor = True

    def __init__(self, settings: EstimatorSettings):
        settings = estimator_settings(settings)
        self.answer_of = settings.answer_of
        self.orders = settings.orders
        self.mode, self.timeout_s = settings.mode, settings.timeout_s

    def __call__(self, groups: list[Group], anchor) -> list[Reference]:
        if not groups:
            return []
        start = time.perf_counter()
        orders = min(self.orders, *(len(g.completions) for g in groups))  # a smaller G (testtime's G = 4) has fewer
        if orders == 1 or not anchor.params.greedy:
            runs = [anchor.synthesize([rotated(g, k, orders) for g in groups], seed=order_seed(anchor.params.seed, k))
                    for k in range(orders)]  # [orders][groups]; order k's row i samples as group i does
        else:  # a greedy anchor draws nothing: every order's rows go in one batch
            flat = anchor.synthesize([rotated(g, k, orders) for k in range(orders) for g in groups])
            runs = [flat[k * len(groups):(k + 1) * len(groups)] for k in range(orders)]
        seconds = (time.perf_counter() - start) / len(groups)
        if orders == 1:
            return [read_reference(o.text, self.answer_of, "synthesis", _anchor_meta(o, seconds)) for o in runs[0]]
        out = []
        for i in range(len(groups)):
            syntheses = [run[i] for run in runs]
            refs = [read_reference(o.text, self.answer_of, "synthesis") for o in syntheses]
            answer, k, votes = majority_answer([r.answer for r in refs], mode=self.mode, timeout_s=self.timeout_s)
            k = max(k, 0)  # no order gave an answer: the first order's text, unscored
            g = len(groups[i].completions)
            meta = {**_anchor_meta(syntheses[k], seconds),
                    "anchor_prompt_tokens": sum(o.prompt_tokens for o in syntheses),
                    "anchor_completion_tokens": sum(o.completion_tokens for o in syntheses),
                    "truncated_rollouts": max(o.truncated_rollouts for o in syntheses),
                    "orders": orders, "order": k, "order_votes": votes, "last_read": (k * g // orders - 1) % g,
                    "order_answers": [r.answer for r in refs], "order_texts": [o.text for o in syntheses]}
            out.append(replace(refs[k], meta=meta))
        return out


def rotated(group: Group, k: int, orders: int) -> Group:
    """Order k of ``orders`` of a group's rollouts: rotated left by k * G // orders places, so the
    rollout read last moves through the group (order 0 is the sampled order)."""
    shift = k * len(group.completions) // orders
    if shift == 0:
        return group
    return replace(group, completions=group.completions[shift:] + group.completions[:shift])


def order_seed(seed: int, k: int) -> int:
    """The sampling seed of order k's syntheses: the anchor's own for order 0, another stream each
    for the others (a greedy anchor ignores it)."""
    return seed if k == 0 or seed is None else row_seed(seed, -1, k)


@register_estimator("self_bon")
class SelfBestOfN:
    """The anchor reads the G rollouts and names the best one by number (template ``self_bon``).

    The reference is that rollout. A reply with no valid number leaves the group without one.
    """

    needs_anchor = True

    def __init__(self, settings: EstimatorSettings):
        self.template = load_template("self_bon", kind="anchors", required={"rollouts"}, allowed={"num_rollouts", "question"})
        self.answer_of = estimator_settings(settings).answer_of

    def __call__(self, groups: list[Group], anchor) -> list[Reference]:
        if not groups:
            return []
        start = time.perf_counter()
        outputs = anchor.synthesize(groups, self.template)
        seconds = (time.perf_counter() - start) / len(groups)
        out = []
        for group, o in zip(groups, outputs, strict=True):
            index = parse_choice(o.text, len(group.completions))
            meta = {**_anchor_meta(o, seconds), "index": index, "choice_text": o.text}
            if index is None:
                out.append(Reference(text="", answer=None, source="self_bon", meta=meta))
            else:
                out.append(read_reference(group.texts[index], self.answer_of, "self_bon", meta))
        return out


@register_estimator("judge_bon")
class JudgeBestOfN:
    """Best-of-N by judge score: the judge (config ``judge``, independent of the policy) rates each
    rollout 1..10 as a reply to the question (``judge.score_template``), and the reference is the
    best-rated rollout (ties: the first). A rating that fails is left out, never read as the lowest;
    a group with no rating has no reference. No anchor and no label: the judge sees the question
    and one rollout at a time. The default template's ratings need room for a sentence before
    ``<score>N</score>`` (``judge.max_new_tokens``, 96 say); ``judge_score_brief`` asks for the
    rating alone."""

    needs_anchor = False

    def __init__(self, settings: EstimatorSettings):
        settings = estimator_settings(settings)
        self.open_judge = settings.open_judge
        self.template = score_template(settings.judge_score_template)
        self.answer_of = settings.answer_of
        self._judge = None
        self.last_stats: dict = {}  # the judge's counts and tokens of the latest call (Judge.scores)

    def open(self) -> None:
        """Build the judge now, not at its first use (which may be on the rollout thread, where a
        new engine's process groups must not be made beside the update's collectives)."""
        if self._judge is None:
            self._judge = self.open_judge()

    def __call__(self, groups: list[Group], anchor=None) -> list[Reference]:
        self.last_stats = {}
        if not groups:
            return []
        self.open()  # on first use: an estimator is built before the run loads any model
        flat, self.last_stats = self._judge.scores([(g.prompt.messages, c.text) for g in groups for c in g.completions],
                                                   self.template)
        out, k = [], 0
        for group in groups:
            row = flat[k:k + len(group.completions)]
            k += len(group.completions)
            rated = [i for i, s in enumerate(row) if s is not None]
            meta = {"scores": row}
            if not rated:
                out.append(Reference(text="", answer=None, source="judge_bon", meta={**meta, "index": None}))
                continue
            best = max(rated, key=lambda i: (row[i], -i))
            out.append(read_reference(group.texts[best], self.answer_of, "judge_bon", {**meta, "index": best}))
        return out


def parse_choice(text: str, n: int) -> int | None:
    """The 0-based index named by ``BEST: k`` (or the last bare number) in 1..n, else None."""
    match = re.search(r"BEST\s*:\s*(\d+)", text, flags=re.IGNORECASE)
    numbers = [match.group(1)] if match else re.findall(r"\b(\d+)\b", text)[-1:]
    if not numbers:
        return None
    k = int(numbers[0])
    return k - 1 if 1 <= k <= n else None


def lowest_nll(groups: list[Group], nll: list[float], source: str, answer_of: AnswerChain) -> list[Reference]:
    """Per group, the rollout with the lowest NLL (``nll`` is flat, G per group; ties: first)."""
    out, k = [], 0
    for group in groups:
        scores = nll[k : k + len(group.completions)]
        k += len(group.completions)
        index = min(range(len(scores)), key=lambda i: (scores[i], i))
        out.append(read_reference(group.texts[index], answer_of, source, {"index": index, "nll": scores[index]}))
    return out


@register_estimator("min_perplexity")
class MinPerplexity:
    """The rollout with the lowest mean token NLL under the anchor, given the prompt."""

    needs_anchor = True
    decodes_with_anchor = False  # it scores with the anchor: greedy or sampled makes no difference

    def __init__(self, settings: EstimatorSettings):
        self.answer_of = estimator_settings(settings).answer_of

    def __call__(self, groups: list[Group], anchor) -> list[Reference]:
        contexts = [anchor.prompt_ids(g) for g in groups for _ in g.completions]
        conts = [anchor.completion_ids(c) for g in groups for c in g.completions]
        return lowest_nll(groups, anchor.mean_nll(contexts, conts), "min_perplexity", self.answer_of)


@register_estimator("mutual_predictability")
class MutualPredictability:
    """The rollout the anchor finds most predictable given the *other* rollouts.

    For each i the anchor reads the other G-1 rollouts (template ``mutual_predictability``) and
    scores rollout i's mean token NLL as the continuation; the lowest wins.
    """

    needs_anchor = True
    decodes_with_anchor = False  # it scores with the anchor: greedy or sampled makes no difference

    def __init__(self, settings: EstimatorSettings):
        self.template = load_template("mutual_predictability", kind="anchors", required={"rollouts"},
                                      allowed={"num_rollouts", "question"})
        self.answer_of = estimator_settings(settings).answer_of

    def __call__(self, groups: list[Group], anchor) -> list[Reference]:
        contexts, conts = [], []
        for g in groups:
            for i, c in enumerate(g.completions):
                others = [t for j, t in enumerate(g.texts) if j != i]
                user, _, _ = anchor.render(self.template, others, g.prompt.text if anchor.include_question else None)
                contexts.append(anchor.ids(user))
                conts.append(anchor.completion_ids(c))
        return lowest_nll(groups, anchor.mean_nll(contexts, conts), "mutual_predictability", self.answer_of)

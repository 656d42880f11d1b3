"""Rubric rewards for open-ended tasks, and the HealthBench score.

``rubric`` (CaT on non-verifiable tasks): per group, the rubric is either
* proposed by the anchor from the group's reference (``rubric.source: self_proposed``), or
* the example's own (``dataset``: e.g. HealthBench physician rubrics, the reference-based
  baseline).

An independent judge then marks every (rollout, criterion) pair (a dataset criterion together
with the conversation the rollout answers and the criterion's points, through the judge's
conversation template, as HealthBench's grader shows them; a self-proposed one on the rollout
alone, through ``judge_criterion``), and
reward = sum(points of met criteria) / sum(positive points), over the criteria the judge
actually answered (all points are 1 for self-proposed rubrics, so this is the fraction met).
* A criterion whose verdict failed is left out for that rollout, never read as "no".
* A rollout with no answered positive criterion leaves the whole group unscored.

``judge_equivalence`` (the paper's model-as-judge comparison): 1 when the judge says the rollout
reaches the same answer as the reference, else 0; a failed verdict leaves the group unscored.

``rubric_score(points, met)`` is HealthBench's per-example value (unclipped, may be negative).
"""

from __future__ import annotations

from pathlib import Path

from cat.errors import ConfigError
from cat.rewards.base import RewardContext, RewardFunction, RewardSettings, Scored, register_reward
from cat.rewards.criteria import Criterion, Rubric, propose_rubrics
from cat.rewards.judge import JudgeItem
from cat.templates import load_template
from cat.types import Group, GroupScore, Reference


def rubric_score(points, met) -> float:
    """sum(points of met criteria) / sum(positive points). Negative points (penalties) count
    when met; the result is not clipped. Raises ValueError when no criterion has positive points."""
    points, met = list(points), list(met)
    if len(points) != len(met):
        raise ValueError(f"{len(points)} points but {len(met)} verdicts")
    possible = sum(p for p in points if p > 0)
    if possible <= 0:
        raise ValueError("no criterion with positive points: the score is undefined")
    return sum(p for p, m in zip(points, met, strict=True) if m) / possible


def score_with_failures(criteria: tuple[Criterion, ...], verdicts: list[bool | None]) -> float | None:
    """rubric_score over the criteria the judge answered; None when none with positive points was."""
    kept = [(c.points, v) for c, v in zip(criteria, verdicts, strict=True) if v is not None]
    if not any(p > 0 for p, _ in kept):
        return None
    return rubric_score([p for p, _ in kept], [v for _, v in kept])


class _JudgedReward(RewardFunction):
    """A reward marked by a judge model; its verdict cache lives in the run directory."""

    needs = frozenset({"run_dir"})

    @classmethod
    def preflight(cls, config) -> None:
        """Validate the templates before any model is loaded."""
        from cat.rewards.criteria import proposal_template
        from cat.rewards.judge import judge_template

        judge_template(config.judge)
        judge_template(config.judge, conversation=True)
        if cls is RubricReward and config.rubric.source == "self_proposed":
            proposal_template(config.rubric)

    def __init__(self, settings: RewardSettings):
        super().__init__(settings)
        self.judge = None

    def open(self, run_dir: Path | None) -> None:
        """Build the judge (its verdict cache lives in the run directory) and check that it gives
        verdicts (``Judge.check``): an endpoint that cannot stops the run here, before any
        evaluation or training."""
        self.judge = self._judge(run_dir)
        self.judge.check()

    def close(self) -> None:
        self.judge = None  # a local judge's model and engine go with it

    def _judge(self, run_dir: Path | None):
        if self.settings.open_judge is None:
            raise ConfigError(f"reward {type(self).__name__} needs a judge: build its settings with "
                              "RewardSettings.from_config(config), or give them open_judge")
        return self.settings.open_judge(None if run_dir is None else Path(run_dir) / "verdicts.jsonl")


@register_reward("rubric")
class RubricReward(_JudgedReward):
    def __init__(self, settings: RewardSettings):
        super().__init__(settings)
        if self.settings.rubric.source == "self_proposed":  # the anchor writes each group's rubric
            self.needs = frozenset({"run_dir", "anchor"})

    def score(self, groups: list[Group], references: list[Reference], ctx: RewardContext) -> Scored:
        anchor, seed = ctx.anchor, ctx.seed
        if self.judge is None:
            self.open(None)
        stats: dict[str, float] = {}
        dataset = self.settings.rubric.source == "dataset"
        if dataset:
            rubrics = [Rubric(criteria=g.prompt.rubric) if g.prompt.rubric else None for g in groups]
        else:
            rubrics, stats = propose_rubrics(anchor, groups, references, self.settings.rubric, seed=seed,
                                             anchor_settings=self.settings.anchor)
        items, owners = [], []
        for gi, (group, rubric) in enumerate(zip(groups, rubrics, strict=True)):
            if rubric is None:
                continue
            texts = tuple(c.text for c in rubric.criteria)
            context = {"conversation": group.prompt.messages, "points": tuple(c.points for c in rubric.criteria)} \
                if dataset else {}
            for ci, completion in enumerate(group.completions):
                items.append(JudgeItem(completion.text, texts, **context))
                owners.append((gi, ci))
        verdicts, judge_stats = self.judge.judge(items) if items else ([], {})
        stats.update(judge_stats)
        per_group: dict[int, list[list[bool | None]]] = {}
        for (gi, _), v in zip(owners, verdicts, strict=True):
            per_group.setdefault(gi, []).append(v)
        scores, audit = [], []
        lengths = [len(r.criteria) for r in rubrics if r is not None]
        stats["rubric/length"] = sum(lengths) / len(lengths) if lengths else float("nan")
        for gi, (group, rubric, ref) in enumerate(zip(groups, rubrics, references, strict=True)):
            if rubric is None:
                reason = "no reference to build a rubric from" if not ref.text.strip() else "rubric proposal failed"
                if self.settings.rubric.source == "dataset":
                    reason = "example has no rubric"
                scores.append(GroupScore(rewards=None, reason=reason))
                audit.append({"prompt": group.prompt.text, "reference": ref.text, "rubric": None, "reason": reason})
                continue
            values = [score_with_failures(rubric.criteria, v) for v in per_group[gi]]
            if any(v is None for v in values):
                scores.append(GroupScore(rewards=None, reason="judge failed on every criterion of a rollout"))
            else:
                scores.append(GroupScore(rewards=tuple(values), info={"criteria": float(len(rubric.criteria))}))
            audit.append({
                "prompt": group.prompt.text,
                "reference": ref.text,
                "rubric": [c.model_dump() for c in rubric.criteria],
                "rollouts": [{"completion": c.text, "verdicts": v, "reward": r}
                             for c, v, r in zip(group.completions, per_group[gi], values, strict=True)],
            })
        return Scored(scores, stats, audit)


@register_reward("judge_equivalence")
class JudgeEquivalence(_JudgedReward):
    """Model-as-judge: does the rollout reach the same answer as the reference?"""

    def _judge(self, run_dir: Path | None):
        """The judge's plain template becomes the equivalence question (one call per rollout), the
        one its check asks; its conversation template still grades HealthBench evaluations."""
        judge = super()._judge(run_dir)
        judge.template = load_template("judge_equivalence", kind="rubrics", required={"response", "reference"},
                                       allowed=set())
        return judge

    def score(self, groups: list[Group], references: list[Reference], ctx: RewardContext) -> Scored:
        if self.judge is None:
            self.open(None)
        items = [(c.text, [ref.text]) for g, ref in zip(groups, references, strict=True) if ref.text.strip()
                 for c in g.completions]
        verdicts, stats = self.judge.judge(items) if items else ([], {})
        scores, audit, k = [], [], 0
        for group, ref in zip(groups, references, strict=True):
            if not ref.text.strip():
                scores.append(GroupScore(rewards=None, reason="empty reference"))
                continue
            vs = [verdicts[k + i][0] for i in range(len(group.completions))]
            k += len(group.completions)
            if any(v is None for v in vs):
                scores.append(GroupScore(rewards=None, reason="judge failed"))
            else:
                scores.append(GroupScore(rewards=tuple(float(v) for v in vs)))
            audit.append({"prompt": group.prompt.text, "reference": ref.text,
                          "rollouts": [{"completion": c.text, "verdict": v} for c, v in zip(group.completions, vs, strict=True)]})
        return Scored(scores, stats, audit)

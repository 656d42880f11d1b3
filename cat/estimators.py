"""Reference estimators: how a group of G rollouts becomes one reference.

Every estimator is a class registered with ``@register_estimator(name)``. It is built once per run
from the Config and called on a batch of groups (so anchor calls batch across prompts):

    estimator(groups: list[Group], anchor: Anchor | None) -> list[Reference]

``needs_anchor = True`` asks the trainer for the frozen pi_0 anchor. A reference whose ``answer`` is
None gives its group no learning signal (the math reward refuses to score it).

Built in: ``synthesis`` (CaT), ``majority_vote`` (TTRL), ``self_bon``, ``min_perplexity``,
``mutual_predictability``, ``single``, ``gold`` (reference-based GRPO: the only one that reads
labels). Write your own in any module and name it in ``estimator.plugins``; see README.
"""

from __future__ import annotations

from collections.abc import Sequence

from cat.registry import Registry
from cat.rewards.math import answers_match, extract_answer
from cat.types import Group, Reference

ESTIMATORS: Registry[type] = Registry("reference estimator")
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


@register_estimator("gold")
class Gold:
    """The dataset's gold answer: ordinary reference-based GRPO (the baseline CaT must beat)."""

    needs_anchor = False

    def __init__(self, config):
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

    def __init__(self, config):
        self.mode = config.reward.mode
        self.timeout_s = config.reward.timeout_s

    def __call__(self, groups: list[Group], anchor=None) -> list[Reference]:
        out = []
        for group in groups:
            answers = [extract_answer(t) for t in group.texts]
            answer, index, votes = majority_answer(answers, mode=self.mode, timeout_s=self.timeout_s)
            text = group.texts[index] if index >= 0 else ""
            out.append(Reference(text=text, answer=answer, source="majority_vote", meta={"index": index, "votes": votes}))
        return out


@register_estimator("single")
class Single:
    """One rollout (the first) as the reference: the no-aggregation control."""

    needs_anchor = False

    def __init__(self, config):
        pass

    def __call__(self, groups: list[Group], anchor=None) -> list[Reference]:
        return [
            Reference(text=g.texts[0], answer=extract_answer(g.texts[0]), source="single", meta={"index": 0})
            for g in groups
        ]

"""Teacher diagnostics: is the reference any good, and is the policy collapsing onto it?

What can be measured depends on the task, so the task owns its diagnostics
(``cat.tasks.task.Task.diagnose``, a :class:`Diagnostics`): a task whose replies end in a final
answer (``data.format: qa``: arithmetic, math, reasoning-gym) measures them with
:class:`AnswerDiagnostics`; HealthBench's replies have no final answer, so it has none
(``NO_DIAGNOSTICS``). What the anchor spent (``anchor_costs``) is measured on every task.

Gold labels are read here *to measure only*; nothing computed here feeds a reward or a loss.
Groups without a gold label are left out of the accuracy figures (and those ``diag/*`` keys are
absent when no group has one). Label-free warning signs (``diag/reference_in_rollouts``,
``diag/disagree_rate``) need no gold.

Keys of ``answer_diagnostics`` (means over the step's groups unless stated):
  diag/rollout_accuracy        rollouts whose final answer equals gold
  diag/majority_accuracy       majority-vote answer equals gold
  diag/reference_accuracy      the estimator's reference answer equals gold
  diag/disagree_rate           reference answer differs from the majority answer
  diag/disagree_accuracy       reference accuracy on those disagreements (NaN when none)
  diag/correct_all_wrong       count: reference right although every rollout was wrong
  diag/reward_accuracy         scored rollouts whose reward (> 0.5) equals their correctness
  diag/reference_unparsable    references with no extractable answer
  diag/reference_in_rollouts   reference answer equals at least one rollout's answer
  diag/distinct_answers        distinct answers (up to equivalence) among a group's rollouts
  diag/answer_entropy          entropy (nats) of a group's answers over those classes: 0 when
                               every rollout agrees, a collapse warning when it falls to 0
  diag/reference_is_last       (synthesis) the reference's answer is the last-read rollout's,
  diag/reference_is_other      against the share of the other rollouts it equals

Answer extraction (label-free; the run's answer chain, ``cat.rewards.answers``):
  answer/rollout_rate              rollouts with an answer
  answer/rollout_rule/RULE         rollouts whose answer RULE read (one key per rule of the chain)
  answer/rollout_refused           rollouts whose answer answer.form refused (with a form set)
  answer/reference_refused         references whose answer answer.form refused (with a form set)
  answer/reference_rate            references with an answer
  answer/reference_rule/RULE       references whose answer RULE read (a gold label counts in the rate only)

Keys of ``anchor_costs``, every task:
  anchor/*                     summed token and time counts reported by the estimator
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from cat.rewards.answers import AnswerChain, Extraction, extraction_metrics
from cat.rewards.math import answers_match
from cat.teacher.estimators import majority_answer
from cat.types import Group, GroupScore, Reference


class Diagnostics(Protocol):
    """What a task measures of the teacher each step: the step's groups (whole, gold included),
    references and scores in, metrics out. Measured only: nothing here feeds the update."""

    def __call__(self, groups: list[Group], references: list[Reference], scores: list[GroupScore]) -> dict: ...


@dataclass(frozen=True)
class AnswerDiagnostics:
    """The diagnostics of a task whose replies end in a final answer (``answer_diagnostics``):
    answers read by the run's ``answer_of`` chain and compared as its reward compares them
    (``mode``, ``timeout_s``: ``reward.mode``, ``reward.timeout_s``)."""

    answer_of: AnswerChain
    mode: str
    timeout_s: float

    def __call__(self, groups: list[Group], references: list[Reference], scores: list[GroupScore]) -> dict:
        return answer_diagnostics(groups, references, scores, answer_of=self.answer_of, mode=self.mode,
                                  timeout_s=self.timeout_s)


def _nothing(groups: list[Group], references: list[Reference], scores: list[GroupScore]) -> dict:
    return {}


NO_DIAGNOSTICS: Diagnostics = _nothing
"""A task with nothing to measure of the teacher's references (HealthBench: no final answer)."""


def answer_diagnostics(groups: list[Group], references: list[Reference], scores: list[GroupScore], *,
                       answer_of: AnswerChain, mode: str, timeout_s: float) -> dict:
    """The ``answer/*`` and ``diag/*`` keys above for one step: answers read by the run's
    ``answer_of`` chain and compared as its reward compares them (``reward.mode``,
    ``reward.timeout_s``)."""

    def same(a, b) -> bool:
        return answers_match(a, b, mode=mode, timeout_s=timeout_s)

    read = [[answer_of.extract(t) for t in group.texts] for group in groups]
    out: dict[str, float] = {
        **extraction_metrics("rollout", [e for group in read for e in group], answer_of.rules),
        **extraction_metrics("reference", [Extraction(r.answer, r.answer_rule, r.meta.get("answer_refused"))
                                           for r in references], answer_of.rules),
    }
    if answer_of.form != "any":  # every step of a run with a form logs the shares it refused
        out.setdefault("answer/rollout_refused", 0.0)
        out.setdefault("answer/reference_refused", 0.0)
    n_unparsable = sum(r.answer is None for r in references)
    out["diag/reference_unparsable"] = n_unparsable / max(len(references), 1)
    in_rollouts = disagree = 0
    labelled = rollout_hits = rollouts = ref_hits = maj_hits = all_wrong_right = 0
    disagree_labelled = disagree_hits = reward_agree = reward_total = 0
    is_last, is_other, compared = 0, 0.0, 0
    distinct_sum = entropy_sum = 0.0
    for group, group_read, ref, score in zip(groups, read, references, scores, strict=True):
        answers = [e.answer for e in group_read]
        sizes = _clusters([a for a in answers if a is not None], same)
        distinct_sum += len(sizes)
        total = sum(sizes)
        entropy_sum += -sum(n / total * math.log(n / total) for n in sizes) if total else 0.0
        majority, _, _ = majority_answer(answers, mode=mode, timeout_s=timeout_s)
        matches = [a is not None and same(a, ref.answer) for a in answers] if ref.answer is not None else []
        if any(matches):
            in_rollouts += 1
        if len(matches) > 1 and ref.source.startswith("synthesis"):  # a teacher that copies the last response it read
            last = ref.meta.get("last_read", len(matches) - 1)  # anchor.orders: the chosen order's last rollout
            compared += 1
            is_last += matches[last]
            is_other += (sum(matches) - matches[last]) / (len(matches) - 1)
        differs = not same(ref.answer, majority)
        disagree += differs
        gold = group.prompt.gold
        if gold is None:
            continue
        labelled += 1
        correct = [same(a, gold) for a in answers]
        rollout_hits += sum(correct)
        rollouts += len(correct)
        ref_right = same(ref.answer, gold)
        ref_hits += ref_right
        maj_hits += same(majority, gold)
        all_wrong_right += ref_right and not any(correct)
        if differs:
            disagree_labelled += 1
            disagree_hits += ref_right
        if score.rewards is not None:
            reward_agree += sum((r > 0.5) == c for r, c in zip(score.rewards, correct, strict=True))
            reward_total += len(correct)
    out["diag/reference_in_rollouts"] = in_rollouts / max(len(references), 1)
    out["diag/distinct_answers"] = distinct_sum / max(len(groups), 1)  # label-free: how varied a group's answers are
    out["diag/answer_entropy"] = entropy_sum / max(len(groups), 1)
    if compared:  # label-free: how often the synthesis has the last rollout's answer, against the others'
        out["diag/reference_is_last"] = is_last / compared
        out["diag/reference_is_other"] = is_other / compared
    out["diag/disagree_rate"] = disagree / max(len(references), 1)
    if labelled:
        out["diag/rollout_accuracy"] = rollout_hits / rollouts
        out["diag/reference_accuracy"] = ref_hits / labelled
        out["diag/majority_accuracy"] = maj_hits / labelled
        out["diag/disagree_accuracy"] = disagree_hits / disagree_labelled if disagree_labelled else float("nan")
        out["diag/correct_all_wrong"] = float(all_wrong_right)
        out["diag/reward_accuracy"] = reward_agree / reward_total if reward_total else float("nan")
    return out


def anchor_costs(references: list[Reference]) -> dict:
    """``anchor/*``: the tokens, seconds and truncated rollouts the estimator's anchor calls
    reported in the references' meta, summed over the step (absent when none reported them)."""
    out: dict[str, float] = {}
    for key in ("anchor_prompt_tokens", "anchor_completion_tokens", "anchor_seconds", "truncated_rollouts"):
        values = [r.meta[key] for r in references if key in r.meta]
        if values:
            out[f"anchor/{key.removeprefix('anchor_')}"] = float(sum(values))
    return out


def _clusters(answers: list[str], same) -> list[int]:
    """Sizes of the groups of equivalent answers (each joins the first cluster it matches)."""
    heads: list[str] = []
    sizes: list[int] = []
    for a in answers:
        for k, head in enumerate(heads):
            if same(a, head):
                sizes[k] += 1
                break
        else:
            heads.append(a)
            sizes.append(1)
    return sizes

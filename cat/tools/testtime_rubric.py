"""Test-time CaT on rubric tasks (HealthBench format): arms that answer each prompt with one
response made from the same G rollouts, each answer graded with the example's physician rubric.

No training: pi_t = pi_0. The policy samples G rollouts per prompt once (``run.seed`` alone, as in
``cat.tools.testtime``); with several G values each arm reads the first g. The arms (``ARMS``):

* ``single``: the first rollout, the no-aggregation control (always run: every paired difference
  is taken against it).
* ``synthesis``: the anchor's synthesis of the rollouts, as written (the paper's test-time CaT).
* ``rubric_best_of_n``: the anchor turns that synthesis into a self-proposed rubric and the reward
  judge marks every rollout against it (``RubricReward``, as in training); the rollout meeting the
  largest share of criteria is the answer. Not in the paper: CaT's training reward used as a
  test-time selector.
* ``judge_best_of_n``: the reward judge rates every rollout 1..10 for the conversation
  (``rubrics/judge_score.txt``); the highest rated of those it rated is the answer. The paper's
  model-as-judge selection baseline.

Ties go to the first rollout. No physician rubric reaches an arm: the anchor and the rubric
selector read the groups through ``cat.teacher.firewall.blind``, the rating sees the conversation
alone.
The evaluation judge (``eval.judge``, else the reward's judge, with a warning) then grades every arm's answer on the physician rubric
as ``cat-rl eval`` does (``cat.tasks.evaluate.grade_on_rubric``). Per arm and G: the HealthBench
score (the clipped mean of per-prompt rubric scores, ``cat.tasks.healthbench.score_graded``), a 95%
interval over prompts of the unclipped per-prompt scores, and the paired difference from ``single``.
Judges answer once per (criterion, reply) and per rated reply: ``cat-rl testtime --verdicts FILE``
keeps their cache for the next run.

A failure is never a score of 0. An arm that cannot answer a prompt (an empty synthesis, a rubric
proposal that failed after its retries, a judge that failed on a rollout's every criterion, no
rollout rated) has no answer there, and an answer the evaluation judge could not grade has no
score: the prompt is counted under ``failed`` with its reason, and left out of that arm's score
and of every paired difference it enters (each says over how many prompts). Departure from a
deployed selector, which would fall back to a rollout: a fallback would hide how often the
teacher fails.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from pathlib import Path

from cat.display import number
from cat.errors import ConfigError
from cat.rewards.rubric import rubric_score
from cat.tasks.evaluate import grade_on_rubric, grader_section
from cat.tasks.healthbench import score_graded
from cat.teacher.estimators import ESTIMATORS, build_estimator
from cat.teacher.firewall import blind, label_fields
from cat.tools.stats import mean_ci, paired
from cat.tools.testtime_policy import load_policy, pi0_anchor, sample_rollouts
from cat.types import Group

logger = logging.getLogger(__name__)

ARMS = ("single", "synthesis", "rubric_best_of_n", "judge_best_of_n")
"""The rubric arms, in the order the table shows them."""

_NEEDS_ANCHOR = {"synthesis", "rubric_best_of_n"}
_NEEDS_JUDGE = {"rubric_best_of_n", "judge_best_of_n"}


def check_arms(config, names: list[str]) -> list[str]:
    """The arms named, in table order, ``single`` always among them (the baseline of the paired
    differences), or a ConfigError before any model loads: an arm that does not
    exist here (a math estimator such as ``majority_vote`` votes on final answers, which rubric
    rows do not have), or a setting an arm cannot honour."""
    unknown = [n for n in names if n not in ARMS]
    if unknown:
        math_only = [n for n in unknown if n in ESTIMATORS]
        why = f"{', '.join(math_only)} compare final answers, which rubric rows do not have; " if math_only else ""
        raise ConfigError(f"test-time arm(s) {', '.join(unknown)} on HealthBench data: {why}choose from "
                          f"{', '.join(ARMS)} (--estimators)")
    if not names:
        raise ConfigError(f"no test-time arm named: choose from {', '.join(ARMS)} (--estimators)")
    if _NEEDS_ANCHOR & set(names) and config.anchor.orders > 1:
        raise ConfigError(f"anchor.orders={config.anchor.orders}: several orders vote on the syntheses' final answers, "
                          "which free-form replies do not have; set anchor.orders=1 for rubric data")
    from cat.rewards.criteria import proposal_template
    from cat.rewards.judge import judge_template
    from cat.templates import score_template

    if "rubric_best_of_n" in names:
        proposal_template(config.rubric)
        judge_template(config.judge)
    if "judge_best_of_n" in names:
        score_template(config.judge.score_template)
    judge_template(grader_section(config), conversation=True)
    return [n for n in ARMS if n in names or n == "single"]  # single: the baseline of every paired difference


def run_rubric_test_time(config, names: list[str], sizes: list[int], *, verdicts: Path | None = None) -> dict:
    """Every arm of ``names`` at every G of ``sizes``, on the same rollouts, graded on the physician
    rubric. ``verdicts``: a JSONL verdict cache the judges share with later runs (None: this run's
    memory only)."""
    from cat.rewards import RewardContext, RewardSettings
    from cat.rewards.judge import Judge
    from cat.rewards.rubric import RubricReward
    from cat.templates import score_template

    arms = check_arms(config, names)
    prompts, ids, skipped, tokenizer, model, generator = load_policy(config)
    anchor = pi0_anchor(config, tokenizer, model, generator) if _NEEDS_ANCHOR & set(arms) else None

    def open_judge(section, cache_path: Path | None) -> Judge:
        judge = Judge.from_config(section, cache_path=cache_path, generation=config.generation,
                                  dtype=config.model.dtype, device=config.model.device, seed=config.run.seed)
        judge.check()
        return judge

    judge = None
    if _NEEDS_JUDGE & set(arms) or config.eval.judge is None:
        judge = open_judge(config.judge, verdicts)
    if config.eval.judge is None:
        if _NEEDS_JUDGE & set(arms):
            logger.warning(f"the answers are graded by the reward's own judge ({config.judge.model}), the one that "
                           "picks the best-of-N answers: set eval.judge to a separate grader")
        grader = judge
    else:
        grader = open_judge(config.eval.judge, verdicts and verdicts.with_name(f"{verdicts.stem}-eval{verdicts.suffix}"))
    completions = sample_rollouts(config, generator, ids)
    examples = [{"index": p.index, "question": p.text, "rollouts": [{"text": c.text} for c in cs],
                 "synthesis": {}, "rubric": {}, "rubric_scores": {}, "answers": {}}
                for p, cs in zip(prompts, completions, strict=True)]
    seconds: dict[str, float] = {}
    counts: dict[str, dict] = {}  # the judges' counts, per part of the run
    ratings: list[list[int | None]] = []
    if "judge_best_of_n" in arms:
        start = time.perf_counter()
        g = max(sizes)  # the rollouts some arm reads: rated once, whatever G reads them
        flat, stats = judge.scores([(p.messages, c.text) for p, cs in zip(prompts, completions, strict=True)
                                    for c in cs[:g]], score_template(config.judge.score_template))
        ratings = [flat[k * g:(k + 1) * g] for k in range(len(prompts))]
        for ex, row in zip(examples, ratings, strict=True):
            for r, s in zip(ex["rollouts"], row, strict=False):
                r["judge_score"] = s
        counts["judge_best_of_n"] = stats
        seconds["judge_best_of_n"] = time.perf_counter() - start
    selector = None
    if "rubric_best_of_n" in arms:  # always self-proposed, whatever rubric.source says for training
        selector = RubricReward(RewardSettings.from_config(config.model_copy(update={"rubric": config.rubric.model_copy(
            update={"source": "self_proposed"})})))
        selector.judge = judge
    for g in sizes:
        groups = [Group(prompt=p, prompt_ids=tuple(i), completions=tuple(cs[:g]))
                  for p, i, cs in zip(prompts, ids, completions, strict=True)]
        blind_groups = blind(groups, label_fields(config.data))  # the arms read no label; grading below does
        for ex in examples:
            ex["answers"][f"single@{g}"] = _answer(ex, 0, None)
        if anchor is not None:
            start = time.perf_counter()
            refs = build_estimator(config, "synthesis")(blind_groups, anchor)
            seconds[f"synthesis@{g}"] = time.perf_counter() - start
            for ex, ref in zip(examples, refs, strict=True):
                ex["synthesis"][f"@{g}"] = ref.text
                if "synthesis" in arms:
                    ex["answers"][f"synthesis@{g}"] = _written(ref.text)
            if selector is not None:
                start = time.perf_counter()
                scored = selector.score(blind_groups, refs, RewardContext(anchor=anchor, seed=config.run.seed + 29))
                seconds[f"rubric_best_of_n@{g}"] = time.perf_counter() - start
                counts[f"rubric_best_of_n@{g}"] = scored.metrics
                for ex, score, audit in zip(examples, scored.scores, scored.audit, strict=True):
                    ex["rubric"][f"@{g}"] = [c["text"] for c in audit["rubric"]] if audit.get("rubric") else None
                    ex["rubric_scores"][f"@{g}"] = [r["reward"] for r in audit.get("rollouts", ())] or None
                    ex["answers"][f"rubric_best_of_n@{g}"] = _answer(ex, _first_best(score.rewards), score.reason)
        if "judge_best_of_n" in arms:
            for ex, row in zip(examples, ratings, strict=True):
                ex["answers"][f"judge_best_of_n@{g}"] = _answer(ex, _first_best(row[:g]), "the judge rated no rollout")
    start = time.perf_counter()
    counts["grading"] = _grade(grader, prompts, examples)
    seconds["grading"] = time.perf_counter() - start
    grader_model = grader_section(config).model
    result = {"task": "rubric", "n": len(prompts), "skipped_long": skipped, "group_sizes": sizes, "arms": arms,
              "grader": {"model": grader_model, "is_reward_judge": config.eval.judge is None},
              **summarize(examples, arms, sizes), "judge": counts, "seconds": seconds}
    return {**result, "examples": examples}


def _first_best(values) -> int | None:
    """The index of the largest value, the first among equals, over the values that exist; None when
    none does."""
    if values is None:
        return None
    known = [(v, -i) for i, v in enumerate(values) if v is not None]
    return -max(known)[1] if known else None


def _answer(example: dict, index: int | None, reason: str | None) -> dict:
    """An arm's answer that is rollout ``index``, or its failure (``reason``) when None."""
    if index is None:
        return {"chosen": None, "text": None, "failure": reason or "no answer"}
    return {"chosen": index, "text": example["rollouts"][index]["text"], "failure": None}


def _written(text: str) -> dict:
    """An answer the anchor wrote; an empty one is a failure."""
    return {"chosen": None, "text": text, "failure": None} if text.strip() else \
        {"chosen": None, "text": None, "failure": "empty synthesis"}


def _grade(grader, prompts, examples: list[dict]) -> dict:
    """Every answer of every arm graded once on its prompt's physician rubric; each answer gets its
    ``score`` (the unclipped rubric score, None when not graded), the grader's ``verdicts`` (one per
    physician criterion, None where it failed) and its ``graded`` example (dropped once summarized).
    Returns the grader's counts."""
    pending: dict[tuple[int, str], list[dict]] = {}
    for k, ex in enumerate(examples):
        for answer in ex["answers"].values():
            if answer["text"] is not None:
                pending.setdefault((k, answer["text"]), []).append(answer)
    keys = list(pending)
    graded, verdicts, stats = grade_on_rubric(grader, [prompts[k] for k, _ in keys], [text for _, text in keys])
    for key, example, vs in zip(keys, graded, verdicts, strict=True):
        for answer in pending[key]:
            answer["graded"], answer["verdicts"] = example, vs
            answer["score"] = None if example is None else rubric_score(
                [p for p, _, _ in example["criteria"]], [m for _, _, m in example["criteria"]])
            if example is None:
                answer["failure"] = "the grader answered no positive criterion"
    return stats


def summarize(examples: list[dict], arms: list[str], sizes: list[int]) -> dict:
    """The statistics of a rubric test-time result, from its graded examples."""
    out: dict = {"score": {}, "interval": {}, "std_error": {}, "scored": {}, "failed": {}, "paired": {}}
    for g in sizes:
        for name in arms:
            key = f"{name}@{g}"
            answers = [ex["answers"][key] for ex in examples]
            graded = [a.get("graded") for a in answers if a.get("score") is not None]
            values = [a["score"] for a in answers if a.get("score") is not None]
            out["failed"][key] = dict(Counter(a["failure"] for a in answers if a.get("score") is None))
            out["scored"][key] = len(values)
            if graded:
                summary = score_graded([{"criteria": e["criteria"], "tags": e["tags"]} for e in graded])
                out["score"][key], out["std_error"][key] = summary["score"], summary["std_error"]
            else:
                out["score"][key] = out["std_error"][key] = float("nan")
            out["interval"][key] = mean_ci(values).half_width
            if name != "single":
                out["paired"][key] = {"single": paired_scores(answers, [ex["answers"][f"single@{g}"] for ex in examples])}
    for ex in examples:
        for a in ex["answers"].values():
            a.pop("graded", None)
    return out


def paired_scores(answers: list[dict], baseline: list[dict]) -> dict:
    """:func:`cat.tools.stats.paired` over the prompts where both arms have a score, with their
    count."""
    both = [(a["score"], b["score"]) for a, b in zip(answers, baseline, strict=True)
            if a.get("score") is not None and b.get("score") is not None]
    if not both:
        return {"difference": float("nan"), "interval": float("nan"), "verdict": "no prompt in common", "prompts": 0}
    return {**paired([a for a, _ in both], [b for _, b in both]), "prompts": len(both)}


def table(result: dict) -> str:
    """A rubric result as text: the HealthBench score with its interval per arm and G, the paired
    difference from one rollout, and every failure with its reason."""
    sizes, arms = result["group_sizes"], result["arms"]
    skipped = f" ({result['skipped_long']} longer ones skipped)" if result.get("skipped_long") else ""
    grader = result["grader"]
    who = " (the reward's own judge)" if grader["is_reward_judge"] else ""
    lines = [f"{result['n']} prompts{skipped}; answers graded on the physician rubric by {grader['model']}{who}", ""]
    lines += ["| HealthBench score | " + " | ".join(f"G = {g}" for g in sizes) + " |", "|---|" + "---|" * len(sizes)]
    for name in arms:
        cells = []
        for g in sizes:
            key = f"{name}@{g}"
            failed = sum(result["failed"][key].values())
            note = f" ({failed} failed)" if failed else ""
            score = result["score"][key]
            shown = number(score) if math.isnan(score) else f"{number(score)} +/- {number(result['interval'][key])}"
            cells.append(shown + note)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if result["paired"]:
        lines += ["", "| paired, per prompt | against single |", "|---|---|"]
        for key, against in result["paired"].items():
            v = against["single"]
            shown = f"n/a ({v['verdict']})" if not v["prompts"] else \
                f"{number(v['difference'], signed=True)} +/- {number(v['interval'])} ({v['verdict']}, {v['prompts']} prompts)"
            lines.append(f"| {key} | {shown} |")
    failures = [(key, reason, n) for key, reasons in result["failed"].items() for reason, n in reasons.items()]
    if failures:
        lines += ["", "| failed (left out, never scored 0) | prompts | why |", "|---|---|---|"]
        lines += [f"| {key} | {n} | {reason} |" for key, reason, n in failures]
    return "\n".join(lines)


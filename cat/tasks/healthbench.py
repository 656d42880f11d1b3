"""HealthBench scoring: per-example rubric scores, their clipped mean, a bootstrap standard error,
and per-tag breakdowns, as the benchmark's grader (openai/simple-evals ``healthbench_eval.py``)
defines them. Not the judging itself: ``cat.rewards.judge`` (template
``rubrics/judge_healthbench.txt``) shows the judge the conversation, the response and one
criterion with its points, as the grader does.

* Per example: ``rubric_score`` (sum of the points of met criteria / sum of positive points;
  penalties count when met; can be negative; not rounded). The grader's ``calculate_score``.
* Reported score: the mean over graded responses, clipped to [0, 1] (``np.clip(np.mean)``,
  the same arithmetic as the grader);
  several samples of one prompt count as several examples, like the grader's ``n_repeats``.
* Standard error: the population std of that clipped mean over 1000 bootstrap resamples of the
  examples (``np.std`` of the grader's bootstrap means; a different random stream).
* Example tags (``theme:...``, ``physician_agreed_category:...``): the clipped mean of the
  overall scores of the examples carrying the tag.
* Rubric tags (``axis:...``, ``level:example`` / ``level:cluster``, ``cluster:...``): each
  example is re-scored on its criteria with that tag, and the clipped mean is taken over the
  examples where that sub-score exists, i.e. that have a positive-point criterion under the tag.

One departure: the grader keeps example and rubric tags in one namespace; they are reported
separately here (the benchmark's two tag sets never share a name, so the values are the same).
"""

from __future__ import annotations

import random

import numpy as np

from cat.rewards.rubric import rubric_score


def clipped_mean(values: list[float]) -> float:
    """np.clip(np.mean(values), 0, 1): numpy's pairwise summation, as in the grader, so scores
    agree to the last bit."""
    return float(np.clip(np.mean(values), 0.0, 1.0))


def bootstrap_std(values: list[float], *, samples: int = 1000, seed: int = 0) -> float:
    rng = random.Random(seed)
    n = len(values)
    means = [clipped_mean([values[rng.randrange(n)] for _ in range(n)]) for _ in range(samples)]
    mu = sum(means) / samples
    return (sum((m - mu) ** 2 for m in means) / samples) ** 0.5


def score_graded(examples: list[dict]) -> dict:
    """examples: ``{"criteria": [(points, tags, met), ...], "tags": [...]}`` per graded response.

    Returns {"score", "std_error", "n", "per_example", "example_tags", "rubric_tags"}.
    """
    if not examples:
        raise ValueError("no examples to score")
    scores = [rubric_score([p for p, _, _ in ex["criteria"]], [m for _, _, m in ex["criteria"]]) for ex in examples]
    result = {"score": clipped_mean(scores), "std_error": bootstrap_std(scores), "n": len(scores), "per_example": scores}
    by_example_tag: dict[str, list[float]] = {}
    for ex, s in zip(examples, scores, strict=True):
        for tag in ex.get("tags", ()):
            by_example_tag.setdefault(tag, []).append(s)
    result["example_tags"] = {t: clipped_mean(v) for t, v in sorted(by_example_tag.items())}
    by_rubric_tag: dict[str, list[float]] = {}
    for ex in examples:
        for tag in sorted({t for _, tags, _ in ex["criteria"] for t in tags}):
            tagged = [(p, m) for p, tags, m in ex["criteria"] if tag in tags]
            if any(p > 0 for p, _ in tagged):
                by_rubric_tag.setdefault(tag, []).append(rubric_score([p for p, _ in tagged], [m for _, m in tagged]))
    result["rubric_tags"] = {t: clipped_mean(v) for t, v in sorted(by_rubric_tag.items())}
    return result

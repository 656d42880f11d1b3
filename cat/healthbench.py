"""HealthBench scoring: per-example rubric scores, their clipped mean, a bootstrap standard error,
and per-tag breakdowns, as the benchmark defines them.

* Per example: ``rubric_score`` (sum of the points of met criteria / sum of positive points;
  can be negative).
* Reported score: the mean over examples, clipped to [0, 1].
* Standard error: the std of that clipped mean over 1000 bootstrap resamples of the examples.
* Example tags (e.g. ``theme:emergency_referrals``): the clipped mean over the examples
  carrying the tag.
* Rubric tags (e.g. ``axis:accuracy``): each example is re-scored on its criteria with that
  tag; the examples with no positive-point criterion under the tag are left out.
"""

from __future__ import annotations

import random

from cat.rewards.rubric import rubric_score


def clipped_mean(values: list[float]) -> float:
    return min(1.0, max(0.0, sum(values) / len(values)))


def bootstrap_std(values: list[float], *, samples: int = 1000, seed: int = 0) -> float:
    rng = random.Random(seed)
    n = len(values)
    means = [clipped_mean([values[rng.randrange(n)] for _ in range(n)]) for _ in range(samples)]
    mu = sum(means) / samples
    return (sum((m - mu) ** 2 for m in means) / samples) ** 0.5


def aggregate(examples: list[dict]) -> dict:
    """examples: ``{"criteria": [(points, tags, met), ...], "tags": [...]}`` per graded response.

    Returns {"score", "std_error", "n", "per_example", "example_tags", "rubric_tags"}.
    """
    if not examples:
        raise ValueError("no examples to aggregate")
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

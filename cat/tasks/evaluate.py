"""Measuring a policy against gold answers: pass@1 averaged over k samples, and greedy.

An answer is right when it is equivalent to the gold label or, for a row that carries its task's
own scorer (reasoning-gym), when that scorer gives it full credit: a partial credit (chain_sum
scores ``1-103`` for ``-103`` at 0.8) counts as wrong here, though the ``reasoning_gym`` reward pays it.
Gold labels and scorers are read here and in diagnostics only. Test-time CaT (answering with an estimator's
reference instead of one sample) lives in ``cat.tools.testtime``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cat.generation import Generator, SamplingParams
from cat.rewards.answers import AnswerChain
from cat.rewards.math import answers_match
from cat.types import Prompt

if TYPE_CHECKING:
    from cat.config import Config, JudgeConfig
    from cat.tasks.settings import TaskSettings


def is_correct(text: str, gold: str | None, answer_of: AnswerChain, *, mode: str = "equivalence",
               timeout_s: int = 3) -> bool:
    """Whether the answer ``answer_of`` reads from ``text`` is equivalent to the gold label (as given)."""
    return gold is not None and answers_match(answer_of(text), gold, mode=mode, timeout_s=timeout_s)


def grade(answer: str | None, prompt: Prompt, *, mode: str = "equivalence", timeout_s: int = 3) -> bool:
    """Whether a final answer (already read from a reply) is right for ``prompt``: full credit from
    the row's own scorer when it has one, else equivalence to the gold label."""
    if prompt.scorer is not None:
        return prompt.scorer.score(answer) >= 1.0
    return prompt.gold is not None and answers_match(answer, prompt.gold, mode=mode, timeout_s=timeout_s)


def evaluate_policy(
    generator: Generator,
    prompts: list[Prompt],
    prompt_ids: list[list[int]],
    *,
    answer_of: AnswerChain,
    num_samples: int,
    temperature: float,
    max_new_tokens: int,
    top_p: float = 1.0,
    top_k: int = 0,
    stop: tuple[str, ...] = (),
    greedy: bool = True,
    seed: int = 0,
    mode: str = "equivalence",
    timeout_s: int = 3,
) -> dict:
    """{"accuracy": mean pass@1 over k samples, "greedy_accuracy", "answer_rate" (samples whose
    answer ``answer_of`` read), "n", "num_samples", "examples"}."""
    sampled = generator.generate(
        prompt_ids,
        SamplingParams(n=num_samples, max_new_tokens=max_new_tokens, temperature=temperature,
                       top_p=top_p, top_k=top_k, stop=stop, seed=seed),
    )
    examples = []
    total = 0.0
    answered = 0
    for prompt, group in zip(prompts, sampled, strict=True):
        correct = [grade(answer_of(c.text), prompt, mode=mode, timeout_s=timeout_s) for c in group]
        total += sum(correct) / len(correct)
        answered += sum(answer_of(c.text) is not None for c in group)
        examples.append({"index": prompt.index, "gold": prompt.gold, "correct": correct, "sample": group[0].text})
    result = {"accuracy": total / len(prompts), "answer_rate": answered / (len(prompts) * num_samples),
              "n": len(prompts), "num_samples": num_samples}
    if greedy:
        greedy_out = generator.generate(
            prompt_ids, SamplingParams(n=1, max_new_tokens=max_new_tokens, stop=stop, greedy=True)
        )
        hits = [grade(answer_of(g[0].text), p, mode=mode, timeout_s=timeout_s)
                for p, g in zip(prompts, greedy_out, strict=True)]
        result["greedy_accuracy"] = sum(hits) / len(hits)
        for example, hit, g in zip(examples, hits, greedy_out, strict=True):
            example["greedy_correct"] = hit
            example["greedy"] = g[0].text
    result["examples"] = examples
    return result


def evaluate_rubric(
    generator: Generator,
    prompts: list[Prompt],
    prompt_ids: list[list[int]],
    judge,
    *,
    num_samples: int,
    temperature: float,
    max_new_tokens: int,
    top_p: float = 1.0,
    top_k: int = 0,
    stop: tuple[str, ...] = (),
    seed: int = 0,
) -> dict:
    """HealthBench evaluation: every sampled response graded on its example's own rubric, with
    the judge shown the conversation (the prompt messages the policy answered), the response and
    each criterion with its points, as HealthBench's grader is; then scored by
    ``cat.tasks.healthbench.score_graded`` (each sample counts as one graded example, like the grader's
    ``n_repeats``).

    Departure from the grader, which retries a verdict until it parses: a criterion the judge
    still failed on after its retries is left out for that response (counted in
    ``judge_failures``), and a response left with no positive criterion is not scored
    (``unscored``). With every verdict answered the score is the benchmark's exactly.
    """
    from cat.tasks.healthbench import score_graded

    sampled = generator.generate(
        prompt_ids,
        SamplingParams(n=num_samples, max_new_tokens=max_new_tokens, temperature=temperature,
                       top_p=top_p, top_k=top_k, stop=stop, seed=seed),
    )
    owners = [prompt for prompt, group in zip(prompts, sampled, strict=True) for _ in group]
    graded, _, stats = grade_on_rubric(judge, owners, [c.text for group in sampled for c in group])
    examples = [ex for ex in graded if ex is not None]
    unscored = len(graded) - len(examples)
    if not examples:
        return {"score": float("nan"), "n": 0, "unscored": unscored, **stats}
    result = score_graded(examples)
    result.pop("per_example")
    result.update({"num_samples": num_samples, "unscored": unscored, "judge_failures": stats["judge/failures"],
                   "judge_yes_rate": stats["judge/yes_rate"]})
    return result


def grade_on_rubric(judge, prompts: list[Prompt], responses: list[str]) -> tuple[list[dict | None], list, dict]:
    """Each response graded on its own prompt's rubric as HealthBench's grader grades it: the judge
    shown the conversation (the prompt messages the policy answered), the response and each
    criterion with its points. Per response the graded example that
    ``cat.tasks.healthbench.score_graded`` reads, ``{"criteria": [(points, tags, met), ...], "tags":
    ...}``, over the criteria the judge answered (one it failed on after its retries is left out),
    or None when it answered no positive-point criterion (the response is not scored); the judge's
    verdicts, one per criterion of the rubric (None where it failed); and the judge's counts."""
    from cat.rewards.judge import JudgeItem

    items = [JudgeItem(text, tuple(cr.text for cr in p.rubric), conversation=p.messages,
                       points=tuple(cr.points for cr in p.rubric)) for p, text in zip(prompts, responses, strict=True)]
    verdicts, stats = judge.judge(items) if items else ([], {})
    graded: list[dict | None] = []
    for prompt, vs in zip(prompts, verdicts, strict=True):
        criteria = [(cr.points, cr.tags, v) for cr, v in zip(prompt.rubric, vs, strict=True) if v is not None]
        graded.append({"criteria": criteria, "tags": prompt.tags} if any(p > 0 for p, _, _ in criteria) else None)
    return graded, verdicts, stats


def grader_section(config: Config) -> JudgeConfig:
    """The judge section whose judge grades evaluations on a rubric (HealthBench): ``eval.judge``
    when it is set (a grader apart from the reward's judge, as in the paper), else the run's ``judge``."""
    return config.judge if config.eval.judge is None else config.eval.judge


def evaluate_config(settings: TaskSettings, generator: Generator, prompts: list[Prompt], prompt_ids: list[list[int]],
                    judge=None) -> dict:
    """Evaluate as the task's settings say: gold-answer accuracy, or the HealthBench score (needs ``judge``)."""
    e, gen = settings.eval, settings.generation
    sampling = {"num_samples": e.num_samples, "temperature": e.temperature, "max_new_tokens": gen.max_new_tokens,
                "top_p": gen.top_p, "top_k": gen.top_k, "stop": tuple(gen.stop), "seed": settings.seed + 17}
    if settings.needs_judge:
        return evaluate_rubric(generator, prompts, prompt_ids, judge, **sampling)
    return evaluate_policy(generator, prompts, prompt_ids, answer_of=AnswerChain.from_config(settings.answer),
                           greedy=e.greedy, mode=settings.mode, timeout_s=settings.timeout_s, **sampling)

"""Test-time CaT: answer each prompt with an estimator's reference instead of a single sample.

No training: pi_t = pi_0. For every evaluation prompt the policy samples G rollouts once; every
estimator named (single, majority_vote, self_bon, min_perplexity, mutual_predictability,
synthesis, or a plug-in) turns the *same* rollouts into a reference, and the reference's answer
is graded against gold. With several G values the first g rollouts of each group are used, so
the comparison across G is paired too. The rollouts depend only on ``run.seed``: two invocations
that differ in the anchor alone (``anchor.greedy=false``, another template) read the same rollouts.

Per estimator and G the result holds the accuracy, its 95% interval over prompts
(``interval``), and, when ``majority_vote`` is among the estimators, the paper's comparison
with the vote (``versus_majority``): how often the two answers differ, and of those prompts how
often each one is right. ``examples`` keep, per prompt, every rollout's text and answer and every
reference's text and answer, to read what the model and the anchor actually wrote.
"""

from __future__ import annotations

import logging
import time

from cat.anchor import build_anchor
from cat.data import load_split
from cat.errors import ConfigError
from cat.estimators import ESTIMATORS
from cat.evaluate import grade
from cat.generation import SamplingParams, generator_from_config
from cat.models import load_model, load_tokenizer, resolve_device
from cat.registry import import_plugin
from cat.rewards.answers import AnswerChain
from cat.stats import mean_ci
from cat.task import fit_prompts, prompt_limit
from cat.types import Group

logger = logging.getLogger(__name__)

ANCHOR_DECODINGS = ("greedy", "sampled")


def run_test_time(config, estimator_names: list[str], group_sizes: list[int] | None = None,
                  anchor_decodings: list[str] | None = None) -> dict:
    """``anchor_decodings``: run the estimators that use the anchor once per decoding named
    (``greedy``, ``sampled`` at ``anchor.temperature``), on the same rollouts, keyed
    ``NAME[DECODING]@G``; None: as ``anchor.greedy`` says, keyed ``NAME@G``."""
    e, m, gen = config.eval, config.model, config.generation
    for d in anchor_decodings or ():
        if d not in ANCHOR_DECODINGS:
            raise ConfigError(f"anchor decoding {d!r}: choose from {', '.join(ANCHOR_DECODINGS)}")
    if e.path is None:
        raise ConfigError("eval.path is not set: test-time CaT needs prompts with gold answers to grade")
    for plugin in config.plugins:
        import_plugin(plugin)
    estimators = {name: ESTIMATORS.get(name)(config) for name in estimator_names}
    sizes = sorted(set(group_sizes or [gen.num_generations]))
    if sizes[-1] > gen.num_generations or sizes[0] < 1:
        raise ConfigError(f"group sizes {sizes} must lie in 1..generation.num_generations={gen.num_generations}")
    prompts = load_split(config, "eval")
    tokenizer = load_tokenizer(m.name_or_path, trust_remote_code=m.trust_remote_code)
    prompts, ids, skipped = fit_prompts(prompts, tokenizer, m, prompt_limit(config), which="evaluation",
                                        log=logger.warning)
    model = load_model(m.name_or_path, dtype=m.dtype, device=resolve_device(m.device),
                       trust_remote_code=m.trust_remote_code, frozen=True)
    generator = generator_from_config(config, model, tokenizer)
    anchor = None
    if any(x.needs_anchor for x in estimators.values()):
        # no training: pi_t = pi_0, so the rollout engine serves the default anchor too
        anchor = build_anchor(config, tokenizer, device=model.device, pi0_generator=lambda: generator,
                              make_generator=lambda teacher, tok: generator_from_config(config, teacher, tok))
    params = SamplingParams(n=gen.num_generations, max_new_tokens=gen.max_new_tokens, temperature=gen.temperature,
                            top_p=gen.top_p, top_k=gen.top_k, stop=tuple(gen.stop), seed=config.run.seed + 23)
    completions = generator.generate(ids, params)
    grading = {"mode": config.reward.mode, "timeout_s": config.reward.timeout_s}
    answer_of = AnswerChain.from_config(config.answer)
    results: dict = {"n": len(prompts), "skipped_long": skipped, "group_sizes": sizes, "accuracy": {}, "interval": {}, "versus_majority": {},
                     "seconds": {}}
    examples = [{"index": p.index, "question": p.text, "gold": p.gold, "references": {},
                 "rollouts": [{"text": c.text, "answer": answer_of(c.text)} for c in cs]}
                for p, cs in zip(prompts, completions, strict=True)]
    single = [sum(grade(r["answer"], p, **grading) for r in ex["rollouts"]) / len(cs)
              for p, cs, ex in zip(prompts, completions, examples, strict=True)]
    results["single_sample_accuracy"] = sum(single) / len(single)
    results["single_sample_interval"] = mean_ci(single).half_width
    variants = _variants(estimators, anchor, anchor_decodings)
    for g in sizes:
        groups = [Group(prompt=p, prompt_ids=tuple(i), completions=tuple(cs[:g]))
                  for p, i, cs in zip(prompts, ids, completions, strict=True)]
        for name, estimator, view in variants:
            start = time.perf_counter()
            refs = estimator(groups, view)
            hits = [grade(r.answer, p, **grading)
                    for r, p in zip(refs, prompts, strict=True)]
            key = f"{name}@{g}"
            results["accuracy"][key] = sum(hits) / len(hits)
            results["interval"][key] = mean_ci([float(h) for h in hits]).half_width
            results["seconds"][key] = time.perf_counter() - start
            for ex, r, hit in zip(examples, refs, hits, strict=True):
                ex["references"][key] = {"answer": r.answer, "correct": bool(hit), "text": r.text}
        if "majority_vote" in estimators:
            for name, _, _ in variants:
                if name != "majority_vote":
                    results["versus_majority"][f"{name}@{g}"] = versus_majority(examples, f"{name}@{g}",
                                                                                 f"majority_vote@{g}")
    results["examples"] = examples
    return results


def _variants(estimators: dict, anchor, decodings: list[str] | None):
    """(key name, estimator, anchor) per run: one per estimator, or one per anchor decoding for an
    estimator that writes with the anchor (not those that only score with it:
    ``decodes_with_anchor = False``)."""
    out = []
    for name, estimator in estimators.items():
        if anchor is None or not decodings or not getattr(estimator, "decodes_with_anchor", estimator.needs_anchor):
            out.append((name, estimator, anchor))
            continue
        for d in decodings:
            out.append((f"{name}[{d}]", estimator, anchor.with_params(greedy=d == "greedy")))
    return out


def versus_majority(examples: list[dict], key: str, vote_key: str) -> dict:
    """How often ``key``'s answer differs from the majority vote's on the same rollouts, and on
    those prompts how often each is right (the paper's analysis of synthesis against the vote).
    Two answers differ unless both are right or both read the same."""
    def differ(a: dict, b: dict) -> bool:
        return not (a["correct"] and b["correct"]) and (a["correct"] != b["correct"] or a["answer"] != b["answer"])

    differing = [ex for ex in examples if differ(ex["references"][key], ex["references"][vote_key])]
    n = len(differing)
    return {
        "disagree_rate": n / len(examples) if examples else float("nan"),
        "disagreements": n,
        "right_when_disagree": sum(ex["references"][key]["correct"] for ex in differing) / n if n else float("nan"),
        "majority_right_when_disagree": sum(ex["references"][vote_key]["correct"] for ex in differing) / n if n else float("nan"),
    }


def table(result: dict) -> str:
    """The result as a text table: accuracy with its interval per estimator and G, and the
    comparison with the majority vote."""
    sizes = result["group_sizes"]
    names = list(dict.fromkeys(k.rpartition("@")[0] for k in result["accuracy"]))
    skipped = f" ({result['skipped_long']} longer ones skipped)" if result.get("skipped_long") else ""
    lines = [f"{result['n']} prompts{skipped}; one sample: {result['single_sample_accuracy']:.3f} "
             f"(+/- {result.get('single_sample_interval', float('nan')):.3f})", ""]
    lines.append("| estimator | " + " | ".join(f"G = {g}" for g in sizes) + " |")
    lines.append("|---|" + "---|" * len(sizes))
    for name in names:
        cells = []
        for g in sizes:
            key = f"{name}@{g}"
            cells.append(f"{result['accuracy'][key]:.3f} +/- {result.get('interval', {}).get(key, float('nan')):.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    versus = result.get("versus_majority") or {}
    if versus:
        lines += ["", "| against the majority vote | differs | right when they differ | vote right then |", "|---|---|---|---|"]
        for key, v in versus.items():
            right = "n/a" if v["disagreements"] == 0 else f"{v['right_when_disagree']:.2f}"
            vote = "n/a" if v["disagreements"] == 0 else f"{v['majority_right_when_disagree']:.2f}"
            lines.append(f"| {key} | {v['disagree_rate']:.3f} ({v['disagreements']}) | {right} | {vote} |")
    return "\n".join(lines)

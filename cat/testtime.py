"""Test-time CaT: answer each prompt with an estimator's reference instead of a single sample.

No training: pi_t = pi_0. For every evaluation prompt the policy samples G rollouts once; every
estimator named (single, majority_vote, self_bon, min_perplexity, mutual_predictability,
synthesis, or a plug-in) turns the *same* rollouts into a reference, and the reference's answer
is graded against gold. With several G values the first g rollouts of each group are used, so
the comparison across G is paired too.
"""

from __future__ import annotations

import time

from cat.anchor import build_anchor
from cat.data import encode_prompt, load_split
from cat.errors import ConfigError
from cat.estimators import ESTIMATORS
from cat.evaluate import grade
from cat.generation import SamplingParams, generator_from_config
from cat.models import load_model, load_tokenizer, resolve_device
from cat.registry import import_plugin
from cat.rewards.answers import AnswerChain
from cat.types import Group


def run_test_time(config, estimator_names: list[str], group_sizes: list[int] | None = None) -> dict:
    e, m, gen = config.eval, config.model, config.generation
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
    model = load_model(m.name_or_path, dtype=m.dtype, device=resolve_device(m.device),
                       trust_remote_code=m.trust_remote_code, frozen=True)
    ids = [encode_prompt(p, tokenizer, use_chat_template=m.chat_template, chat_template_kwargs=m.chat_template_kwargs)
           for p in prompts]
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
    results: dict = {"n": len(prompts), "group_sizes": sizes, "accuracy": {}, "seconds": {}}
    single = [sum(grade(answer_of(c.text), p, **grading) for c in cs) / len(cs)
              for p, cs in zip(prompts, completions, strict=True)]
    results["single_sample_accuracy"] = sum(single) / len(single)
    examples = [{"index": p.index, "gold": p.gold, "references": {}} for p in prompts]
    for g in sizes:
        groups = [Group(prompt=p, prompt_ids=tuple(i), completions=tuple(cs[:g]))
                  for p, i, cs in zip(prompts, ids, completions, strict=True)]
        for name, estimator in estimators.items():
            start = time.perf_counter()
            refs = estimator(groups, anchor)
            hits = [grade(r.answer, p, **grading)
                    for r, p in zip(refs, prompts, strict=True)]
            key = f"{name}@{g}"
            results["accuracy"][key] = sum(hits) / len(hits)
            results["seconds"][key] = time.perf_counter() - start
            for ex, r, hit in zip(examples, refs, hits, strict=True):
                ex["references"][key] = {"answer": r.answer, "correct": hit}
    results["examples"] = examples
    return results

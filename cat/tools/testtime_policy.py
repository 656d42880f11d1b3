"""What both test-time protocols (``cat.tools.testtime``, ``cat.tools.testtime_rubric``) share: the
frozen policy (no training: pi_t = pi_0) on the evaluation prompts that fit its context, its G
rollouts per prompt drawn once from ``run.seed`` alone, and the anchor on the same engine."""

from __future__ import annotations

import logging

from cat.generation import SamplingParams, generator_from_config
from cat.models.load import load_model, load_tokenizer, resolve_device
from cat.tasks.data import load_split
from cat.tasks.settings import TaskSettings
from cat.tasks.task import fit_prompts, prompt_limit
from cat.teacher.anchor import build_anchor

logger = logging.getLogger(__name__)


def load_policy(config):
    """The evaluation prompts that fit the policy's context, their token ids, how many were
    skipped, and the frozen policy (pi_t = pi_0) with its tokenizer and engine."""
    prompts, ids, skipped, tokenizer = load_prompts(config)
    model, generator = load_engine(config, tokenizer)
    return prompts, ids, skipped, tokenizer, model, generator


def load_prompts(config):
    """The evaluation prompts that fit the policy's context, their token ids, how many were
    skipped, and the policy's tokenizer: what grading saved rollouts needs, no model loaded."""
    m = config.model
    task = TaskSettings.from_config(config)
    prompts = load_split(task, "eval")
    tokenizer = load_tokenizer(m.name_or_path, trust_remote_code=m.trust_remote_code)
    prompts, ids, skipped = fit_prompts(prompts, tokenizer, m, prompt_limit(task), which="evaluation",
                                        log=logger.warning)
    return prompts, ids, skipped, tokenizer


def load_engine(config, tokenizer):
    """The frozen policy (pi_t = pi_0) and its rollout engine."""
    m = config.model
    model = load_model(m.name_or_path, dtype=m.dtype, device=resolve_device(m.device),
                       trust_remote_code=m.trust_remote_code, frozen=True)
    generator = generator_from_config(config.generation, model, tokenizer, dtype=m.dtype, seed=config.run.seed)
    return model, generator


def pi0_anchor(config, tokenizer, model, generator):
    """The anchor ``config.anchor`` names; with no training pi_t = pi_0, so the rollout engine
    serves the default anchor too."""
    def make_generator(teacher, tok):
        return generator_from_config(config.generation, teacher, tok, dtype=config.model.dtype, seed=config.run.seed)

    return build_anchor(config.anchor, config.model, tokenizer, seed=config.run.seed, device=model.device,
                        pi0_generator=lambda: generator, make_generator=make_generator)


def sample_rollouts(config, generator, ids) -> list:
    """``generation.num_generations`` rollouts per prompt, drawn from ``run.seed`` alone, so every
    invocation and every estimator or arm reads the same ones: [prompts][G] completions."""
    gen = config.generation
    params = SamplingParams(n=gen.num_generations, max_new_tokens=gen.max_new_tokens, temperature=gen.temperature,
                            top_p=gen.top_p, top_k=gen.top_k, stop=tuple(gen.stop), seed=config.run.seed + 23)
    return generator.generate(ids, params)

"""The hf generation backend on the real tiny model and tokenizer."""

import torch

from cat.batch import token_logprobs
from cat.data import encode_prompt
from cat.generation import SamplingParams, make_generator
from cat.types import Prompt


def ids_for(tokenizer, problems):
    return [encode_prompt(Prompt(index=i, text=p, messages=({"role": "user", "content": p},)), tokenizer)
            for i, p in enumerate(problems)]


def test_completions_carry_text_ids_logprobs_and_finish_reason(tiny_model):
    model, tokenizer = tiny_model
    gen = make_generator("hf", model, tokenizer, batch_size=16)
    out = gen.generate(ids_for(tokenizer, ["47+38", "12+9"]), SamplingParams(n=3, max_new_tokens=32, seed=0))
    assert [len(g) for g in out] == [3, 3]
    for c in out[0] + out[1]:
        assert len(c.token_ids) == len(c.logprobs) > 0
        assert c.finish_reason == "stop" and c.token_ids[-1] == tokenizer.eos_token_id
        assert "\\boxed{" in c.text and "<|end|>" not in c.text
        assert all(lp <= 0 for lp in c.logprobs)
    short = gen.generate(ids_for(tokenizer, ["47+38"]), SamplingParams(n=2, max_new_tokens=4, seed=0))[0]
    assert all(c.finish_reason == "length" and len(c.token_ids) == 4 for c in short)


def test_stop_strings_end_completions(tiny_model):
    model, tokenizer = tiny_model
    gen = make_generator("hf", model, tokenizer, batch_size=16)
    [group] = gen.generate(ids_for(tokenizer, ["47+38"]), SamplingParams(n=4, max_new_tokens=32, stop=(" tens",), seed=1))
    for c in group:
        assert c.finish_reason == "stop" and c.text.endswith(" tens") and "boxed" not in c.text


def test_seed_reproduces_and_differs(tiny_model):
    model, tokenizer = tiny_model
    gen = make_generator("hf", model, tokenizer, batch_size=16)
    prompts = ids_for(tokenizer, ["47+38", "55+66"])
    a = gen.generate(prompts, SamplingParams(n=8, max_new_tokens=32, seed=5))
    b = gen.generate(prompts, SamplingParams(n=8, max_new_tokens=32, seed=5))
    c = gen.generate(prompts, SamplingParams(n=8, max_new_tokens=32, seed=6))
    assert a == b and a != c


def test_sampling_logprobs_match_trainer_scoring(tiny_model):
    """At top-k/top-p off, the sampler's log-probs equal the trainer's recomputation (same
    temperature, left padding and position ids), so old_logp from either side agree."""
    model, tokenizer = tiny_model
    gen = make_generator("hf", model, tokenizer, batch_size=16)
    prompts = ids_for(tokenizer, ["7+95", "47+38", "99+99"])  # different prompt lengths -> left padding
    for temperature in (1.0, 0.7):
        out = gen.generate(prompts, SamplingParams(n=2, max_new_tokens=32, temperature=temperature, seed=2))
        for p, group in zip(prompts, out, strict=True):
            for c in group:
                ids = torch.tensor([p + list(c.token_ids)])
                lp, _ = token_logprobs(model, ids, torch.ones_like(ids), len(c.token_ids), temperature)
                torch.testing.assert_close(lp[0], torch.tensor(c.logprobs), rtol=1e-4, atol=2e-4)


def test_greedy_is_batch_invariant(tiny_model):
    model, tokenizer = tiny_model
    gen = make_generator("hf", model, tokenizer, batch_size=16)
    problems = ["17+95", "47+38", "99+99", "10+10"]
    prompts = ids_for(tokenizer, problems)
    together = gen.generate(prompts, SamplingParams(max_new_tokens=32, greedy=True))
    alone = [gen.generate([p], SamplingParams(max_new_tokens=32, greedy=True))[0] for p in prompts]
    assert [g[0].text for g in together] == [g[0].text for g in alone]
    sums = [str(sum(int(x) for x in p.split("+"))) for p in problems]
    assert [g[0].text.split("\\boxed{")[-1].rstrip("}") for g in together] == sums


def test_vllm_backend_without_vllm_is_a_clear_error(tiny_model):
    import importlib.util

    import pytest

    from cat.errors import ConfigError

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    model, tokenizer = tiny_model
    with pytest.raises(ConfigError, match="vLLM"):
        make_generator("vllm", model, tokenizer, batch_size=8)


def test_vllm_outputs_convert_to_completions():
    """The pure half of the vLLM backend (the engine itself needs a GPU)."""
    from types import SimpleNamespace as NS

    from cat.generation.vllm import to_completions

    out = NS(text="x \\boxed{1}", token_ids=[5, 6], finish_reason="stop",
             logprobs=[{5: NS(logprob=-0.5)}, {6: NS(logprob=-0.25), 7: NS(logprob=-3.0)}])
    cut = NS(text="x", token_ids=[5], finish_reason="length", logprobs=[{5: NS(logprob=-1.0)}])
    [[a, b]] = to_completions([NS(outputs=[out, cut])], n=2)
    assert a.token_ids == (5, 6) and a.logprobs == (-0.5, -0.25) and a.finish_reason == "stop"
    assert b.finish_reason == "length"

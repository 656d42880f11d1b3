"""Memory of scoring a micro-batch (token log-probs and entropy, forward and backward) at a 49k and
a 152k vocabulary: cat's path against the whole-logits path and the textbook one.

    OMP_NUM_THREADS=2 python benchmarks/logprob_memory.py [--rows 4] [--tokens 512]

The model is one decoder layer of Qwen2.5-0.5B's shape (hidden 896, untied output layer) with a
SmolLM2 (49,152) or a Qwen (151,936) vocabulary, random weights. Peaks are the most bytes the CPU
allocator held at once during the call, above what was held before it (torch's profiler), after
a warm-up call, so parameter gradients already exist. Paths:

* ``cat``: ``cat.models.logprobs.token_logprobs``: hidden states from the model, the output layer
  applied chunk by chunk (no [b, T, V] tensor);
* ``whole logits``: the model's own logits, reduced by cat's chunked ``selective_log_softmax``
  (cat's path for models whose output layer fails the fusion check);
* ``textbook``: ``log_softmax(logits.float() / t).gather(...)`` and the entropy from it.

Each with the embeddings and output layer frozen (as under LoRA; the decoder layer still needs its
gradient) and trained (a full fine-tune, whose [V, d] weight gradients are accumulated through
temporaries of their size).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import torch
from torch.profiler import ProfilerActivity, profile

import cat.models.logprobs as lp


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


def model_with(vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=896, intermediate_size=4864, num_hidden_layers=1,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, bos_token_id=None)
    return LlamaForCausalLM(config)


def textbook(model, ids, att, T, temperature):
    logits = model(input_ids=ids, attention_mask=att, logits_to_keep=T + 1).logits[:, :-1]
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1).detach()
    return logp_all.gather(-1, ids[:, -T:].unsqueeze(-1)).squeeze(-1), entropy


def measure(model, path: str, ids, att, T: int) -> int:
    def step():
        if path == "textbook":
            logp, _ = textbook(model, ids, att, T, 0.7)
        else:
            lp._FUSABLE[model] = path == "cat"
            logp, _ = lp.token_logprobs(model, ids, att, T, 0.7, with_entropy=True)
        logp.sum().backward()

    model.zero_grad(set_to_none=True)
    step()
    return peak_bytes(step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=512, help="completion tokens per row")
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens per row")
    args = parser.parse_args()
    b, T, P = args.rows, args.tokens, args.prompt
    mib = 2 ** 20
    print(f"{b} rows x ({P} prompt + {T} completion) tokens, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; peak MiB above the call's start (x: that / the [b, T, V] fp32 logits)\n")
    print("| vocabulary | [b, T, V] fp32 | output layer | cat | whole logits | textbook |")
    print("|---|---|---|---|---|---|")
    for vocab in (49_152, 151_936):
        model = model_with(vocab)
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(2, vocab, (b, P + T), generator=g)
        att = torch.ones_like(ids)
        full = b * T * vocab * 4
        for trained in (False, True):
            model.get_output_embeddings().weight.requires_grad_(trained)
            model.get_input_embeddings().weight.requires_grad_(trained)
            cells = []
            for path in ("cat", "whole logits", "textbook"):
                peak = measure(model, path, ids, att, T)
                cells.append(f"{peak / mib:,.0f} ({peak / full:.2f}x)")
            print(f"| {vocab:,} | {full / mib:,.0f} | {'trained' if trained else 'frozen'} | " + " | ".join(cells) + " |")
        lp._FUSABLE.pop(model, None)
        del model


if __name__ == "__main__":
    main()

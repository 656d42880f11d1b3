"""Rollouts with transformers ``generate``: CPU or GPU, batched, left padding.

Samples from the live policy module itself, so there are no weights to sync. Log-probs are those
of the distribution actually sampled from (after temperature, top-k and top-p), taken from the
processed scores that ``generate`` returns; with greedy decoding, of the raw distribution.
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig

from cat.generation import SamplingParams
from cat.types import Completion


class HFGenerator:
    def __init__(self, model, tokenizer, *, batch_size: int = 64):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.eos_ids = _eos_ids(model, tokenizer)

    def sync_weights(self, model) -> None:
        self.model = model

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        if params.seed is not None:
            torch.manual_seed(params.seed)
        expanded = [ids for ids in prompts for _ in range(params.n)]
        flat: list[Completion] = []
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(expanded), self.batch_size):
                flat.extend(self._generate_batch(expanded[start : start + self.batch_size], params))
        finally:
            self.model.train(was_training)
        return [flat[i * params.n : (i + 1) * params.n] for i in range(len(prompts))]

    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        pad = self.tokenizer.pad_token_id
        width = max(len(p) for p in prompts)
        device = self.model.device
        input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, ids in enumerate(prompts):
            input_ids[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention[i, width - len(ids) :] = 1
        sampling = {} if params.greedy else {
            "temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k,
        }
        config = GenerationConfig(
            do_sample=not params.greedy,
            **sampling,
            max_new_tokens=params.max_new_tokens,
            pad_token_id=pad,
            eos_token_id=self.eos_ids,
            output_scores=True,
            return_dict_in_generate=True,
            stop_strings=list(params.stop) or None,
        )
        with torch.no_grad():
            out = self.model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                generation_config=config,
                tokenizer=self.tokenizer if params.stop else None,
            )
        generated = out.sequences[:, width:].cpu()  # [N, T]
        scores = torch.stack(out.scores, dim=1).float().cpu()  # [N, T, V] processed logits
        token_logprobs = torch.log_softmax(scores, dim=-1).gather(-1, generated.unsqueeze(-1)).squeeze(-1)
        return [self._completion(generated[i], token_logprobs[i], params) for i in range(len(prompts))]

    def _completion(self, ids: torch.Tensor, logprobs: torch.Tensor, params: SamplingParams) -> Completion:
        ids_list = ids.tolist()
        length = len(ids_list)
        finish = "length"
        for t, tok in enumerate(ids_list):
            if tok in self.eos_ids:
                length, finish = t + 1, "stop"
                break
        else:
            # A stop string ends a sequence early; generate then pads the rest of the row.
            text_so_far = self.tokenizer.decode(ids_list, skip_special_tokens=True)
            if params.stop and any(s in text_so_far for s in params.stop):
                finish = "stop"
                pad = self.tokenizer.pad_token_id
                while length > 0 and ids_list[length - 1] == pad:
                    length -= 1
        kept = ids_list[:length]
        return Completion(
            text=self.tokenizer.decode(kept, skip_special_tokens=True),
            token_ids=tuple(kept),
            logprobs=tuple(logprobs[:length].tolist()),
            finish_reason=finish,
        )


def _eos_ids(model, tokenizer) -> list[int]:
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)

"""Token log-probs and entropy at real vocabulary sizes, without full-vocabulary fp32 copies.

A policy's logits are [b, T, V] with V up to ~256k: at b=8, T=1536, V=152k that is 7.5 GB in
fp32 (3.7 GB in bf16). The textbook ``log_softmax(logits.float() / t).gather(...)`` materialises
two more full-size fp32 tensors and keeps one alive for backward. Here instead:

* the model is asked only for the logits of completion positions (``logits_to_keep``);
* ``selective_log_softmax`` gathers the target logit and subtracts a logsumexp computed over
  position chunks in fp32, saving only the logits (already alive) and one float per position for
  backward; its backward writes the gradient chunk by chunk into one tensor the size of the logits;
* entropy is computed in the same chunked pass, without gradient.

So scoring a micro-batch peaks at about twice its logits tensor (the logits and their gradient)
plus one fp32 chunk, whatever the vocabulary (measured in tests/test_memory.py).

**Shared prompts.** The G rows of a group repeat one prompt. Given each row's group
(``prompt_groups``), the prompt is run once per group and its keys and values are indexed out to
the group's rows (``Cache.reorder_cache``, differentiable), then the completions run on that cache.
A micro-batch of 8 rows per 300-token prompt and 200-token answers then forwards 300 + 8 x 200
tokens instead of 8 x 500, and backpropagates as many. The gradient is the same sum: each prompt
position's keys and values get the gradient of every row that attended to them.
"""

from __future__ import annotations

import torch

from cat.models.load import autocast

CHUNK_ELEMENTS = 1 << 24
"""A chunk holds at most this many logits (64 MiB in fp32) and at most 1/16 of the positions, so
its few fp32 temporaries stay small next to the logits tensor itself."""


def _chunks(b: int, T: int, V: int):
    step = max(1, min(CHUNK_ELEMENTS // max(1, b * V), -(-T // 16)))
    for start in range(0, T, step):
        yield start, min(T, start + step)


class _SelectiveLogSoftmax(torch.autograd.Function):
    """logits [b, L, V] (any float dtype), targets [b, T] with T <= L: the log-softmax of
    ``logits[:, t] / temperature`` at ``targets[:, t]`` for t < T, in fp32 (fp64 for fp64 logits,
    which the numerical tests use) -> ([b, T], entropy [b, T] or None). Positions T..L-1 get no
    gradient."""

    @staticmethod
    def forward(ctx, logits, targets, temperature: float, with_entropy: bool):
        b, T = targets.shape
        V = logits.shape[-1]
        dtype = _at_least_fp32(logits.dtype)
        lse = torch.empty((b, T), dtype=dtype, device=logits.device)
        picked = torch.empty_like(lse)
        entropy = torch.empty_like(lse) if with_entropy else None
        for s, e in _chunks(b, T, V):
            x = logits[:, s:e].to(dtype) / temperature  # [b, c, V] fp32 chunk
            lse[:, s:e] = torch.logsumexp(x, dim=-1)
            picked[:, s:e] = x.gather(-1, targets[:, s:e].unsqueeze(-1)).squeeze(-1)
            if with_entropy:
                p = torch.softmax(x, dim=-1)
                entropy[:, s:e] = lse[:, s:e] - (p * x).sum(-1)  # H = lse - E_p[x]
        ctx.save_for_backward(logits, targets, lse)
        ctx.temperature = temperature
        if entropy is not None:
            ctx.mark_non_differentiable(entropy)
        return picked - lse, entropy

    @staticmethod
    def backward(ctx, grad, _grad_entropy):
        logits, targets, lse = ctx.saved_tensors
        b, T = targets.shape
        V = logits.shape[-1]
        out = torch.zeros_like(logits)  # [b, L, V] in the logits' dtype
        for s, e in _chunks(b, T, V):
            g = grad[:, s:e].to(lse.dtype).unsqueeze(-1)  # [b, c, 1]
            p = torch.exp(logits[:, s:e].to(lse.dtype) / ctx.temperature - lse[:, s:e].unsqueeze(-1))  # softmax
            d = -p * g
            d.scatter_add_(-1, targets[:, s:e].unsqueeze(-1), g)  # d logp_y / dx = onehot(y) - p
            out[:, s:e] = (d / ctx.temperature).to(out.dtype)
        return out, None, None, None


def _at_least_fp32(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def selective_log_softmax(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                          *, with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """logits [b, L, V], targets [b, T] (T <= L) -> (log-probs [b, T] fp32, entropy [b, T] or None)."""
    return _SelectiveLogSoftmax.apply(logits, targets, float(temperature), with_entropy)


def token_logprobs(model, input_ids, attention_mask, completion_length: int, temperature: float, *,
                   with_entropy: bool = False, compute_dtype: str | None = None,
                   prompt_groups: torch.Tensor | None = None, prompt_model=None):
    """Log-probs of the completion tokens under ``model`` at ``temperature``.

    input_ids, attention_mask: [b, P + T] -> logprobs [b, T] fp32 (and entropy [b, T] if asked).
    The forward runs under autocast in ``compute_dtype`` (None: the weights' own dtype).
    ``prompt_groups`` [b]: rows with the same value have the same first P columns, which are
    then run once (see the module's docstring); ``prompt_model`` runs that pass (default
    ``model``: a DistributedDataParallel wrapper passes its module, so that DDP sees one forward).
    """
    T = completion_length
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # [b, P + T]
    targets = input_ids[:, -T:]  # [b, T]
    first, rows = _prompt_owners(prompt_groups)
    if first is None or input_ids.shape[1] == T:
        with autocast(input_ids.device, compute_dtype):
            logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                           logits_to_keep=T + 1).logits  # [b, T + 1, V]: position j predicts token j + 1
        return selective_log_softmax(logits, targets, temperature, with_entropy=with_entropy)
    P = input_ids.shape[1] - T
    first, rows = first.to(input_ids.device), rows.to(input_ids.device)
    with autocast(input_ids.device, compute_dtype):
        head = (prompt_model or model)(input_ids=input_ids[first, :P], attention_mask=attention_mask[first, :P],
                                       position_ids=position_ids[first, :P], use_cache=True, logits_to_keep=1)
    # the last prompt position predicts the first completion token, for every row of its group
    logp0, entropy0 = selective_log_softmax(head.logits[rows], targets[:, :1], temperature,
                                            with_entropy=with_entropy)  # [b, 1]
    if T == 1:
        return logp0, entropy0
    cache = head.past_key_values
    cache.reorder_cache(rows)  # [U, ..., P, d] -> [b, ..., P, d], gradient summed back per prompt
    with autocast(input_ids.device, compute_dtype):
        logits = model(input_ids=input_ids[:, P:], attention_mask=attention_mask, position_ids=position_ids[:, P:],
                       past_key_values=cache, use_cache=True).logits  # [b, T, V]: completion j predicts j + 1
    logp, entropy = selective_log_softmax(logits, targets[:, 1:], temperature, with_entropy=with_entropy)
    return (torch.cat([logp0, logp], dim=1),
            torch.cat([entropy0, entropy], dim=1) if with_entropy else None)


def first_and_owner(keys: list) -> tuple[list[int], list[int]]:
    """Distinct keys in order of first use: the index of each one's first row [U], and each row's
    number among them [b]. Rows with equal keys share one computation (a prompt's forward)."""
    number: dict = {}
    first, owner = [], []
    for i, key in enumerate(keys):
        if key not in number:
            number[key] = len(first)
            first.append(i)
        owner.append(number[key])
    return first, owner


def _prompt_owners(groups: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``first_and_owner`` of rows labelled by group, as tensors; (None, None) when no two rows
    share a group (nothing to save)."""
    if groups is None:
        return None, None
    first, owner = first_and_owner(groups.tolist())
    if len(first) == len(owner):
        return None, None
    return torch.tensor(first), torch.tensor(owner)

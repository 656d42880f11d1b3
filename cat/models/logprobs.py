"""Token log-probs and entropy at real vocabulary sizes, without full-vocabulary fp32 copies.

A policy's logits are [b, T, V] with V up to ~256k: at b=8, T=1536, V=152k that is 7.5 GB in
fp32 (3.7 GB in bf16). The textbook ``log_softmax(logits.float() / t).gather(...)`` materialises
two more full-size fp32 tensors and keeps one alive for backward. Here instead:

* the model is asked only for the logits of completion positions (``logits_to_keep``);
* ``selective_log_softmax`` gathers the target logit and subtracts a logsumexp computed over
  position chunks in fp32, saving only the logits (already alive) and one float per position for
  backward; its backward writes the gradient chunk by chunk into one tensor the size of the logits;
* entropy is computed in the same chunked pass, without gradient.

**No [b, T, V] tensor at all.** Where the output layer is a plain linear map applied last (Llama,
Qwen2, Mistral and most decoders; checked once per model against the model's own logits), the
model is run with that layer switched off for the forward, so it returns its final hidden states
[b, T, d], and ``linear_log_softmax`` applies the layer chunk by chunk: each chunk's logits are
made, reduced to the target's log-prob, its logsumexp and entropy, and dropped; backward makes
them again chunk by chunk (one more pass of the output layer) to write the gradients of the
hidden states and of the layer's weight. Scoring a micro-batch then peaks at a few chunks, a
small share of its logits tensor, whatever the vocabulary (measured in tests/test_memory.py and
``benchmarks/logprob_memory.py``). Otherwise (an output layer with a bias or an adapter, logits
capped or scaled after it, FSDP's sharded weights) the logits are made whole and reduced by
``selective_log_softmax``: about twice the logits tensor (the logits and their gradient).

**Shared prompts.** The G rows of a group repeat one prompt. Given each row's group
(``prompt_groups``), the prompt is run once per group and its keys and values are indexed out to
the group's rows (``Cache.reorder_cache``, differentiable), then the completions run on that cache.
A micro-batch of 8 rows per 300-token prompt and 200-token answers then forwards 300 + 8 x 200
tokens instead of 8 x 500, and backpropagates as many. The gradient is the same sum: each prompt
position's keys and values get the gradient of every row that attended to them.
"""

from __future__ import annotations

import contextlib
import weakref

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


class _LinearSelectiveLogSoftmax(torch.autograd.Function):
    """hidden [b, L, d], the output layer's weight [V, d], targets [b, T] with T <= L: as
    ``_SelectiveLogSoftmax`` on ``hidden @ weight.T``, without ever holding those logits whole. The
    product is taken in ``dtype`` (what autocast gives the model's own output layer), the softmax
    in at least fp32."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature: float, with_entropy: bool, dtype):
        b, T = targets.shape
        V = weight.shape[0]
        soft = _at_least_fp32(dtype)
        lse = torch.empty((b, T), dtype=soft, device=hidden.device)
        picked = torch.empty_like(lse)
        entropy = torch.empty_like(lse) if with_entropy else None
        w = weight.to(dtype)
        for s, e in _chunks(b, T, V):  # in place where it can be: about two chunks alive at once
            x = torch.nn.functional.linear(hidden[:, s:e].to(dtype), w).to(soft).div_(temperature)  # [b, c, V]
            lse[:, s:e] = torch.logsumexp(x, dim=-1)
            picked[:, s:e] = x.gather(-1, targets[:, s:e].unsqueeze(-1)).squeeze(-1)
            if with_entropy:
                x.sub_(lse[:, s:e].unsqueeze(-1))  # log-softmax
                entropy[:, s:e] = -(x.exp().mul_(x)).sum(-1)
            del x
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.temperature, ctx.dtype = temperature, dtype
        if entropy is not None:
            ctx.mark_non_differentiable(entropy)
        return picked - lse, entropy

    @staticmethod
    def backward(ctx, grad, _grad_entropy):
        hidden, weight, targets, lse = ctx.saved_tensors
        b, T = targets.shape
        V = weight.shape[0]
        w = weight.to(ctx.dtype)
        grad_hidden = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None  # positions T.. get none
        grad_weight = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        for s, e in _chunks(b, T, V):
            h = hidden[:, s:e].to(ctx.dtype)
            g = grad[:, s:e].to(lse.dtype).unsqueeze(-1)  # [b, c, 1]
            d = torch.nn.functional.linear(h, w).to(lse.dtype).div_(ctx.temperature).sub_(lse[:, s:e].unsqueeze(-1)).exp_()  # softmax
            d.mul_(-g).scatter_add_(-1, targets[:, s:e].unsqueeze(-1), g)  # d logp_y / dx = onehot(y) - softmax(x)
            d = d.div_(ctx.temperature).to(ctx.dtype)  # d loss / d logits, as the output layer's backward gets it
            if grad_hidden is not None:
                grad_hidden[:, s:e] = (d @ w).to(hidden.dtype)
            if grad_weight is not None:
                if grad_weight.dtype == d.dtype:
                    grad_weight.addmm_(d.flatten(0, 1).T, h.flatten(0, 1))  # no [V, d] temporary
                else:
                    grad_weight += (d.flatten(0, 1).T @ h.flatten(0, 1)).to(grad_weight.dtype)
            del d
        return grad_hidden, grad_weight, None, None, None, None


def linear_log_softmax(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                       *, with_entropy: bool = False, dtype: torch.dtype | None = None):
    """hidden [b, L, d], weight [V, d], targets [b, T] (T <= L) -> (log-probs [b, T] fp32, entropy
    [b, T] or None) of the logits ``hidden @ weight.T`` in ``dtype`` (default: hidden's), never
    materialised whole."""
    return _LinearSelectiveLogSoftmax.apply(hidden, weight, targets, float(temperature), with_entropy,
                                            dtype or hidden.dtype)


class _Hidden(torch.nn.Module):
    """Stands in for the output layer during one forward: the model's "logits" are then its final
    hidden states."""

    def forward(self, x):
        return x


_FUSABLE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Per model: whether the fused output layer gives its own log-probs (checked once)."""


_OUTPUT_LAYER: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Per model: where its output layer sits, (the parent module's qualified name, the attribute), or
None when it cannot be fused; found once, as the search visits every module. Names, not modules:
a value holding the model's own modules would keep the model, its key, alive for ever."""


def _output_layer(model):
    """(parent module, attribute name, layer) of ``model``'s output layer when it is a plain linear
    map without bias on unsharded weights; None otherwise."""
    inner = getattr(model, "module", model)  # DistributedDataParallel
    if inner not in _OUTPUT_LAYER:
        _OUTPUT_LAYER[inner] = _find_output_layer(inner)
    where = _OUTPUT_LAYER[inner]
    if where is None:
        return None
    parent = inner.get_submodule(where[0])
    return parent, where[1], getattr(parent, where[1])


def _find_output_layer(inner) -> tuple[str, str] | None:
    """Where ``inner``'s output layer sits, if it can be fused (``_OUTPUT_LAYER``)."""
    get = getattr(inner, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if type(head) is not torch.nn.Linear or head.bias is not None or type(head.weight) is not torch.nn.Parameter:
        return None
    config = getattr(inner, "config", None)
    if any(getattr(config, k, None) for k in ("final_logit_softcapping", "logit_scale", "logits_scaling")):
        return None
    if any("FullyShard" in type(m).__name__ or "FSDP" in type(m).__name__ for m in inner.modules()):
        return None  # sharded weights are whole only inside their module's forward
    for parent_name, module in inner.named_modules():
        for child_name, child in module.named_children():
            if child is head:
                return parent_name, child_name
    return None


@contextlib.contextmanager
def _hidden_states(model):
    """The model with its output layer switched off for the block: yields that layer."""
    parent, name, head = _output_layer(model)
    setattr(parent, name, _Hidden())
    try:
        yield head
    finally:
        setattr(parent, name, head)


def fused_head(model, input_ids, attention_mask, position_ids, compute_dtype) -> bool:
    """Whether ``model``'s output layer can be applied chunk by chunk: a plain linear layer, and
    (checked once per model, on a few real tokens of the first row, in eval mode) the fused
    log-probs equal the model's own within rounding. A model that transforms its logits after the
    layer fails the check and keeps the whole-logits path."""
    inner = getattr(model, "module", model)
    if inner in _FUSABLE:
        return _FUSABLE[inner]
    if _output_layer(model) is None:
        _FUSABLE[inner] = False
        return False
    ids = input_ids[0][attention_mask[0].bool()][:8].unsqueeze(0)
    if ids.shape[1] < 2:
        return False  # nothing to check on: decided on a later call
    att, pos = torch.ones_like(ids), torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
    targets = ids[:, 1:]
    training = inner.training
    inner.eval()  # dropout off: the two passes must see the same function
    try:
        with torch.no_grad():
            with autocast(ids.device, compute_dtype):
                logits = inner(input_ids=ids, attention_mask=att, position_ids=pos).logits
            whole, _ = selective_log_softmax(logits, targets)
            with _hidden_states(inner) as head, autocast(ids.device, compute_dtype):
                hidden = inner(input_ids=ids, attention_mask=att, position_ids=pos).logits
            ok = hidden.shape[-1] == head.weight.shape[1]
            if ok:
                fused, _ = linear_log_softmax(hidden, head.weight, targets, dtype=logits.dtype)
                tol = 1e-3 if logits.dtype in (torch.float32, torch.float64) else 0.1  # half precision: its rounding
                ok = bool(torch.allclose(fused, whole, rtol=tol, atol=tol))
    finally:
        inner.train(training)
    _FUSABLE[inner] = ok
    return ok


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
    fused = fused_head(model, input_ids, attention_mask, position_ids, compute_dtype)
    if first is None or input_ids.shape[1] == T:
        with _head_off(model, fused) as head, autocast(input_ids.device, compute_dtype):
            out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                        logits_to_keep=T + 1).logits  # [b, T + 1, V or d]: position j predicts token j + 1
        return _reduce(out, head, targets, temperature, with_entropy, compute_dtype)
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
    with _head_off(model, fused) as head, autocast(input_ids.device, compute_dtype):
        out = model(input_ids=input_ids[:, P:], attention_mask=attention_mask, position_ids=position_ids[:, P:],
                    past_key_values=cache, use_cache=True).logits  # [b, T, V or d]: completion j predicts j + 1
    logp, entropy = _reduce(out, head, targets[:, 1:], temperature, with_entropy, compute_dtype)
    return (torch.cat([logp0, logp], dim=1),
            torch.cat([entropy0, entropy], dim=1) if with_entropy else None)


@contextlib.contextmanager
def _head_off(model, fused: bool):
    """``_hidden_states`` when ``fused``, else nothing switched off (yields None)."""
    if not fused:
        yield None
        return
    with _hidden_states(model) as head:
        yield head


def _reduce(out, head, targets, temperature: float, with_entropy: bool, compute_dtype):
    """Log-probs (and entropy) of ``targets`` from the model's output: logits, or with ``head``
    the final hidden states that ``head`` maps to logits, in the dtype autocast gives it."""
    if head is None:
        return selective_log_softmax(out, targets, temperature, with_entropy=with_entropy)
    half = {"bfloat16": torch.bfloat16, "float16": torch.float16}
    dtype = half.get(compute_dtype, compute_dtype)  # autocast runs the layer in a half dtype; else in the weight's
    dtype = dtype if dtype in half.values() else head.weight.dtype
    return linear_log_softmax(out, head.weight, targets, temperature, with_entropy=with_entropy, dtype=dtype)


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

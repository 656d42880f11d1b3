"""Rollouts with transformers models: CPU or GPU, batched, left padding.

Samples from the live module itself, so there are no weights to sync. Forward passes run under
autocast in the compute dtype, exactly as the trainer's scoring does.

``_RowSampler`` does the sampling: it applies temperature, top-k and top-p (transformers' own
warpers), draws each row's token by inverse CDF from one uniform of that row's own stream
(``row_seed``) and records the sampled token's log-prob under the distribution it was drawn
from. So a row's sample depends on its seed and the model, not on the batch it shares, and only
one step's [rows, V] scores exist at a time (``generate``'s full scores would be ~40 GB at a 152k
vocabulary, 128 rows and 512 tokens).

By default the decoding runs in ``_Decoder``, a loop over the model's forward on a cache that
grows in place, with prompt-lookup drafts for greedy rows. Stop strings, the static cache and
models whose cache cannot be built that way go through ``generate``, with the sampler as its
last logits processor (it hands ``generate`` a one-hot choice that greedy decoding then takes).
"""

from __future__ import annotations

import os

import torch
from transformers import DynamicCache, GenerationConfig, LogitsProcessor, LogitsProcessorList
from transformers.cache_utils import DynamicLayer
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from cat.generation import SamplingParams, row_seed
from cat.models.load import autocast
from cat.models.logprobs import first_and_owner, token_logprobs
from cat.types import Completion


def _logprob_dtype(model) -> torch.dtype:
    """Recorded log-probs are fp32, fp64 for a fp64 model (kept exact for the numerical checks)."""
    return torch.promote_types(next(model.parameters()).dtype, torch.float32)


class _RowSampler(LogitsProcessor):
    """Picks every row's next token and records its log-prob; returns a one-hot score row."""

    def __init__(self, params: SamplingParams, seeds: list[int] | None, prompt_width: int):
        self.greedy = params.greedy
        self.prompt_width = prompt_width
        self.warpers = [] if params.greedy else [
            w for w in (
                TemperatureLogitsWarper(params.temperature) if params.temperature != 1.0 else None,
                TopKLogitsWarper(params.top_k) if params.top_k > 0 else None,
                TopPLogitsWarper(params.top_p) if params.top_p < 1.0 else None,
            ) if w is not None
        ]
        self.uniforms = None
        if not params.greedy:
            rows = []
            for s in seeds:
                g = torch.Generator().manual_seed(s)
                rows.append(torch.rand(params.max_new_tokens, generator=g, dtype=torch.float64))
            self.uniforms = torch.stack(rows)  # [N, max_new_tokens]
        self.logprobs: list[torch.Tensor] = []  # one [N] per generated position

    def choose(self, scores: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's token at generated position ``t`` and its log-prob: ([N] long, [N] float32, or
        float64 for a float64 model). Greedy choice ignores ``t``, so a greedy call may pass rows of
        several positions at once."""
        x = scores.to(torch.promote_types(scores.dtype, torch.float32))  # [N, V]
        for warp in self.warpers:
            x = warp(None, x)
        lse = torch.logsumexp(x, dim=-1, keepdim=True)  # [N, 1]
        if self.greedy:
            chosen = x.argmax(-1, keepdim=True)  # [N, 1]
        else:
            cdf = torch.exp(x - lse).cumsum(-1)  # [N, V]
            u = self.uniforms[:, t : t + 1].to(cdf.device, cdf.dtype) * cdf[:, -1:]  # [N, 1]
            chosen = torch.searchsorted(cdf, u.clamp_min(torch.finfo(cdf.dtype).tiny)).clamp_max(x.shape[-1] - 1)
        return chosen.squeeze(-1), (x.gather(-1, chosen) - lse).squeeze(-1)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        chosen, logprob = self.choose(scores, input_ids.shape[1] - self.prompt_width)
        self.logprobs.append(logprob.cpu())
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(-1, chosen.unsqueeze(-1), 0.0)


class _RoomyLayer(DynamicLayer):
    """A dynamic cache layer that writes each new token's keys and values into room allocated
    once (``room`` positions: prompt + max_new_tokens) and hands attention a view of the filled
    part. transformers' own layer concatenates the whole cache every token, which copies it over
    and over (docs/scale.md gives its share of a decode step). Attention still sees exactly the
    filled length (a static cache attends over all of its room, which costs more than the copy on
    short rows). Anything that replaces the tensors (``reorder_cache``, ``crop``) is taken over on
    the next write."""

    def __init__(self, room: int):
        super().__init__()
        self.room = room
        self.buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        old = self.get_seq_length()
        new = old + key_states.shape[-2]
        buffers = self.buffers
        if (buffers is None or buffers[0].shape[2] < new or buffers[0].shape[:2] != key_states.shape[:2]
                or self.keys.data_ptr() != buffers[0].data_ptr() or self.values.data_ptr() != buffers[1].data_ptr()):
            grown = 2 * buffers[0].shape[2] if buffers is not None and buffers[0].shape[2] < new else 0
            room = max(new, self.room, grown)  # past the planned room, grow geometrically
            buffers = tuple(x.new_empty((*x.shape[:2], room, x.shape[3])) for x in (key_states, value_states))
            if old:
                buffers[0][:, :, :old], buffers[1][:, :, :old] = self.keys, self.values
            self.buffers = buffers
        buffers[0][:, :, old:new], buffers[1][:, :, old:new] = key_states, value_states
        self.keys, self.values = buffers[0][:, :, :new], buffers[1][:, :, :new]
        return self.keys, self.values

    def reset(self) -> None:
        self.buffers = None
        super().reset()


def _roomy_cache(model, room: int):
    """A DynamicCache for ``model`` whose full-attention layers are ``_RoomyLayer``s (sliding and
    other special layers keep their own); None when the model's cache cannot be built that way."""
    try:
        cache = DynamicCache(config=model.config)
    except Exception:  # a model with its own cache class: generate builds that one
        return None
    if not cache.layers or not any(type(layer) is DynamicLayer for layer in cache.layers):
        return None
    cache.layers = [_RoomyLayer(room) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


class _SharedPrefill:
    """Prefill that computes what rows share once. A batch's rows often repeat one prompt (the G
    samples of a group) and begin with the same tokens (a chat template's system part, the
    anchor's instructions before the rollouts: 111 of ~365 tokens on the tiny world). The common
    prefix is run once, each distinct prompt's rest once, and the cache's rows are then indexed
    out to the batch (``Cache.reorder_cache``); ``generate`` continues from that cache with the
    last prompt token. Rows are laid out ``[common prefix | padding | rest]``: positions follow
    the attention mask, so every token sits at the position it has in its own prompt."""

    MIN_PREFIX = 16
    """A common prefix shorter than this is not worth a forward pass of its own."""

    def __init__(self, common: list[int], rests: list[list[int]], owner: list[int]):
        self.common, self.rests, self.owner = common, rests, owner

    @classmethod
    def plan(cls, prompts: list[list[int]]) -> _SharedPrefill | None:
        if len(prompts) < 2:
            return None
        shortest = min(len(p) for p in prompts)
        common = os.path.commonprefix(prompts)[: max(shortest - 1, 0)]  # every row keeps a token to feed generate
        if len(common) < cls.MIN_PREFIX:
            common = []
        first, owner = first_and_owner([tuple(p[len(common):]) for p in prompts])
        if not common and len(first) == len(prompts):
            return None  # nothing shared
        return cls(common, [list(prompts[i][len(common):]) for i in first], owner)

    @torch.no_grad()
    def prefill(self, model, pad: int, max_new_tokens: int, compute_dtype: str | None):
        """-> (input_ids [N, W], attention [N, W], a cache holding all but the last column), or
        None when the model's cache cannot be built for it."""
        C, S = len(self.common), max(len(r) for r in self.rests)
        width = C + S
        cache = _roomy_cache(model, width + max_new_tokens)
        if cache is None:
            return None
        device = model.device
        ids = torch.full((len(self.rests), width), pad, dtype=torch.long)
        att = torch.zeros_like(ids)
        ids[:, :C], att[:, :C] = torch.tensor(self.common, dtype=torch.long), 1
        for u, rest in enumerate(self.rests):
            ids[u, width - len(rest):], att[u, width - len(rest):] = torch.tensor(rest, dtype=torch.long), 1
        positions = (att.cumsum(1) - 1).clamp(min=0)
        with autocast(device, compute_dtype):
            if C:
                model(input_ids=ids[:1, :C].to(device), position_ids=positions[:1, :C].to(device),
                      past_key_values=cache, use_cache=True, logits_to_keep=1)
                cache.reorder_cache(torch.zeros(len(self.rests), dtype=torch.long, device=device))
            if width - 1 > C:
                model(input_ids=ids[:, C:width - 1].to(device), attention_mask=att[:, :width - 1].to(device),
                      position_ids=positions[:, C:width - 1].to(device), past_key_values=cache, use_cache=True,
                      logits_to_keep=1)
        owner = torch.tensor(self.owner, dtype=torch.long)
        cache.reorder_cache(owner.to(device))
        return ids[owner], att[owner], cache


class _Lookup:
    """Prompt-lookup drafts (n-gram speculation) for one greedy row: the tokens that followed
    the most recent earlier occurrence of the row's last ``n`` tokens (``n`` = 3, then 2, then 1)
    in its prompt and output. Outputs that quote their prompt, as an anchor quoting the rollouts
    it read does, get most tokens from a draft that one forward pass verifies. Lookups are dict
    reads: an n-gram is indexed once the token after it exists."""

    N = 3

    def __init__(self, context: list[int]):
        self.context: list[int] = []
        self.seen: dict[tuple[int, ...], int] = {}  # n-gram -> where its latest continuation starts
        self.extend(context)

    def extend(self, tokens: list[int]) -> None:
        ctx = self.context
        for x in tokens:
            end = len(ctx)
            for n in range(1, min(self.N, end) + 1):
                self.seen[tuple(ctx[end - n : end])] = end
            ctx.append(x)

    def draft(self, k: int) -> list[int]:
        ctx = self.context
        for n in range(min(self.N, len(ctx)), 0, -1):
            at = self.seen.get(tuple(ctx[-n:]))
            if at is not None:
                return ctx[at : at + k]
        return []


class _Decoder:
    """The decoding loop, run directly on a cache that grows in place.

    What ``generate`` does per token, without its per-step machinery: one forward pass of the
    rows' last tokens at their own positions, the row sampler's choice, end-of-sequence
    bookkeeping, and one read of "has every row ended" per step.

    Greedy rows may also carry ``lookup`` draft tokens each pass (``_Lookup``). The pass then
    feeds ``[last token, draft...]``, takes the model's greedy token at every position and keeps
    the draft's longest agreeing prefix plus the model's next token: the tokens plain greedy
    decoding writes, in fewer passes (to float rounding: a pass over several positions sums in
    another order, so a near-tie may break the other way, as a different batch size can). A
    rejected draft token's cache column is masked out of attention; columns no row kept are
    cropped from the cache."""

    def __init__(self, model, cache, eos_ids: list[int], pad: int, compute_dtype: str | None):
        self.model, self.cache, self.pad, self.compute_dtype = model, cache, pad, compute_dtype
        self.eos_ids = eos_ids
        self.device = model.device

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, keep: int) -> torch.Tensor:
        with autocast(self.device, self.compute_dtype):
            return self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=self.cache,
                              use_cache=True, logits_to_keep=keep).logits  # [N, keep, V]

    @torch.no_grad()
    def run(self, input_ids: torch.Tensor, attention: torch.Tensor, sampler: _RowSampler, max_new_tokens: int,
            lookup: int) -> list[tuple[list[int], list[float], str]]:
        """-> per row (tokens, log-probs, finish reason). The cache holds all but the last column
        of ``input_ids`` [N, W] (a shared prefill) or nothing."""
        if lookup:
            return self._drafted(input_ids, attention, sampler, max_new_tokens, lookup)
        device = self.device
        N, W = input_ids.shape
        cached = self.cache.get_seq_length()
        mask = torch.zeros((N, W + max_new_tokens), dtype=torch.long, device=device)
        mask[:, :W] = attention.to(device)
        positions = (mask[:, :W].cumsum(1) - 1).clamp(min=0)
        tokens = torch.full((N, max_new_tokens), self.pad, dtype=torch.long, device=device)
        logprobs = torch.zeros((N, max_new_tokens), dtype=_logprob_dtype(self.model), device=device)
        length = torch.full((N,), max_new_tokens, dtype=torch.long, device=device)
        done = torch.zeros(N, dtype=torch.bool, device=device)
        eos = torch.tensor(self.eos_ids, dtype=torch.long, device=device)
        feed, feed_positions = input_ids[:, cached:].to(device), positions[:, cached:]
        for t in range(max_new_tokens):
            logits = self.forward(feed, mask[:, : W + t], feed_positions, 1)
            chosen, lp = sampler.choose(logits[:, -1], t)
            chosen = chosen.masked_fill(done, self.pad)  # an ended row is fed padding, as generate does
            tokens[:, t], logprobs[:, t] = chosen, lp
            ended = torch.isin(chosen, eos) & ~done
            length = torch.where(ended, t + 1, length)
            done |= ended
            if t + 1 == max_new_tokens or bool(done.all()):
                break
            mask[:, W + t] = 1
            feed, feed_positions = chosen[:, None], positions[:, -1:] + (t + 1)
        stopped = done.tolist()
        return [(ids[:n], lps[:n], "stop" if stop else "length") for ids, lps, n, stop in
                zip(tokens.tolist(), logprobs.tolist(), length.tolist(), stopped, strict=True)]

    def _drafted(self, input_ids: torch.Tensor, attention: torch.Tensor, sampler: _RowSampler, max_new_tokens: int,
                 lookup: int) -> list[tuple[list[int], list[float], str]]:
        device = self.device
        N, W = input_ids.shape
        cached = self.cache.get_seq_length()
        mask = torch.zeros((N, W + 2 * max_new_tokens), dtype=torch.long, device=device)
        mask[:, :W] = attention.to(device)
        last_position = (attention.sum(1) - 1).tolist()  # each row's last prompt token
        tokens: list[list[int]] = [[] for _ in range(N)]
        logprobs: list[list[float]] = [[] for _ in range(N)]
        finish = ["length"] * N
        drafter = [_Lookup(input_ids[r][attention[r].bool()].tolist()) for r in range(N)]
        drafts: list[list[int]] = [[] for _ in range(N)]
        eos = set(self.eos_ids)
        # The first pass reads the prompt (or its last token after a shared prefill).
        feed = input_ids[:, cached:].to(device)
        feed_positions = (mask[:, :W].cumsum(1) - 1).clamp(min=0)[:, cached:]
        columns, keep, live = cached, 1, list(range(N))
        while live:
            q = feed.shape[1]
            if columns > cached:  # after the first pass, every row attends to what it is fed
                if columns + q > mask.shape[1]:
                    mask = torch.cat([mask, torch.zeros_like(mask)], 1)
                mask[:, columns : columns + q] = 1
            logits = self.forward(feed, mask[:, : columns + q], feed_positions, keep)
            chosen, lp = sampler.choose(logits.reshape(N * keep, -1), 0)
            chosen, lp = chosen.view(N, keep).tolist(), lp.view(N, keep).tolist()
            kept = q if columns == cached else 1  # columns of this pass some row keeps
            next_live = []
            for r in live:
                draft = drafts[r]
                a = 0
                while a < len(draft) and chosen[r][a] == draft[a]:
                    a += 1
                room = max_new_tokens - len(tokens[r])
                new, new_lp = chosen[r][: a + 1][:room], lp[r][: a + 1][:room]
                for i, x in enumerate(new):
                    if x in eos:
                        new, new_lp = new[: i + 1], new_lp[: i + 1]
                        finish[r] = "stop"
                        break
                tokens[r].extend(new)
                logprobs[r].extend(new_lp)
                if columns > cached:
                    kept = max(kept, 1 + a)
                    mask[r, columns + 1 + a : columns + q] = 0  # its rejected draft tokens
                if finish[r] == "length" and len(tokens[r]) < max_new_tokens:
                    next_live.append(r)
                    drafter[r].extend(new)
                    drafts[r] = drafter[r].draft(min(lookup, max_new_tokens - len(tokens[r]) - 1))
            if kept < q:
                self.cache.crop(-(q - kept))  # columns no row kept
                mask[:, columns + kept : columns + q] = 0
            columns += kept
            live = next_live
            if not live:
                break
            keep = q = 1 + max(len(drafts[r]) for r in live)
            feed_rows = [[self.pad] * q for _ in range(N)]
            position_rows = [[0] * q for _ in range(N)]
            for r in live:
                feed_rows[r][: 1 + len(drafts[r])] = [tokens[r][-1], *drafts[r]]
                start = last_position[r] + len(tokens[r])  # the position of the row's last token
                position_rows[r] = list(range(start, start + q))
            feed = torch.tensor(feed_rows, dtype=torch.long, device=device)
            feed_positions = torch.tensor(position_rows, dtype=torch.long, device=device)
        return [(tokens[r], logprobs[r], finish[r]) for r in range(N)]


class HFGenerator:
    """transformers models behind the Generator seam.

    ``cache="dynamic"``: a cache that grows without copying itself every token (``_RoomyLayer``),
    prefilled with what the rows share computed once (``_SharedPrefill``), decoded by
    ``_Decoder``. ``cache="static"``: transformers' static cache in ``generate``, whose attention
    spans all of its room. ``cache="default"``: ``generate`` with whatever cache transformers
    builds. Models whose cache cannot be built the first way get the default one; calls with stop
    strings go through ``generate``. Outputs are the same in every case (to float rounding).

    ``lookup``: draft tokens per pass for greedy calls (the anchor), taken from each row's own
    prompt and output (``_Lookup``); 0 turns drafting off. The tokens are plain greedy
    decoding's either way.

    Why: transformers' cache copies itself every token, and ``generate`` runs a prefix that many
    rows share once per row; on small models and short rows both are a large share of a step.
    Drafting pays where a greedy row copies from its prompt (the anchor quoting a rollout). The
    measurements are in docs/scale.md, "Generation on transformers".
    """

    def __init__(self, model, tokenizer, *, batch_size: int = 64, compute_dtype: str | None = None,
                 cache: str = "dynamic", lookup: int = 8):
        self.model = model
        self.lookup = lookup
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.compute_dtype = compute_dtype
        if cache not in ("dynamic", "static", "default"):
            raise ValueError(f"HFGenerator cache must be 'dynamic', 'static' or 'default', got {cache!r}")
        self.cache = cache
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.eos_ids = _eos_ids(model, tokenizer)

    def sync_weights(self, model) -> None:
        self.model = model

    def close(self) -> None:
        self.model = None  # the module is its owner's (the learner's, the anchor's): only this reference goes

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        seed = params.seed if params.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
        rows = [(ids, row_seed(seed, params.row_offset + i, k)) for i, ids in enumerate(prompts) for k in range(params.n)]
        flat: list[Completion] = []
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(rows), self.batch_size):
                flat.extend(self._generate_batch(rows[start : start + self.batch_size], params))
        finally:
            self.model.train(was_training)
        return [flat[i * params.n : (i + 1) * params.n] for i in range(len(prompts))]

    @torch.no_grad()
    def score(self, prompts: list[list[int]], continuations: list[list[int]]) -> list[list[float]]:
        """Log-probs of each continuation after its prompt, in batches of rows of like length
        (longest first), each padded only to its own widest prompt and longest continuation."""
        out: dict[int, list[float]] = {}
        pad = self.tokenizer.pad_token_id
        device = self.model.device
        order = sorted(range(len(prompts)), key=lambda i: -(len(prompts[i]) + len(continuations[i])))
        was_training = self.model.training
        self.model.eval()
        try:
            for s in range(0, len(order), self.batch_size):
                rows = order[s : s + self.batch_size]
                ctx, cont = [prompts[i] for i in rows], [continuations[i] for i in rows]
                P = max(len(c) for c in ctx)
                T = max(1, max(len(c) for c in cont))
                ids = torch.full((len(ctx), P + T), pad, dtype=torch.long)
                att = torch.zeros_like(ids)
                for i, (c, x) in enumerate(zip(ctx, cont, strict=True)):
                    ids[i, P - len(c) : P] = torch.tensor(c)
                    att[i, P - len(c) : P] = 1
                    if x:
                        ids[i, P : P + len(x)] = torch.tensor(x)
                        att[i, P : P + len(x)] = 1
                logp, _ = token_logprobs(self.model, ids.to(device), att.to(device), T, 1.0,
                                         compute_dtype=self.compute_dtype)
                logp = logp.cpu()
                out.update((r, logp[i, : len(x)].tolist()) for i, (r, x) in enumerate(zip(rows, cont, strict=True)))
        finally:
            self.model.train(was_training)
        return [out[i] for i in range(len(prompts))]

    def _generate_batch(self, rows: list[tuple[list[int], int]], params: SamplingParams) -> list[Completion]:
        pad = self.tokenizer.pad_token_id
        device = self.model.device
        own_loop = self.cache == "dynamic" and not params.stop  # stop strings: generate's criteria
        lookup = self.lookup if own_loop and params.greedy else 0
        room = params.max_new_tokens * (2 if lookup else 1)
        plan = _SharedPrefill.plan([ids for ids, _ in rows]) if self.cache == "dynamic" else None
        shared = plan.prefill(self.model, pad, room, self.compute_dtype) if plan else None
        if shared is not None:
            input_ids, attention, cache = shared
            width = input_ids.shape[1]
        else:
            width = max(len(ids) for ids, _ in rows)
            input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
            attention = torch.zeros((len(rows), width), dtype=torch.long)
            for i, (ids, _) in enumerate(rows):
                input_ids[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                attention[i, width - len(ids) :] = 1
            cache = _roomy_cache(self.model, width + room) if self.cache == "dynamic" else None
        if own_loop and cache is not None:
            if lookup and not all(isinstance(layer, _RoomyLayer) for layer in cache.layers):
                lookup = 0  # a sliding or other special layer cannot hold masked-out columns
            sampler = _RowSampler(params, [s for _, s in rows], width)
            decoded = _Decoder(self.model, cache, self.eos_ids, pad, self.compute_dtype).run(
                input_ids, attention, sampler, params.max_new_tokens, lookup)
            return [Completion(text=self.tokenizer.decode(ids, skip_special_tokens=True), token_ids=tuple(ids),
                               logprobs=tuple(lp), finish_reason=finish) for ids, lp, finish in decoded]
        sampler = _RowSampler(params, [s for _, s in rows], width)
        # Greedy over the sampler's one-hot choice; every knob that would change the distribution
        # is pinned neutral so a model's generation_config.json cannot leak into sampling.
        config = GenerationConfig(
            do_sample=False, max_new_tokens=params.max_new_tokens, pad_token_id=pad, eos_token_id=self.eos_ids,
            stop_strings=list(params.stop) or None, repetition_penalty=1.0, no_repeat_ngram_size=0,
            temperature=None, top_k=None, top_p=None, min_p=None, num_beams=1,
            # no automatic torch.compile of the static-cache path: it would recompile for every
            # new batch shape
            **({"cache_implementation": "static", "disable_compile": True} if self.cache == "static" else {}),
        )
        try:
            with autocast(device, self.compute_dtype):
                out = self.model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention.to(device),
                    generation_config=config,
                    logits_processor=LogitsProcessorList([sampler]),
                    tokenizer=self.tokenizer if params.stop else None,
                    **({"past_key_values": cache} if cache is not None else {}),
                )
        except ValueError as exc:
            if self.cache != "static" or "static" not in str(exc).lower():
                raise
            self.cache = "dynamic"  # this model has no static cache
            return self._generate_batch(rows, params)
        generated = out[:, width:].cpu() if isinstance(out, torch.Tensor) else out.sequences[:, width:].cpu()  # [N, T]
        logprobs = torch.stack(sampler.logprobs, dim=1) if sampler.logprobs else torch.zeros(len(rows), 0)  # [N, T]
        return [self._completion(generated[i], logprobs[i], params) for i in range(len(rows))]

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

"""``cat-rl plan CONFIG``: what a run holds in memory per process, before it starts.

Computed from the model's architecture (its ``config.json``; no weights are loaded: the model is
built on the meta device) and the run's config:

* policy master weights, gradients, AdamW state: fp32 (4 + 4 + 8 bytes per trained parameter,
  see ``cat.models.load``), whole on every rank with DDP, 1/N of them with FSDP; with LoRA, the
  frozen base in the compute dtype and 16 bytes per adapter parameter;
* pi_0 (KL reference, anchor), held in the compute dtype, when the run uses it (``grpo.beta > 0``
  or an anchor on the transformers backend);
* the vLLM engine's own copy of the weights in the compute dtype, and the KV cache that holds all of
  a step's sequences at once (``2 x layers x kv_heads x head_dim`` values per token); with less,
  vLLM queues sequences and a step takes longer.

Activations are left out: they depend on ``run.micro_batch_size`` and sequence length and are
bounded by gradient checkpointing. Scoring's own buffers are reported separately: a few fp32
chunks of logits where the output layer is applied chunk by chunk (``cat.models.logprobs``), the
whole logits of a micro-batch where it cannot be.
``tests/test_plan.py`` checks the static parts against the tensors of a real Learner.
"""

from __future__ import annotations

from dataclasses import dataclass

from cat.errors import ConfigError

GB = 1024**3
_BYTES = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class Architecture:
    parameters: int
    layers: int
    kv_heads: int
    head_dim: int
    vocab: int
    linears: tuple[tuple[str, int, int], ...] = ()
    """(module name, in_features, out_features) of every linear layer but the output layer."""
    plain_head: bool = True
    """The output layer is a linear map without bias, its logits neither capped nor scaled after it."""

    def lora_parameters(self, settings) -> int:
        """Adapter parameters of ``model.lora`` (r x (in + out) per adapted layer; peft's matching:
        a target is a module name or its last components)."""
        targets = settings.target_modules
        chosen = [(i, o) for name, i, o in self.linears
                  if targets == "all-linear" or any(name == t or name.endswith("." + t) for t in targets)]
        return sum(settings.r * (i + o) for i, o in chosen)


def architecture(model_config) -> Architecture:
    """Parameter count (tied weights once) and attention shape of a transformers model config."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):  # shapes only; a tied output layer is the embedding, counted once
        model = AutoModelForCausalLM.from_config(model_config, dtype=torch.float32)
    output = model.get_output_embeddings()
    linears = tuple((name, m.in_features, m.out_features) for name, m in model.named_modules()
                    if isinstance(m, torch.nn.Linear) and m is not output)
    text = model_config.get_text_config()
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return Architecture(
        parameters=sum(p.numel() for p in model.parameters()),
        layers=text.num_hidden_layers,
        kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        vocab=text.vocab_size,
        linears=linears,
        plain_head=type(output) is torch.nn.Linear and output.bias is None and not any(
            getattr(text, k, None) for k in ("final_logit_softcapping", "logit_scale", "logits_scaling")),
    )


def plan(config, arch: Architecture, *, processes: int = 1) -> list[tuple[str, float]]:
    """(component, bytes per process) for ``config`` on ``arch`` with the step split over ``processes``."""
    P, compute = arch.parameters, _BYTES[config.model.dtype]
    g, gen, run = config.grpo, config.generation, config.run
    lora = config.model.lora
    shards = processes if config.parallel.strategy == "fsdp" and processes > 1 else 1
    # trained tensors are fp32 (a float64 run's are float64 throughout: twice the bytes)
    m, wide = (8, "fp64") if config.model.dtype == "float64" else (4, "fp32")
    if lora is None:
        part = f", 1/{shards} (FSDP)" if shards > 1 else ""
        rows = [(f"policy master weights ({wide}{part})", -(-m * P // shards)), (f"gradients ({wide}{part})", -(-m * P // shards)),
                (optimizer_row(config.optim.name, part, wide), -(-optimizer_bytes(config.optim.name, P) * m // 4 // shards))]
    else:
        A = arch.lora_parameters(lora)
        rows = [(f"base weights, frozen ({config.model.dtype}; pi_0 is the base with the adapter off)", compute * P),
                (f"LoRA adapter ({wide}, r={lora.r}, {A / 1e6:.1f} M parameters)", m * A),
                (f"adapter gradients ({wide})", m * A),
                (optimizer_row(config.optim.name, "", wide), optimizer_bytes(config.optim.name, A) * m // 4)]
    anchor_on_pi0 = (config.estimator.name in {"synthesis", "self_bon", "min_perplexity", "mutual_predictability"}
                     and config.anchor.backend == "local" and config.anchor.model is None and gen.backend == "hf")
    uses_pi0 = lora is None and (g.beta > 0 or anchor_on_pi0)  # a second copy; with LoRA, none
    if uses_pi0:
        rows.append((f"pi_0, frozen ({config.model.dtype})", compute * P))
    if gen.backend == "vllm":
        rows.append((f"vLLM engine weights ({config.model.dtype})", compute * P))
        prompt = config.data.max_prompt_tokens or 512
        prompts = -(-run.prompts_per_step // processes)
        tokens = prompts * gen.num_generations * (gen.max_new_tokens + prompt)
        rows.append((f"vLLM KV cache, a whole step at once ({prompts} prompts x {gen.num_generations} x "
                     f"({prompt} prompt + {gen.max_new_tokens} new) tokens)",
                     2 * arch.layers * arch.kv_heads * arch.head_dim * compute * tokens))
    from cat.models.logprobs import CHUNK_ELEMENTS

    positions = gen.max_new_tokens + 1
    if arch.plain_head and config.parallel.strategy != "fsdp":  # the output layer applied chunk by chunk: about two fp32 chunks alive
        chunk = min(CHUNK_ELEMENTS, run.micro_batch_size * -(-positions // 16) * arch.vocab)
        rows.append(("log-prob chunks of one micro-batch (activations not counted)", 2 * 4 * chunk))
    else:
        rows.append(("logits of one micro-batch (activations not counted)",
                     run.micro_batch_size * positions * arch.vocab * compute))
    return rows


def optimizer_bytes(name: str, trained: int) -> int:
    """The optimizer state of ``trained`` parameters: AdamW's two fp32 moments (8 bytes each), or
    AdamW8bit's two 8-bit moments with an fp32 scale per block of 256 (about 2.03 bytes)."""
    return 8 * trained if name == "adamw" else 2 * trained + -(-trained // 256) * 2 * 4


def optimizer_row(name: str, part: str, wide: str = "fp32") -> str:
    return f"AdamW state ({wide}, 2 moments{part})" if name == "adamw" else \
        f"AdamW8bit state (bitsandbytes: 2 moments in 8 bits, block scales{part})"


def _amount(n: float, decimals: int = 1) -> str:
    """Bytes in GiB, or in MiB below a tenth of a GiB (never "0.0 GiB")."""
    return f"{n / GB:.{decimals}f} GiB" if n >= GB / 10 else f"{n / 1024**2:.{decimals}f} MiB"


def _size(n: float) -> str:
    """An amount in the plan's table: two decimals, right-aligned."""
    return f"{_amount(n, 2):>13}"


def render(config, arch: Architecture, *, processes: int = 1) -> str:
    rows = plan(config, arch, processes=processes)
    width = max(len(name) for name, _ in rows)
    how = "full fine-tuning" if config.model.lora is None else "LoRA"
    lines = [f"model {config.model.name_or_path}: {arch.parameters / 1e9:.3f} B parameters, "
             f"compute dtype {config.model.dtype}, {processes} process(es), {how}, per process:"]
    lines += [f"  {name:<{width}}  {_size(size)}" for name, size in rows]
    lines.append(f"  {'total':<{width}}  {_size(sum(s for _, s in rows))}")
    lines.append("  (prompt length: data.max_prompt_tokens, else 512; each process holds the KV cache for its share "
                 "of the step's prompts; FSDP gathers one layer's weights at a time on top of its shard)")
    return "\n".join(lines)


HEADROOM = 0.10
"""The share of a process's memory a run must leave free by the plan: activations are not counted."""


@dataclass(frozen=True)
class Fit:
    """The plan against the memory one process has: ``need`` bytes (vLLM's rows as the engine
    will take them), ``capacity`` bytes on ``where``."""

    need: int
    capacity: int
    where: str
    knobs: tuple[str, ...]

    @property
    def fits(self) -> bool:
        return self.need <= (1 - HEADROOM) * self.capacity

    def line(self) -> str:
        share = 1 - self.need / self.capacity
        if self.fits:
            return (f"fits {self.where} ({_amount(self.capacity)} a process) with {share:.0%} to spare for "
                    f"activations (at least {HEADROOM:.0%} asked)")
        return (f"does not fit {self.where}: the plan needs {_amount(self.need)} a process and leaves "
                f"{max(share, 0):.0%} of {_amount(self.capacity)} for activations (at least {HEADROOM:.0%} asked); "
                f"turn a knob: " + "; or ".join(self.knobs))


def fit(config, arch: Architecture, *, processes: int, capacity: int, where: str, gpu: bool) -> Fit:
    """Whether ``config``'s plan fits ``capacity`` bytes a process, and what to change when not.
    vLLM holds what it is given, not the plan's whole step: on a GPU ``vllm_gpu_memory_utilization``
    of the device (its weights and KV cache), on the CPU its weights and ``VLLM_CPU_KVCACHE_SPACE``.
    With ``generation.vllm_sleep`` on a GPU the engine's share is freed through the update, and the
    gradients and scoring buffers before the engine wakes, so the need is the larger phase's: the
    update's (no engine) or the rollouts' (the engine, no gradients, no scoring buffers)."""
    import os

    rows = plan(config, arch, processes=processes)
    gen = config.generation
    engine = [size for name, size in rows if name.startswith("vLLM")]
    need = sum(size for name, size in rows if not name.startswith("vLLM"))
    share = int(gen.vllm_gpu_memory_utilization * capacity) if engine and gpu else 0
    if engine and gpu and gen.vllm_sleep:
        freed = sum(size for name, size in rows if name.startswith((*SCORING, "gradients", "adapter gradients")))
        need = max(need, need - freed + share)
    elif engine and gpu:
        need += share
    elif engine:
        try:  # vLLM's CPU build reads the same variable, an empty one as unset
            kv_space = float(os.environ.get("VLLM_CPU_KVCACHE_SPACE") or 1) * GB
        except ValueError:
            kv_space = GB
        need += engine[0] + int(kv_space)
    return Fit(need=need, capacity=capacity, where=where, knobs=tuple(_knobs(config, rows, engine_share=share)))


SCORING = ("logits of", "log-prob chunks")
"""The plan rows of the update's scoring buffers (not held while the engine generates)."""


def _knobs(config, rows: list[tuple[str, int]], *, engine_share: int = 0) -> list[str]:
    """The settings that shrink this plan's rows (``engine_share``: the bytes vLLM holds on a GPU)."""
    out = []
    gen = config.generation
    trained = sum(b for name, b in rows if name.startswith(("policy master", "gradients", "AdamW")))
    fsdp = config.parallel.strategy == "fsdp"
    if config.model.lora is None and not fsdp:  # FSDP with LoRA is refused when the config loads
        out.append(f"model.lora (train an adapter: the fp32 master weights, gradients and optimizer state, "
                   f"{_amount(trained)}, become the adapter's; the frozen base is held once, in the compute dtype)")
        if config.model.dtype != "float16":  # FSDP with fp16 is refused when the config loads
            out.append("parallel.strategy=fsdp on more processes (shards the fp32 weights, gradients and optimizer "
                       f"state: {_amount(trained)} over N)")
    if fsdp:
        out.append(f"more processes (FSDP shards the trained weights, gradients and optimizer state, "
                   f"{_amount(trained)} a process now)")
    optimizer = next((b for name, b in rows if name.startswith("AdamW state")), None)
    if optimizer is not None and config.parallel.strategy != "fsdp" and config.model.dtype != "float64":
        out.append(f"optim.name=adamw_8bit (the optimizer state, {_amount(optimizer)}, to about a quarter)")
    if engine_share and not gen.vllm_sleep and not gen.async_rollouts:
        out.append(f"generation.vllm_sleep=true (the engine's {_amount(engine_share)} are released through the "
                   "update, the gradients while it generates)")
    if any(name.startswith("vLLM") for name, _ in rows) and config.generation.vllm_gpu_memory_utilization > 0.2:
        out.append(f"generation.vllm_gpu_memory_utilization below {config.generation.vllm_gpu_memory_utilization} "
                   "(a smaller KV cache: vLLM queues the step's sequences)")
    logits = next((b for name, b in rows if name.startswith(SCORING)), 0)
    if logits > GB:
        out.append(f"run.micro_batch_size below {config.run.micro_batch_size} (the scoring buffers, {_amount(logits)})")
    return out or ["a smaller model.name_or_path, or more memory: nothing in this config shrinks it much"]


def run_fit(config) -> Fit | None:
    """The plan of ``config`` against the memory of the process about to run it: ``run.memory_gib``,
    else its GPU's (under a launcher, the one its local rank takes), else the machine's RAM shared
    by the processes on it. None, with a warning, where the model's architecture cannot be read
    (the model's load then says why)."""
    import logging
    import os

    from transformers import AutoConfig

    from cat.models.load import resolve_device, resolve_path

    m = config.model
    try:
        arch = architecture(AutoConfig.from_pretrained(resolve_path(m.name_or_path), trust_remote_code=m.trust_remote_code))
    except ConfigError:  # a model path that is not there: the run cannot start, so no warning first
        raise
    except Exception as exc:  # noqa: BLE001 - any reason the config.json cannot be read or understood
        logging.getLogger(__name__).warning("memory plan skipped: cannot read the architecture of '%s' (%s)",
                                            m.name_or_path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return None
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    gpu = resolve_device(m.device).type == "cuda"
    if config.run.memory_gib is not None:
        capacity, where = int(config.run.memory_gib * GB), "run.memory_gib"
    elif gpu:
        import torch

        named = resolve_device(m.device).index  # model.device cuda:N, else the local rank's GPU
        index = named if named is not None else int(os.environ.get("LOCAL_RANK", "0")) % max(torch.cuda.device_count(), 1)
        props = torch.cuda.get_device_properties(index)
        capacity, where = props.total_memory, f"the GPU ({props.name})"
    else:
        capacity = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // local
        where = "this machine's memory" + (f" shared by {local} processes" if local > 1 else "")
    return fit(config, arch, processes=processes, capacity=capacity, where=where, gpu=gpu)

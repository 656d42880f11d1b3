"""The generation seam: token-id prompts x n samples -> Completions, and token scoring.

Every model call of a run goes through a ``Generator``: the policy's rollouts and evaluation, the
anchor's synthesis and rubric proposals, min-perplexity scoring, and an in-process judge. The
engine is chosen by config (``hf``: transformers; ``vllm``: the only module that imports vllm),
so with ``generation.backend: vllm`` the anchor runs on vLLM too. Prompts arrive already
formatted and tokenized, so the trainer scores exactly the ids that were sampled from.

Sampling streams. Sample k of prompt i in a call seeded with s draws from its own random stream,
seeded by ``row_seed(s, i, k)``: two copies of one prompt in a batch never share a stream, and a
sample does not depend on which other prompts share its batch (hf) or request (vLLM).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from cat.config import accepts_whole_config
from cat.types import Completion

if TYPE_CHECKING:
    from cat.config import GenerationConfig

_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. ``greedy`` ignores temperature/top-p/top-k. ``seed`` makes a call
    reproducible: sample k of prompt i draws from the stream ``row_seed(seed, row_offset + i, k)``.

    ``row_offset``: the index of this call's first prompt in a larger batch that was split (across
    processes), so every prompt keeps the stream it has when the batch runs whole."""

    n: int = 1
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    greedy: bool = False
    seed: int | None = None
    row_offset: int = 0


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def row_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """The seed of sample ``sample_index`` of prompt ``prompt_index`` in a call seeded ``seed``.

    A hash, not a sum: ``seed + i + k`` would give (i, k + 1) and (i + 1, k) the same stream.
    Returns a value in [0, 2**31) (vLLM and torch both accept it)."""
    x = _splitmix64(seed & _MASK64)
    x = _splitmix64(x ^ (prompt_index & _MASK64))
    x = _splitmix64(x ^ (sample_index & _MASK64))
    return x >> 33


class Generator(Protocol):
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        """For each prompt (token ids), ``params.n`` completions, in prompt order."""
        ...

    def score(self, prompts: list[list[int]], continuations: list[list[int]]) -> list[list[float]]:
        """Log-probability (temperature 1, no truncation) of every continuation token given its
        prompt and the tokens before it."""
        ...

    def sync_weights(self, model) -> None:
        """Make the engine sample from ``model``'s current weights (no-op when it shares them)."""
        ...

    def close(self) -> None:
        """Release the engine and the weights it holds (vLLM: its engine core shut down, KV cache
        and weights freed); nothing is called on it after. A second call does nothing."""
        ...


def make_generator(backend: str, model, tokenizer, *, batch_size: int, compute_dtype: str | None = None,
                   **engine_options) -> Generator:
    """The engine named by ``backend`` serving ``model``'s weights.

    ``compute_dtype``: the dtype forward passes run in (hf: autocast over the module's own
    weights; vLLM: the engine's dtype). None: the module's parameter dtype."""
    if backend == "hf":
        from cat.generation.hf import HFGenerator

        return HFGenerator(model, tokenizer, batch_size=batch_size, compute_dtype=compute_dtype)
    if backend == "vllm":
        from cat.generation.vllm import VLLMGenerator

        return VLLMGenerator(model, tokenizer, compute_dtype=compute_dtype, **engine_options)
    from cat.errors import ConfigError

    raise ConfigError(f"generation.backend: unknown backend '{backend}'; known: ['hf', 'vllm']")


@accepts_whole_config(
    "generator_from_config(config.generation, model, tokenizer, dtype=config.model.dtype, seed=config.run.seed)",
    lambda config, *args, **kwargs: ((config.generation, *args),
                                     {"dtype": config.model.dtype, "seed": config.run.seed, **kwargs}))
def generator_from_config(generation: GenerationConfig, model, tokenizer, *, dtype: str, seed: int,
                          backend: str | None = None, batch_size: int | None = None, sleep: bool = False) -> Generator:
    """The engine the ``generation`` section names (or ``backend``, ``batch_size``), serving
    ``model`` in the compute ``dtype`` (``model.dtype``); ``seed`` (``run.seed``) seeds a vLLM engine.
    ``sleep``: a vLLM engine built able to sleep (``generation.vllm_sleep``: the rollout engine's)."""
    return make_generator(
        backend or generation.backend, model, tokenizer, batch_size=batch_size or generation.batch_size,
        compute_dtype=dtype, gpu_memory_utilization=generation.vllm_gpu_memory_utilization,
        tensor_parallel_size=generation.vllm_tensor_parallel_size, seed=seed,
        max_model_len=generation.vllm_max_model_len, enforce_eager=generation.vllm_enforce_eager,
        weight_sync_bucket_mb=generation.weight_sync_bucket_mb, sleep=sleep,
    )


class SharedEngine:
    """One rollout engine serving two weight sets: the trained policy and the frozen pi_0.

    The design behind ``generation.backend: vllm`` with the default anchor. A second vLLM engine
    for pi_0 would double the KV-cache reservation; instead pi_0's weights are loaded into the
    rollout engine when the anchor needs it, and the policy's come back with the weight sync that
    follows every update anyway. In a step (rollouts -> anchor -> update -> sync) that is one
    extra weight load: pi_0's. Every load resets the prefix cache (the engine does that).
    ``view(name)`` is the ``Generator`` that first makes sure the engine holds ``name``'s weights.
    """

    def __init__(self, engine, weights: dict):
        self.engine = engine
        self.weights = dict(weights)
        self.holding = next(iter(self.weights))
        self.loads = 0

    def use(self, name: str) -> None:
        if self.holding != name:
            self.engine.sync_weights(self.weights[name])
            self.holding = name
            self.loads += 1

    def view(self, name: str) -> _EngineView:
        return _EngineView(self, name)

    def close(self) -> None:
        self.engine.close()
        self.weights.clear()


class _EngineView:
    def __init__(self, shared: SharedEngine, name: str):
        self.shared, self.name = shared, name

    def generate(self, prompts, params):
        self.shared.use(self.name)
        return self.shared.engine.generate(prompts, params)

    def score(self, prompts, continuations):
        self.shared.use(self.name)
        return self.shared.engine.score(prompts, continuations)

    def sync_weights(self, model) -> None:
        self.shared.weights[self.name] = model
        self.shared.engine.sync_weights(model)
        self.shared.holding = self.name

    def close(self) -> None:
        self.shared.close()

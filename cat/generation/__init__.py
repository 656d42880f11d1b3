"""The generation seam: token-id prompts x n samples -> Completions.

Every rollout engine implements ``Generator``. The trainer, the anchor and evaluation call only
``generate`` and ``sync_weights``; nothing outside ``cat/generation/vllm.py`` imports vllm.
Prompts arrive already formatted and tokenized, so the trainer scores exactly the ids that were
sampled from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cat.types import Completion


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. ``greedy`` ignores temperature/top-p/top-k. ``seed`` makes a call
    reproducible (the hf backend reseeds torch before sampling)."""

    n: int = 1
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    greedy: bool = False
    seed: int | None = None


class Generator(Protocol):
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        """For each prompt (token ids), ``params.n`` completions, in prompt order."""
        ...

    def sync_weights(self, model) -> None:
        """Make the engine sample from ``model``'s current weights (no-op when it shares them)."""
        ...


def make_generator(backend: str, model, tokenizer, *, batch_size: int, **engine_options) -> Generator:
    """The rollout engine named by ``generation.backend``."""
    if backend == "hf":
        from cat.generation.hf import HFGenerator

        return HFGenerator(model, tokenizer, batch_size=batch_size)
    if backend == "vllm":
        from cat.generation.vllm import VLLMGenerator

        return VLLMGenerator(model, tokenizer, **engine_options)
    from cat.errors import ConfigError

    raise ConfigError(f"generation.backend: unknown backend '{backend}'; known: ['hf', 'vllm']")

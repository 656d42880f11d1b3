"""The model side: loading the policy, pi_0 and their tokenizer with their precision (``load``,
every path through ``cat.paths`` and GGUF files through ``gguf``), LoRA (``lora``: pi_0 is the
adapter switched off) and token log-probs at any vocabulary size (``logprobs``).

Nothing is imported here, so ``cat.models.gguf`` (which ``cat-rl`` reads when it starts) loads
without torch."""

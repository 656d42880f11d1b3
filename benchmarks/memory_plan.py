"""The memory plan of the paper configs (docs/scale.md, "Several processes and GPUs"), without the hub.

    python benchmarks/memory_plan.py

Hub configs cannot be fetched offline, so the architectures of Qwen3-4B and Llama-3.1-8B are
written out here from their published config.json (dimensions only); ``cat-rl plan CONFIG`` reads
the real config.json where the model is available.
"""

from pathlib import Path

from transformers import LlamaConfig, Qwen3Config

from cat.config import load_config
from cat.tools.plan import GB, architecture, fit, render

ROOT = Path(__file__).resolve().parent.parent
QWEN3_4B = Qwen3Config(
    hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
    num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True)
LLAMA31_8B = LlamaConfig(
    hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False)
RUNS = [  # (config, architecture, processes)
    ("math500_qwen3_4b_cat.yaml", QWEN3_4B, 1),
    ("math500_qwen3_4b_cat_8gpu.yaml", QWEN3_4B, 8),
    ("math500_llama31_8b_cat.yaml", LLAMA31_8B, 1),
    ("math500_llama31_8b_cat.yaml", LLAMA31_8B, 8),
    ("math500_llama31_8b_cat_fsdp8.yaml", LLAMA31_8B, 8),
    ("math500_llama31_8b_cat_lora.yaml", LLAMA31_8B, 1),
]
H100, H200 = 79.2, 139.8
"""What torch reports as an 80 GB H100's and a 141 GB H200's memory, in GiB."""
STATED = [  # (config, architecture, processes, GiB a GPU): the hardware each config names in its header
    ("math500_qwen3_4b_cat.yaml", QWEN3_4B, 1, H200),
    ("math500_qwen3_4b_cat_8gpu.yaml", QWEN3_4B, 8, H200),
    ("math500_llama31_8b_cat_fsdp8.yaml", LLAMA31_8B, 8, H100),
    ("math500_llama31_8b_cat_lora.yaml", LLAMA31_8B, 1, H100),
]


def main() -> None:
    for name, model_config, processes in RUNS:
        config = load_config(ROOT / "experiments" / name, [])
        print(f"## {name}, {processes} process(es)\n")
        print(render(config, architecture(model_config), processes=processes))
        print()
    print("## the hardware each config names\n")
    for name, model_config, processes, gib in STATED:
        config = load_config(ROOT / "experiments" / name, [])
        verdict = fit(config, architecture(model_config), processes=processes, capacity=int(gib * GB),
                      where=f"{processes} GPU(s) of {gib} GiB", gpu=True)
        print(f"{name}: {verdict.line()}")


if __name__ == "__main__":
    main()

"""Sharded calls on 2 processes, for test_parallel: a ``ShardedJudge`` grades each item once and
gathers the verdicts in order; a ``ShardedGenerator`` keeps every prompt's sampling stream.

    torchrun --nproc_per_node 2 tests/parallel_shards.py OUT_DIR TINY_WORLD
"""

import json
import sys
from pathlib import Path

import torch

from cat.generation import SamplingParams, make_generator
from cat.models.load import load_model, load_tokenizer
from cat.run.parallel import Ranks, ShardedGenerator, ShardedJudge


class CountingJudge:
    """Verdicts that name the item (criterion k of an item: whether len(response) > k), and
    statistics of the kind a judge reports: counts and a rate."""

    def __init__(self):
        self.seen = []

    def judge(self, items):
        self.seen.extend(response for response, _ in items)
        verdicts = [[len(response) > k for k in range(len(criteria))] for response, criteria in items]
        flat = [v for vs in verdicts for v in vs]
        return verdicts, {"judge/calls": len(flat), "judge/yes_rate": sum(flat) / len(flat)}


def main() -> None:
    out, world = Path(sys.argv[1]), Path(sys.argv[2])
    ranks = Ranks(cpu=True)
    inner = CountingJudge()
    items = [("x" * n, ["a", "b", "c"]) for n in range(5)]
    verdicts, stats = ShardedJudge(inner, ranks).judge(items)
    model = load_model(str(world / "model"), dtype="float32", device=torch.device("cpu"))
    tokenizer = load_tokenizer(str(world / "model"))
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in ["47+38", "12+9", "99+1"]]
    sharded = ShardedGenerator(make_generator("hf", model, tokenizer, batch_size=64), ranks)
    texts = [[c.text for c in group] for group in sharded.generate(prompts, SamplingParams(n=2, max_new_tokens=24, seed=5))]
    (out / f"rank{ranks.rank}.json").write_text(json.dumps(
        {"verdicts": verdicts, "stats": stats, "seen": inner.seen, "texts": texts}))
    ranks.close()


if __name__ == "__main__":
    main()

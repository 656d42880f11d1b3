"""Steps of the tiny gold and CaT trainers under every loss_type and scale_rewards option, for
``test_parallel``: run plainly (one process) and under ``torchrun --nproc_per_node 2``; rank 0
writes what the test compares.

    python tests/parallel_steps.py OUT_DIR TINY_WORLD STRATEGY [key=value ...]

With fsdp only the gold trainer runs: FSDP changes how the policy's gradient is reduced, not
which groups produce it, and the ddp leg covers the CaT trainer on several ranks.

Each trainer takes one step per option pair, switching options between steps, then a step with
the KL term and two iterations (pi_0 and old-policy scoring), one with the sampler correction,
and (gold) one where the step's last group goes unscored: with 2 prompts per step, one per rank,
rank 1 then holds no rows and must still join the gradient all-reduce. Per step it records the
metrics (times aside) and the gradient at the optimizer step; at the end, the weights. Groups of
4 rollouts keep it quick.
"""

import json
import sys
from pathlib import Path

import torch

from cat.config import load_config
from cat.run.parallel import Ranks
from cat.run.trainer import Trainer
from cat.teacher.estimators import Gold

ROOT = Path(__file__).resolve().parent.parent
OPTIONS = [(loss, scale) for loss in ("grpo", "bnpo", "dr_grpo", "dapo") for scale in ("group", "batch", "none")]


class DropLast(Gold):
    """The gold reference, except for the step's last prompt, which gets none (unscored)."""

    dropped: set[int] = set()

    def __call__(self, groups, anchor=None):
        refs = super().__call__(groups, anchor)
        return [r if g.prompt.index not in self.dropped else type(r)(text="", answer=None, source="gold")
                for g, r in zip(groups, refs, strict=True)]


def whole(t: torch.Tensor) -> torch.Tensor:
    """A tensor whole: an FSDP shard (DTensor) is gathered (a collective: every rank calls it)."""
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().flatten().clone()


def run(name: str, out: Path, world: Path, strategy: str, extra: list[str]) -> dict:
    config = load_config(ROOT / "experiments" / f"{name}.yaml", [
        f"model.name_or_path={world / 'model'}", f"data.path={world / 'train.jsonl'}", "data.limit=48",
        "eval.path=null", "run.prompts_per_step=2", "run.micro_batch_size=3", "optim.lr=1e-4",
        "generation.num_generations=4", "model.dtype=float64",  # float64: rounding cannot hide a difference
        f"parallel.strategy={strategy}", *extra,
    ])
    t = Trainer(config, out / name, log=lambda *_: None)
    grads: list[torch.Tensor] = []
    t.optimizer.register_step_pre_hook(lambda *_: grads.append(torch.cat([whole(p.grad) for p in t.policy.parameters()])))
    steps = [{"loss_type": loss, "scale_rewards": scale} for loss, scale in OPTIONS]
    steps.append({"loss_type": "dapo", "scale_rewards": "group", "beta": 0.04, "num_iterations": 2})
    steps.append({"loss_type": "grpo", "scale_rewards": "group", "beta": 0.0, "num_iterations": 1,
                  "sampler_correction": True})
    if name == "tiny_arith_gold":
        steps.append({"sampler_correction": False, "drop_last": True})
    rows = []
    for step, options in enumerate(steps):
        if options.pop("drop_last", False):
            t.estimator = DropLast(config)
            DropLast.dropped = {t.prompts[t.order.batch(step)[-1]].index}
        for key, value in options.items():
            setattr(t.config.grpo, key, value)
        metrics = t.step(step).metrics
        rows.append({k: v for k, v in metrics.items() if not k.startswith("time/") and k != "tokens_per_second"})
    weights = torch.cat([whole(p) for p in t.policy.parameters()])
    streamed, stream_peak, largest = streamed_weights(t.policy)
    if t.ranks.main:
        torch.save({"grads": torch.stack(grads), "weights": weights, "streamed": streamed}, out / f"{name}.pt")
    return {"rows": rows, "steps": len(steps), "world": t.ranks.world, "updates": len(grads),
            "sharded": t.learner.fsdp, "stream_peak": stream_peak, "largest": largest}


def streamed_weights(policy) -> tuple[torch.Tensor, int, int]:
    """What the weight sync streams to an engine (``stream_weights``), flattened; the most bytes of
    gathered tensors alive at once while a consumer takes them one by one; the largest tensor's
    bytes. Under FSDP every rank walks the stream (each gather is a collective)."""
    import weakref

    from cat.models.lora import stream_weights

    live, peak, largest, parts = [0], [0], 0, []
    def storage(t: torch.Tensor) -> int:
        return (t.to_local() if hasattr(t, "to_local") else t).data_ptr()

    own = {storage(t) for t in [*policy.parameters(), *policy.buffers()]}  # a plain module's entries are these
    for _, tensor in stream_weights(policy):
        size = tensor.numel() * tensor.element_size()
        largest = max(largest, size)
        if storage(tensor) not in own:
            live[0] += size
            peak[0] = max(peak[0], live[0])
            weakref.finalize(tensor, lambda size=size: live.__setitem__(0, live[0] - size))
        parts.append(tensor.detach().flatten().clone())
        del tensor
    return torch.cat(parts), peak[0], largest


def main() -> None:
    out, world = Path(sys.argv[1]), Path(sys.argv[2])
    strategy, extra = sys.argv[3], sys.argv[4:]
    names = ("tiny_arith_gold", "tiny_arith_cat") if strategy == "ddp" else ("tiny_arith_gold",)
    result = {name: run(name, out, world, strategy, extra) for name in names}
    if int(__import__("os").environ.get("RANK", "0")) == 0:
        (out / "result.json").write_text(json.dumps(result))
    Ranks(cpu=True).close()


if __name__ == "__main__":
    main()

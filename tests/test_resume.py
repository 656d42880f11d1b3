"""Runs that survive: kill -9 mid-step and resume, kills during checkpoint writes, Ctrl-C,
non-finite updates, config changes on an existing run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, cli, run_cli

VOLATILE = ("time/", "tokens_per_second", "anchor/seconds", "memory/")


def overrides(tiny_world, steps=6, *extra):
    return [f"model.name_or_path={tiny_world / 'model'}", f"data.path={tiny_world / 'train.jsonl'}",
            "data.limit=64", "eval.path=null", "run.prompts_per_step=4", f"run.steps={steps}",
            "run.save_every=2", "run.log_samples=2", *extra]


def stable(path):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


def spawn_train(config, run_dir, args):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "cat.tools.cli", "train", str(config), "--output-dir", str(run_dir),
                             "--no-progress", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_rows(path, n, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"training exited early: {proc.stderr.read()[-2000:]}")
        time.sleep(0.02)
    raise AssertionError("timed out waiting for metrics")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_world):
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    args = overrides(tiny_world, 6, "estimator.name=synthesis")
    out = run_cli("train", str(ROOT / "experiments" / "tiny_arith_cat.yaml"), "--output-dir", str(run_dir), "--no-progress", *args)
    assert out.returncode == 0, out.stderr[-2000:]
    return run_dir, args


def test_every_row_records_the_peak_resident_memory(reference_run):
    """``memory/peak_rss_mib``: the process's high-water mark in MiB, so it never falls; a process
    that has loaded torch and a model holds more than 100 MiB (ru_maxrss read in KiB would show
    over 100 thousand, read in bytes under 1)."""
    run_dir, _ = reference_run
    peaks = [json.loads(line)["memory/peak_rss_mib"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(peaks) == 6 and peaks == sorted(peaks)
    assert 100 < peaks[0] < 64 * 1024, peaks


def test_sigkill_mid_run_then_resume_matches_uninterrupted(tmp_path, tiny_world, reference_run):
    """kill -9 as row 4 lands, while the step-4 checkpoint may be half written: the resumed run is
    the uninterrupted one. (A kill a step after a checkpoint is in test_parallel and test_vllm.)"""
    kill_after_rows = 4
    ref_dir, args = reference_run
    config = ROOT / "experiments" / "tiny_arith_cat.yaml"
    run_dir = tmp_path / "run"
    proc = spawn_train(config, run_dir, args)
    wait_for_rows(run_dir / "metrics.jsonl", kill_after_rows, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out = run_cli("train", str(config), "--resume", str(run_dir), "--no-progress", *args)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resuming" in out.stderr
    assert stable(run_dir / "metrics.jsonl") == stable(ref_dir / "metrics.jsonl")  # no duplicated or missing rows
    assert stable(run_dir / "samples.jsonl") == stable(ref_dir / "samples.jsonl")
    a = torch.load(run_dir / "checkpoints" / "step-000006" / "trainer_state.pt", weights_only=False)
    b = torch.load(ref_dir / "checkpoints" / "step-000006" / "trainer_state.pt", weights_only=False)
    assert a["step"] == b["step"] == 6
    from safetensors.torch import load_file

    wa = load_file(run_dir / "checkpoints" / "step-000006" / "model" / "model.safetensors")
    wb = load_file(ref_dir / "checkpoints" / "step-000006" / "model" / "model.safetensors")
    # bit for bit: both runs are processes of this interpreter on this CPU with the same thread
    # count, so the same kernels sum in the same order, and resume restores every weight, optimizer
    # moment and random stream exactly; any difference is a resume bug, not rounding
    assert wa.keys() == wb.keys()
    for name in wb:
        assert torch.equal(wa[name], wb[name]), name
    assert len(list((run_dir / "checkpoints").glob("step-*"))) == 2  # keep_last


KILL_DURING_SAVE = r"""
import sys, time, torch
from pathlib import Path
from cat.run import checkpoint
from cat.models.load import load_model, load_tokenizer
path = sys.argv[1]; run_dir = Path(sys.argv[2])
tok = load_tokenizer(path); model = load_model(path, dtype="float32", device=torch.device("cpu"))
checkpoint.save_checkpoint(run_dir, 1, model=model, tokenizer=tok, trainer_state={"step": 1}, keep_last=2)
real_save = torch.save
def slow_save(*a, **k):
    real_save(*a, **k)
    print("saving", flush=True)
    time.sleep(60)
torch.save = slow_save
checkpoint.save_checkpoint(run_dir, 2, model=model, tokenizer=tok, trainer_state={"step": 2}, keep_last=2)
"""


def test_kill_during_checkpoint_write_leaves_previous_loadable(tmp_path, tiny_world):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", KILL_DURING_SAVE, str(tiny_world / "model"), str(run_dir)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "saving"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    from transformers import AutoModelForCausalLM

    from cat.run import checkpoint

    latest = checkpoint.latest_checkpoint(run_dir)
    assert latest.name == "step-000001"
    assert any(p.name.startswith(".tmp-") for p in (run_dir / "checkpoints").iterdir())  # the torn write
    assert checkpoint.load_trainer_state(latest)["step"] == 1
    AutoModelForCausalLM.from_pretrained(latest / "model")


def test_ctrl_c_saves_and_says_how_to_resume(tmp_path, tiny_world):
    config = ROOT / "experiments" / "tiny_arith_gold.yaml"
    run_dir = tmp_path / "run"
    proc = spawn_train(config, run_dir, overrides(tiny_world, 50))
    wait_for_rows(run_dir / "metrics.jsonl", 1, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    rows = len((run_dir / "metrics.jsonl").read_text().splitlines())
    assert (run_dir / "checkpoints" / f"step-{rows:06d}" / "COMPLETE").is_file()
    assert "--resume" in stderr and "Traceback" not in stderr


def test_a_second_ctrl_c_stops_mid_step_and_still_says_how_to_resume(tmp_path, tiny_world):
    """Ctrl-C twice: the step in progress is dropped at once; the message names the newest
    checkpoint (each step saves one here), complete, and the command that continues from it (the
    resume itself: test_sigkill_mid_run_then_resume_matches_uninterrupted)."""
    config = ROOT / "experiments" / "tiny_arith_gold.yaml"
    run_dir = tmp_path / "run"
    proc = spawn_train(config, run_dir, overrides(tiny_world, 50, "run.save_every=1"))
    wait_for_rows(run_dir / "metrics.jsonl", 2, proc)  # step 1's checkpoint is complete
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    newest = max((run_dir / "checkpoints").glob("step-*"))
    assert (newest / "COMPLETE").is_file()
    if "stopped mid-step" in stderr:  # else both signals came after the step's end: the first one saved
        assert (f"stopped mid-step: the step in progress is lost; the run continues from {newest.name} with: "
                f"cat-rl train {run_dir / 'config.yaml'} --resume {run_dir}") in stderr
    else:
        assert f"resume with: cat-rl train {run_dir / 'config.yaml'} --resume {run_dir}" in stderr


def test_non_finite_gradients_are_skipped_then_stop_the_run(tmp_path, tiny_world):
    """A NaN in the gradients (injected into the real backward pass) skips the update, leaves
    the weights untouched, and stops the run after run.max_nonfinite_in_a_row in a row."""
    from cat.config import load_config
    from cat.errors import TrainingHalted
    from cat.run.trainer import Trainer

    config = load_config(ROOT / "experiments" / "tiny_arith_gold.yaml", overrides(tiny_world, 10, "run.max_nonfinite_in_a_row=2"))
    trainer = Trainer(config, tmp_path / "run", log=lambda *_: None)
    assert trainer.step(0).metrics["skipped_update"] == 0
    weight = next(trainer.policy.parameters())
    hook = weight.register_hook(lambda g: g * float("nan"))
    before = [p.detach().clone() for p in trainer.policy.parameters()]
    metrics = trainer.step(1).metrics
    assert metrics["skipped_update"] == 1 and metrics["grad_norm"] != metrics["grad_norm"]
    assert all(torch.equal(a, p) for a, p in zip(before, trainer.policy.parameters(), strict=True))
    with pytest.raises(TrainingHalted, match="2 non-finite updates in a row"):
        trainer.step(2)
    hook.remove()
    assert trainer.step(3).metrics["skipped_update"] == 0 and trainer.nonfinite_in_a_row == 0


def test_changed_config_is_refused_with_a_diff(tmp_path, tiny_world):
    config = str(ROOT / "experiments" / "tiny_arith_gold.yaml")
    run_dir = str(tmp_path / "run")
    first = cli("train", config, "--output-dir", run_dir, "--no-progress", *overrides(tiny_world, 2))
    assert first.returncode == 0, first.stderr[-2000:]
    changed = cli("train", config, "--output-dir", run_dir, *overrides(tiny_world, 2, "optim.lr=0.5"))
    assert changed.returncode == 2 and "different config" in changed.stderr
    assert "-  lr: 0.0001" in changed.stderr and "+  lr: 0.5" in changed.stderr
    again = cli("train", config, "--output-dir", run_dir, "--no-progress", *overrides(tiny_world, 2))
    assert again.returncode == 0 and "nothing to do" in again.stderr + again.stdout
    saved = tmp_path / "run" / "config.yaml"  # as a version before anchor.orders existed saved it
    saved.write_text(saved.read_text().replace("  orders: 1\n", "", 1))
    assert "orders" not in saved.read_text()
    older = cli("train", config, "--output-dir", run_dir, "--no-progress", *overrides(tiny_world, 2))
    assert older.returncode == 0 and "nothing to do" in older.stderr + older.stdout, older.stderr[-2000:]
    newer = cli("train", config, "--output-dir", run_dir, *overrides(tiny_world, 2, "grpo.dual_clip=3"))
    assert newer.returncode == 2 and "+  dual_clip: 3.0" in newer.stderr  # a new option set otherwise is a change


def test_a_run_whose_config_yaml_is_gone_is_refused_not_appended_to(tmp_path, tiny_world):
    """metrics.jsonl and checkpoints with no config.yaml beside them (deleted, or copied without it):
    a fresh start would append its rows to the old run's and rotate its checkpoints away, so the
    run is refused, naming what is there, and nothing in the folder changes."""
    config = str(ROOT / "experiments" / "tiny_arith_gold.yaml")
    run_dir = tmp_path / "run"
    first = cli("train", config, "--output-dir", str(run_dir), "--no-progress", *overrides(tiny_world, 2))
    assert first.returncode == 0, first.stderr[-2000:]
    (run_dir / "config.yaml").unlink()
    before = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    again = cli("train", config, "--output-dir", str(run_dir), "--no-progress", *overrides(tiny_world, 2))
    assert again.returncode == 2, again.stderr[-2000:]
    assert "holds a run's metrics.jsonl and checkpoints but no config.yaml" in again.stderr
    after = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before

"""Checkpoints that cannot be lost: a kill inside a re-save, damaged files on resume, non-finite
numbers, a disk that refuses writes, a run directory that moved. Kills are real SIGKILLs of real
processes; the refused write is the kernel's (a file-size limit set on the running process)."""

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, cli, run_cli
from test_resume import overrides, spawn_train, stable, wait_for_rows

from cat.errors import CheckpointError
from cat.run import checkpoint

KILL_BETWEEN_RENAMES = r"""
import os, sys, time, torch
from pathlib import Path
from cat.run import checkpoint
from cat.models.load import load_model, load_tokenizer
path = sys.argv[1]; run_dir = Path(sys.argv[2])
tok = load_tokenizer(path); model = load_model(path, dtype="float32", device=torch.device("cpu"))
for step in (1, 2):
    checkpoint.save_checkpoint(run_dir, step, model=model, tokenizer=tok, trainer_state={"step": step}, keep_last=2)
real_rename = os.rename
def slow_rename(src, dst):
    real_rename(src, dst)
    if Path(src).name == "step-000002":  # the old copy has just gone aside; the new one is not in place
        print("between", flush=True)
        time.sleep(60)
os.rename = slow_rename
with torch.no_grad():
    next(model.parameters()).add_(1.0)
checkpoint.save_checkpoint(run_dir, 2, model=model, tokenizer=tok, trainer_state={"step": 2}, keep_last=2)
"""


def test_a_kill_inside_a_re_save_keeps_that_step(tmp_path, tiny_world):
    """Re-saving step 2 moves the old copy aside only once the new one is whole; a SIGKILL between
    the two renames leaves the old copy, which the next read puts back."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", KILL_BETWEEN_RENAMES, str(tiny_world / "model"), str(run_dir)],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "between"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "checkpoints" / "step-000002").exists()  # the kill landed in the window
    assert [p.name for p in checkpoint.list_checkpoints(run_dir)] == ["step-000001", "step-000002"]
    assert checkpoint.newest_verified(run_dir).name == "step-000002"
    assert not list((run_dir / "checkpoints").glob(".replaced-*"))


def flip(path, offset_fraction=0.5, n=64):
    """Overwrite n bytes in the middle of a file with 0xff (NaN as float32)."""
    data = bytearray(path.read_bytes())
    at = int(len(data) * offset_fraction)
    data[at:at + n] = b"\xff" * n
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def six_steps(tmp_path_factory, tiny_world):
    """An uninterrupted 6-step run with checkpoints at 2, 4 and 6 (keep_last=3)."""
    run_dir = tmp_path_factory.mktemp("six") / "run"
    args = overrides(tiny_world, 6, "run.keep_last=3")
    out = run_cli("train", str(ROOT / "experiments" / "tiny_arith_gold.yaml"), "--output-dir", str(run_dir),
                  "--no-progress", *args)
    assert out.returncode == 0, out.stderr[-2000:]
    return run_dir, args


def test_resume_skips_damaged_checkpoints_and_replays_from_a_good_one(tmp_path, six_steps):
    """Step 6's weights have flipped bytes (they would load as NaN), step 4's state is truncated:
    the run says so, sets both aside, resumes from step 2 and ends where the uninterrupted run did."""
    ref_dir, args = six_steps
    run_dir = tmp_path / "run"
    shutil.copytree(ref_dir, run_dir)
    (run_dir / "config.yaml").write_text((ref_dir / "config.yaml").read_text().replace(str(ref_dir), str(run_dir)))
    ckpts = run_dir / "checkpoints"
    flip(ckpts / "step-000006" / "model" / "model.safetensors")
    state = ckpts / "step-000004" / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    out = cli("train", str(ROOT / "experiments" / "tiny_arith_gold.yaml"), "--output-dir", str(run_dir),
              "--no-progress", *args)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "skipping checkpoint step-000006: model/model.safetensors differs from what was written" in out.stderr
    assert "skipping checkpoint step-000004: trainer_state.pt has" in out.stderr
    assert "resuming" in out.stderr and "from step-000002" in out.stderr
    assert sorted(p.name for p in ckpts.iterdir()) == [
        "rejected-step-000004", "rejected-step-000006", "step-000002", "step-000004", "step-000006"]
    assert stable(run_dir / "metrics.jsonl") == stable(ref_dir / "metrics.jsonl")
    from safetensors.torch import load_file

    mine = load_file(ckpts / "step-000006" / "model" / "model.safetensors")
    theirs = load_file(ref_dir / "checkpoints" / "step-000006" / "model" / "model.safetensors")
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    assert checkpoint.verify(ckpts / "step-000006") is None


def test_non_finite_numbers_are_refused_at_save_and_at_load(tmp_path, tiny_world):
    from cat.models.load import load_model, load_tokenizer

    path = str(tiny_world / "model")
    tok, model = load_tokenizer(path), load_model(path, dtype="float32", device=torch.device("cpu"))
    run_dir = tmp_path / "run"
    checkpoint.save_checkpoint(run_dir, 1, model=model, tokenizer=tok, trainer_state={"step": 1}, keep_last=1)
    name, weight = next(iter(model.named_parameters()))
    with torch.no_grad():
        weight[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match=f"refusing to save the checkpoint of step 2: {name} holds NaN"):
        checkpoint.save_checkpoint(run_dir, 2, model=model, tokenizer=tok, trainer_state={"step": 2}, keep_last=1)
    with torch.no_grad():
        weight[0, 0] = 0.0
    moments = {"optimizer": {"state": {0: {"exp_avg": torch.tensor([1.0, float("inf")])}}}}
    with pytest.raises(CheckpointError, match=r"optimizer.state.0.exp_avg holds NaN or inf"):
        checkpoint.save_checkpoint(run_dir, 2, model=model, tokenizer=tok, trainer_state={"step": 2, **moments},
                                   keep_last=1)
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-000001"]  # nothing else, no debris
    assert checkpoint.verify(run_dir / "checkpoints" / "step-000001") is None
    # a checkpoint from before COMPLETE listed its files is read whole: NaN weights are refused
    legacy = run_dir / "checkpoints" / "step-000001"
    (legacy / "COMPLETE").write_text(json.dumps({"step": 1}))
    assert checkpoint.verify(legacy) is None
    flip(legacy / "model" / "model.safetensors")
    assert "holds NaN or inf" in checkpoint.verify(legacy)
    with pytest.raises(CheckpointError, match=r"none of the 1 checkpoint\(s\) .* can be trusted: step-000001 "
                                              r"\(model/model.safetensors: .* holds NaN or inf\)"):
        checkpoint.newest_verified(run_dir, log=lambda _: None)  # not a silent restart from step 0
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["rejected-step-000001"]


def test_a_refused_write_stops_with_a_message_no_debris_and_the_last_checkpoint_intact(tmp_path, tiny_world):
    """The kernel refuses writes past 5 MB once the first checkpoint is on disk (RLIMIT_FSIZE on
    the running process, as a full disk or quota would): the weights (3.6 MB) are written, the
    optimizer state (7 MB; torch.save wraps the refusal in its own error) is not. The run exits 2
    naming the cause, leaves no partial folder, and the earlier checkpoint still verifies."""
    run_dir = tmp_path / "run"
    proc = spawn_train(ROOT / "experiments" / "tiny_arith_gold.yaml", run_dir, overrides(tiny_world, 40))
    first = run_dir / "checkpoints" / "step-000002" / "COMPLETE"
    wait_for_rows(run_dir / "metrics.jsonl", 2, proc)
    while not first.exists() and proc.poll() is None:
        time.sleep(0.01)
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (5 << 20, 5 << 20))
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2, stderr[-2000:]
    assert "Traceback" not in stderr
    assert "could not write the checkpoint of step" in stderr and "Nothing of it was left behind" in stderr
    kept = checkpoint.list_checkpoints(run_dir)
    assert "is intact" in stderr and kept[-1].name in stderr
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]
    assert all(checkpoint.verify(p) is None for p in kept)


def test_a_moved_run_directory_resumes(tmp_path, tiny_world):
    """Where a run lives is not what it is; nor is how a path is spelled (relative or absolute)."""
    config = str(ROOT / "experiments" / "tiny_arith_gold.yaml")
    first = tmp_path / "first"
    out = cli("train", config, "--output-dir", str(first), "--no-progress", *overrides(tiny_world, 2))
    assert out.returncode == 0, out.stderr[-2000:]
    moved = tmp_path / "elsewhere" / "run"
    moved.parent.mkdir()
    os.rename(first, moved)
    spelled = [a.replace(str(tiny_world), os.path.relpath(tiny_world)) for a in overrides(tiny_world, 2)]
    out = cli("train", str(moved / "config.yaml"), "--resume", str(moved), "--no-progress", *spelled)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "different config" not in out.stderr and "nothing to do" in out.stderr + out.stdout
    assert f"output_dir: {moved}" in (moved / "config.yaml").read_text()
    changed = cli("train", str(moved / "config.yaml"), "--resume", str(moved), *spelled, "optim.lr=0.5")
    assert changed.returncode == 2 and "different config" in changed.stderr


def test_rotation_never_deletes_the_newest_verified_checkpoint(tmp_path, tiny_world, monkeypatch):
    """keep_last=1 with a damaged newer checkpoint that could not be moved aside (it stays among the
    complete ones): the resume reads the good one, and the next save keeps what it wrote and the
    damaged one is never what a resume reads; rotation counts a rejected checkpoint never."""
    from cat.models.load import load_model, load_tokenizer

    path = str(tiny_world / "model")
    tok, model = load_tokenizer(path), load_model(path, dtype="float32", device=torch.device("cpu"))
    run_dir = tmp_path / "run"
    for step in (2, 4, 6):
        checkpoint.save_checkpoint(run_dir, step, model=model, tokenizer=tok, trainer_state={"step": step}, keep_last=2)
    ckpts = run_dir / "checkpoints"
    assert [p.name for p in checkpoint.list_checkpoints(run_dir)] == ["step-000004", "step-000006"]
    flip(ckpts / "step-000006" / "model" / "model.safetensors")
    real_rename = os.rename
    monkeypatch.setattr(os, "rename", lambda *a: (_ for _ in ()).throw(PermissionError(13, "Permission denied")))
    logs = []
    assert checkpoint.newest_verified(run_dir, log=logs.append).name == "step-000004"
    assert "could not move it aside" in logs[0]
    monkeypatch.setattr(os, "rename", real_rename)
    saved = checkpoint.save_checkpoint(run_dir, 5, model=model, tokenizer=tok, trainer_state={"step": 5}, keep_last=1)
    assert saved.name == "step-000005" and checkpoint.verify(saved) is None  # what it wrote survives rotation
    assert checkpoint.newest_verified(run_dir, log=logs.append).name == "step-000005"
    assert sorted(p.name for p in ckpts.iterdir()) == ["rejected-step-000006", "step-000005"]


def test_a_second_process_is_refused_a_run_directory_in_use_and_a_killed_holder_leaves_no_lock(tmp_path, tiny_world):
    """Two processes training into one folder would interleave metrics and prune each other's
    checkpoints: the second is refused at once, naming the first; once the first is killed
    (no chance to clean up) the folder trains again."""
    config = ROOT / "experiments" / "tiny_arith_gold.yaml"
    run_dir = tmp_path / "run"
    first = spawn_train(config, run_dir, overrides(tiny_world, 400))
    try:
        wait_for_rows(run_dir / "metrics.jsonl", 1, first)
        second = cli("train", str(config), "--output-dir", str(run_dir), "--no-progress", *overrides(tiny_world, 400))
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"{run_dir} is in use: process {first.pid} " in second.stderr
        assert "another --output-dir" in second.stderr
        rows = len((run_dir / "metrics.jsonl").read_text().splitlines())
        wait_for_rows(run_dir / "metrics.jsonl", rows + 1, first)  # the first went on, undisturbed
        deadline = time.time() + 300
        while checkpoint.latest_checkpoint(run_dir) is None and first.poll() is None and time.time() < deadline:
            time.sleep(0.02)  # killed once a checkpoint is whole, so that the resume below has one
    finally:
        first.kill()
        first.wait()
    done = len((run_dir / "metrics.jsonl").read_text().splitlines())
    out = cli("train", str(config), "--resume", str(run_dir), "--no-progress", "--allow-config-change",
              *overrides(tiny_world, done + 1))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resuming" in out.stderr and "is in use" not in out.stderr
    assert json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["step"] == done + 1

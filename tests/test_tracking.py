"""Trackers (``run.report_to``): TensorBoard events written by a real run, read back with
TensorBoard's own reader and equal to metrics.jsonl; missing libraries refused before the run."""

import json

import pytest
from conftest import ROOT, cli

from cat.config import load_config
from cat.run.tracking import Trackers

GOLD = str(ROOT / "experiments" / "tiny_arith_gold.yaml")


def short(tiny_world, *extra):
    return [f"model.name_or_path={tiny_world / 'model'}", f"data.path={tiny_world / 'train.jsonl'}", "data.limit=32",
            f"eval.path={tiny_world / 'test.jsonl'}", "eval.limit=8", "eval.num_samples=1", "run.prompts_per_step=2",
            "run.steps=2", "--no-progress", *extra]


def scalars(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_mirrors_metrics_and_evaluations(tmp_path, tiny_world):
    run_dir = tmp_path / "run"
    out = cli("train", GOLD, "--output-dir", str(run_dir), *short(tiny_world, "run.report_to=[tensorboard]"))
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = json.loads((run_dir / "eval.json").read_text())
    logged = scalars(run_dir / "tensorboard")
    for key in ("reward/mean", "loss", "kl", "entropy", "grad_norm", "time/step", "completion/mean_length"):
        assert [s for s, _ in logged[key]] == [1, 2], key
        assert [v for _, v in logged[key]] == pytest.approx([r[key] for r in rows], rel=1e-6), key  # float32 events
    assert logged["eval/accuracy"] == [(0, pytest.approx(evals["before"]["accuracy"])),
                                       (2, pytest.approx(evals["after"]["accuracy"]))]
    assert "eval/greedy_accuracy" in logged


def test_a_tracker_not_installed_is_refused_before_the_run(tmp_path, tiny_world):
    run_dir = tmp_path / "run"
    out = cli("train", GOLD, "--output-dir", str(run_dir), *short(tiny_world, "run.report_to=[aim]"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "run.report_to names aim, which is not installed here: pip install aim" in out.stderr
    assert not (run_dir / "metrics.jsonl").exists()
    out = cli("train", GOLD, "--output-dir", str(run_dir), *short(tiny_world, "run.report_to=[tensorbored]"))
    assert out.returncode == 2 and "run.report_to.0" in out.stderr and "'tensorboard'" in out.stderr


def test_a_tracker_that_fails_mid_run_is_dropped_and_the_record_kept(tmp_path, capsys):
    config = load_config(None, ["run.report_to=[tensorboard]"])
    with Trackers(config.run.report_to, tmp_path, config, main=True) as trackers:
        [tensorboard] = trackers.active
        tensorboard.writer.close()
        tensorboard.writer.add_scalar = None  # the writer breaks: calling it raises TypeError
        trackers.log({"loss": 1.0}, 1)
        assert trackers.active == []
        trackers.log({"loss": 2.0}, 2)  # nothing left to fail
    err = capsys.readouterr().err
    assert err.count("the tensorboard tracker failed and is dropped") == 1 and "metrics.jsonl" in err


def test_other_ranks_report_nothing(tmp_path):
    config = load_config(None, ["run.report_to=[tensorboard]"])
    with Trackers(config.run.report_to, tmp_path, config, main=False) as trackers:
        assert trackers.active == []
    assert not (tmp_path / "tensorboard").exists()

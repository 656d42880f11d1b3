"""Bad input at the edges: one clear message, exit status 2, no traceback, nothing expensive first."""

import json
import os

import pytest
from conftest import ROOT, cli, run_cli

CAT = str(ROOT / "experiments" / "tiny_arith_cat.yaml")


def assert_clean_failure(out, *needles):
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr
    for needle in needles:
        assert needle in out.stderr, out.stderr


def test_unknown_config_key_names_the_base_that_has_it(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("grpo:\n  betta: 0.1\n")
    child = tmp_path / "child.yaml"
    child.write_text("base: bad.yaml\nrun:\n  output_dir: r\n")
    out = run_cli("train", str(child), "run.stepz=3", cwd=tmp_path)
    assert_clean_failure(out, f"error: invalid config ({child}):\n", f"  {bad}: grpo.betta: unknown key (did you mean beta?)",
                         "  override 'run.stepz=3': run.stepz: unknown key (did you mean steps?)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "child.yaml"]  # no run folder


def test_unknown_override_and_bad_value():
    assert_clean_failure(cli("train", CAT, "run.stepz=3"), "run.stepz", "steps")
    assert_clean_failure(cli("train", CAT, "grpo.loss_type=ppo"), "grpo.loss_type", "dapo")


def test_missing_config_file(tmp_path):
    assert_clean_failure(cli("train", str(tmp_path / "nope.yaml")), "config file not found")


def test_malformed_dataset_row(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"problem": "1+1", "answer": "2"}) + "\n" + json.dumps({"problem": 5}) + "\n")
    out = cli("train", CAT, f"data.path={data}", "--output-dir", str(tmp_path / "r"))
    assert_clean_failure(out, "d.jsonl: row 2", "'problem'")


def test_unknown_estimator_lists_registered(tmp_path):
    out = cli("train", CAT, "estimator.name=synthesys", "--output-dir", str(tmp_path / "r"))
    assert_clean_failure(out, "synthesys", "synthesis", "majority_vote")


def test_missing_plugin(tmp_path):
    out = cli("train", CAT, "plugins=['no_such_module_xyz']", "--output-dir", str(tmp_path / "r"))
    assert_clean_failure(out, "no_such_module_xyz")


def test_template_with_unknown_placeholder(tmp_path):
    t = tmp_path / "t.txt"
    t.write_text("Merge these: {{rollouts}} for {{questoin}}")
    out = cli("train", CAT, f"anchor.template={t}", "--output-dir", str(tmp_path / "r"))
    assert_clean_failure(out, "questoin", str(t))


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_dir(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert_clean_failure(cli("train", CAT, "--output-dir", str(locked / "run")), "not writable")


def test_output_dir_that_is_a_file(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    assert_clean_failure(cli("train", CAT, "--output-dir", str(f / "run")), "not writable")


def test_bad_cli_argument():
    out = run_cli("train", CAT, "--stepz", "3")
    assert out.returncode == 2 and "unrecognized arguments: --stepz" in out.stderr and "Traceback" not in out.stderr


def test_eval_reports_pass_at_1_and_greedy(tmp_path, tiny_world):
    out_file = tmp_path / "eval.json"
    out = cli("eval", CAT, "--model", str(tiny_world / "model"), "--output", str(out_file),
                  "eval.limit=24", "eval.num_samples=2")
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out_file.read_text())
    assert result["n"] == 24 and result["num_samples"] == 2
    assert 0.0 <= result["accuracy"] <= 1.0 and result["greedy_accuracy"] >= 0.9  # the tiny model's mode is right
    assert len(result["examples"]) == 24 and len(result["examples"][0]["correct"]) == 2
    assert json.loads(out.stdout)["accuracy"] == result["accuracy"]


def test_eval_without_eval_path(tmp_path):
    out = cli("eval", CAT, "eval.path=null")
    assert_clean_failure(out, "eval.path is not set")


def test_eval_and_synthesize_skip_overlong_prompts_and_say_how_many(tmp_path, tiny_world):
    """As training does: never truncated, never sent past the model's context; one line on stderr
    (stdout is the JSON) and the count in the result."""
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"problem": p, "answer": "1"}) + "\n" for p in ["12+13", "1+" * 300 + "1", "20+21"]))
    common = [f"eval.path={data}", "eval.num_samples=1", "eval.greedy=false", "generation.max_new_tokens=4"]
    out = cli("eval", CAT, "--model", str(tiny_world / "model"), *common)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "skipped 1 of 3 evaluation prompt(s) longer than 508 tokens" in out.stderr
    result = json.loads(out.stdout)
    assert result["n"] == 2 and result["skipped_long"] == 1
    out = cli("synthesize", CAT, "--estimators", "single", "generation.num_generations=2", *common)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "skipped 1 of 3 evaluation prompt(s)" in out.stderr and "2 prompts (1 longer ones skipped)" in out.stdout


def test_eval_takes_a_run_directory_and_report_a_test_time_result_alone(tmp_path, tiny_world):
    """Two tracebacks a newcomer met: ``cat-rl eval --model RUN_DIR`` (now: the run's newest
    checkpoint that verifies) and ``cat-rl report SYNTH.json`` with no run beside it."""
    run_dir = tmp_path / "run"
    trained = cli("train", CAT, "--output-dir", str(run_dir), "--no-progress", f"model.name_or_path={tiny_world / 'model'}",
                  f"data.path={tiny_world / 'train.jsonl'}", "data.limit=8", "eval.path=null", "run.prompts_per_step=2",
                  "run.steps=2", "run.save_every=1")
    assert trained.returncode == 0, trained.stderr[-2000:]
    out = cli("eval", CAT, "--model", str(run_dir), f"eval.path={tiny_world / 'test.jsonl'}", "eval.limit=4",
              "eval.num_samples=1")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "evaluating its checkpoint step-000002" in out.stderr and json.loads(out.stdout)["n"] == 4
    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    assert_clean_failure(cli("eval", CAT, "--model", str(empty)), "no checkpoint that verifies")
    assert_clean_failure(cli("eval", CAT, "--model", str(tmp_path)), "holds no tokenizer files")
    report = cli("report", str(ROOT / "results" / "smollm2_addition" / "synthesize.json"), "--output",
                 str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr[-2000:]
    assert (tmp_path / "report" / "index.html").exists()


def test_a_rank_the_launcher_stops_says_why():
    """torchrun and accelerate end the other ranks with SIGTERM when one fails, often before their
    collectives notice: such a rank prints why it stops and exits as SIGTERM would (143)."""
    import signal
    import subprocess
    import sys

    code = ("import sys, time\nfrom cat.tools import cli\ncli._say_why_the_launcher_stopped_this_rank()\n"
            "print('ready', flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "WORLD_SIZE": "2", "RANK": "0"})
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143
    assert err.strip() == ("[rank 0/2] error: stopped by the launcher: another rank stopped (its message is above) "
                           "or the launch was interrupted")

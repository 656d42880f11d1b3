"""Never a silent no-op: the preflight probe before the first step, the stop when steps keep
leaving their groups unscored, and the error for a run whose rewards never differed. On the
tiny world, through ``cat-rl train`` as a user runs it; the teacher is made unreadable by an
answer chain that reads nothing the tiny model writes."""

import json

import pytest
from conftest import ROOT, cli

from cat.errors import TrainingHalted
from cat.run.watch import UnscoredWatch

CAT = str(ROOT / "experiments" / "tiny_arith_cat.yaml")
UNREADABLE = ["answer.rules=[regex]", "answer.regex=NEVER-WRITTEN (\\d+)"]


def tiny(tiny_world, tmp_path, *extra):
    return [CAT, f"model.name_or_path={tiny_world / 'model'}", f"data.path={tiny_world / 'train.jsonl'}",
            "data.limit=16", "eval.path=null", "run.prompts_per_step=4",
            "--output-dir", str(tmp_path / "run"), "--no-progress", *extra]


def test_a_readable_run_prints_the_preflight_and_trains(tmp_path, tiny_world):
    out = cli("train", *tiny(tiny_world, tmp_path, "run.steps=1", "run.preflight_prompts=2"))
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("preflight on 2 prompt(s) x 8 rollouts"))
    assert "rollouts with an answer 100%" in line and "references with an answer 100%" in line
    assert "groups scored 2/2" in line


def test_the_preflight_stops_a_run_that_cannot_score_anything(tmp_path, tiny_world):
    out = cli("train", *tiny(tiny_world, tmp_path, "run.steps=3", *UNREADABLE))
    assert out.returncode == 2
    err = out.stderr
    assert "nothing can be scored, so training would learn nothing" in err
    assert "no rollout has an answer that answer.rules=['regex'] reads" in err
    assert "no reference has an answer" in err and "data.prompt_template" in err
    assert "a rollout: '" in err and "\\\\boxed{" in err  # shows what the model writes
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # stopped before any step


def test_the_preflight_quotes_a_self_bon_anchor_that_names_no_rollout(tmp_path, tiny_world):
    """The tiny anchor was trained to synthesize, not to reply 'BEST: k': self_bon has no
    reference for any group. The stop says so, quotes the anchor's reply, and does not send the
    user to the answer chain, which reads every rollout."""
    out = cli("train", *tiny(tiny_world, tmp_path, "run.steps=1", "estimator.name=self_bon"))
    assert out.returncode == 2
    err = out.stderr
    assert "the anchor named no rollout (a line 'BEST: k') for 4 of 4 groups" in err
    assert "the anchor's reply: 'SUMMARY:" in err and "ends with 'BEST: k'" in err
    assert "data.prompt_template" not in err and "answer.rules" not in err


def test_the_preflight_names_the_answer_form_when_it_refused_every_answer(tmp_path, tiny_world):
    """A chain that reads something that is not a number (here the word "boxed" itself) under
    answer.form=number: every rollout's and reference's answer is refused, and the stop says so."""
    out = cli("train", *tiny(tiny_world, tmp_path, "run.steps=1", "answer.rules=[regex]", "answer.regex=(boxed)",
                             "answer.form=number"))
    assert out.returncode == 2
    err = out.stderr
    assert "rollouts whose answer answer.form=number refused 100%" in out.stdout + err
    assert ("no rollout has an answer that answer.rules=['regex'] with answer.form=number reads (100% gave an "
            "answer that is not a number: answer.form)") in err


def test_steps_that_stay_unscored_stop_the_run(tmp_path, tiny_world):
    out = cli("train", *tiny(tiny_world, tmp_path, "run.steps=6", "run.preflight_prompts=0",
                            "run.max_unscored_steps=2", *UNREADABLE))
    assert out.returncode == 2
    assert "2 steps in a row left more than 90% of their groups unscored (this step 4 of 4" in out.stderr
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["groups/scored"] == 0 for r in rows)
    assert all(r["answer/reference_rate"] == 0 for r in rows)


def test_a_run_whose_rewards_never_differ_ends_with_an_error():
    class Run:
        max_unscored_share, max_unscored_steps = 0.9, 3

    watch = UnscoredWatch(Run())
    for step in (1, 2):
        watch.observe({"step": step, "groups/scored": 4, "groups/unscored": 0, "frac_reward_zero_std": 1.0})
    with pytest.raises(TrainingHalted, match="none of the 2 step\\(s\\) had a group whose rewards differ"):
        watch.finish()
    watch.observe({"step": 3, "groups/scored": 4, "groups/unscored": 0, "frac_reward_zero_std": 0.5})
    watch.finish()  # one step with a learning signal is enough
    fresh = UnscoredWatch(Run())
    fresh.observe({"step": 1, "groups/scored": 0, "groups/unscored": 4, "frac_reward_zero_std": float("nan")})
    with pytest.raises(TrainingHalted, match="none of the 1 step\\(s\\) scored a group"):
        fresh.finish(needs_spread=False)  # sft too: nothing scored is nothing learned
    judged = UnscoredWatch(Run())  # every verdict failed: the judge is named as the cause, with the fix
    judged.observe({"step": 1, "groups/scored": 0, "groups/unscored": 4, "frac_reward_zero_std": float("nan"),
                    "judge/failures": 40})
    with pytest.raises(TrainingHalted, match=r"scored a group: .* The judge gave no usable verdict for 40 .*judge\.template"):
        judged.finish()
    blind = UnscoredWatch(Run())  # a judge that says no to everything (SmolLM2-135M as judge): named as the cause
    for step in (1, 2):
        blind.observe({"step": step, "groups/scored": 4, "groups/unscored": 0, "frac_reward_zero_std": 1.0,
                       "judge/yes_rate": 0.0})
    with pytest.raises(TrainingHalted, match=r"the judge answered no to every criterion of every rollout .*judge\.model"):
        blind.finish()
    resumed = UnscoredWatch(Run())
    resumed.count([{"step": 1, "groups/scored": 4, "groups/unscored": 0, "frac_reward_zero_std": 0.5}])
    resumed.observe({"step": 2, "groups/scored": 4, "groups/unscored": 0, "frac_reward_zero_std": 1.0})
    resumed.finish()  # the step before the resume learned
    watch.observe({"step": 4, "groups/scored": 1, "groups/unscored": 9, "frac_reward_zero_std": 0.0})
    watch.observe({"step": 5, "groups/scored": 4, "groups/unscored": 0, "frac_reward_zero_std": 0.0})
    assert watch.in_a_row == 0  # a scored step resets the count


def test_a_run_none_of_whose_updates_was_taken_ends_with_an_error():
    """Every step's update skipped (a non-finite loss, an fp16 overflow) in fewer steps than
    run.max_nonfinite_in_a_row: the policy never moved, so the run does not end with exit 0."""
    class Run:
        max_unscored_share, max_unscored_steps = 0.9, 3

    row = {"groups/scored": 4, "groups/unscored": 0, "frac_reward_zero_std": 0.5}
    watch = UnscoredWatch(Run())
    for step in (1, 2):
        watch.observe({"step": step, **row, "skipped_update": 1})
    with pytest.raises(TrainingHalted, match=r"none of the 2 step\(s\) updated the policy: every update was skipped"):
        watch.finish()
    watch.observe({"step": 3, **row, "skipped_update": 0})
    watch.finish()  # one update taken is enough
    resumed = UnscoredWatch(Run())
    resumed.count([{"step": 1, **row, "skipped_update": 0}])
    resumed.observe({"step": 2, **row, "skipped_update": 1})
    resumed.finish()  # the step before the resume updated

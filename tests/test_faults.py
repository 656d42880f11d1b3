"""Defined outcomes for faults inside a step: empty or answerless completions, over-long prompts,
the length penalty, the model-as-judge reward, and RL on a dataset's own (physician) rubrics."""

import json
from pathlib import Path

import pytest
from test_rubrics import ScriptedBackend, make_judge

from cat.config import load_config
from cat.errors import ConfigError
from cat.rewards import REWARDS, RewardContext, RewardSettings, build_rewards
from cat.run.trainer import Trainer
from cat.types import Completion, Group, Prompt, Reference

FIXTURES = Path(__file__).parent / "fixtures"


def group(texts, lengths=None):
    prompt = Prompt(index=0, text="q", messages=({"role": "user", "content": "q"},))
    lengths = lengths or [1] * len(texts)
    return Group(prompt=prompt, prompt_ids=(1,), completions=tuple(
        Completion(text=t, token_ids=(1,) * n, logprobs=(0.0,) * n, finish_reason="stop") for t, n in zip(texts, lengths, strict=True)))


def test_empty_and_answerless_completions_score_zero_and_are_counted():
    """A rollout that gives no answer did not reach the reference: 0, as in TRL's accuracy reward.
    The group still has signal; answer_rate says how many rollouts answered at all."""
    reward = REWARDS.get("math_equivalence")(RewardSettings.from_config(load_config(None)))
    score = reward(group(["\\boxed{4}", "", "   ", "I think it is four"]), Reference(text="", answer="4", source="x"))
    assert score.rewards == (1.0, 0.0, 0.0, 0.0) and score.info["answer_rate"] == 0.25


def test_length_penalty_is_added_above_the_threshold():
    """reward.length_penalty makes length_penalty one of the run's reward functions (weight 1)."""
    config = load_config(None, ["reward.length_penalty=-1", "reward.length_penalty_tokens=3"])
    reward = build_rewards(config)
    assert [(n, w) for n, w, _ in reward.functions] == [("math_equivalence", 1.0), ("length_penalty", 1.0)]
    g = group(["\\boxed{4}", "\\boxed{5}", "\\boxed{4}"], lengths=[2, 3, 4])
    out = reward.score([g, g], [Reference(text="", answer="4", source="x"), Reference(text="", answer=None, source="x")],
                       RewardContext())
    assert out.scores[0].rewards == (1.0, 0.0, 0.0) and out.scores[0].info["length_penalized"] == pytest.approx(1 / 3)
    assert out.scores[1].rewards is None  # no reference answer: not scored, whatever the length
    assert out.scores[0].info["length_penalty/mean"] == pytest.approx(-1 / 3)  # logged as reward/length_penalty/mean
    assert out.scores[0].info["math_equivalence/mean"] == pytest.approx(2 / 3)


def test_model_as_judge_reward(tmp_path):
    config = load_config(None, ["reward.name=judge_equivalence"])
    reward = REWARDS.get("judge_equivalence")(RewardSettings.from_config(config))
    reward.open(None)
    reward.judge = make_judge(ScriptedBackend(["yes", "no", "yes", "garbled", "garbled", "garbled"]), tmp_path)
    from cat.templates import load_template

    reward.judge.template = load_template("judge_equivalence", kind="rubrics", required={"response", "reference"}, allowed=set())
    g1, g2 = group(["r1", "r2", "r3"]), group(["s1"])
    scores = reward.score([g1, g2], [Reference(text="ref", answer=None, source="s")] * 2, RewardContext()).scores
    assert scores[0].rewards == (1.0, 0.0, 1.0)
    assert scores[1].rewards is None  # the verdict failed after retries: no signal, not 0
    assert "ref" in reward.judge.backend.prompts[0] and "r1" in reward.judge.backend.prompts[0]


def test_overlong_prompts_are_skipped_and_counted(tmp_path, tiny_world):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"problem": p, "answer": "1"}) + "\n" for p in ["12+13", "1+" * 300 + "1", "20+21"]))
    logs = []
    config = load_config(None, [f"model.name_or_path={tiny_world / 'model'}", f"data.path={data}", "eval.path=null"])
    trainer = Trainer(config, tmp_path / "run", log=logs.append)
    assert trainer.task.prompt_limit == 512 - config.generation.max_new_tokens  # the model's context rule
    assert [p.text for p in trainer.prompts] == ["12+13", "20+21"]
    assert any("skipped 1 of 3" in line for line in logs)
    with pytest.raises(ConfigError, match="every training prompt is longer than 3 tokens"):
        Trainer(load_config(None, [f"model.name_or_path={tiny_world / 'model'}", f"data.path={data}",
                                   "eval.path=null", "data.max_prompt_tokens=3"]), tmp_path / "r2")


def test_overlong_evaluation_prompts_are_skipped_and_counted_too(tmp_path, tiny_model):
    """The trainer's evaluation leaves over-long prompts out as training does, says so, and counts
    them in each evaluation's result; when none fits it stops before any model loads."""
    from cat.generation import generator_from_config
    from cat.tasks.settings import TaskSettings
    from cat.tasks.task import Task

    model, tokenizer = tiny_model
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"problem": p, "answer": "1"}) + "\n" for p in ["12+13", "1+" * 300 + "1", "20+21"]))
    logs = []
    config = load_config(None, [f"model.name_or_path={model.name_or_path}", f"eval.path={data}", "eval.num_samples=1",
                                "generation.max_new_tokens=4"])
    task = Task(TaskSettings.from_config(config), tokenizer, log=logs.append)
    assert [p.text for p in task.eval_prompts] == ["12+13", "20+21"] and len(task.eval_ids) == 2
    assert f"skipped 1 of 3 evaluation prompt(s) longer than {512 - 4} tokens" in logs
    result = task.evaluate(generator_from_config(config.generation, model, tokenizer, dtype=config.model.dtype,
                                                 seed=config.run.seed))
    assert result["n"] == 2 and result["skipped_long"] == 1
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"problem": "1+" * 300 + "1", "answer": "1"}) + "\n")
    with pytest.raises(ConfigError, match=f"every evaluation prompt is longer than {512 - 32} tokens"):
        Task(TaskSettings.from_config(load_config(None, [f"model.name_or_path={model.name_or_path}", f"eval.path={long}"])),
             tokenizer)


def test_rl_on_physician_rubrics_through_the_trainer(tmp_path):
    """The reference-based baseline on HealthBench data: the example's own rubric, judged per
    criterion, points as weights; no anchor is loaded."""
    from cat.worlds import rubric as tiny_rubric

    world = tiny_rubric.ensure_built()
    config = load_config(None, [
        f"model.name_or_path={world / 'model'}", f"judge.model={world / 'model'}",
        f"data.path={FIXTURES / 'healthbench_sample.jsonl'}", "data.format=healthbench", "eval.path=null",
        "reward.name=rubric", "rubric.source=dataset", "estimator.name=gold",
        "run.prompts_per_step=3", "generation.num_generations=4", "generation.max_new_tokens=16",
        "judge.max_new_tokens=40", "judge.max_retries=0",  # the tiny judge never learnt the HealthBench template
    ])
    trainer = Trainer(config, tmp_path / "run", log=lambda *_: None)
    result = trainer.step(0)
    assert trainer._anchor is None
    m = result.metrics
    assert m["groups/scored"] + m["groups/unscored"] == 3 and m["judge/calls"] > 0
    # the task owns its diagnostics: HealthBench replies end in no final answer to read or vote on
    assert not [k for k in m if k.startswith(("diag/", "answer/"))]
    audit = {a["prompt"].split("\n")[0]: a for a in result.audit}
    cut = next(a for k, a in audit.items() if "cut my finger" in k)
    assert [c["points"] for c in cut["rubric"]] == [6.0, 4.0, 5.0, -8.0]
    for r in cut["rollouts"]:
        if r["reward"] is not None:
            met = sum(p["points"] for p, v in zip(cut["rubric"], r["verdicts"], strict=True) if v)
            possible = sum(p["points"] for p, v in zip(cut["rubric"], r["verdicts"], strict=True) if v is not None and p["points"] > 0)
            assert r["reward"] == pytest.approx(met / possible)

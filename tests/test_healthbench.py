"""HealthBench: loading the format (the real benchmark's rows as they are), judging with the
conversation in view, and scoring responses exactly as the benchmark's grader
(openai/simple-evals ``healthbench_eval.py``) defines it."""

import json
from pathlib import Path

import pytest
from test_rubrics import ScriptedBackend, make_judge

from cat.config import load_config
from cat.errors import DataError
from cat.rewards import REWARDS, RewardContext, RewardSettings
from cat.tasks.data import load_prompts
from cat.tasks.evaluate import evaluate_rubric
from cat.types import Completion, Group, Reference

FIXTURE = Path(__file__).parent / "fixtures" / "healthbench_sample.jsonl"
REAL = Path(__file__).parent / "fixtures" / "healthbench_real_format.jsonl"


def test_loads_conversations_rubrics_and_tags():
    prompts = load_prompts(str(FIXTURE), format="healthbench")
    assert len(prompts) == 3
    p = prompts[1]
    assert [m["role"] for m in p.messages] == ["user", "assistant", "user"]
    assert p.tags == ("theme:health_data_tasks",) and p.meta == {"prompt_id": "fixture-2"}
    assert [c.points for c in p.rubric] == [5.0, 4.0, -3.0]
    assert p.rubric[0].tags == ("axis:completeness",)
    assert p.gold is None and "assistant: It depends" in p.text


@pytest.mark.parametrize("mutate,message", [
    (lambda r: r.pop("rubrics"), "missing field 'rubrics'"),
    (lambda r: r.pop("prompt"), "missing field 'prompt'"),
    (lambda r: r.update(rubrics={"criterion": "x", "points": 1}), "field 'rubrics' must be a non-empty list, got an object"),
    (lambda r: r.update(rubrics=[]), "field 'rubrics' must be a non-empty list"),
    (lambda r: r["rubrics"].__setitem__(2, "just text"), r"rubrics\[2\] must be an object"),
    (lambda r: r["rubrics"][0].update(points="six"), r"rubrics\[0\].points must be a number, got a string 'six'"),
    (lambda r: r["rubrics"][0].update(points=True), r"rubrics\[0\].points must be a number"),
    (lambda r: r["rubrics"][0].update(points=float("nan")), r"rubrics\[0\].points must be a number"),
    (lambda r: r["rubrics"][1].update(criterion=""), r"rubrics\[1\].criterion must be a non-empty string"),
    (lambda r: r["rubrics"][1].update(criterion=["a", "b"]), r"rubrics\[1\].criterion must be a non-empty string, got a list"),
    (lambda r: r["rubrics"][1].pop("criterion"), r"rubrics\[1\].criterion must be a non-empty string, got null"),
    (lambda r: r["rubrics"][1].update(tags="axis:accuracy"), r"rubrics\[1\].tags must be a list of strings, got a string"),
    (lambda r: r["rubrics"][1].update(tags=["axis:accuracy", 3]), r"rubrics\[1\].tags must be a list of strings, got a number 3"),
    (lambda r: r["rubrics"][1].update(tags=["axis:accuracy", "axis:accuracy"]), r"rubrics\[1\].tags lists 'axis:accuracy' twice"),
    (lambda r: [c.update(points=-1) for c in r["rubrics"]], "no criterion with positive points"),
    (lambda r: r.update(prompt=[{"role": "doctor", "content": "x"}]), r"prompt\[0\] must be .*'doctor'"),
    (lambda r: r.update(prompt=[{"role": "user", "content": 5}]), r"prompt\[0\] must be .*'content': 5"),
    (lambda r: r.update(prompt=[{"role": "user"}]), r"prompt\[0\] must be .*got \{'role': 'user'\}"),
    (lambda r: r.update(prompt=[{"role": "user", "content": "hi"}, "hello"]), r"prompt\[1\] must be .*got 'hello'"),
    (lambda r: r.update(prompt="just text"), "field 'prompt' must be a non-empty list of chat messages, got a string"),
    (lambda r: r.update(example_tags="theme:x"), "field 'example_tags' must be a list of strings"),
    (lambda r: r.update(example_tags=["theme:x", "theme:x"]), "field 'example_tags' lists 'theme:x' twice"),
])
def test_malformed_rows_name_the_row_and_field(tmp_path, mutate, message):
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    mutate(rows[1])
    bad = tmp_path / "hb.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=rf"hb.jsonl: row 2: .*{message}"):
        load_prompts(str(bad), format="healthbench")


class FixedGenerator:
    """Hands out fixed responses (the policy is not under test here, the scoring is)."""

    def __init__(self, texts):
        self.texts = texts

    def generate(self, prompts, params):
        return [[Completion(text=self.texts[i], token_ids=(1,), logprobs=(0.0,), finish_reason="stop")] for i in range(len(prompts))]


def test_evaluation_score_matches_the_benchmark_definition(tmp_path):
    prompts = load_prompts(str(FIXTURE), format="healthbench")
    # verdicts in rubric order: ex1 (6, 4, 5, -8), ex2 (5, 4, -3), ex3 (5, 3)
    replies = ["yes", "no", "yes", "yes",   # ex1: 6 + 5 - 8 = 3 of 15 -> 0.2
               "yes", "yes", "no",          # ex2: 9 of 9 -> 1.0
               "no", "maybe", "maybe", "maybe"]  # ex3: 0 of 5 (criterion 2 never parsed: left out) -> 0.0
    judge = make_judge(ScriptedBackend(replies), tmp_path, retries=2)
    result = evaluate_rubric(FixedGenerator(["r1", "r2", "r3"]), prompts, [[1]] * 3, judge,
                             num_samples=1, temperature=1.0, max_new_tokens=8)
    assert result["score"] == pytest.approx((0.2 + 1.0 + 0.0) / 3)
    assert result["n"] == 3 and result["judge_failures"] == 1
    assert result["example_tags"]["theme:emergency_referrals"] == pytest.approx(0.2)
    # axis:accuracy: ex1 items (6, -8) met (yes, yes) -> -2/6 ; ex2 item 4 met -> 1.0 (the -3 one: no) ; ex3 5 missed -> 0
    assert result["rubric_tags"]["axis:accuracy"] == pytest.approx(max(0.0, (-2 / 6 + 1.0 + 0.0) / 3))


def real_rows():
    return [json.loads(line) for line in REAL.read_text().splitlines()]


def test_real_format_rows_load_as_they_are():
    """The benchmark's own rows: consensus (``level:cluster``) criteria of thousands of characters
    over many lines, their cluster tags, extra fields (completion, ideal_completions_data, canary)."""
    prompts = load_prompts(str(REAL), format="healthbench")
    rows = real_rows()
    assert len(prompts) == 3
    cluster = prompts[0].rubric[0]
    assert len(cluster.text) > 3000 and cluster.text.count("\n") > 10
    assert cluster.text == rows[0]["rubrics"][0]["criterion"]  # verbatim
    assert cluster.tags == ("level:cluster", "cluster:emergency_referrals_emergent_emergency_behavior", "axis:accuracy")
    assert prompts[0].tags == ("theme:emergency_referrals", "physician_agreed_category:emergent")
    assert prompts[0].meta == {"prompt_id": "real-format-cluster-1"}
    assert [m["role"] for m in prompts[1].messages] == ["system", "user", "assistant", "user"]
    assert [c.points for c in prompts[1].rubric] == [7.0, 6.0, -6.0, 2.0]


def test_the_judge_prompt_shows_the_conversation_the_response_and_the_criterion(tmp_path):
    """As HealthBench's grader: the whole chat (``role: content`` turns), then the response, then
    the criterion with its points; a multi-line criterion keeps its line breaks."""
    prompts = load_prompts(str(REAL), format="healthbench", limit=1)
    backend = ScriptedBackend(['```json\n{"explanation": "e", "criteria_met": true}\n```'] * 2)
    judge = make_judge(backend, tmp_path)
    evaluate_rubric(FixedGenerator(["Call 112 now."]), prompts, [[1]], judge, num_samples=1, temperature=1.0,
                    max_new_tokens=8)
    first = backend.prompts[0]
    row = real_rows()[0]
    assert f"user: {row['prompt'][0]['content']}" in first
    assert "Call 112 now." in first
    assert row["rubrics"][0]["criterion"] in first and "worth 5 points" in first
    assert first.index("user: I'm 58") < first.index("Call 112 now.") < first.index("Judge whether the assistant")


def grader_replies(*met):
    """Replies in the grader's JSON format, fenced, bare and with braces inside the explanation."""
    forms = ['```json\n{{"explanation": "see {{reply}}", "criteria_met": {}}}\n```', '{{"explanation": "x", "criteria_met": {}}}']
    return [forms[i % 2].format("true" if m else "false") for i, m in enumerate(met)]


def test_real_rows_score_as_the_benchmark_grader_defines_it(tmp_path):
    """Hand-computed against simple-evals' calculate_score / _aggregate_get_clipped_mean:
    per example sum(points met) / sum(positive points), unclipped; the score and every tag the
    clipped mean over the examples that carry it; a rubric tag only over examples with a
    positive-point criterion under it."""
    prompts = load_prompts(str(REAL), format="healthbench")
    replies = grader_replies(True, False,               # ex1: 5 of (5 + 5)                 -> 0.5
                             False, False, True, False,  # ex2: -6 of (7 + 6 + 2)           -> -0.4
                             True, True)                 # ex3: (4 - 2) of 4                -> 0.5
    judge = make_judge(ScriptedBackend(replies), tmp_path)
    result = evaluate_rubric(FixedGenerator(["a", "b", "c"]), prompts, [[1]] * 3, judge,
                             num_samples=1, temperature=1.0, max_new_tokens=8)
    assert result["n"] == 3 and result["unscored"] == 0 and result["judge_failures"] == 0
    assert result["score"] == pytest.approx((0.5 - 0.4 + 0.5) / 3)
    assert result["example_tags"] == pytest.approx({
        "theme:emergency_referrals": 0.5, "physician_agreed_category:emergent": 0.5,
        "theme:communication": 0.0, "physician_agreed_category:no_context_needed": 0.0,  # -0.4 clipped
        "theme:health_data_tasks": 0.5,
    })
    assert result["rubric_tags"] == pytest.approx({
        "level:cluster": 0.5,
        "cluster:emergency_referrals_emergent_emergency_behavior": 1.0,
        "cluster:emergency_referrals_emergent_context_seeking": 0.0,
        "axis:accuracy": (1.0 - 6 / 7) / 2,  # ex1 5/5, ex2 -6/7; ex3 has only a negative one: left out
        "axis:context_awareness": 0.0,
        "axis:completeness": 0.5,            # ex2 0/6, ex3 4/4
        "axis:communication_quality": 0.0,
        "level:example": 0.05,               # ex2 -0.4, ex3 0.5
    })


def test_physician_rubric_rewards_show_the_judge_the_conversation(tmp_path):
    """``rubric.source: dataset`` judges with the conversation template; the reward is the
    example's rubric score (negative allowed, unclipped)."""
    [prompt] = load_prompts(str(REAL), format="healthbench", system_prompt="Answer briefly.")[1:2]
    config = load_config(None, ["reward.name=rubric", "rubric.source=dataset", "data.format=healthbench",
                                "estimator.name=gold"])
    reward = REWARDS.get("rubric")(RewardSettings.from_config(config))
    backend = ScriptedBackend(grader_replies(True, True, False, True, False, False, True, False))
    reward.judge = make_judge(backend, tmp_path)
    group = Group(prompt=prompt, prompt_ids=(1,), completions=tuple(
        Completion(text=t, token_ids=(1,), logprobs=(0.0,), finish_reason="stop") for t in ("one", "two")))
    out = reward.score([group], [Reference(text="", answer=None, source="gold")], RewardContext())
    [score], [audit] = out.scores, out.audit
    assert score.rewards == pytest.approx(((7 + 6 + 2) / 15, -6 / 15))
    # the judge sees the chat the policy answered: the run's system prompt, then the row's turns
    assert all("system: Answer briefly.\n\nsystem: You are a careful medical assistant.\n\nuser: My son is 4" in p
               for p in backend.prompts)
    assert audit["rollouts"][1]["verdicts"] == [False, False, True, False]

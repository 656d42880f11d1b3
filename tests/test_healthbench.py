"""HealthBench: loading the format, scoring responses exactly as the benchmark defines it."""

import json
from pathlib import Path

import pytest
from test_rubrics import ScriptedBackend, make_judge

from cat.data import load_prompts
from cat.errors import DataError
from cat.evaluate import evaluate_rubric
from cat.types import Completion

FIXTURE = Path(__file__).parent / "fixtures" / "healthbench_sample.jsonl"


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
    (lambda r: r.pop("rubrics"), "field 'rubrics' must be a non-empty list"),
    (lambda r: r["rubrics"][0].update(points="six"), r"rubrics\[0\].points must be a number"),
    (lambda r: r["rubrics"][1].update(criterion=""), r"rubrics\[1\]"),
    (lambda r: r.update(prompt=[{"role": "doctor", "content": "x"}]), r"prompt\[0\] must be"),
    (lambda r: r.update(prompt="just text"), "non-empty list of chat messages"),
    (lambda r: r.update(example_tags="theme:x"), "example_tags"),
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

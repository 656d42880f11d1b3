import json

import pytest

from cat.errors import DataError
from cat.tasks.data import PromptOrder, load_prompts


def jsonl(tmp_path, rows, name="d.jsonl"):
    p = tmp_path / name
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return p


def test_math500_schema(tmp_path):
    p = jsonl(tmp_path, [{"problem": "1+1?", "answer": "2", "subject": "Algebra", "level": 1, "unique_id": "a/1.json"}])
    [prompt] = load_prompts(str(p), prompt_template="{problem}\nPut the answer in \\boxed{}.", system_prompt="Be brief.")
    assert prompt.gold == "2" and prompt.text == "1+1?"
    assert prompt.messages[0] == {"role": "system", "content": "Be brief."}
    assert prompt.messages[1]["content"] == "1+1?\nPut the answer in \\boxed{}."
    assert prompt.meta == {"subject": "Algebra", "level": 1, "unique_id": "a/1.json"}


def test_gsm8k_schema(tmp_path):
    p = jsonl(tmp_path, [{"question": "q", "answer": "work...\n#### 1,234"}])
    [prompt] = load_prompts(str(p), prompt_field="question", answer_format="gsm8k")
    assert prompt.gold == "1234"


def test_parquet_file(tmp_path):
    from datasets import Dataset

    path = tmp_path / "d.parquet"
    Dataset.from_list([{"problem": "p1", "answer": 3}, {"problem": "p2", "answer": 4}]).to_parquet(str(path))
    prompts = load_prompts(str(path))
    assert [p.gold for p in prompts] == ["3", "4"]


def test_malformed_json_row_is_named(tmp_path):
    p = jsonl(tmp_path, [{"problem": "a", "answer": "1"}, "{not json"])
    with pytest.raises(DataError, match=r"d.jsonl: row 2 is not valid JSON"):
        load_prompts(str(p))


def test_missing_field_is_named(tmp_path):
    p = jsonl(tmp_path, [{"problem": "a", "answer": "1"}, {"question": "b"}])
    with pytest.raises(DataError, match=r"row 2: missing field 'problem' \(fields: \['question'\]\)"):
        load_prompts(str(p))


def test_wrong_type_is_named(tmp_path):
    p = jsonl(tmp_path, [{"problem": ["a"], "answer": "1"}])
    with pytest.raises(DataError, match="row 1: field 'problem' must be a non-empty string"):
        load_prompts(str(p))
    p = jsonl(tmp_path, [{"problem": "a", "answer": {"x": 1}}], "e.jsonl")
    with pytest.raises(DataError, match="row 1: field 'answer' must be a string or number"):
        load_prompts(str(p))


def test_missing_answer_allowed_label_free_but_not_for_gold(tmp_path):
    p = jsonl(tmp_path, [{"problem": "a"}])
    assert load_prompts(str(p))[0].gold is None
    with pytest.raises(DataError, match="missing field 'answer'"):
        load_prompts(str(p), require_answer=True)


def test_missing_file_and_empty_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_prompts(str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match="no rows"):
        load_prompts(str(jsonl(tmp_path, [])))


def test_prompt_order_is_a_pure_function_of_seed_and_step():
    order = PromptOrder(size=10, per_step=4, seed=3)
    first = [order.batch(s) for s in range(6)]
    assert first == [PromptOrder(10, 4, 3).batch(s) for s in range(6)]
    epoch0 = first[0] + first[1] + first[2][:2]
    assert sorted(epoch0) == list(range(10))  # every prompt once per epoch
    assert PromptOrder(10, 4, 4).batch(0) != first[0]


FIXTURE = __import__("pathlib").Path(__file__).parent / "fixtures" / "math500_sample.jsonl"


def test_math500_fixture_and_its_own_solutions_grade_correct():
    """The MATH-500 schema end to end: each row's worked solution extracts to its gold answer."""
    from cat.rewards.answers import AnswerChain
    from cat.tasks.evaluate import is_correct

    prompts = load_prompts(str(FIXTURE), prompt_template="{problem}\nPlease reason step by step, and put your final answer within \\boxed{}.")
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    assert len(prompts) == 6 and prompts[0].meta["subject"] == "Prealgebra"
    for prompt, row in zip(prompts, rows, strict=True):
        assert is_correct(row["solution"], prompt.gold, AnswerChain()), row["unique_id"]
        assert prompt.messages[-1]["content"].endswith("within \\boxed{}.")


def test_prompt_order_is_the_seeded_permutation_in_any_access_order():
    """Kept epochs change nothing: every batch is still the seed's permutation (resume stays exact),
    whichever steps were asked for before."""
    import random

    def reference(size, per_step, seed, step):
        out = []
        for position in range(step * per_step, (step + 1) * per_step):
            epoch, offset = divmod(position, size)
            order = list(range(size))
            random.Random(seed * 1_000_003 + epoch).shuffle(order)
            out.append(order[offset])
        return out

    order = PromptOrder(37, 16, 5)
    for step in [*range(12), 3, 0, 40, 7, 41, 2]:
        assert order.batch(step) == reference(37, 16, 5, step)
    assert len(order._epochs) <= 2

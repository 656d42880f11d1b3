"""Test-time CaT on HealthBench-format data through ``cat-rl testtime``: the arms on the same
rollouts, each answer graded on the physician rubric, failures counted and never scored 0.

The tiny rubric world answers sums; its HealthBench rows (``tiny_healthbench``) carry a physician
rubric of the sum's column steps and final answer (and a penalty for the answer one too high), so
the tiny judge can grade them. The tiny judge cannot rate a reply 1..10, which makes
``judge_best_of_n`` a counted failure there; a scripted judge on 127.0.0.1 (``ScriptedServer``)
rates replies for the selection test."""

import json
import math
import re

import pytest
from conftest import ROOT, cli
from test_judge_http import KEY, ScriptedServer, reply

from cat.worlds import arith as tiny
from cat.worlds import rubric as tiny_rubric

CONFIG = str(ROOT / "experiments" / "tiny_rubric_cat.yaml")
TINY_JUDGE = str(ROOT / "tests" / "fixtures" / "tiny_judge_conversation.txt")
POINTS = {"ones": 2, "tens": 2, "carry": 1, "answer": 5, "box": 1}


@pytest.fixture(scope="module")
def tiny_healthbench(tmp_path_factory):
    """Six sums of the tiny rubric world's test split as HealthBench rows."""
    world = tiny_rubric.ensure_built()
    path = tmp_path_factory.mktemp("hb") / "sums.jsonl"
    rows = []
    for line in (world / "test.jsonl").read_text().splitlines()[:6]:
        a, b = map(int, json.loads(line)["problem"].split("+"))
        steps = tiny_rubric.criteria_of(tiny.solution(a, b))
        rubric = [{"criterion": c, "points": POINTS[k], "tags": [f"axis:{k}"]} for k, c in steps.items()]
        rubric.append({"criterion": f"The final answer is {a + b + 1}.", "points": -3, "tags": ["axis:answer"]})
        rows.append({"prompt": [{"role": "user", "content": f"{a}+{b}"}], "rubrics": rubric,
                     "example_tags": ["theme:sums"]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def data(path):
    return ["data.format=healthbench", f"data.path={path}", f"eval.path={path}"]


def rubric_score_by_hand(rubric: list[dict], verdicts: list[bool]) -> float:
    possible = sum(c["points"] for c in rubric if c["points"] > 0)
    return sum(c["points"] for c, met in zip(rubric, verdicts, strict=True) if met) / possible


def test_the_arms_answer_from_the_same_rollouts_and_are_graded_on_the_physician_rubric(tmp_path, tiny_healthbench):
    out_file, verdicts = tmp_path / "tt.json", tmp_path / "verdicts.jsonl"
    out = cli("testtime", CONFIG, *data(tiny_healthbench), f"judge.template={TINY_JUDGE}", "--group-sizes", "2,4",
              "generation.num_generations=4", "--output", str(out_file), "--verdicts", str(verdicts))
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out_file.read_text())
    arms = ("single", "synthesis", "rubric_best_of_n", "judge_best_of_n")
    assert result["arms"] == list(arms) and set(result["score"]) == {f"{a}@{g}" for a in arms for g in (2, 4)}
    assert result["grader"] == {"model": "tiny:rubric", "is_reward_judge": True}
    assert "| HealthBench score | G = 2 | G = 4 |" in out.stdout and "nan" not in out.stdout
    assert (tmp_path / "tt.md").read_text().strip() in out.stdout  # the table and the figure beside the JSON
    assert (tmp_path / "tt.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [json.loads(line) for line in tiny_healthbench.read_text().splitlines()]
    for ex in result["examples"]:
        texts = [r["text"] for r in ex["rollouts"]]
        for g in (2, 4):
            answers = {a: ex["answers"][f"{a}@{g}"] for a in arms}
            assert answers["single"]["text"] == texts[0] and answers["single"]["chosen"] == 0  # paired: the same rollouts
            assert answers["synthesis"]["text"] == ex["synthesis"][f"@{g}"]
            scores = ex["rubric_scores"][f"@{g}"]
            if answers["rubric_best_of_n"]["failure"] is None:  # the first of the best its own rubric scored
                assert len(scores) == g and len(ex["rubric"][f"@{g}"]) >= 5
                assert answers["rubric_best_of_n"]["chosen"] == scores.index(max(scores))
                assert answers["rubric_best_of_n"]["text"] == texts[answers["rubric_best_of_n"]["chosen"]]
            # the tiny judge writes no <score>: every rollout unrated, the arm failed on the prompt, not 0
            assert answers["judge_best_of_n"] == {"chosen": None, "text": None, "failure": "the judge rated no rollout"}
    assert all(r["judge_score"] is None for ex in result["examples"] for r in ex["rollouts"])
    assert result["failed"]["judge_best_of_n@4"] == {"the judge rated no rollout": 6}
    assert result["scored"]["judge_best_of_n@4"] == 0 and math.isnan(result["score"]["judge_best_of_n@4"])
    distinct = sum(len({r["text"] for r in ex["rollouts"]}) for ex in result["examples"])  # a repeat is asked once
    assert result["judge"]["judge_best_of_n"]["judge/score_calls"] == distinct  # none of the first a score: no re-asks
    assert "| judge_best_of_n | n/a (6 failed) | n/a (6 failed) |" in out.stdout
    assert "| judge_best_of_n@4 | 6 | the judge rated no rollout |" in out.stdout

    for k, ex in enumerate(result["examples"]):  # each score is the rubric score of the grader's verdicts
        for key, a in ex["answers"].items():
            if a["text"] is not None and None not in a["verdicts"]:
                assert a["score"] == pytest.approx(rubric_score_by_hand(rows[k]["rubrics"], a["verdicts"])), key
    for key, score in result["score"].items():
        values = [ex["answers"][key]["score"] for ex in result["examples"] if ex["answers"][key].get("score") is not None]
        if values:  # HealthBench: the mean of per-prompt scores, clipped to [0, 1]
            assert score == pytest.approx(min(1.0, max(0.0, sum(values) / len(values))))
    pairs = [(ex["answers"]["rubric_best_of_n@4"].get("score"), ex["answers"]["single@4"]["score"])
             for ex in result["examples"]]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    paired = result["paired"]["rubric_best_of_n@4"]["single"]
    assert paired["prompts"] == len(pairs) and paired["difference"] == pytest.approx(sum(a - b for a, b in pairs) / len(pairs))

    # the verdict cache spares a second run every verdict the first got
    again = cli("testtime", CONFIG, *data(tiny_healthbench), f"judge.template={TINY_JUDGE}", "--estimators", "single",
                "generation.num_generations=4", "--verdicts", str(verdicts), "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    grading = json.loads(again.stdout)["judge"]["grading"]
    verdicts_of_single = [v for ex in result["examples"] for v in ex["answers"]["single@4"]["verdicts"]]
    assert grading["judge/cache_hits"] == sum(v is not None for v in verdicts_of_single) > 0
    assert grading["judge/calls"] <= 4 * verdicts_of_single.count(None)  # only a verdict that failed is asked again


def scripted_judge(prompt: str):
    """Ratings by the reply's boxed sum: none for the first prompt (``25+60``), an off-scale 11
    for a multiple of 3, else sum % 4 + 1 (ties are common); verdicts by whether the criterion's
    number appears in the reply."""
    found = re.search(r"The reply to (?:rate|grade)[^\n]*\n(.*?)\n\n", prompt, re.S)
    if found is None:  # the judge's check at the start: any verdict will do
        return reply("<verdict>yes</verdict>")
    reply_text = found.group(1)
    boxed = re.search(r"\\boxed\{(\d+)\}", reply_text)
    n = int(boxed.group(1)) if boxed else 1
    if "<score>" in prompt:
        if "user: 25+60" in prompt:
            return reply("I would rather not rate this.")
        return reply("<score>11</score>" if n % 3 == 0 else f"Fine. <score>{n % 4 + 1}</score>")
    number = re.search(r"(\d+)\.\s*$", prompt.split("Criterion, worth")[1].split("How to decide")[0].strip())
    met = number is None or number.group(1) in reply_text
    return reply(json.dumps({"explanation": "x", "criteria_met": met}))


def test_judge_best_of_n_picks_the_first_highest_rating_and_counts_replies_that_are_not_scores(
        tmp_path, tiny_healthbench, monkeypatch):
    monkeypatch.setenv("CAT_TEST_JUDGE_KEY", KEY)
    server = ScriptedServer(lambda n, prompt: scripted_judge(prompt))
    try:
        endpoint = ["backend=openai", f"base_url={server.base_url}", "model=tiny", "api_key_env=CAT_TEST_JUDGE_KEY",
                    "max_retries=1", "backoff_s=0.05"]
        out = cli("testtime", CONFIG, *data(tiny_healthbench), *[f"judge.{x}" for x in endpoint],
                  *[f"eval.judge.{x}" for x in endpoint], "--estimators", "judge_best_of_n,single",
                  "--group-sizes", "4", "--output", str(tmp_path / "tt.json"))
    finally:
        server.close()
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "tt.json").read_text())
    assert result["arms"] == ["single", "judge_best_of_n"] and result["grader"]["is_reward_judge"] is False
    unrated, distinct, distinct_unrated = 0, 0, 0
    for ex in result["examples"]:
        ratings = [r["judge_score"] for r in ex["rollouts"][:4]]
        unrated += ratings.count(None)
        texts = {r["text"]: r["judge_score"] for r in ex["rollouts"][:4]}  # a reply given twice is rated once
        distinct += len(texts)
        distinct_unrated += list(texts.values()).count(None)
        answer = ex["answers"]["judge_best_of_n@4"]
        rated = [s for s in ratings[:4] if s is not None]
        if not rated:
            assert answer["chosen"] is None and answer["failure"] == "the judge rated no rollout"
            continue
        assert answer["chosen"] == ratings.index(max(rated)) and answer["text"] == ex["rollouts"][answer["chosen"]]["text"]
        assert all(s in range(1, 11) for s in rated)
    rows = [json.loads(line) for line in tiny_healthbench.read_text().splitlines()]
    for k, ex in enumerate(result["examples"]):  # graded again here by the scripted grader's rule, by hand
        for key, a in ex["answers"].items():
            if a["text"] is not None:
                met = [re.search(r"(\d+)\.$", c["criterion"]) is None or
                       re.search(r"(\d+)\.$", c["criterion"]).group(1) in a["text"] for c in rows[k]["rubrics"]]
                assert a["score"] == pytest.approx(rubric_score_by_hand(rows[k]["rubrics"], met)), key
    first = result["examples"][0]
    assert first["question"] == "user: 25+60" and all(r["judge_score"] is None for r in first["rollouts"][:4])
    assert result["failed"]["judge_best_of_n@4"]["the judge rated no rollout"] >= 1
    assert result["scored"]["judge_best_of_n@4"] == 6 - sum(result["failed"]["judge_best_of_n@4"].values())
    counts = result["judge"]["judge_best_of_n"]
    assert counts["judge/score_failures"] == unrated
    assert counts["judge/score_calls"] == distinct + distinct_unrated  # each unreadable one asked once more (max_retries=1)
    assert result["paired"]["judge_best_of_n@4"]["single"]["prompts"] == result["scored"]["judge_best_of_n@4"]


@pytest.mark.parametrize(("args", "message"), [
    (["--estimators", "single,majority_vote"], "majority_vote compare final answers, which rubric rows do not have"),
    (["--estimators", "best_guess"], "choose from single, synthesis, rubric_best_of_n, judge_best_of_n"),
    (["anchor.orders=3"], "anchor.orders=3: several orders vote"),
    (["--anchor-decoding", "greedy,sampled"], "--anchor-decoding and --anchor-question compare syntheses"),
    (["--regrade", str(ROOT / "README.md")], "a HealthBench result is graded by a judge"),
    (["--estimators", "judge_best_of_n", "eval.judge.template=/nonexistent.txt"], "nonexistent"),
    (["--estimators", ","], "names no estimator"),
])
def test_an_impossible_rubric_mode_is_a_config_error_before_any_model_loads(tiny_healthbench, args, message):
    out = cli("testtime", CONFIG, *data(tiny_healthbench), *args)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]


def test_rubric_arms_are_refused_on_math_data(tiny_world):
    out = cli("testtime", str(ROOT / "experiments" / "tiny_arith_cat.yaml"), "--estimators", "single,judge_best_of_n")
    assert out.returncode == 2 and "judge_best_of_n" in out.stderr and "Traceback" not in out.stderr
    out = cli("testtime", str(ROOT / "experiments" / "tiny_arith_cat.yaml"), "--verdicts", "v.jsonl")
    assert out.returncode == 2 and "--verdicts keeps the judges' answers of a HealthBench" in out.stderr

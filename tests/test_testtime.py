"""Test-time CaT through ``cat-rl synthesize``: estimators compared on the same rollouts."""

import json
import re

from conftest import ROOT, cli, run_cli
from test_judge_http import KEY, ScriptedServer, reply


def test_synthesize_compares_estimators_on_shared_rollouts(tmp_path, tiny_world):
    out_file = tmp_path / "tt.json"
    out = run_cli("testtime", str(ROOT / "experiments" / "tiny_arith_cat.yaml"),
                  "--estimators", "single,majority_vote,synthesis,min_perplexity", "--group-sizes", "1,8",
                  "--anchor-decoding", "greedy,sampled", "--anchor-question", "without,with",
                  "--output", str(out_file), "eval.limit=32")
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out_file.read_text())
    acc = result["accuracy"]
    names = ("single", "majority_vote", "synthesis[greedy]", "synthesis[sampled]", "synthesis[greedy,question]",
             "synthesis[sampled,question]", "min_perplexity", "oracle_pass")
    assert set(acc) == {f"{n}@{g}" for n in names for g in (1, 8)}  # min_perplexity only scores: one decoding
    assert acc["oracle_pass@1"] == acc["single@1"] and all(acc["oracle_pass@8"] >= v for v in acc.values())
    paired = result["paired"]["majority_vote@8"]["one_sample"]  # the vote of 8 against one sample, prompt by prompt
    assert paired["verdict"] == "better" and paired["difference"] - paired["interval"] > 0
    assert result["paired"]["synthesis[greedy]@8"]["majority_vote"]["verdict"] in ("better", "worse", "no clear difference")
    assert "| paired, per prompt |" in out.stdout
    assert result["n"] == 32 and len(result["examples"]) == 32
    # majority of one rollout is that rollout: the pairing across estimators is exact
    assert acc["majority_vote@1"] == acc["single@1"]
    # on this world 8 rollouts reconciled beat one sample (measured: ~0.8 vs ~0.4)
    assert acc["synthesis[greedy]@8"] > result["single_sample_accuracy"] + 0.15
    assert acc["synthesis[sampled]@8"] > result["single_sample_accuracy"]
    assert acc["majority_vote@8"] > result["single_sample_accuracy"]
    assert set(result["versus_majority"]) == {f"{n}@{g}" for n in names if n not in ("majority_vote", "oracle_pass")
                                              for g in (1, 8)}
    assert result["versus_majority"]["single@1"]["disagreements"] == 0  # one rollout: the vote is that rollout
    assert 0 < result["interval"]["synthesis[greedy]@8"] < 0.5
    first = result["examples"][0]
    assert len(first["rollouts"]) == 8 and {"text", "answer"} <= set(first["rollouts"][0])
    assert first["references"]["synthesis[sampled]@8"]["text"]  # what the anchor wrote, to read
    sampled = [ex["references"]["synthesis[sampled]@8"]["text"] for ex in result["examples"]]
    assert sampled != [ex["references"]["synthesis[greedy]@8"]["text"] for ex in result["examples"]]
    assert "| synthesis[sampled] |" in out.stdout and "against the majority vote" in out.stdout  # a table, not JSON
    assert len(result["copies"]["synthesis[greedy]@8"]) == 8 and "| reference answer equals rollout i's |" in out.stdout
    # read again from the saved texts, no model: the same numbers; with another answer rule, other ones
    again = cli("testtime", str(ROOT / "experiments" / "tiny_arith_cat.yaml"), "--regrade", str(out_file),
                "--output", str(tmp_path / "again.json"), "eval.limit=32")
    assert again.returncode == 0, again.stderr[-2000:]
    regraded = json.loads((tmp_path / "again.json").read_text())
    assert regraded["accuracy"] == acc and regraded["paired"] == result["paired"]
    first_digit = cli("testtime", str(ROOT / "experiments" / "tiny_arith_cat.yaml"), "--regrade", str(out_file),
                      "--output", str(tmp_path / "digit.json"), "eval.limit=32", "answer.rules=[regex]",
                      "answer.regex=(\\d)")
    assert first_digit.returncode == 0, first_digit.stderr[-2000:]
    digit = json.loads((tmp_path / "digit.json").read_text())
    assert digit["accuracy"]["majority_vote@8"] < acc["majority_vote@8"]
    # the regraded result records the answer rules it was graded with, and the saved rollouts' settings
    assert digit["settings"] == {**result["settings"], "answer.rules": ["regex"], "answer.regex": "(\\d)"}
    assert result["settings"]["model.name_or_path"] == "tiny:arith" and result["settings"]["eval.limit"] == 32
    # a synthesis over several orders (anchor.orders) is read again order by order and voted again
    edited = json.loads(out_file.read_text())
    key = "synthesis[greedy]@8"
    edited["examples"][0]["references"][key].update(answer="999", text="x", order_answers=["11", "11", "11"],
                                                    order_texts=["so \\boxed{11}", "so \\boxed{12}", "so \\boxed{12}"])
    edited["examples"][1]["references"][key]["order_answers"] = ["5"]  # its syntheses not saved: not kept stale
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    out = cli("testtime", str(ROOT / "experiments" / "tiny_arith_cat.yaml"), "--regrade", str(tmp_path / "edited.json"),
              "--output", str(tmp_path / "revoted.json"), "eval.limit=32")
    assert out.returncode == 0, out.stderr[-2000:]
    revoted = json.loads((tmp_path / "revoted.json").read_text())["examples"]
    assert revoted[0]["references"][key]["answer"] == "12" and revoted[0]["references"][key]["text"] == "so \\boxed{12}"
    assert revoted[0]["references"][key]["order_answers"] == ["11", "12", "12"]
    assert "order_answers" not in revoted[1]["references"][key]


def test_synthesize_rejects_bad_group_sizes(tiny_world):
    out = cli("synthesize", str(ROOT / "experiments" / "tiny_arith_cat.yaml"), "--group-sizes", "1,16")
    assert out.returncode == 2 and "num_generations" in out.stderr and "Traceback" not in out.stderr
    out = cli("synthesize", str(ROOT / "experiments" / "tiny_arith_cat.yaml"), "--group-sizes", "a")
    assert out.returncode == 2 and "--group-sizes" in out.stderr
    out = cli("synthesize", str(ROOT / "experiments" / "tiny_arith_cat.yaml"), "--anchor-decoding", "greedy,hot")
    assert out.returncode == 2 and "anchor decoding 'hot': choose from greedy, sampled" in out.stderr
    out = cli("testtime", str(ROOT / "experiments" / "tiny_arith_cat.yaml"), "--regrade", str(ROOT / "README.md"))
    assert out.returncode == 2 and "not a saved test-time result" in out.stderr
    out = cli("testtime", str(ROOT / "experiments" / "tiny_arith_cat.yaml"), "--anchor-question", "with",
              "--question-template", "math_synthesis_brief")
    assert out.returncode == 2 and "question" in out.stderr and "Traceback" not in out.stderr


def test_versus_majority_counts_disagreements_and_who_is_right():
    from cat.tools.testtime import table, versus_majority

    def ex(synth, vote):
        return {"references": {"synthesis@4": {"answer": synth[0], "correct": synth[1]},
                               "majority_vote@4": {"answer": vote[0], "correct": vote[1]}}}

    examples = [ex(("41", True), ("41", True)),      # agree, right
                ex(("41", True), ("41.0", True)),    # both right: not a disagreement
                ex(("7", False), ("7", False)),      # agree, wrong
                ex(("41", True), ("40", False)),     # synthesis right where the vote is wrong
                ex(("40", False), ("41", True)),     # the vote right
                ex(("39", False), ("40", False)),    # both wrong, different answers
                ex((None, False), ("40", False))]    # no answer against a wrong vote
    v = versus_majority(examples, "synthesis@4", "majority_vote@4")
    assert v["disagreements"] == 4 and v["disagree_rate"] == 4 / 7
    assert v["right_when_disagree"] == 1 / 4 and v["majority_right_when_disagree"] == 1 / 4
    result = {"n": 7, "group_sizes": [4], "single_sample_accuracy": 0.25, "single_sample_interval": 0.1,
              "accuracy": {"majority_vote@4": 3 / 7, "synthesis@4": 3 / 7},
              "interval": {"majority_vote@4": 0.4, "synthesis@4": 0.4}, "versus_majority": {"synthesis@4": v}}
    text = table(result)
    assert "| synthesis | 0.429 +/- 0.400 |" in text and "| synthesis@4 | 0.571 (4) | 0.25 | 0.25 |" in text
    assert "no answer" not in text  # a result saved before the count, or one with every reference answered
    text = table({**result, "no_answer": {"majority_vote@4": 0, "synthesis@4": 1}})
    assert "\n\nreferences with no answer, scored wrong: synthesis@4 1 of 7\n\n" in text
    none = versus_majority(examples[:3], "synthesis@4", "majority_vote@4")
    assert none["disagreements"] == 0 and none["right_when_disagree"] != none["right_when_disagree"]  # nan


def test_the_table_reads_n_a_where_one_prompt_gives_no_interval():
    from cat.tools.stats import mean_ci
    from cat.tools.testtime import table

    nan = mean_ci([1.0]).half_width  # one prompt: no interval
    result = {"n": 1, "group_sizes": [2], "single_sample_accuracy": 1.0, "single_sample_interval": nan,
              "accuracy": {"majority_vote@2": 1.0}, "interval": {"majority_vote@2": nan},
              "paired": {"majority_vote@2": {"one_sample": {"difference": 0.0, "interval": nan, "verdict": "one prompt"}}}}
    text = table(result)
    assert "one sample: 1.000 (+/- n/a)" in text and "| majority_vote | 1.000 +/- n/a |" in text
    assert "0 +/- n/a (one prompt)" in text and "nan" not in text
    text = table({**result, "examples": [{"rollouts": [{}, {}, {}, {}], "references": {}}]})
    assert "one sample: 1.000 (+/- n/a) (the mean over all 4 rollouts of a prompt)" in text  # the G = 2 rows read 2
    assert "| against one sample (of the G it read) |" in text


def test_testtime_refuses_math_estimators_on_rubric_data():
    """HealthBench rows have a physician rubric, no final answer: a vote over answers is not a mode
    there (the rubric arms are, tests/test_testtime_rubric.py)."""
    healthbench = ROOT / "tests" / "fixtures" / "healthbench_sample.jsonl"
    out = cli("testtime", str(ROOT / "experiments" / "tiny_arith_cat.yaml"), "data.format=healthbench",
              f"data.path={healthbench}", f"eval.path={healthbench}", "--estimators", "majority_vote,synthesis")
    assert out.returncode == 2 and "majority_vote compare final answers, which rubric rows do not have" in out.stderr
    assert "Traceback" not in out.stderr


def rate_sums(n, prompt):
    """A judge that rates a right sum 9 and a wrong one 2, and cannot rate a sum whose first
    operand is a multiple of 5."""
    if "<score>" not in prompt:
        return reply("<verdict>yes</verdict>")
    question = re.search(r"user: .*?(\d+)\s*\+\s*(\d+)", prompt, re.S)
    response = re.search(r"The reply to rate[^\n]*\n(.*?)\n\nRate how well", prompt, re.S).group(1)
    said = re.findall(r"-?\d+", response.split("boxed")[-1])
    if int(question.group(1)) % 5 == 0:  # a judge that cannot rate these: left out, never the lowest
        return reply("I cannot say.")
    right = bool(said) and int(said[0]) == int(question.group(1)) + int(question.group(2))
    return reply(f"Checked. <score>{9 if right else 2}</score>")



def test_judge_best_of_n_on_math_takes_the_best_rated_rollout_and_leaves_failed_ratings_out(tmp_path, tiny_world,
                                                                                             monkeypatch):
    """``judge_bon``: an independent judge rates every rollout for its question. A judge that
    rates a right sum 9 and a wrong one 2 makes best-of-N exactly pass@G; the judge sees the
    question and one rollout, never the gold answer; ratings that are not scores are left out."""
    monkeypatch.setenv("CAT_TEST_JUDGE_KEY", KEY)
    server = ScriptedServer(rate_sums)
    try:
        out = run_cli("testtime", str(ROOT / "experiments" / "tiny_arith_cat.yaml"),
                      "--estimators", "single,majority_vote,judge_bon", "--group-sizes", "4,8",
                      "--output", str(tmp_path / "tt.json"), "eval.limit=24", "judge.backend=openai",
                      f"judge.base_url={server.base_url}", "judge.model=tiny", "judge.api_key_env=CAT_TEST_JUDGE_KEY",
                      "judge.max_retries=1", "judge.backoff_s=0.01", "judge.score_template=judge_score_brief")
        prompts = [p for _, p in server.chat]
    finally:
        server.close()
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "tt.json").read_text())
    unrateable = {ex["index"] for ex in result["examples"] if int(re.match(r"\D*(\d+)", ex["question"]).group(1)) % 5 == 0}
    assert 0 < len(unrateable) < len(result["examples"])
    for ex in result["examples"]:
        for g in (4, 8):
            ref = ex["references"][f"judge_bon@{g}"]
            if ex["index"] in unrateable:
                assert ref["answer"] is None and ref["scores"] == [None] * g
                continue
            assert ref["scores"] == [9 if r["answer"] is not None and str(r["answer"]) == ex["gold"] else 2
                                     for r in ex["rollouts"][:g]]
            assert ref["correct"] == any(r["answer"] == ex["gold"] for r in ex["rollouts"][:g])
    assert all("Reply with the rating alone" in p for p in prompts)
    # each distinct rollout rated once (G = 4 reads the first 4 ratings from the judge's cache); a
    # failed rating is asked again (judge.max_retries=1), at G = 4 and again at G = 8
    def distinct(ex, g):
        return len({r["text"] for r in ex["rollouts"][:g]})

    asked = sum(distinct(ex, 8) if ex["index"] not in unrateable else 2 * (distinct(ex, 4) + distinct(ex, 8))
                for ex in result["examples"])
    assert len(prompts) == asked
    assert not any(ex["gold"] in p.split("The reply to rate")[0].replace(ex["question"], "")
                   for ex in result["examples"] for p in prompts if ex["question"] in p and len(ex["gold"]) > 2)
    counts = result["judge"]["judge_bon@8"]  # the judge's own counts, per G (G = 4's ratings came first)
    assert counts["judge/score_calls"] + result["judge"]["judge_bon@4"]["judge/score_calls"] == len(prompts)
    assert counts["judge/score_failures"] == 8 * len(unrateable) and counts["judge/prompt_tokens"] > 0
    assert result["no_answer"]["judge_bon@8"] == result["no_answer"]["judge_bon@4"] == len(unrateable)
    assert f"judge_bon@4 {len(unrateable)} of 24, judge_bon@8 {len(unrateable)} of 24" in out.stdout
    acc = result["accuracy"]  # a perfect judge, short of the prompts it cannot rate: pass@G on the rest
    assert acc["judge_bon@8"] == sum(any(r["answer"] == ex["gold"] for r in ex["rollouts"])
                                     for ex in result["examples"] if ex["index"] not in unrateable) / 24


def test_training_with_judge_bon_logs_its_judges_counts(tmp_path, tiny_world, monkeypatch):
    """A CaT run whose reference is the judge's best-rated rollout: groups are scored and the
    judge's calls and failures are step metrics."""
    monkeypatch.setenv("CAT_TEST_JUDGE_KEY", KEY)
    server = ScriptedServer(rate_sums)
    try:
        out = run_cli("train", str(ROOT / "experiments" / "tiny_arith_cat.yaml"), "--output-dir", str(tmp_path / "run"),
                      "estimator.name=judge_bon", "run.steps=1", "eval.path=null", "judge.backend=openai",
                      f"judge.base_url={server.base_url}", "judge.model=tiny", "judge.api_key_env=CAT_TEST_JUDGE_KEY",
                      "judge.max_retries=0", "judge.score_template=judge_score_brief")
    finally:
        server.close()
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["groups/scored"] > 0 and rows[-1]["judge/score_calls"] > 0
    assert rows[-1]["judge/score_calls"] <= len(server.chat)  # the preflight's ratings are the rest
    assert rows[-1]["judge/prompt_tokens"] > 0 and "judge/score_failures" in rows[-1]


def test_a_judge_that_rates_nothing_stops_judge_bon_training_before_it_starts(tmp_path, tiny_world, monkeypatch):
    """Every reply unreadable as a rating: the preflight names the judge and its fix, exit 2."""
    monkeypatch.setenv("CAT_TEST_JUDGE_KEY", KEY)
    server = ScriptedServer(lambda n, prompt: reply("It looks fine to me."))
    try:
        out = run_cli("train", str(ROOT / "experiments" / "tiny_arith_cat.yaml"), "--output-dir", str(tmp_path / "run"),
                      "estimator.name=judge_bon", "run.steps=1", "eval.path=null", "judge.backend=openai",
                      f"judge.base_url={server.base_url}", "judge.model=tiny", "judge.api_key_env=CAT_TEST_JUDGE_KEY",
                      "judge.max_retries=0")
    finally:
        server.close()
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "the judge gave no rating for" in out.stderr and "judge.score_template" in out.stderr
    assert "no reference has an answer" not in out.stderr  # the answer chain is not the cause here
    assert not (tmp_path / "run" / "metrics.jsonl").exists() or not (tmp_path / "run" / "metrics.jsonl").read_text()


def test_extend_adds_an_arm_to_a_saved_result_without_sampling_again(tmp_path, tiny_world, monkeypatch):
    """An arm added to a saved result reads its rollouts: the result equals one run with every arm.
    An arm that needs no anchor loads no policy model or engine at all."""
    import cat.tools.testtime_policy as policy

    config = str(ROOT / "experiments" / "tiny_arith_cat.yaml")
    both, first = tmp_path / "both.json", tmp_path / "first.json"
    common = ("--group-sizes", "4,8", "eval.limit=16")
    out = cli("testtime", config, "--estimators", "single,majority_vote,synthesis", "--output", str(both), *common)
    assert out.returncode == 0, out.stderr[-2000:]
    out = cli("testtime", config, "--estimators", "single", "--output", str(first), *common)
    assert out.returncode == 0, out.stderr[-2000:]
    with monkeypatch.context() as patch:
        def no_model(*args, **kwargs):
            raise AssertionError("the policy model was loaded for an arm that needs none")

        patch.setattr(policy, "load_model", no_model)
        # an added arm may bring its own anchor and judge settings: they make no rollout
        out = cli("testtime", config, "--extend", str(first), "--estimators", "majority_vote", "--output", str(first),
                  "eval.limit=16", "anchor.greedy=false", "anchor.max_new_tokens=8", "judge.model=other")
    assert out.returncode == 0, out.stderr[-2000:]
    out = cli("testtime", config, "--extend", str(first), "--estimators", "synthesis", "--output", str(first), "eval.limit=16")
    assert out.returncode == 0, out.stderr[-2000:]
    whole, extended = json.loads(both.read_text()), json.loads(first.read_text())
    assert extended["accuracy"] == whole["accuracy"] and "synthesis@8" in extended["accuracy"]
    assert extended["paired"] == whole["paired"] and extended["versus_majority"] == whole["versus_majority"]
    assert [ex["references"] for ex in extended["examples"]] == [ex["references"] for ex in whole["examples"]]
    assert set(extended["seconds"]) == set(whole["seconds"])
    # the table and the figure beside the JSON, for the whole result the extended one is
    assert (tmp_path / "first.md").read_text() == (tmp_path / "both.md").read_text()
    assert "synthesis" in (tmp_path / "first.md").read_text() and (tmp_path / "first.md").read_text().strip() in out.stdout
    from PIL import Image

    with Image.open(tmp_path / "first.png") as png:
        assert png.format == "PNG" and png.size[0] > 600
    assert not list(tmp_path.glob(".*.tmp"))
    named = cli("testtime", config, "--output", str(tmp_path / "table.md"), "eval.limit=16")
    assert named.returncode == 2 and "name the JSON result (say" in named.stderr and not (tmp_path / "table.md").exists()
    again = cli("testtime", config, "--extend", str(first), "--estimators", "synthesis", "eval.limit=16")
    assert again.returncode == 2 and "synthesis already in the saved result" in again.stderr
    tokens = cli("testtime", config, "--extend", str(first), "--estimators", "min_perplexity", "eval.limit=16")
    assert tokens.returncode == 2 and "sampled token ids" in tokens.stderr
    other = cli("testtime", config, "--extend", str(first), "--estimators", "self_bon", "eval.limit=8")
    assert other.returncode == 2 and "eval.limit: saved 16, now 8" in other.stderr
    moved = json.loads(first.read_text())
    moved["examples"][3]["question"] = "What is 1 + 1?"  # the data file changed under the same settings
    (tmp_path / "moved.json").write_text(json.dumps(moved))
    prompts = cli("testtime", config, "--extend", str(tmp_path / "moved.json"), "--estimators", "self_bon",
                  "eval.limit=16")
    assert prompts.returncode == 2 and "not this config's evaluation prompts" in prompts.stderr
    sizes = cli("testtime", config, "--extend", str(first), "--estimators", "self_bon", "--group-sizes", "8",
                "eval.limit=16")
    assert sizes.returncode == 2 and "keeps its own group sizes [4, 8]" in sizes.stderr
    none = cli("testtime", config, "--extend", str(first), "eval.limit=16")
    assert none.returncode == 2 and "--extend needs --estimators" in none.stderr
    assert "Traceback" not in again.stderr + tokens.stderr + other.stderr + sizes.stderr + none.stderr + prompts.stderr


def test_extend_refuses_a_result_made_with_other_settings(tmp_path, tiny_world):
    """The saved result records what made its rollouts and grades them; --extend names every
    setting that differs, saved and now, and how to go on, before any model loads. A result saved
    before the record is refused unless --allow-unrecorded vouches for it."""
    config = str(ROOT / "experiments" / "tiny_arith_cat.yaml")
    saved, out_file = tmp_path / "a.json", tmp_path / "b.json"
    small = ("eval.limit=4", "generation.num_generations=2")
    out = cli("testtime", config, "--estimators", "majority_vote", "--output", str(saved), *small)
    assert out.returncode == 0, out.stderr[-2000:]
    settings = json.loads(saved.read_text())["settings"]
    assert settings["generation.temperature"] == 1.0 and settings["run.seed"] == 0 and settings["eval.limit"] == 4
    assert settings["answer.rules"] == ["boxed", "answer_phrase", "equals_end", "last_number"]
    assert not any(k.startswith(("anchor.", "estimator.", "judge.")) for k in settings)  # an added arm's own
    hotter = cli("testtime", config, "--extend", str(saved), "--estimators", "synthesis", "--output", str(out_file),
                 *small, "generation.temperature=0.5", "run.seed=3", "model.system_prompt=Be brief, now")
    assert hotter.returncode == 2 and not out_file.exists()
    assert "the saved result was made with other settings than this config's" in hotter.stderr
    assert "generation.temperature: saved 1.0, now 0.5" in hotter.stderr and "run.seed: saved 0, now 3" in hotter.stderr
    assert 'model.system_prompt: saved null, now "Be brief, now"' in hotter.stderr
    assert "(model.system_prompt=null generation.temperature=1.0 run.seed=0)" in hotter.stderr
    assert "sample again into another --output" in hotter.stderr and "--regrade" not in hotter.stderr
    graded = cli("testtime", config, "--extend", str(saved), "--estimators", "synthesis", *small,
                 "answer.form=number", "reward.mode=strict")
    assert graded.returncode == 2 and 'answer.form: saved "any", now "number"' in graded.stderr
    assert 'reward.mode: saved "equivalence", now "strict"' in graded.stderr
    assert "--regrade the saved result with them first" in graded.stderr and "give the saved values" not in graded.stderr
    # regraded with the new grading, the result records it, and --extend reads it with that grading
    out = cli("testtime", config, "--regrade", str(saved), "--output", str(tmp_path / "strict.json"), *small,
              "reward.mode=strict")
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads((tmp_path / "strict.json").read_text())["settings"]["reward.mode"] == "strict"
    out = cli("testtime", config, "--extend", str(tmp_path / "strict.json"), "--estimators", "single", *small,
              "reward.mode=strict")
    assert out.returncode == 0, out.stderr[-2000:]
    old = json.loads(saved.read_text())
    del old["settings"]  # as results were saved before the record
    (tmp_path / "old.json").write_text(json.dumps(old))
    refused = cli("testtime", config, "--extend", str(tmp_path / "old.json"), "--estimators", "single", *small)
    assert refused.returncode == 2 and "the saved result records no settings" in refused.stderr
    assert "pass --allow-unrecorded" in refused.stderr
    out = cli("testtime", config, "--extend", str(tmp_path / "old.json"), "--allow-unrecorded", "--estimators",
              "single", "--output", str(out_file), *small)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "single@2" in json.loads(out_file.read_text())["accuracy"] and "settings" not in json.loads(out_file.read_text())
    alone = cli("testtime", config, "--allow-unrecorded", *small)
    assert alone.returncode == 2 and "--allow-unrecorded goes with --extend" in alone.stderr
    assert "Traceback" not in hotter.stderr + graded.stderr + refused.stderr + alone.stderr


def test_references_with_no_answer_are_counted_and_named_under_the_table(tmp_path, tiny_world):
    """self_bon's anchor (the tiny model) rarely writes a parsable ``BEST: k``: those prompts have
    no reference answer, are scored wrong, and are counted per arm in the JSON and the table."""
    out_file = tmp_path / "bon.json"
    out = cli("testtime", str(ROOT / "experiments" / "tiny_arith_cat.yaml"), "--estimators", "single,self_bon",
              "--output", str(out_file), "eval.limit=4", "generation.num_generations=2", "anchor.max_new_tokens=8")
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out_file.read_text())
    for key in ("single@2", "self_bon@2"):
        missing = [ex for ex in result["examples"] if ex["references"][key]["answer"] is None]
        assert result["no_answer"][key] == len(missing) and not any(ex["references"][key]["correct"] for ex in missing)
    assert result["no_answer"]["self_bon@2"] > 0 and result["no_answer"]["single@2"] == 0
    line = f"references with no answer, scored wrong: self_bon@2 {result['no_answer']['self_bon@2']} of 4"
    assert line in out.stdout and line in (tmp_path / "bon.md").read_text()


def test_a_run_stopped_after_sampling_keeps_its_rollouts_and_extend_finishes_it(tmp_path, tiny_world):
    """--output holds the rollouts as soon as they are sampled: an estimator that fails afterwards
    loses only its own work, and --extend continues to the result one whole run gives."""
    config = str(ROOT / "experiments" / "tiny_arith_cat.yaml")
    plugin = tmp_path / "broken.py"
    plugin.write_text("from cat.teacher.estimators import register_estimator\n\n"
                      "@register_estimator('broken')\nclass Broken:\n    needs_anchor = False\n\n"
                      "    def __init__(self, config):\n        pass\n\n"
                      "    def __call__(self, groups, anchor):\n        raise RuntimeError('the machine went away')\n")
    stopped, whole = tmp_path / "stopped.json", tmp_path / "whole.json"
    out = cli("testtime", config, "--estimators", "broken", "--output", str(stopped), "eval.limit=12",
              f"plugins=[{plugin}]")
    assert out.returncode != 0
    saved = json.loads(stopped.read_text())
    assert saved["partial"].startswith("rollouts only") and saved["accuracy"] == {}
    assert saved["settings"]["eval.limit"] == 12 and saved["settings"]["generation.num_generations"] == 8
    hotter = cli("testtime", config, "--extend", str(stopped), "--estimators", "single", "eval.limit=12",
                 "generation.temperature=0.7")
    assert hotter.returncode == 2 and "generation.temperature: saved 1.0, now 0.7" in hotter.stderr
    assert len(saved["examples"]) == 12 and all(len(ex["rollouts"]) == 8 for ex in saved["examples"])
    out = cli("testtime", config, "--extend", str(stopped), "--estimators", "single,majority_vote", "--output",
              str(stopped), "eval.limit=12")
    assert out.returncode == 0, out.stderr[-2000:]
    out = cli("testtime", config, "--estimators", "single,majority_vote", "--output", str(whole), "eval.limit=12")
    assert out.returncode == 0, out.stderr[-2000:]
    finished, fresh = json.loads(stopped.read_text()), json.loads(whole.read_text())
    assert "partial" not in finished and finished["accuracy"] == fresh["accuracy"] and finished["paired"] == fresh["paired"]
    assert finished["settings"] == fresh["settings"] == saved["settings"]

"""The answer-extraction chain (``cat.rewards.answers``): each rule on its own, the chain's order,
its configuration, the chain on real SmolLM2-135M-Instruct replies
(``fixtures/smollm2_replies.jsonl``, written by ``fixtures/make_smollm2_replies.py``), and
``answer.form: number`` on real Qwen2.5-Coder-0.5B rollouts from the LoRA chain_sum runs, the
label-free arms' hacks among them (``fixtures/qwen05_chain_sum_rollouts.jsonl``: every row of
``samples.jsonl`` of ``results/qwen05_lora_17`` and ``results/qwen05_lora_17_seed1``)."""

import json
import math
import re
from collections import Counter
from pathlib import Path

import pytest

from cat.config import config_from_tree, load_config
from cat.errors import ConfigError
from cat.rewards import REWARDS, RewardSettings
from cat.rewards.answers import (
    ANSWER_RULES,
    DEFAULT_RULES,
    AnswerChain,
    Extraction,
    answer_phrase,
    boxed,
    equals_end,
    extraction_metrics,
    is_number,
    last_number,
    register_answer_rule,
)
from cat.teacher.diagnostics import answer_diagnostics
from cat.teacher.estimators import build_estimator
from cat.types import Completion, Group, GroupScore, Prompt, Reference

REPLIES = [json.loads(line) for line in
           (Path(__file__).parent / "fixtures" / "smollm2_replies.jsonl").read_text().splitlines()]
QWEN_ROLLOUTS = [json.loads(line) for line in
                 (Path(__file__).parent / "fixtures" / "qwen05_chain_sum_rollouts.jsonl").read_text().splitlines()]


def group(texts, gold=None):
    prompt = Prompt(index=0, text="q", messages=({"role": "user", "content": "q"},), gold=gold)
    return Group(prompt=prompt, prompt_ids=(1,), completions=tuple(
        Completion(text=t, token_ids=(1,), logprobs=(0.0,), finish_reason="stop") for t in texts))


@pytest.mark.parametrize("text,expected", [
    ("so \\boxed{41}.", "41"),
    ("\\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("The answer is 41.", None),
])
def test_boxed(text, expected):
    assert boxed(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("The answer is 41.", "41"),
    ("So the final answer is: **41**", "41"),
    ("**Answer:** $41$", "41"),
    ("**Answer**: 41", "41"),
    ("Answer: 14 + 27 = 41", "41"),
    ("The answer is 41 apples.", "41"),
    ("The answer is 41, which is odd.", "41"),
    ("The answer is \\frac{1}{2}.", "\\frac{1}{2}"),
    ("The answer is \\text{Monday}.", "\\text{Monday}"),
    ("The answer is B.", "B"),
    ("The answer is:\n\n41", "41"),
    ("The answer is $\\boxed{41}$", "41"),
    ("The answer is 40. Wait, the answer is 41.", "41"),  # the last phrase counts
    ("Answer: 5\nThe answer is not clear.", "5"),  # a phrase followed by prose gives nothing
    ("The answer is not obvious. Let me add 2 and 2.", None),
    ("I will answer this question with 5 apples", None),  # "answer" without is / : / =
    ("The answers: 4 and 5", None),
    ("14 + 27 = 41", None),
    ("The answer to this classic math problem is 144.", "144"),
    ("Your final answer is exactly 31.", "31"),
    ("So the answer is indeed 0.", "0"),  # SmolLM2, 'Calculate 0 + 0.'
    ('The answer is "0.1"', "0.1"),
    ("The solution is: 78 + 51 = 139.", None),  # only "answer" phrases
    ("The answer is 2 * 4.", "2 * 4"),  # an expression, not its first number
    ("Your answer is correct, but let me explain.", None),  # a verdict, not an answer
    ("The result is the absolute value of 92, which is 1.", None),
    ("This is the result of 51 + 99.", None),
    # Qwen2.5-Coder-0.5B on chain_sum, quoting the problem (its = is not the answer's)
    ('The final answer to the arithmetic problem "12 - 98 = " is -86.', "-86"),
    ('The final answer to the arithmetic problem "7 - 3 - 6 = 7 - 3 - 6" is 0.', "0"),
    ("The final answer to the arithmetic problem 62 - 18 + 43 + 43 is \\(\\boxed{131}\\).", "131"),
    # and cut off at max_new_tokens, or prose (Qwen2.5-Coder-0.5B, results/qwen05_lora_17)
    ("Therefore, the final answer is \\(\\", None),
    ("The final answer is expressed as a single number, without any intermediate steps.", None),
    ("The answer is below:\n42", None),  # an introduction, not an answer (the chain reads 42 later)
])
def test_answer_phrase(text, expected):
    assert answer_phrase(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("14 + 27 = 41", "41"),
    ("So, 14 + 27 = 41.", "41"),
    ("$14 + 27 = 41$", "41"),
    ("14 + 27 = **41**", "41"),
    ("\\[ 14 \\times 2 = 28 \\]", "28"),
    ("the difference is 90 - 45 = -45\n", "-45"),
    ("14 + 27 = 41\n\nThis is a classic example.", "41"),  # ends its line
    ("51 + 99 = 150, which is the result of 51 + 99.", "150"),  # ends its clause
    ("So, 62 - 44 equals 12.", "12"),
    ("it is equal to 7.", "7"),
    ("1 + 1 = 2. Then 2 + 2 = 4.\nDone.", "4"),  # the last one
    ("14 + 27 = 41 apples", None),
    ("result = 2 * 4", None),  # not a value: the expression goes on
    ("67 + 35 = 92 (the absolute value of 92)", None),
    ("x = y", None),
])
def test_equals_end(text, expected):
    assert equals_end(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("I think 41 or maybe 42.", "42"),
    ("27-14", "14"),  # a minus between numbers is not a sign
    ("the total is -5", "-5"),
    ("1,234 apples", "1,234"),
    ("3.5 cm, then 7/8", "7/8"),
    ("it costs $3.50.", "3.50"),
    ("the 41st time", None),
    ("x2 and y3", None),
    ("no numbers", None),
])
def test_last_number(text, expected):
    assert last_number(text) == expected


def test_regex_rule_takes_its_last_match_and_group_one():
    chain = AnswerChain(("regex",), regex=r"RESULT: (\d+)")
    assert chain.extract("RESULT: 4 ... RESULT: 5 done") == Extraction("5", "regex")
    assert chain("no result") is None
    assert AnswerChain(("regex", "boxed"), regex=r"#+\s*\S+")("x #### 42") == "#### 42"


def test_the_chain_takes_the_first_rule_that_answers():
    chain = AnswerChain()
    assert chain.rules == DEFAULT_RULES == ("boxed", "answer_phrase", "equals_end", "last_number")
    assert chain.extract("\\boxed{3}. The answer is 4 = 5") == Extraction("3", "boxed")
    assert chain.extract("The answer is 4, so 2 + 3 = 5") == Extraction("4", "answer_phrase")
    assert chain.extract("2 + 3 = 5") == Extraction("5", "equals_end")
    assert chain.extract("2 and 3 make five, not 6 or 7, I think") == Extraction("7", "last_number")
    assert chain.extract("") == chain.extract("no idea") == Extraction(None, None)
    paper = AnswerChain(("boxed",))
    assert paper("The answer is 4") is None and paper("\\boxed{4}") == "4"
    assert chain.extract("2 + 3 = 5") is chain.extract("2 + 3 = 5")  # memoised


def test_chain_configuration_errors_name_what_works():
    with pytest.raises(ConfigError, match=r"unknown answer rule 'boxd'.*'boxed'.*'last_number'.*'regex'"):
        AnswerChain(("boxd",))
    with pytest.raises(ConfigError, match="names a rule twice"):
        AnswerChain(("boxed", "boxed"))
    with pytest.raises(ConfigError, match="lists 'regex' but answer.regex is not set"):
        AnswerChain(("regex",))
    with pytest.raises(ConfigError, match="does not list 'regex'"):
        AnswerChain(("boxed",), regex="x")
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        AnswerChain(("regex",), regex="(")
    with pytest.raises(ConfigError, match=r"answer.regex '\(' is not a valid regular expression"):
        load_config(None, ["answer.rules=[regex]", "answer.regex=("])
    with pytest.raises(ConfigError, match="answer.rules is empty"):
        load_config(None, ["answer.rules=[]"])
    config = config_from_tree({"answer": {"rules": ["regex", "boxed"], "regex": "ANSWER: (\\S+)"}})
    assert AnswerChain.from_config(config.answer)("ANSWER: 7") == "7"
    with pytest.raises(ConfigError, match="unknown answer rule 'nope'"):
        from cat.run.trainer import preflight

        preflight(load_config(None, ["answer.rules=[boxed, nope]"]))


def test_a_plugin_rule_joins_the_chain():
    @register_answer_rule("first_word_test")
    def first_word(text):
        return text.split()[0] if text.split() else None

    try:
        assert AnswerChain(("boxed", "first_word_test")).extract("seven apples") == Extraction("seven", "first_word_test")
        with pytest.raises(ValueError, match="already registered"):
            register_answer_rule("first_word_test")(lambda text: None)
        with pytest.raises(ValueError, match="taken by the rule answer.regex configures"):
            register_answer_rule("regex")(lambda text: None)
    finally:
        ANSWER_RULES._items.pop("first_word_test")


def test_extraction_metrics_count_each_rule():
    read = [Extraction("1", "boxed"), Extraction("2", "last_number"), Extraction(None), Extraction("4", "boxed")]
    assert extraction_metrics("rollout", read, ["boxed", "last_number", "answer_phrase"]) == {
        "answer/rollout_rate": 0.75, "answer/rollout_rule/boxed": 0.5, "answer/rollout_rule/last_number": 0.25,
        "answer/rollout_rule/answer_phrase": 0.0}
    assert extraction_metrics("reference", [Extraction("7")], ["boxed"]) == {  # a gold label: no rule read it
        "answer/reference_rate": 1.0, "answer/reference_rule/boxed": 0.0}


def test_rewards_estimators_and_diagnostics_read_with_the_configured_chain():
    texts = ["The answer is 4.", "2 + 3 = 5", "\\boxed{5}", "I give up"]
    g = group(texts, gold="5")
    default, paper = load_config(None), load_config(None, ["answer.rules=[boxed]"])
    [majority] = build_estimator(default, "majority_vote")([g])
    assert (majority.answer, majority.meta["votes"], majority.answer_rule) == ("5", 2, "equals_end")
    [single] = build_estimator(default, "single")([g])
    assert (single.answer, single.answer_rule) == ("4", "answer_phrase")
    [boxed_only] = build_estimator(paper, "single")([g])
    assert boxed_only.answer is None
    reward = REWARDS.get("math_equivalence")(RewardSettings.from_config(default))
    assert reward(g, majority).rewards == (0.0, 1.0, 1.0, 0.0)
    assert REWARDS.get("math_equivalence")(RewardSettings.from_config(paper))(g, majority).rewards == (0.0, 0.0, 1.0, 0.0)
    diag = answer_diagnostics([g], [majority], [GroupScore((0.0, 1.0, 1.0, 0.0))], **diagnosed(default))
    assert diag["answer/rollout_rate"] == 0.75 and diag["answer/reference_rate"] == 1.0
    assert {k: v for k, v in diag.items() if "_rule/" in k and v} == {
        "answer/rollout_rule/boxed": 0.25, "answer/rollout_rule/answer_phrase": 0.25,
        "answer/rollout_rule/equals_end": 0.25, "answer/reference_rule/equals_end": 1.0}
    assert diag["diag/rollout_accuracy"] == 0.5 and diag["diag/reference_accuracy"] == 1.0
    gold = build_estimator(default, "gold")([g])
    diag = answer_diagnostics([g], gold, [GroupScore((0.0, 1.0, 1.0, 0.0))], **diagnosed(default))
    assert diag["answer/reference_rate"] == 1.0 and not any(diag[f"answer/reference_rule/{r}"] for r in DEFAULT_RULES)
    assert "diag/reference_is_last" not in diag  # only a synthesis can copy the last response it read


def diagnosed(config) -> dict:
    """What ``answer_diagnostics`` is given for a run of ``config`` (as the trainer gives it)."""
    return {"answer_of": AnswerChain.from_config(config.answer), "mode": config.reward.mode,
            "timeout_s": config.reward.timeout_s}


def test_diagnostics_say_how_often_a_synthesis_has_the_last_rollouts_answer():
    """Label-free: a teacher that copies the last response it read shows as reference_is_last
    near 1 against reference_is_other."""
    groups = [group(["\\boxed{4}", "\\boxed{5}", "\\boxed{5}", "\\boxed{7}"]),
              group(["\\boxed{1}", "\\boxed{2}", "\\boxed{2}", "\\boxed{2}"])]
    refs = [Reference(text="The answer is 7.", answer="7", source="synthesis"),
            Reference(text="The answer is 2.", answer="2", source="synthesis")]
    diag = answer_diagnostics(groups, refs, [GroupScore(None)] * 2, **diagnosed(load_config(None)))
    assert diag["diag/reference_is_last"] == 1.0 and diag["diag/reference_is_other"] == pytest.approx((0 + 2 / 3) / 2)
    # anchor.orders: the chosen synthesis read another rollout last (meta last_read), and that one counts as last
    rotated = [Reference(text="The answer is 4.", answer="4", source="synthesis", meta={"last_read": 0}),
               Reference(text="The answer is 1.", answer="1", source="synthesis", meta={"last_read": 2})]
    diag = answer_diagnostics(groups, rotated, [GroupScore(None)] * 2, **diagnosed(load_config(None)))
    assert diag["diag/reference_is_last"] == 0.5 and diag["diag/reference_is_other"] == pytest.approx((0 + 1 / 3) / 2)
    # diversity, label-free: answers {4, 5, 5, 7} are 3 classes; {1, 2, 2, 2} are 2
    assert diag["diag/distinct_answers"] == 2.5
    h = lambda *p: -sum(x * math.log(x) for x in p)  # noqa: E731
    assert diag["diag/answer_entropy"] == pytest.approx((h(0.25, 0.5, 0.25) + h(0.25, 0.75)) / 2)
    same = answer_diagnostics([group(["\\boxed{0.5}", "\\boxed{\\frac{1}{2}}", "no answer"])],
                               [Reference(text="", answer=None, source="synthesis")], [GroupScore(None)], **diagnosed(load_config(None)))
    assert same["diag/distinct_answers"] == 1 and same["diag/answer_entropy"] == 0  # equivalent answers are one


# ---- real SmolLM2-135M-Instruct replies ---------------------------------------------------------
# 320 rollouts (80 questions: one greedy reply, three at T=0.7) and 80 anchor references. The
# model (134.5M parameters, 4-bit) is wrong about most sums, so these test reading, not arithmetic:
# the default chain's answers equal gold on 42 rollouts and 8 references.


def _read(rows, chain) -> int:
    return sum(chain(r["text"]) is not None for r in rows)


ROLLOUTS = [r for r in REPLIES if r["kind"] == "rollout"]
REFERENCES = [r for r in REPLIES if r["kind"] == "reference"]


def test_the_fixture_is_what_its_script_says():
    kinds = Counter((r["kind"], r["decoding"], r["boxed_instruction"]) for r in REPLIES)
    assert kinds == {("rollout", "greedy", False): 40, ("rollout", "greedy", True): 40,
                     ("rollout", "T=0.7", False): 120, ("rollout", "T=0.7", True): 120,
                     ("reference", "anchor greedy", False): 40, ("reference", "anchor greedy", True): 40}
    assert len({r["question"] for r in REPLIES}) == 80
    assert all(r["gold"] == str(eval(r["question"].split("?")[0].removeprefix("What is "))) for r in REPLIES)


def test_the_chain_scores_at_least_nine_in_ten_smollm2_replies():
    """The issue's bar: at least 90% of rollouts and of references scorable with the default chain
    (measured: 315 of 320 rollouts, 73 of 80 references; the references it cannot read name no
    number at all, such as "The first response is correct. The second response is incorrect.")."""
    chain = AnswerChain()
    assert _read(ROLLOUTS, chain) == 315 and _read(REFERENCES, chain) == 73
    for instruction in (False, True):
        rollouts = [r for r in ROLLOUTS if r["boxed_instruction"] is instruction]
        assert _read(rollouts, chain) / len(rollouts) >= 0.9


def test_each_rule_alone_and_the_rule_that_fired_on_smollm2_replies():
    """What each rule reads on its own, and which rule gave the chain's answers (the figures
    in docs/answers.md). The box alone reads 6 of 320 rollouts, though half of them were asked for one."""
    for rows, alone, fired in (
        (ROLLOUTS, {"boxed": 6, "answer_phrase": 51, "equals_end": 228, "last_number": 315},
         {"equals_end": 193, "last_number": 67, "answer_phrase": 49, "boxed": 6, None: 5}),
        (REFERENCES, {"boxed": 0, "answer_phrase": 22, "equals_end": 37, "last_number": 73},
         {"equals_end": 26, "last_number": 25, "answer_phrase": 22, None: 7}),
    ):
        assert {name: _read(rows, AnswerChain((name,))) for name in DEFAULT_RULES} == alone
        assert Counter(AnswerChain().extract(r["text"]).rule for r in rows) == fired


# Replies read by hand (index into the fixture, its opening, the answer a person would name, None
# where it names none): the 30 drawn by random.Random(1).sample(range(400), 30), and two more.
HAND_READ = [
    (1, "To add 51 and 99, we need to perform", "150"),
    (14, "The disagreement and how you resolved", None),
    (32, "In mathematics, when you have a sum of 38", "57"),
    (48, "To find 79 + 20 + 21, we need to follow", "49"),  # "So, the answer is: 182 + 21 = 49."
    (52, "14 + 95 is equal to 14 + 9, which equals 23", "23"),
    (60, "To solve this problem, we need to first calculate 62 - 44", "12"),
    (68, "15 is equivalent to 7 multiplied by itself", None),
    (107, "Two and 80 is calculated by adding 2 to 80", "80"),
    (117, "The answer to this classic math problem is 144", "144"),
    (130, "To add 20 and 71, we need to combine", "181"),
    (136, "59 - 13 equals 18", "18"),
    (162, "To convert 71 - 44 to a mixed number", "116"),
    (194, "Sammy: (1) 4 * 3 = 12", "12"),  # then a copied "### Response 4" that says 16
    (199, "The answer is 278", "278"),
    (221, "To solve this problem, we need to combine the numbers 47 and 76", "23"),
    (228, "You would need to multiply 19 by 66 to get 1081", "1081"),
    (230, "38 + 19 = 57", "57"),
    (241, "0.1\\boxed{}", "0.1"),  # 'The answer is "0.1\\boxed{}"'
    (249, "141", "141"),
    (253, "14 + 95 = 14 + 27 = 31", "31"),  # "Your final answer is exactly 31."
    (291, "2 * 4 = 8", "8"),
    (302, "1110.87", "1110.87"),
    (311, "Well, in this context, 65 - 44 is a mix of 6 and 4", None),
    (333, "To perform the calculation, I will need", "222"),
    (356, "17 + 72 = 17 * 7 = 114", "114"),
    (369, "10 * 20 = 200", "200"),
    (389, "This is a classic multi-step problem", "1"),  # "Finally, divide 11 by 11, which gives 1."
    (390, "4 * 3 = 12\n\nYour answer is correct", "12"),
    (391, "4 * 3 = 12\n\nYour answer within", "12"),
    (392, "The answer to 4 * 3 is 12", "12"),
    (4, "The disagreement and how you resolved them is:\n\nThe first response is correct.", None),
    (91, "2 * 4 = 8\n\nIn Python", "8"),  # then "result = 2 * 4" and "# Output: 8"
]
# Where the chain reads otherwise, and why.
MISREAD = {
    14: "prose with numbers in it: last_number reads '5' from 'multiples of both 3 and 5'",
    68: "prose: last_number reads '7'",
    302: "a bare first-line answer followed by prose: last_number reads '1' from '1 decimal'",
    311: "prose: last_number reads '4'",
    389: "a reference cut off in a copied '### Response 6': last_number reads '6'",
}


def test_extracted_answers_match_a_human_reading():
    """27 of 32 hand-read replies agree; the five that do not are prose or a cut-off copy, where
    only the last-number fallback answers."""
    chain = AnswerChain()
    assert len(HAND_READ) == 32
    disagree = {}
    for index, opening, expected in HAND_READ:
        assert REPLIES[index]["text"].startswith(opening), (index, REPLIES[index]["text"][:80])
        if chain(REPLIES[index]["text"]) != expected:
            disagree[index] = chain(REPLIES[index]["text"])
    assert set(disagree) == set(MISREAD), disagree


@pytest.mark.parametrize("answer", [
    "41", "-3", "+7", "1,000", "1{,}000", "1\\,000", "2.5", ".5", "-.5", "3.", "3/4", "\u22125",
    "\\frac{12}{7}", "-\\frac{12}{7}", "\\frac{-1}{2}", "\\dfrac{1}{2}", "\\dfrac12", "\\frac12",
    "$5", "\\$5", "-\\$5", "41 apples", "41 \\text{ apples}", "5\\ \\text{m}", "5~\\text{cm}", "5\\;\\text{m}",
    "5 \\text{cm}^2", "5 \\mathrm{cm}^{2}", "50 km/h", "50\\%", "90^\\circ", "\\(41\\)", "41.",
    "\\text{5}", "\\mathbf{5}", "\\textbf{5}", "**5**", '"5"', "5,"])
def test_a_number_is_a_number(answer):
    assert is_number(answer)


@pytest.mark.parametrize("answer", ["67 + 75 + 85", "5 - 9", "2 * 4", "x = 5", "2 = 0", "3 + 4 - 7 = 0",
                                    "\\frac{a}{b}", "Monday", "", "1,00", "- 3 - 0 - 3", "5x", "3 y", "2 pi",
                                    "1e5", "\\text{The final answer is } 15 - 43 - 75"])
def test_an_expression_or_an_equation_is_not(answer):
    assert not is_number(answer)


def test_the_number_form_refuses_what_the_first_rule_found_without_trying_the_next():
    chain = AnswerChain(form="number")
    restated = "The final answer to the arithmetic problem 3 - 3 - 0 - 3 is:\n\n\\(\\boxed{3 - 3 - 0 - 3}\\)"
    assert chain.extract(restated) == Extraction(None, refused="3 - 3 - 0 - 3")  # not last_number's "3"
    assert AnswerChain().extract(restated) == Extraction("3 - 3 - 0 - 3", "boxed")
    assert chain.extract("The final answer is \\(\\boxed{-3}\\).") == Extraction("-3", "boxed")
    assert chain.extract("no number here") == Extraction(None)
    assert chain("The answer is below:\n42") == "42"
    assert extraction_metrics("rollout", [chain.extract(restated), chain.extract("\\boxed{4}")], ["boxed"]) == {
        "answer/rollout_rate": 0.5, "answer/rollout_refused": 0.5, "answer/rollout_rule/boxed": 0.5}
    with pytest.raises(ConfigError, match=r"answer.form 'numeric' is not one of \['any', 'number'\]"):
        AnswerChain(form="numeric")
    with pytest.raises(ConfigError, match=r"answer.form.*'any' or 'number'"):
        load_config(None, ["answer.form=numeric"])


def test_the_number_form_refuses_exactly_the_hacks_in_real_qwen_rollouts():
    """340 rollouts of Qwen2.5-Coder-0.5B (LoRA, chain_sum, 17 steps; seeds 0 and 1; CaT, TTRL and
    gold): the number form refuses 31 answers, every one an expression or an equation (the problem
    restated, "2 = 0"), none from the gold arm; every answer it keeps is the default chain's."""
    default, number = AnswerChain(), AnswerChain(form="number")
    refused = Counter()
    for row in QWEN_ROLLOUTS:
        kept = number.extract(row["completion"])
        if kept.refused is None:
            assert kept == default.extract(row["completion"]), row["completion"]
            continue
        assert re.search(r"\d\s*[-+=]\s*\d", kept.refused), kept.refused
        refused[row["arm"], row["seed"]] += 1
    assert len(QWEN_ROLLOUTS) == 340
    assert refused == {("ttrl", 1): 25, ("cat", 0): 4, ("ttrl", 0): 2}
    # TTRL seed 1 from step 12 on: every rollout boxes the problem itself ("\\boxed{67 + 75 + 85}")
    late = [row for row in QWEN_ROLLOUTS if (row["arm"], row["seed"]) == ("ttrl", 1) and row["step"] >= 12]
    assert len(late) == 24 and all(number(row["completion"]) is None for row in late)


def test_under_the_number_form_a_restated_problem_earns_nothing_and_gets_no_vote():
    """A real TTRL group (seed 1, step 13): all four rollouts box "67 + 75 + 85". The default chain
    votes for that expression and rewards all four; under the number form the group has no
    reference, so it is unscored, not rewarded."""
    rows = [row for row in QWEN_ROLLOUTS if (row["arm"], row["seed"], row["step"]) == ("ttrl", 1, 13)]
    g = group([row["completion"] for row in rows], gold=rows[0]["gold"])
    default, number = load_config(None), load_config(None, ["answer.form=number"])
    [vote] = build_estimator(default, "majority_vote")([g])
    assert vote.answer == "67 + 75 + 85"
    assert REWARDS.get("math_equivalence")(RewardSettings.from_config(default))(g, vote).rewards == (1.0, 1.0, 1.0, 1.0)
    [vote] = build_estimator(number, "majority_vote")([g])
    assert vote.answer is None
    assert REWARDS.get("math_equivalence")(RewardSettings.from_config(number))(g, vote).rewards is None
    diag = answer_diagnostics([g], [vote], [GroupScore(None)], **diagnosed(number))
    assert diag["answer/rollout_refused"] == 1.0 and diag["answer/rollout_rate"] == 0.0
    [single] = build_estimator(number, "single")([g])  # a reference that restates the problem is none
    assert single.answer is None and single.meta["answer_refused"] == "67 + 75 + 85"
    diag = answer_diagnostics([g], [single], [GroupScore(None)], **diagnosed(number))
    assert diag["answer/reference_refused"] == 1.0 and diag["answer/reference_rate"] == 0.0

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import cat.rewards.math as math_answers
from cat.rewards.math import answers_match, boxed_answer


@pytest.mark.parametrize("text,expected", [
    ("so the answer is \\boxed{42}.", "42"),
    ("\\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{\\left(1, \\frac{2}{3}\\right]}", "\\left(1, \\frac{2}{3}\\right]"),
    ("\\fbox{7}", "7"),
    ("\\boxed 5 is it", "5"),
    ("no box here", None),
    ("\\boxed{unclosed", None),
    ("\\boxed{}", None),
    ("", None),
])
def test_boxed_answer(text, expected):
    assert boxed_answer(text) == expected


EQUIVALENT = [
    ("\\frac{1}{2}", "0.5"), ("\\dfrac{3}{4}", "3/4"), ("0.75", "\\frac34"), ("1,000", "1000"),
    ("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}"), ("(1,2]", "(1, 2]"), ("(-\\infty, 3)", "(-\\infty,3)"),
    ("\\{1,2\\}", "\\{2,1\\}"), ("5\\text{ cm}", "5"), ("90^\\circ", "90"), ("10\\%", "10"),
    ("\\$5", "5"), ("x=3", "3"), ("\\text{Evelyn}", "Evelyn"), ("B", "\\text{(B)}"), ("2\\pi", "2 \\pi"),
    ("-\\frac{1}{3}", "\\frac{-1}{3}"), ("3.0", "3"), ("\\frac{\\pi}{2}", "\\pi/2"), ("\\sqrt{8}", "2\\sqrt{2}"),
    ("x^2+2x+1", "(x+1)^2"), ("(-\\infty,2]\\cup[3,\\infty)", "(-\\infty, 2] \\cup [3, \\infty)"), ("\\text{Monday}", "Monday"),
    ("4\\%", "0.04"), ("\\dfrac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}"),
]
DIFFERENT = [
    ("\\frac{1}{2}", "2"), ("(1,2)", "[1,2]"), ("Evelyn", "Nevely"), ("Evelyn", "Eve"), ("3", "4"),
    ("\\sqrt{2}", "2"), ("x^2", "x^3"), ("0.333", "\\frac13"), ("-2", "2"), ("5", "5.0001"),
    ("\\text{Evelyn}", "\\text{Yvonne}"),
]


@pytest.mark.parametrize("a,b", EQUIVALENT)
def test_equivalent(a, b):
    assert answers_match(a, b)
    assert answers_match(b, a)


@pytest.mark.parametrize("a,b", DIFFERENT)
def test_different(a, b):
    assert not answers_match(a, b)


def test_strict_mode_is_normalised_string_equality():
    assert answers_match("\\dfrac{1}{2}", "\\frac{1}{2}", mode="strict")
    assert not answers_match("0.5", "\\frac{1}{2}", mode="strict")


def test_main_thread_timer_leaves_the_callers_timer_and_handler_as_they_were():
    def callers_handler(signum, frame):
        raise AssertionError("the caller's timer fired during the test")

    previous = signal.signal(signal.SIGALRM, callers_handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 30)
        assert answers_match("\\frac{2}{3}", "\\frac{4}{6}")
        left, _ = signal.setitimer(signal.ITIMER_REAL, 0)
        assert 20 < left <= 30 and signal.getsignal(signal.SIGALRM) is callers_handler
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_a_time_budget_is_required():
    with pytest.raises(ValueError):
        answers_match("\\frac12", "0.5", timeout_s=0)


def test_missing_answers_never_match():
    assert not answers_match(None, "1") and not answers_match("1", None) and not answers_match(" ", " ")


def test_pathological_expression_returns():
    """A tower of powers must not hang on the main thread: the comparison returns (False) in time."""
    code = ("from cat.rewards.math import answers_match;"
            "print(answers_match('9^{9^{9^{9^{9}}}}', '9^{9^{9^{9^{8}}}}', timeout_s=1))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in ("False", "True")


@pytest.mark.parametrize("text,expected", [
    ("\\boxed{(2, 2)} \\quad\\text{and}\\quad \\boxed{(6, 2)}", "(2, 2), (6, 2)"),
    ("so $x = \\boxed{3}$ and $y = \\boxed{4}$.", "3, 4"),
    ("\\[ y_1 = \\boxed{x+1} \\] and \\[ y_{2} = \\boxed{x-1} \\]", "x+1, x-1"),
    ("\\boxed{1},\\boxed{2},\\boxed{3}", "1, 2, 3"),
    ("\\boxed{1}\\boxed{2}", "1, 2"),
    ("\\boxed{3} or \\boxed{-3}", "3, -3"),
    ("\\boxed{(3, 3)} \\text{ for part (a) and } \\boxed{(1, 1)}", "(3, 3), (1, 1)"),
    ("(i) \\boxed{4} \\quad (ii) \\boxed{5}", "4, 5"),
    ("\\boxed{1} papers and \\boxed{2} bins", "1, 2"),
    ("x = \\boxed{3}\ny = \\boxed{4}", "3, 4"),
    ("\\boxed{\\boxed{1}} and \\boxed{2}", "1, 2"),
    ("**Final Answer** \\boxed{7} \\quad \\boxed{7}", "7"),
])
def test_boxes_joined_by_connectors_form_one_answer(text, expected):
    assert boxed_answer(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("The interest is $0.04 \\cdot 10000/2 = \\boxed{200}$. Then $10200 \\cdot 0.05 / 2 = \\boxed{255}$", "255"),
    ("First \\boxed{12}. So the answer is \\boxed{13}", "13"),
    ("\\boxed{1} no no no no no \\boxed{2}", "2"),
    ("\\boxed{2} and so 2+3 = \\boxed{5}", "5"),
    ("\\boxed{3} \\cdot \\boxed{4}", "4"),
    ("we get \\boxed{5}.\n\nand then \\boxed{6}", "6"),
    ("\\boxed{1} but \\boxed{2}", "2"),
    ("the side is \\boxed{2}, so \\boxed{4}", "4"),
    ("\\boxed{3} and hence \\boxed{9}", "9"),
    ("\\boxed{1} and \\boxed{2", None),
    ("\\boxed{} and \\boxed{2}", "2"),
])
def test_an_earlier_box_in_the_reasoning_is_not_part_of_the_answer(text, expected):
    assert boxed_answer(text) == expected


def test_a_split_answer_compares_as_the_set_it_forms():
    both = boxed_answer("solutions: \\boxed{(2, 2)} \\quad\\text{and}\\quad \\boxed{(6, 2)}")
    assert answers_match(both, "(2, 2), (6, 2)") and answers_match(both, "(6, 2), (2, 2)")
    assert not answers_match(both, "(2, 2)") and not answers_match(both, "(2, 2), (6, 3)")
    assert not answers_match("2", boxed_answer("\\boxed{1} or \\boxed{2}"))  # hedging earns nothing
    assert answers_match(boxed_answer("\\boxed{k = 45} \\quad \\text{and} \\quad \\boxed{n = 2}"), "k = 45, n = 2")


@pytest.mark.parametrize("a,b,same", [
    ("0,5", "0.5", True), ("0,5", "\\frac{1}{2}", True), ("1000,99", "1000.99", True), ("1,22", "1.22", True),
    ("-0,25", "-\\frac14", True), ("2,5\\text{ cm}", "2.5", True), ("x = 0,75", "\\frac34", True),
    ("0,500", "0.5", True),    # a zero integer part is never followed by a thousands separator
    ("1,000", "1000", True),   # three digits after the comma: a thousands separator ...
    ("1,500", "1.5", False),   # ... even where a European writer meant 1.5 (math-verify reads it so too)
    ("1,000", "1", False), ("0,5", "5", False), ("0,5", "0.6", False),
    ("(1,2)", "1.2", False),   # brackets make a tuple or an interval
    ("1,2", "1, 2", True), ("1,2", "\\{2, 1\\}", True), ("1,2", "2,1", True),  # against a list: a list
    ("6,8", "6 \\text{ and } 8", True), ("6,8", "6.8 \\text{ or } 7", False),
])
def test_decimal_comma(a, b, same):
    assert answers_match(a, b) is same
    assert answers_match(b, a) is same


def test_numeric_fast_path_agrees_with_math_verify():
    """The shortcut for plain numbers decides only where math-verify is certain to agree."""
    pairs = [("85", "86"), ("85", "85"), ("007", "7"), ("-0", "0"), ("-5", "5"), ("3", "3.0"), ("2.50", "2.5"),
             ("0.1", "0.2"), ("1.0000001", "1"), ("1.00001", "1.00003"), ("-3.5", "-3.50001"),
             ("123456789012345678", "123456789012345679"), ("0.333333333333333333", "0.333333333333333334")]
    for a, b in pairs:
        fast = math_answers._numeric_verdict(a, b)
        if fast is not None:
            assert fast is math_answers._verify_in_process(a, b, 5.0), (a, b)
    assert math_answers._numeric_verdict("85", "86") is False
    assert math_answers._numeric_verdict("0.1", "0.2") is False
    assert math_answers._numeric_verdict("1.0000001", "1") is None  # within rounding: left to sympy


# Every parametrized case of Math-Verify's own tests (huggingface/Math-Verify@5d148cf, tests/
# test_all.py, test_numina_cases.py, test_open_thoughts.py, test_boxed.py, test_strict.py; Apache-2.0),
# as data: (pred text, gold text, expected verdict). A side with a box goes through boxed_answer;
# a side without one is itself the answer (its $...$ dropped), as a dataset's gold label is.
MATH_VERIFY_CASES = [json.loads(line) for line in
                     (Path(__file__).parent / "fixtures" / "math_verify_cases.jsonl").read_text().splitlines()]
NOT_OURS = {  # cases we are not meant to agree on, and why
    "test_all.py::test_latex_notation#1": "prose answer with no box (we grade boxed answers)",
    "test_all.py::test_latex_notation#2": "prose answer with no box",
    "test_all.py::test_latex_notation#6": "prose answer with no box (upstream expects a miss; we match 9)",
    "test_all.py::test_latex_notation#8": "prose answer with no box",
    "test_all.py::test_relations_math#7": "prose answer with no box",
    "test_all.py::test_matrix_extraction#5": "prose answer with no box",
    "test_all.py::test_complex_math_expressions#7": "needs math-verify precision=2",
    "test_all.py::test_complex_math_expressions#13": "needs math-verify precision=2",
    "test_all.py::test_math_extraction_additional_cases#17": "final answer unboxed; its boxes are intermediate steps",
    "test_all.py::test_set_rel_assymetry#2": "needs allow_set_relation_comp=True",
    "test_numina_cases.py::test_numina_cases#24": "gold's box never closes",
    "test_boxed.py::test_boxed#0": "boxes joined by '++++++', which we do not read as a list",
    "test_strict.py::test_strict_variable_comparison#1": "needs strict=False",
}

# Missed while only the last box counted and "0,5" read as the list 0, 5.
SPLIT_BOXES = {f"test_open_thoughts.py::test_open_thoughts#{i}" for i in (0, 12, 13, 14, 16, 18, 19, 23, 24, 25, 26, 27)}
SPLIT_BOXES |= {"test_numina_cases.py::test_numina_cases#12", "test_numina_cases.py::test_numina_cases#13",
                "test_all.py::test_math_extraction_additional_cases#27",
                "test_all.py::test_math_extraction_additional_cases#28"}
DECIMAL_COMMAS = {"test_all.py::test_number_extraction#5", "test_all.py::test_number_extraction#6"}


def _answer_of(text):
    if re.search(r"\\(?:boxed|fbox)", text):
        return boxed_answer(text)
    text = text.strip()
    for opening, closing in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if text.startswith(opening) and text.endswith(closing) and len(text) >= len(opening) + len(closing):
            return text[len(opening):len(text) - len(closing)].strip()
    return text


def test_math_verify_real_cases():
    assert len(MATH_VERIFY_CASES) == 254
    missed = {c["id"] for c in MATH_VERIFY_CASES
              if answers_match(_answer_of(c["pred"]), _answer_of(c["gold"])) != c["expected"]}
    assert missed == set(NOT_OURS)  # 241 of 254 agree; 223 did before the cases below were fixed
    assert not missed & (SPLIT_BOXES | DECIMAL_COMMAS)


# Off the main thread: the same verdicts, a hard time limit, no stray processes.
THREAD_PAIRS = [("\\frac{1}{2}", "0.5"), ("\\sqrt{8}", "2\\sqrt{2}"), ("(1,2]", "(1, 2]"), ("\\frac{1}{2}", "2"),
                ("x^2+2x+1", "(x+1)^2"), ("(1,2)", "[1,2]"), ("0.333", "\\frac13"), ("4\\%", "0.04")]


def _verdicts():
    return [answers_match(a, b) for a, b in THREAD_PAIRS]


def _children():
    """Live child processes of this process (Linux)."""
    pids = set()
    for task in Path("/proc/self/task").iterdir():
        try:
            pids |= {int(p) for p in (task / "children").read_text().split()}
        except FileNotFoundError:  # a thread (a pool's, just done) exited while we looked
            continue
    alive = set()
    for p in pids:
        try:
            if Path(f"/proc/{p}/stat").read_text().split()[2] != "Z":
                alive.add(p)
        except FileNotFoundError:  # reaped meanwhile
            continue
    return alive


def _workers():
    return {w.process.pid for w in math_answers._POOL.live}


def _not_workers():
    """Children this process had for other reasons (a multiprocessing resource tracker or an
    engine an earlier test in this pytest worker started): not the pool's to clean up."""
    return _children() - _workers()


def forget_verdicts():
    """Both memos: the whole comparison's and math-verify's."""
    math_answers.answers_match.cache_clear()
    math_answers._verify.cache_clear()


def test_other_threads_get_the_same_verdicts_as_the_main_thread():
    forget_verdicts()
    on_main = _verdicts()
    assert on_main == [True, True, True, False, True, False, False, True]
    forget_verdicts()
    in_thread = []
    thread = threading.Thread(target=lambda: in_thread.extend(_verdicts()))
    thread.start()
    thread.join(timeout=120)
    assert in_thread == on_main
    forget_verdicts()
    with ThreadPoolExecutor(max_workers=3) as pool:
        in_pool = list(pool.map(lambda pair: answers_match(*pair), THREAD_PAIRS))
    assert in_pool == on_main
    assert math_answers._POOL is not None and math_answers._POOL.live  # the workers did the work


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="lists child processes through /proc")
def test_pathological_input_off_the_main_thread_returns_in_time():
    with ThreadPoolExecutor(max_workers=1) as pool:
        assert pool.submit(answers_match, "\\frac{3}{4}", "0.75").result()  # a worker is up
        others = _not_workers()
        started = time.monotonic()
        verdict = pool.submit(answers_match, "2^{2^{2^{2^{2^{2}}}}}", "5", timeout_s=1).result()  # sympy: ~forever
        elapsed = time.monotonic() - started
    assert verdict is False
    assert elapsed < 1 + math_answers._KILL_GRACE_S + 1.5
    assert _children() - others <= _workers()  # the killed worker is gone, not left behind


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="lists child processes through /proc")
def test_a_worker_that_stops_answering_is_killed_and_replaced():
    """SIGSTOP stands in for a computation that never reaches a signal check (C code holding the GIL)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        assert pool.submit(answers_match, "\\frac{5}{8}", "0.625").result()
        stuck = math_answers._POOL.idle[-1]
        others = _not_workers()
        os.kill(stuck.process.pid, signal.SIGSTOP)
        started = time.monotonic()
        assert pool.submit(answers_match, "\\frac{7}{8}", "0.875", timeout_s=0.5).result() is False
        elapsed = time.monotonic() - started
        assert stuck.process.returncode == -signal.SIGKILL and stuck not in math_answers._POOL.live
        assert pool.submit(answers_match, "\\frac{3}{8}", "0.375").result()  # a fresh worker
    assert 0.5 <= elapsed < 0.5 + math_answers._KILL_GRACE_S + 1.0
    assert stuck.process.pid not in _children() and _children() - others <= _workers()


def _score_in_forked_child(queue):
    with ThreadPoolExecutor(max_workers=1) as pool:
        in_thread = pool.submit(answers_match, "\\frac{1}{4}", "0.25").result()
    queue.put((answers_match("\\frac{1}{5}", "0.2"), in_thread, {w.process.pid for w in math_answers._POOL.live}))


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_a_forked_child_starts_its_own_workers():
    import multiprocessing

    with ThreadPoolExecutor(max_workers=1) as pool:
        assert pool.submit(answers_match, "\\frac{1}{8}", "0.125").result()
    parents = {w.process.pid for w in math_answers._POOL.live}
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_score_in_forked_child, args=(queue,))
    child.start()
    on_main, in_thread, child_workers = queue.get(timeout=120)
    child.join(timeout=30)
    assert child.exitcode == 0 and on_main and in_thread
    assert child_workers and not child_workers & parents
    assert _pool_still_answers()


def _pool_still_answers():
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(answers_match, "\\frac{1}{16}", "0.0625").result()

import subprocess
import sys

import pytest

from cat.rewards.math import answers_match, extract_answer


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
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


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


def test_missing_answers_never_match():
    assert not answers_match(None, "1") and not answers_match("1", None) and not answers_match(" ", " ")


def test_pathological_expression_returns():
    """A tower of powers must not hang: the comparison returns (False) under the timeout."""
    code = ("from cat.rewards.math import answers_match;"
            "print(answers_match('9^{9^{9^{9^{9}}}}', '9^{9^{9^{9^{8}}}}', timeout_s=1))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in ("False", "True")

"""Final answers of math solutions: extraction from ``\\boxed{...}`` and equivalence.

``answers_match`` uses math-verify (sympy-backed equivalence: fractions vs decimals, LaTeX
variants, intervals, sets, units and percent stripped) under a per-call timeout, so a pathological
expression cannot hang training. ``mode="strict"`` reproduces the paper: normalised string
equality of the extracted answers.

math-verify enforces its timeout with ``signal.alarm``, which only works in the main thread; off
the main thread we fall back to the string comparison rather than risk an unbounded sympy call.
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")


def extract_answer(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces balanced.

    Returns None when there is none, when its braces never close, or when it is empty.
    ``\\boxed 5`` (no braces) yields ``5``.
    """
    if not text:
        return None
    start = max(text.rfind(cmd) for cmd in _BOX_COMMANDS)
    if start < 0:
        return None
    rest = text[start:]
    cmd = next(c for c in _BOX_COMMANDS if rest.startswith(c))
    rest = rest[len(cmd) :]
    if rest.startswith(" "):
        match = re.match(r"\s+([^\s$]+)", rest)
        return match.group(1) if match else None
    if not rest.startswith("{"):
        return None
    depth = 0
    for i, ch in enumerate(rest):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                inner = rest[1:i].strip()
                return inner or None
    return None


def normalize(answer: str) -> str:
    """A light, deterministic normalisation used by strict mode and as a fast path."""
    s = answer.strip()
    s = _TEXT_WRAPPER.sub(r"\1", s)
    for old, new in (("\\left", ""), ("\\right", ""), ("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\ ", "")):
        s = s.replace(old, new)
    s = s.replace("dfrac", "frac").replace("tfrac", "frac").replace("^\\circ", "").replace("^{\\circ}", "")
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    s = re.sub(r"\s+", "", s).rstrip(".")
    return s.lower() if re.fullmatch(r"[A-Za-z ]+", s) else s


def _is_word(s: str) -> bool:
    return bool(re.fullmatch(r"[a-z]{2,}", s))


def answers_match(predicted: str | None, reference: str | None, *, mode: str = "equivalence", timeout_s: int = 3) -> bool:
    """Whether two extracted final answers are the same answer.

    ``mode``: ``equivalence`` (math-verify, timeout per call) or ``strict`` (normalised string).
    A missing answer on either side never matches.
    """
    if predicted is None or reference is None:
        return False
    a, b = normalize(predicted), normalize(reference)
    if not a or not b:
        return False
    if a == b:
        return True
    if mode == "strict":
        return False
    if mode != "equivalence":
        raise ValueError(f"mode must be 'equivalence' or 'strict', got {mode!r}")
    if _is_word(a) or _is_word(b):
        # sympy reads "evelyn" as a product of symbols, so anagrams would compare equal.
        return False
    if threading.current_thread() is not threading.main_thread():
        return False
    return _verify(predicted, reference, timeout_s)


@lru_cache(maxsize=65536)
def _verify(predicted: str, reference: str, timeout_s: int) -> bool:
    from math_verify import parse, verify

    try:
        gold = parse(f"\\boxed{{{reference}}}", parsing_timeout=timeout_s)
        pred = parse(f"\\boxed{{{predicted}}}", parsing_timeout=timeout_s)
        if not gold or not pred:
            return False
        return bool(verify(gold, pred, timeout_seconds=timeout_s))
    except Exception:  # math-verify raises on timeouts and odd inputs: not equivalent
        return False

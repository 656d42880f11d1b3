"""Final answers of math solutions: the boxed answer, and equivalence.

``boxed_answer`` returns the final boxed answer as a string: the ``boxed`` rule of the answer
chain (``cat.rewards.answers``, which reads replies without a box too). An answer split over
several boxes that are only joined by connectors (``\\boxed{(2, 2)} \\quad\\text{and}\\quad
\\boxed{(6, 2)}``, ``x = \\boxed{3},\\ y = \\boxed{4}``) comes back as one comma-separated list,
which math-verify reads as the set/tuple it is; a box earlier in the reasoning is never joined to
the final one.

``answers_match`` uses math-verify (sympy-backed equivalence: fractions vs decimals, LaTeX
variants, intervals, sets, units and percent stripped) under a hard per-call time budget, so a
pathological expression cannot hang training. Before sympy it reads a decimal comma (``0,5``
against a single number) and decides plain integers and clearly different decimals itself.
``mode="strict"`` reproduces the paper: normalised string equality of the extracted answers.

The time budget holds in any thread and any process: on a process's main thread the comparison
runs in-process under a ``SIGALRM`` timer; any other thread (thread pools, async scorers) hands it
to a small pool of persistent worker subprocesses that run the same code on *their* main thread,
and a worker that overruns the budget is killed and replaced, so even a computation that never
reaches the interpreter's signal check cannot hold the caller. Verdicts are the same on both
paths. POSIX only (``setitimer``, ``poll`` on pipes).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal
from functools import lru_cache
from typing import NamedTuple

logger = logging.getLogger(__name__)

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")


class _Box(NamedTuple):
    start: int
    end: int
    content: str | None  # None: braces never close, or empty


def _box_at(text: str, start: int) -> _Box:
    """The box whose command starts at ``start``: ``\\boxed{...}`` with balanced braces, or ``\\boxed 5``."""
    pos = start + (6 if text.startswith("\\boxed", start) else 5)
    if text.startswith(" ", pos):
        token = re.match(r"\s+([^\s$]+)", text[pos:])
        return _Box(start, pos + token.end(), token.group(1)) if token else _Box(start, len(text), None)
    if not text.startswith("{", pos):
        return _Box(start, pos, None)
    depth = 0
    for i in range(pos, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return _Box(start, i + 1, text[pos + 1 : i].strip() or None)
    return _Box(start, len(text), None)


def _unwrap(content: str) -> str:
    """``\\boxed{\\boxed{5}}`` -> ``5``."""
    while _BOX_COMMAND.match(content):
        inner = _box_at(content, 0)
        if inner.end != len(content) or inner.content is None:
            break
        content = inner.content
    return content


# What may stand between two boxes of one answer: layout (spacing, math delimiters, \text{}),
# connectors (and / or / , / ;), labels (``y_2 =``, ``(a)``) and at most three other words.
_GAP_LAYOUT = re.compile(
    r"\\(?:qquad|quad|hspace\*?\{[^{}]*\}|text(?:bf|it|rm)?|mathrm|mbox|[,;:! ()\[\]\\])|\*\*|[$~&]"
)
_GAP_TOKEN = re.compile(
    r"(?P<label>[A-Za-z][A-Za-z0-9_]*\s*=)|(?P<part>\((?:[a-z]|[0-9]+|[ivx]+)\))|(?P<conn>\b(?:and|or)\b|[,;])"
    r"|(?P<word>[A-Za-z]+)|(?P<space>\s+)|(?P<other>.)",
    re.DOTALL,
)
_MAX_GAP_WORDS = 3
# Words that make the later box a consequence or a correction of the earlier one, not its sibling.
_DERIVATION_WORDS = frozenset(
    "so thus hence therefore then but wait actually however because since gives get yields implies".split()
)
_MAX_JOINED_BOXES = 16


def _joins(gap: str) -> bool:
    """Whether the text between two boxes makes them parts of one answer (a list of results)."""
    if re.search(r"\n\s*\n", gap):  # a paragraph break: the earlier box belongs to the reasoning
        return False
    bare = _GAP_LAYOUT.sub(" ", gap).replace("{", "").replace("}", "")
    tokens = [(m.lastgroup, m.group().lower()) for m in _GAP_TOKEN.finditer(bare)]
    kinds = [kind for kind, _ in tokens]
    words = [text for kind, text in tokens if kind == "word"]
    if "other" in kinds or _DERIVATION_WORDS.intersection(words):
        return False
    return not words or (len(words) <= _MAX_GAP_WORDS and "conn" in kinds)


def boxed_answer(text: str) -> str | None:
    """The final answer in ``text``: the content of its last ``\\boxed{...}`` (or ``\\fbox{...}``).

    Boxes before it that are joined to it only by connectors (see ``_joins``) are part of the
    answer, which is then their contents in order, joined by ``", "``; repeats of one box count
    once. Returns None when there is no box, when the last one's braces never close, or when it is
    empty. ``\\boxed 5`` (no braces) yields ``5``.
    """
    if not text:
        return None
    boxes = [_box_at(text, m.start()) for m in _BOX_COMMAND.finditer(text)]
    if not boxes or boxes[-1].content is None:
        return None
    chain = [boxes[-1]]
    while len(chain) < _MAX_JOINED_BOXES:
        head = chain[-1]
        before = [b for b in boxes if b.end <= head.start]
        if not before:
            break
        previous = max(before, key=lambda b: b.end)  # an enclosing box ends last: it stands for its nest
        if previous.content is None or not _joins(text[previous.end : head.start]):
            break
        chain.append(previous)
    parts = [_unwrap(b.content) for b in reversed(chain)]
    return parts[0] if len(set(parts)) == 1 else ", ".join(parts)


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


_COMMA_NUMBER = re.compile(r"(?<![\d.])([+-]?)(\d+),(\d+)(?![\d.])")


def _decimal_comma(answer: str) -> str | None:
    """``answer`` with its decimal comma read as a point (``0,5`` -> ``0.5``), or None if it has none.

    Only an answer whose one comma sits inside a single number qualifies; ``1,000`` (three digits
    after a non-zero integer part) stays a thousands separator, and brackets mean a tuple/interval.
    ``1,2`` is genuinely ambiguous (a decimal or the list 1, 2): the caller reads it as a decimal
    only against a single value (``_single_value``), which a two-element list could never equal.
    """
    if answer.count(",") != 1 or re.search(r"[()\[\]]|\\[{}]", answer):
        return None
    m = _COMMA_NUMBER.search(answer)
    if m is None:
        return None
    sign, whole, frac = m.groups()
    if len(frac) == 3 and whole.lstrip("0"):
        return None
    return f"{answer[: m.start()]}{sign}{whole}.{frac}{answer[m.end() :]}"


_LIST_MARK = re.compile(r"[,;()\[\]]|\\(?:[{}]|cup|cap|pm|mp)|\b(?:and|or)\b")


def _single_value(answer: str) -> bool:
    """Whether ``answer`` is one number-like value: digits, and nothing that lists or bounds values."""
    return bool(re.search(r"\d", answer)) and not _LIST_MARK.search(answer)


_INTEGER = re.compile(r"-?\d+")
_DECIMAL = re.compile(r"-?\d+(?:\.\d+)?")
# math-verify rounds floats to 6 places and parses them at 15 significant digits; within those
# limits two decimals further apart than this can never compare equal there.
_CLEARLY_DIFFERENT = Decimal("1e-5")


def _numeric_verdict(a: str, b: str) -> bool | None:
    """math-verify's verdict on two plain numbers when it is certain without sympy, else None."""
    if max(len(a), len(b)) > 1000:  # int() refuses very long digit strings; leave those to sympy
        return None
    if _INTEGER.fullmatch(a) and _INTEGER.fullmatch(b):
        return int(a) == int(b)
    if _DECIMAL.fullmatch(a) and _DECIMAL.fullmatch(b):
        x, y = Decimal(a), Decimal(b)
        if x == y:
            return True
        short = all(len(d.as_tuple().digits) <= 15 for d in (x, y))
        if short and abs(x - y) > _CLEARLY_DIFFERENT:
            return False
    return None


@lru_cache(maxsize=1 << 16)  # a step compares the same pairs in its reward, majority vote and diagnostics
def answers_match(
    predicted: str | None, reference: str | None, *, mode: str = "equivalence", timeout_s: float = 3
) -> bool:
    """Whether two extracted final answers are the same answer.

    ``mode``: ``equivalence`` (math-verify within ``timeout_s`` seconds, in any thread) or
    ``strict`` (normalised string). A missing answer on either side never matches; a comparison
    that runs out of time is not a match.
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
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
    if _is_word(a) or _is_word(b):
        # sympy reads "evelyn" as a product of symbols, so anagrams would compare equal.
        return False
    predicted, reference = predicted.strip(), reference.strip()
    if _single_value(reference) and (decimal := _decimal_comma(predicted)) is not None:
        predicted = decimal
    elif _single_value(predicted) and (decimal := _decimal_comma(reference)) is not None:
        reference = decimal
    verdict = _numeric_verdict(predicted, reference)
    if verdict is not None:
        return verdict
    return _verify(predicted, reference, float(timeout_s))


@lru_cache(maxsize=65536)
def _verify(predicted: str, reference: str, timeout_s: float) -> bool:
    if threading.current_thread() is threading.main_thread():
        return _verify_in_process(predicted, reference, timeout_s)
    return _pool().verify(predicted, reference, timeout_s)


class _OutOfTime(BaseException):
    """Raised by the SIGALRM handler; a BaseException so math-verify's ``except Exception`` lets it through."""


def _verify_in_process(predicted: str, reference: str, timeout_s: float) -> bool:
    """math-verify on this (main) thread, the whole comparison under one ``SIGALRM`` timer.

    math-verify's own timeouts are off: they cost an ``alarm`` per parse and per compared pair and
    only take whole seconds; one timer bounds the whole comparison instead. A timer the caller had
    running is resumed with what it had left.
    """
    from math_verify import parse, verify

    _silence_timeout_warning()
    armed = True

    def on_alarm(signum, frame):
        if armed:
            raise _OutOfTime

    outer_left, _ = signal.setitimer(signal.ITIMER_REAL, 0)  # pause the caller's timer, if any
    started = time.monotonic()
    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        gold = parse(f"\\boxed{{{reference}}}", parsing_timeout=None)
        pred = parse(f"\\boxed{{{predicted}}}", parsing_timeout=None)
        verdict = bool(gold and pred and verify(gold, pred, timeout_seconds=None))
        armed = False  # from here a late alarm is a no-op, so the verdict stands
    except _OutOfTime:
        verdict = False
    except Exception:  # math-verify raises on odd inputs: not equivalent
        verdict = False
    finally:
        armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if outer_left:
            signal.setitimer(signal.ITIMER_REAL, max(outer_left - (time.monotonic() - started), 1e-3))
    return verdict


def _silence_timeout_warning() -> None:
    """math-verify warns once that with its timeouts off the caller must bound the time: we do."""
    import math_verify.grader
    import math_verify.parser

    math_verify.grader.TIMEOUT_WARNING_SHOWN = math_verify.parser.TIMEOUT_WARNING_SHOWN = True


# Off the main thread: persistent workers. A worker answers within the budget on its own (the
# timer above, on its main thread); the caller kills it only if it has not answered this much later.
_KILL_GRACE_S = 1.0
_STARTUP_TIMEOUT_S = 120.0
_MAX_WORKERS = max(1, min(4, os.cpu_count() or 1))
_BOOT = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('_cat_math_worker', sys.argv[1])\n"
    "module = importlib.util.module_from_spec(spec)\n"
    "sys.modules[spec.name] = module\n"
    "spec.loader.exec_module(module)\n"
    "module._serve()\n"
)


def _serve() -> None:
    """A worker's loop: one JSON ``[predicted, reference, timeout_s]`` per line in, ``1``/``0`` out."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when scoring stops
    replies = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # a stray print must not land in the reply stream
    _verify_in_process("\\frac{1}{2}", "0.5", 60.0)  # load sympy's lazy parts before saying ready
    replies.write(b"ready\n")
    for line in sys.stdin.buffer:
        predicted, reference, timeout_s = json.loads(line)
        replies.write(b"1\n" if _verify_in_process(predicted, reference, timeout_s) else b"0\n")


class _Worker:
    """One worker subprocess (a fresh interpreter running this file; the ``cat`` package is not imported)."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _BOOT, os.path.abspath(__file__)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C at the terminal is the parent's to handle
        )
        if self._read_line(_STARTUP_TIMEOUT_S) != b"ready":
            self.kill()
            raise RuntimeError(f"the math-verify worker ({sys.executable}) did not start; see its stderr above")

    def ask(self, predicted: str, reference: str, timeout_s: float) -> bool | None:
        """The verdict, or None when the worker overran the budget (or died) and must be replaced."""
        request = json.dumps([predicted, reference, timeout_s]).encode() + b"\n"
        try:
            self.process.stdin.write(request)
            self.process.stdin.flush()
        except OSError:
            return None
        reply = self._read_line(timeout_s + _KILL_GRACE_S)
        return None if reply is None else reply == b"1"

    def _read_line(self, timeout_s: float) -> bytes | None:
        fd = self.process.stdout.fileno()
        poller = select.poll()  # not select.select: it fails on descriptors above 1023
        poller.register(fd, select.POLLIN)
        deadline = time.monotonic() + timeout_s
        data = b""
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                return None
            chunk = os.read(fd, 64)
            if not chunk:
                return None
            data += chunk
        return data.strip()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self.process.stdin.close()
        self.process.stdout.close()

    def abandon(self) -> None:
        """In a forked child: let go of the parent's worker without touching it."""
        self.process.stdin.close()
        self.process.stdout.close()
        self.process.returncode = 0  # not ours to reap


class _WorkerPool:
    """Up to ``size`` workers, started on demand, each serving one calling thread at a time."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.idle: list[_Worker] = []
        self.live: set[_Worker] = set()
        self.starting = 0
        self.changed = threading.Condition()

    def verify(self, predicted: str, reference: str, timeout_s: float) -> bool:
        worker = self._acquire()
        verdict = None
        try:
            verdict = worker.ask(predicted, reference, timeout_s)
        finally:
            if verdict is None:  # overran, died, or the caller was interrupted mid-request
                worker.kill()
            with self.changed:
                if verdict is None:
                    self.live.discard(worker)
                else:
                    self.idle.append(worker)
                self.changed.notify()
        if verdict is None:
            logger.warning("math equivalence: no verdict within %.1fs, counted as no match; worker replaced", timeout_s)
        return bool(verdict)

    def _acquire(self) -> _Worker:
        with self.changed:
            while not self.idle and len(self.live) + self.starting >= self.size:
                self.changed.wait()
            if self.idle:
                return self.idle.pop()
            self.starting += 1
        worker = None
        try:
            worker = _Worker()  # outside the lock: a start takes a second or two
        finally:
            with self.changed:
                self.starting -= 1
                if worker is not None:
                    self.live.add(worker)
                self.changed.notify()
        return worker

    def close(self) -> None:
        with self.changed:
            workers, self.live, self.idle = list(self.live), set(), []
        for worker in workers:
            worker.kill()

    def abandon(self) -> None:
        for worker in self.live:
            worker.abandon()
        self.live, self.idle = set(), []


_POOL: _WorkerPool | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> _WorkerPool:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = _WorkerPool(_MAX_WORKERS)
            atexit.register(_POOL.close)
        return _POOL


def _forget_parent_pool() -> None:
    """After ``fork``: the child starts its own workers; the parent's belong to the parent."""
    global _POOL, _POOL_LOCK
    _POOL_LOCK = threading.Lock()
    if _POOL is not None:
        _POOL.abandon()
        _POOL = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_parent_pool)

"""Reading a reply's final answer: one configured chain of extraction rules.

An :class:`AnswerChain` tries its rules in order on the whole reply; the first rule that finds an
answer gives it, and its name is kept with it (:class:`Extraction`). The run builds its chain
from the ``answer`` config section, and every place that reads an answer uses it: the rewards
(each rollout's answer), the reference estimators (the anchor's synthesis, majority vote, a chosen
rollout), the teacher diagnostics and evaluation (the prediction side against gold). Gold labels
are final answers already and are compared as given.

Rules (registry ``ANSWER_RULES``; each a pure function ``text -> answer or None``):

* ``boxed``: the last ``\\boxed{...}``, with boxes joined by connectors read as one list
  (:func:`cat.rewards.math.boxed_answer`).
* ``answer_phrase``: the last explicit answer phrase, "the answer is X", "the answer to ... is
  X", "final answer: X", "Answer: X" (markdown bold, quotes and LaTeX delimiters around X are
  dropped). X is the number it starts with (``41 apples``), the right-hand side of an equation it
  holds (``Answer: 14 + 27 = 41``), or a short expression (``\\frac{1}{2}``, ``Monday``); a verdict
  ("your answer is correct") or prose is no answer.
* ``equals_end``: X in the last ``= X`` (or "equals X") that ends a sentence, a clause or a line,
  X a number (``14 + 27 = 41.``, ``51 + 99 = 150, which ...``; not ``= 2 * 4``).
* ``last_number``: the last number in the reply (integers, decimals, ``1,000``, ``3/4``).
* ``regex``: ``answer.regex``, its last match (group 1 when the pattern has a group).

Plug-ins add rules with ``@register_answer_rule("name")`` and list them in ``answer.rules``.

The form an answer must have (``answer.form``): ``any`` takes what the first rule finds;
``number`` takes it only when it is a number (``41``, ``-3``, ``1,000``, ``2.5``, ``3/4``,
``\\frac{12}{7}``, with an optional unit: ``41 apples``, ``50\\%``). A reply whose final answer
is anything else, an expression or an equation, has no answer (:attr:`Extraction.refused` keeps
what it gave), so its rollout earns nothing, it gets no vote and it cannot be a reference. This
is the guard against a label-free reward's cheapest hack on a numeric task: Qwen2.5-Coder-0.5B
under majority vote learned to answer ``\\boxed{67 + 75 + 85}``, the problem restated, which every
rollout then agreed on (docs/real-models.md). The later rules are not tried: the reply's own
final answer was the expression, and the last number in it is not what it answered.

Departure from the paper: CaT reads only ``\\boxed{}`` answers, so a rollout or an anchor output
without a box has no answer (a group without a reference answer gets no signal). The default
chain reads a reply without a box through the fallbacks, which small chat models need: on
SmolLM2-135M-Instruct arithmetic the box alone reads 6 of 320 rollouts (though half were asked for
a box) and none of 80 anchor references; the chain reads 315 and 73 (``tests/test_answers.py``).
``answer.rules: [boxed]`` reads answers as the paper does. A reply with a box is read the same
either way, since ``boxed`` comes first; only replies without one read differently (the tiny
arith world's policy boxed 512 of 512 rollouts sampled at temperature 1).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from cat.errors import ConfigError
from cat.registry import Registry
from cat.rewards.math import boxed_answer

Rule = Callable[[str], "str | None"]
DEFAULT_RULES = ("boxed", "answer_phrase", "equals_end", "last_number")
REGEX = "regex"
FORMS = ("any", "number")


def _check_rule(name: str, obj) -> None:
    if name == REGEX:
        raise ValueError(f"answer rule name '{REGEX}' is taken by the rule answer.regex configures")
    if not callable(obj):
        raise TypeError(f"answer rule '{name}' must be a function text -> answer (str) or None")


ANSWER_RULES: Registry[Rule] = Registry("answer rule", check=_check_rule)
register_answer_rule = ANSWER_RULES.register


# A number as written in a reply: optional sign (not the minus of "27-14"), digits with thousands
# commas or plain, an optional decimal part or denominator; not part of a word ("41st", "x2").
_NUMBER = r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+|/\d+)?(?![\w])"
_NUMBER_RE = re.compile(_NUMBER)
# "the answer is", "final answer:", "**Answer:**", "the answer to 2 + 3 is": the value follows on
# its line (or the next)
_PHRASE = re.compile(r"\b(?:final\s+answer|answer)\b(?:\s+(?:to|of|for)\s+[^\n]{1,60}?)?"
                     r"\s*(?:\*\*)?(?:\s*\bis\b\s*:?|\s*:|\s*=)\s*(?:\*\*)?\s*(?=(?P<rest>[^\n]*))", re.IGNORECASE)
# Around an answer: markdown bold, LaTeX math delimiters, quotes, spaces, a closing full stop.
_WRAPPING = re.compile(r"^(?:\*\*|\$\$?|\\\(|\\\[|[\s\"'“]|(?:exactly|approximately|about|simply|just|indeed|also|actually|clearly|still)\b)+"
                       r"|(?:\*\*|\$\$?|\\\)|\\\]|[\s\"'”.,;!?])+$", re.IGNORECASE)
# What follows "the answer is" without being an answer: a verdict on another answer, or prose.
_NOT_ANSWERS = frozenset("correct incorrect wrong right unclear clear simple obvious not that this it as "
                         "expressed given shown written stated calculated computed obtained determined".split())
_SENTENCE_END = re.compile(r"[.,;!?](?:\s|$)|\s(?:which|because|since|as|so|and|but)\s")
_MAX_EXPRESSION_CHARS = 40
_COPULA = re.compile(r"(?:^|[\s\"'”])is\b\s*:?")
# "= 41" (or "equals 41", "is equal to 41") ending a sentence, a clause or a line: not "= 2 * 4",
# not "= 92 (the absolute value ...)"
_EQUALS = re.compile(rf"(?:=|\bequals\b|\bis\s+equal\s+to\b)\s*(?:\$|\*\*|\\\(|\\\[)?\s*(?P<x>{_NUMBER})"
                     r"(?=(?:\s*(?:\*\*|\$\$?|\\\)|\\\]))*[ \t]*(?:[.,;!?](?:\s|$)|\n|$))")


# answer.form number: a signed number (or \frac{a}{b}) with an optional unit, in optional $...$
_DIGITS = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+|/\d+)?\.?|\.\d+"
_FRACTION = r"\\[dt]?frac(?:\{[-+]?\d+\}\{[-+]?\d+\}|\d\d)"
_UNIT = (r"(?:\\(?:text|mathrm|mbox)\{[^{}]*\}|\\?%|\^\{?\\circ\}?|°|(?!pi\b)[A-Za-z]{2,}(?:\s[A-Za-z]{2,})?(?:/[A-Za-z]+)?)"
         r"(?:\^\{?\d\}?)?")
_NUMBER_FORM = re.compile(rf"^[-+]?\s*(?:\\\$|\$)?[-+]?\s*(?:{_DIGITS}|{_FRACTION})(?:\s*{_UNIT})?$")
_FORM_SPACES = re.compile(r"\\[,;:! ]|~")
_FORM_BOLD = re.compile(r"^\\(?:text|textbf|mathbf|mathrm|boldsymbol)\{([^{}]*)\}$")


def is_number(answer: str) -> bool:
    """Whether ``answer`` is a number (``answer.form: number``): ``41``, ``-3``, ``1,000``,
    ``1{,}000``, ``2.5``, ``.5``, ``3/4``, ``\\frac{12}{7}``, ``\\frac{-1}{2}``, ``$5``, ``-\\$5``,
    ``41 apples``, ``5\\ \\text{m}``, ``50\\%``, ``\\textbf{5}``; not ``67 + 75 + 85``, ``x = 5``,
    ``2 * 4`` or ``5x``."""
    text = re.sub(r"(?<=\d)\\,(?=\d{3})", "", answer.replace("{,}", ",").replace("\u2212", "-"))  # 1\,000
    text = _FORM_SPACES.sub(" ", text)
    text = _strip(text)
    bold = _FORM_BOLD.match(text)
    if bold:
        text = bold.group(1).strip()
    return bool(_NUMBER_FORM.match(text))


def _strip(span: str) -> str:
    return _WRAPPING.sub("", span)


@register_answer_rule("boxed")
def boxed(text: str) -> str | None:
    """The last ``\\boxed{...}`` (see :func:`cat.rewards.math.boxed_answer`)."""
    return boxed_answer(text)


def _phrase_value(rest: str) -> str | None:
    """The answer a phrase introduces, from what follows it on its line."""
    if re.match(r"\\(?:boxed|fbox)", _strip(rest)):
        return boxed_answer(rest)
    end = _SENTENCE_END.search(rest)
    span = _strip(rest[: end.start()] if end else rest)
    if "=" in span:
        span = _strip(span.rsplit("=", 1)[1])
    copula = list(_COPULA.finditer(span))
    if copula:  # 'problem "12 - 98 = " is -86': the phrase matched the = inside the quoted problem
        span = _strip(span[copula[-1].end():])
    number = _NUMBER_RE.match(span)
    if number and not re.match(r"\s*[-+*/^×÷(]", span[number.end():]):  # "41 apples", not "2 * 4"
        return number.group()
    words = re.findall(r"[A-Za-z]{2,}", re.sub(r"\\[A-Za-z]+", "", span))
    if (not span or len(span) > _MAX_EXPRESSION_CHARS or len(words) > 1 or span.lower() in _NOT_ANSWERS
            or not re.search(r"[^\W_]", span) or span.endswith(":")):
        return None  # prose ("the answer is not obvious"), a verdict ("correct"), a cut-off "\\(", "below:"
    return span  # a short expression: "\\frac{1}{2}", "Monday", "B"


@register_answer_rule("answer_phrase")
def answer_phrase(text: str) -> str | None:
    """What the last explicit answer phrase ("the answer is", "final answer:", "Answer:") gives."""
    for match in reversed(list(_PHRASE.finditer(text))):
        value = _phrase_value(match.group("rest"))
        if value:
            return value
    return None


@register_answer_rule("equals_end")
def equals_end(text: str) -> str | None:
    """X in the last ``= X`` (or "equals X") that ends a sentence, a clause or a line (X a number)."""
    matches = _EQUALS.findall(text)
    return matches[-1] if matches else None


@register_answer_rule("last_number")
def last_number(text: str) -> str | None:
    """The last number in the reply."""
    numbers = _NUMBER_RE.findall(text)
    return numbers[-1] if numbers else None


@dataclass(frozen=True)
class RegexRule:
    """``answer.regex``: the last match of ``pattern``, its group 1 when it has a group."""

    pattern: str

    def __call__(self, text: str) -> str | None:
        compiled = _compile(self.pattern)
        matches = list(compiled.finditer(text))
        if not matches:
            return None
        return matches[-1].group(1 if compiled.groups else 0)


@lru_cache(maxsize=64)
def _compile(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"answer.regex {pattern!r} is not a valid regular expression: {exc}") from None


@dataclass(frozen=True)
class Extraction:
    """A reply's final answer (None: no rule found one, or ``answer.form`` refused what it found)
    and the rule that found it; ``refused``: the answer the form refused (then ``answer`` is None)."""

    answer: str | None
    rule: str | None = None
    refused: str | None = None


@dataclass(frozen=True)
class AnswerChain:
    """Extraction rules tried in order (names in ``ANSWER_RULES``, or ``regex`` with ``regex`` set),
    and the ``form`` the answer found must have (``any`` or ``number``).

    Unknown names, a repeated rule, ``regex`` without a pattern (or a pattern the rules do not
    list), a pattern that does not compile and an unknown form are ConfigErrors naming what would
    work."""

    rules: tuple[str, ...] = DEFAULT_RULES
    regex: str | None = None
    form: str = "any"
    _steps: tuple[tuple[str, Rule], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple(self.rules))
        if self.form not in FORMS:
            raise ConfigError(f"answer.form {self.form!r} is not one of {list(FORMS)}")
        if not self.rules:
            raise ConfigError("answer.rules is empty: list at least one rule, e.g. [boxed]")
        if len(set(self.rules)) != len(self.rules):
            raise ConfigError(f"answer.rules names a rule twice: {list(self.rules)}")
        if (REGEX in self.rules) != (self.regex is not None):
            raise ConfigError("answer.rules lists 'regex' but answer.regex is not set" if self.regex is None else
                              f"answer.regex is set but answer.rules {list(self.rules)} does not list 'regex': "
                              "add it where it should be tried (e.g. first)")
        steps = []
        for name in self.rules:
            if name == REGEX:
                _compile(self.regex)
                steps.append((name, RegexRule(self.regex)))
            elif name not in ANSWER_RULES:
                raise ConfigError(f"unknown answer rule '{name}' in answer.rules; known: "
                                  f"{[*ANSWER_RULES.names(), REGEX]}")
            else:
                steps.append((name, ANSWER_RULES.get(name)))
        object.__setattr__(self, "_steps", tuple(steps))

    @classmethod
    def from_config(cls, section) -> AnswerChain:
        """The chain of an ``answer`` config section (:class:`cat.config.AnswerConfig`)."""
        return cls(tuple(section.rules), section.regex, getattr(section, "form", "any"))

    def extract(self, text: str) -> Extraction:
        return _extract(self._steps, self.form, text)

    def __call__(self, text: str) -> str | None:
        """The final answer of ``text`` (None when no rule finds one or the form refuses it)."""
        return _extract(self._steps, self.form, text).answer


@lru_cache(maxsize=1 << 14)  # the reward, the estimators and the diagnostics all read the same rollouts
def _extract(steps: tuple[tuple[str, Rule], ...], form: str, text: str) -> Extraction:
    if not text:
        return Extraction(None)
    for name, rule in steps:
        answer = rule(text)
        if answer is not None and answer.strip():
            answer = answer.strip()
            if form == "number" and not is_number(answer):
                return Extraction(None, refused=answer)  # the reply's final answer; a later rule would read another
            return Extraction(answer, name)
    return Extraction(None)


def extraction_metrics(kind: str, extractions: Sequence[Extraction], rules: Sequence[str]) -> dict[str, float]:
    """``answer/{kind}_rate``: the share of ``extractions`` with an answer; ``answer/{kind}_rule/RULE``:
    the share each rule of the chain read (an answer no rule read, such as a gold label, counts
    in the rate only); ``answer/{kind}_refused``: the share whose answer ``answer.form`` refused
    (only when one was)."""
    n = max(len(extractions), 1)
    out = {f"answer/{kind}_rate": sum(e.answer is not None for e in extractions) / n}
    refused = sum(e.refused is not None for e in extractions)
    if refused:
        out[f"answer/{kind}_refused"] = refused / n
    for rule in rules:
        out[f"answer/{kind}_rule/{rule}"] = sum(e.rule == rule for e in extractions) / n
    return out

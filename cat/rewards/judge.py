"""The judge: an independent model that answers yes/no for (response, criterion) pairs.

The judge's model sits behind one seam, ``complete(prompts, max_new_tokens, attempt, budgets) ->
list[str | None]`` (``ChatBackend``), over the generation seam's ``ChatModel``:
* ``judge.backend: hf`` or ``vllm``: an in-process model on that engine (greedy first, sampled
  on retries);
* ``openai``: any OpenAI-compatible endpoint through the ``openai`` client, with a per-request
  timeout, retries of transient failures (Retry-After honoured), and a concurrency limit
  (``cat.generation.chat.OpenAIChat``). The API key is read from the environment variable named
  in the config and never logged.

``Judge`` adds what both need:
* rendering: a ``JudgeItem`` is a response, its criteria and, for a dataset's own rubric
  (HealthBench), the conversation the response answers and the criteria's points. Items with a
  conversation are rendered with the judge's conversation template (``{{conversation}}``,
  default ``rubrics/judge_healthbench.txt``), which shows the judge the whole chat as
  HealthBench's grader does; items without one (self-proposed rubrics, model-as-judge) with the
  plain template (``judge_criterion``). A template with ``{{criteria}}`` judges every criterion
  of a response in one call, one with ``{{criterion}}`` one call per criterion;
* verdict parsing: ``<verdict>yes|no</verdict>``, HealthBench's grader JSON
  (``{"explanation": ..., "criteria_met": true|false}``, fenced or bare), or a leading yes/no;
* a persistent verdict cache keyed by (judge model, criterion, conversation, response), so a
  resumed run does not pay twice;
* one request per distinct question (a response given twice, as short answers often are, is
  asked once), and re-asks of unparsable verdicts and ratings in one loop (``Judge._ask``), within
  one budget per request (``RequestBudget``) that the endpoint's own retries share:
  ``judge.max_retries + 1`` requests per question in all. When not one of a first round of at
  least ``GIVE_UP_AFTER`` (8) replies is a verdict, the judge does not follow its template and
  nothing is re-asked: the verdicts fail after one request each, and one warning quotes a reply
  and names the fix;
* exclusion of the verdicts that still fail. A failure is never read as "no": it is ``None``,
  and the reward leaves that criterion out for that rollout. (HealthBench's grader retries
  until it parses; here the retries are bounded, the rest is counted in ``judge/failures``, and a
  warning quotes a reply that did not parse.)

``check()``, at the start of a run, asks an endpoint for one verdict on a trivial criterion: an
endpoint that cannot chat, or whose reply is not a verdict this judge reads (a model that does
not follow the template), stops the run before any evaluation or training. If every request of
a batch fails, the judge is down: ``TeacherError`` stops the run with the endpoint's name rather
than training on nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from cat.config import accepts_whole_config
from cat.display import excerpt
from cat.errors import TeacherError
from cat.generation.chat import RequestBudget
from cat.templates import Template, load_template

if TYPE_CHECKING:
    from cat.config import Config, GenerationConfig, JudgeConfig

logger = logging.getLogger(__name__)

_YES_NO = re.compile(r"^\W*(yes|no)\b", re.I)
_TAGGED = re.compile(r"<verdict>\s*(yes|no)\s*</verdict>", re.I)
_LINE = re.compile(r"^\s*(\d+)\s*[:.)\-]\s*\**\s*(yes|no)\b", re.I | re.M)
_SCORE = re.compile(r"<score>\s*([^<]*?)\s*</score>", re.I)
SCORES = range(1, 11)
"""The scale of ``Judge.scores`` (``rubrics/judge_score.txt``): whole numbers 1 to 10."""


def _json_verdicts(text: str) -> list[bool]:
    """``criteria_met`` of every JSON object in ``text`` that has a boolean one (HealthBench's
    grader format, bare or inside a ```json fence)."""
    if "criteria_met" not in text:
        return []
    decoder, found = json.JSONDecoder(), []
    start = text.find("{")
    while start != -1:
        try:
            obj, end = decoder.raw_decode(text, start)
        except ValueError:
            start = text.find("{", start + 1)
            continue
        if isinstance(obj, dict) and isinstance(obj.get("criteria_met"), bool):
            found.append(obj["criteria_met"])
        start = text.find("{", end)
    return found


def parse_verdict(text: str | None) -> bool | None:
    """yes -> True, no -> False, anything else (empty, contradicting, hedged) -> None.

    Read, in order: ``<verdict>`` tags and grader JSON objects (``"criteria_met": true|false``;
    all of them must agree), else a reply that starts with yes or no. A ``criteria_met`` that is
    not a JSON boolean does not count, as in HealthBench's grader."""
    if not text:
        return None
    votes = [t.lower() == "yes" for t in _TAGGED.findall(text)] + _json_verdicts(text)
    if votes:
        return votes[0] if len(set(votes)) == 1 else None
    match = _YES_NO.match(text.strip())
    return None if match is None else match.group(1).lower() == "yes"


def parse_score(text: str | None) -> int | None:
    """The whole number in the reply's ``<score>N</score>`` tags when it lies in ``SCORES``; None
    for anything else: no tag, a number off the scale or not whole (``7.5``), or tags that
    disagree. A reply that is not a score is a failure, never the lowest score."""
    found = set(_SCORE.findall(text or ""))
    if len(found) != 1:
        return None
    value = found.pop()
    return int(value) if value.isascii() and value.isdigit() and int(value) in SCORES else None


def parse_verdict_lines(text: str | None, n: int) -> list[bool | None]:
    """``k: yes|no`` lines for criteria 1..n; a missing or repeated-and-contradicting k is None."""
    found: dict[int, set[bool]] = {}
    for k, word in _LINE.findall(text or ""):
        found.setdefault(int(k), set()).add(word.lower() == "yes")
    return [next(iter(found[k])) if len(found.get(k, ())) == 1 else None for k in range(1, n + 1)]


class JudgeItem(NamedTuple):
    """One response to judge against its criteria.

    ``conversation`` is the chat the response answers (the policy's prompt messages, system
    prompt included), given for a dataset's own rubric so that criteria about the user's request
    can be judged; ``points`` are the criteria's points, shown beside them. A plain
    ``(response, criteria)`` tuple is an item without either.
    """

    response: str
    criteria: tuple[str, ...] | list[str]
    conversation: tuple[dict[str, str], ...] | None = None
    points: tuple[float, ...] | None = None


def render_conversation(messages) -> str:
    """``role: content`` turns separated by blank lines, as HealthBench's grader shows them."""
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def _points(value: float) -> str:
    return f"{value:g}"


class VerdictCache:
    """Append-only JSONL of verdicts (``{"key", "verdict": bool}``) and scores (``{"key", "score":
    int}``, ``Judge.scores``); safe to share between a run and its resumption.

    In a multi-process run (``RANK`` set by the launcher) rank r > 0 appends to its own file,
    ``verdicts-rank{r}.jsonl`` beside ``verdicts.jsonl``, so no two processes write one file; every
    rank reads all of them, so a resumed run on any number of processes finds every verdict."""

    def __init__(self, path: Path | None):
        self.data: dict[str, bool | int] = {}
        self._lock = threading.Lock()
        self.path = path
        if path is None:
            return
        rank = int(os.environ.get("RANK", "0"))
        if rank > 0:
            self.path = path.with_name(f"{path.stem}-rank{rank}{path.suffix}")
        for file in [path, *sorted(path.parent.glob(f"{path.stem}-rank*{path.suffix}"))]:
            if not file.exists():
                continue
            for line in file.read_text().splitlines():
                try:
                    row = json.loads(line)
                    self.data[row["key"]] = int(row["score"]) if "score" in row else bool(row["verdict"])
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    continue  # a torn last line from a kill, a damaged row: the verdict is simply asked again

    @staticmethod
    def key(model: str, criterion: str, response: str) -> str:
        return hashlib.sha256(f"{model}\0{criterion}\0{response}".encode()).hexdigest()

    def get(self, key: str) -> bool | int | None:
        return self.data.get(key)

    def put_many(self, items: list[tuple[str, bool | int]]) -> None:
        if not items:
            return
        with self._lock:
            self.data.update(items)
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a", encoding="utf-8") as f:
                    for key, verdict in items:
                        field = "verdict" if isinstance(verdict, bool) else "score"
                        f.write(json.dumps({"key": key, field: verdict}) + "\n")


class ChatBackend:
    """The judge's seam, ``complete(prompts, max_new_tokens, attempt, budgets) -> list[str | None]``
    and ``usage`` (the tokens it has spent, ``cat.generation.chat.Usage``), over any ``ChatModel``:
    a local model on the hf or vLLM engine, or an OpenAI-compatible endpoint. The first attempt decodes greedily; retries of unparsable verdicts sample at
    temperature 0.7. ``check(prompt, max_new_tokens)``: the model's reply to ``prompt`` now (None
    for a local model, which is not asked), or TeacherError when it cannot answer."""

    def __init__(self, chat):
        self.chat = chat
        self.name = chat.name
        self.label = chat.label
        self.usage = chat.usage

    @property
    def errors(self) -> int:
        """Failed requests so far (endpoints only)."""
        return getattr(self.chat, "errors", 0)

    def check(self, prompt: str, max_new_tokens: int) -> str | None:
        return self.chat.check([{"role": "user", "content": prompt}], max_new_tokens)

    def complete(self, prompts: list[str], max_new_tokens: int, attempt: int,
                 budgets: list[RequestBudget] | None = None) -> list[str | None]:
        from cat.generation import SamplingParams

        params = SamplingParams(max_new_tokens=max_new_tokens, greedy=attempt == 0, temperature=0.7, seed=attempt)
        outputs = self.chat.complete([[{"role": "user", "content": p}] for p in prompts], params, budgets)
        return [None if o is None else o.text for o in outputs]


@accepts_whole_config(
    "judge_chat(config.judge, generation=config.generation, dtype=config.model.dtype, "
    "device=config.model.device, seed=config.run.seed)",
    lambda config: ((config.judge,), {"generation": config.generation, "dtype": config.model.dtype,
                                      "device": config.model.device, "seed": config.run.seed}))
def judge_chat(judge: JudgeConfig, *, generation: GenerationConfig, dtype: str, device: str, seed: int):
    """The judge model the ``judge`` section names, as a ``ChatModel``. A local judge (hf, vllm) is
    held in ``dtype`` on ``device`` (``model.dtype``, ``model.device``) on an engine with the
    rollout engine's vLLM settings (``generation``) and ``seed`` (``run.seed``); an endpoint reads
    none of them."""
    from cat.generation.chat import LocalChat, OpenAIChat

    if judge.backend == "openai":
        return OpenAIChat(judge.model, base_url=judge.base_url, api_key_env=judge.api_key_env,
                          timeout_s=judge.timeout_s, max_retries=judge.max_retries, backoff_s=judge.backoff_s,
                          max_wait_s=judge.max_wait_s, max_concurrency=judge.max_concurrency, role="judge")
    from cat.generation import generator_from_config
    from cat.models.load import load_model, load_tokenizer, resolve_device

    tokenizer = load_tokenizer(judge.model)
    model = load_model(judge.model, dtype=dtype, device=resolve_device(device), frozen=True)
    generator = generator_from_config(generation, model, tokenizer, dtype=dtype, seed=seed, backend=judge.backend,
                                      batch_size=judge.batch_size)
    return LocalChat(generator, tokenizer, name=judge.model)


PROBE = JudgeItem("2 + 2 = 4, so the final answer is \\boxed{4}.", ("The final answer is 4.",))
"""The trivial item ``Judge.check`` asks an endpoint about: any model that follows the judge
template gives a verdict on it (which verdict does not matter)."""


GIVE_UP_AFTER = 8
"""Replies in a first round, none of them a verdict, after which the judge re-asks nothing. One
unreadable greedy reply can be chance (a verdict cut off, a hedge), and a sampled re-ask may mend
it; eight of eight on different prompts say the model does not follow the template, and re-asking
would only repeat every request ``judge.max_retries`` times (a judge answering "banana" after
passing the check cost 3,841 requests over three steps instead of 961)."""

JUDGE_FIX = ("use a judge model that follows the judge template (judge.model), or give judge.template one it "
             "follows (judge.max_new_tokens if its verdicts are cut off)")
"""What to change when the judge's replies are not verdicts (the judge's warning and the run's stop say it)."""

SCORE_FIX = ("use a judge model that writes <score>N</score> (judge.model), give judge.score_template one it "
             "follows (judge_score_brief asks for the rating alone), or raise judge.max_new_tokens: judge_score "
             "writes a sentence or two before the rating")
"""What to change when the judge's replies are not ratings (``judge.score_template``)."""


def _judge_call(config, cache_path: Path | None = None, *, evaluation: bool = False) -> tuple[tuple, dict]:
    """The arguments of ``Judge.from_config`` for its old call, ``(config, cache_path, *, evaluation)``."""
    judge = config.eval.judge if evaluation and config.eval.judge is not None else config.judge
    return (judge,), {"cache_path": cache_path, "generation": config.generation, "dtype": config.model.dtype,
                      "device": config.model.device, "seed": config.run.seed}


class Judge:
    def __init__(self, backend, *, template: Template, max_new_tokens: int, max_retries: int, cache: VerdictCache,
                 conversation_template: Template | None = None):
        self.backend, self.template, self.conversation_template = backend, template, conversation_template
        self.max_new_tokens, self.max_retries, self.cache = max_new_tokens, max_retries, cache

    @classmethod
    @accepts_whole_config(
        "Judge.from_config(config.judge, cache_path=..., generation=config.generation, dtype=config.model.dtype, "
        "device=config.model.device, seed=config.run.seed), with eval.judge's section for the evaluation's grader "
        "(cat.tasks.evaluate.grader_section(config))", _judge_call)
    def from_config(cls, judge: JudgeConfig, *, cache_path: Path | None, generation: GenerationConfig, dtype: str,
                    device: str, seed: int) -> Judge:
        """The judge the ``judge`` section names (the run's ``judge``, or ``eval.judge`` for the
        evaluation's grader: the caller chooses), its verdicts cached at ``cache_path`` (None: in
        memory only). ``generation``, ``dtype``, ``device``, ``seed``: what a local judge model
        runs with (:func:`judge_chat`)."""
        backend = ChatBackend(judge_chat(judge, generation=generation, dtype=dtype, device=device, seed=seed))
        return cls(backend, template=judge_template(judge),
                   conversation_template=judge_template(judge, conversation=True),
                   max_new_tokens=judge.max_new_tokens, max_retries=judge.max_retries, cache=VerdictCache(cache_path))

    def check(self) -> None:
        """Raise TeacherError now, before any evaluation or training, if this judge cannot give a
        verdict: its endpoint cannot answer a request (the backend's check names the status and the
        body), or its reply to ``PROBE`` is not a verdict this judge reads. A local model is not
        asked (it answers whatever its weights answer; ``judge/failures`` counts that)."""
        whole = "criteria" in self.template.placeholders
        reply = self.backend.check(self._prompt(PROBE, None if whole else 0),
                                   8 * len(PROBE.criteria) if whole else self.max_new_tokens)
        if reply is None:
            return
        verdict = parse_verdict_lines(reply, 1)[0] if whole else parse_verdict(reply)
        if verdict is None:
            form = '"1: yes" or "1: no"' if whole else "<verdict>yes</verdict> or <verdict>no</verdict>, or a leading yes/no"
            raise TeacherError(
                f"{self.backend.label} does not answer as a judge: asked whether \"{PROBE.response}\" meets "
                f"\"{PROBE.criteria[0]}\", it replied {excerpt(reply)!r}, which is not a verdict ({form}). Every verdict "
                f"would fail and no group would be scored. Fix: serve a model that follows the judge template "
                f"(judge.model), or give judge.template one it follows; stopping before evaluation and training")

    def _template(self, item: JudgeItem) -> Template:
        if item.conversation is None:
            return self.template
        if self.conversation_template is None:
            raise ValueError("this judge has no conversation template, so it cannot judge an item with a conversation")
        return self.conversation_template

    def _key(self, item: JudgeItem, k: int) -> str:
        response = item.response if item.conversation is None else \
            f"{render_conversation(item.conversation)}\0{item.response}"
        return self.cache.key(self.backend.name, item.criteria[k], response)

    def _prompt(self, item: JudgeItem, k: int | None) -> str:
        """The judge prompt for criterion ``k`` of ``item``, or for all of them (``k`` None)."""
        values = {"response": item.response}
        if item.conversation is not None:
            values["conversation"] = render_conversation(item.conversation)
        if k is None:
            lines = []
            for n, c in enumerate(item.criteria):
                shown = c.replace("\n", "\n   ")  # continuation lines indented under their number
                lines.append(f"{n + 1}. [{_points(item.points[n])}] {shown}" if item.points else f"{n + 1}. {shown}")
            values["criteria"] = "\n".join(lines)
        else:
            values["criterion"] = values["reference"] = item.criteria[k]
            if item.points is not None:
                values["points"] = _points(item.points[k])
        return self._template(item).render(**values)

    def judge(self, items: list[JudgeItem | tuple[str, list[str]]]) -> tuple[list[list[bool | None]], dict]:
        """For each item: one verdict per criterion (None = judge failure). A question given twice
        (the same criterion, conversation and response; in all_criteria mode the same item) is
        asked once. Counts are of verdicts (``judge/asked``: not in the cache; ``judge/failures``:
        of those, never given), except ``judge/calls`` (requests)."""
        start = time.perf_counter()
        spent = self.backend.usage.snapshot()
        items = [JudgeItem(*item) for item in items]
        verdicts: list[list[bool | None]] = [[None] * len(item.criteria) for item in items]
        pending: list[tuple[int, int]] = []  # (item, criterion) not in the cache
        for i, item in enumerate(items):
            if item.points is not None and len(item.points) != len(item.criteria):
                raise ValueError(f"{len(item.criteria)} criteria but {len(item.points)} points")
            for k in range(len(item.criteria)):
                cached = self.cache.get(self._key(item, k))
                if cached is None:
                    pending.append((i, k))
                else:
                    verdicts[i][k] = cached
        asked, hits = len(pending), sum(len(item.criteria) for item in items) - len(pending)
        # one request per question: an item in all_criteria mode, else a criterion of one; a repeat
        # takes the verdicts of the first to ask it
        whole: dict[tuple, int] = {}
        single: dict[str, tuple[int, int]] = {}
        first: dict[tuple[int, int], tuple[int, int]] = {}
        for i, k in pending:
            item = items[i]
            if "criteria" in self._template(item).placeholders:
                question = (tuple(self._key(item, n) for n in range(len(item.criteria))), item.points)
                first[i, k] = (whole.setdefault(question, i), k)
            else:
                first[i, k] = single.setdefault(self._key(item, k), (i, k))
        todo = [(i, k) for i, k in pending if first[i, k] == (i, k)]

        def read_all(i: int, text: str | None) -> bool:
            found = parse_verdict_lines(text, len(items[i].criteria))
            for k, v in enumerate(found):
                if verdicts[i][k] is None and v is not None:
                    verdicts[i][k] = v
            return any(v is not None for v in found)

        def read_one(ik: tuple[int, int], text: str | None) -> bool:
            i, k = ik
            verdicts[i][k] = parse_verdict(text)
            return verdicts[i][k] is not None

        def save() -> None:
            nonlocal todo
            self.cache.put_many([(self._key(items[i], k), verdicts[i][k]) for i, k in todo if verdicts[i][k] is not None])
            todo = [(i, k) for i, k in todo if verdicts[i][k] is None]

        asking = self._ask([
            _Requests(sorted(set(whole.values())), lambda i: self._prompt(items[i], None),
                      lambda keys: 8 * max(len(items[i].criteria) for i in keys), read_all,
                      lambda i: None not in verdicts[i]),
            _Requests(list(single.values()), lambda ik: self._prompt(items[ik[0]], ik[1]),
                      lambda keys: self.max_new_tokens, read_one, lambda ik: verdicts[ik[0]][ik[1]] is not None),
        ], save)
        for (i, k), (fi, fk) in first.items():
            verdicts[i][k] = verdicts[fi][fk]
        failures = sum(verdicts[i][k] is None for i, k in pending)
        if asking.gave_up:
            quoted = f", e.g. {excerpt(asking.unread)!r}" if asking.unread else ""
            logger.warning(f"{self.backend.label}: none of {asking.replied} replies was a verdict{quoted}; not "
                           f"re-asking: {failures} of {asked} verdicts failed (left out, never read as 'no'). "
                           f"Fix: {JUDGE_FIX}")
        elif failures:
            quoted = f"; a reply that did not parse: {excerpt(asking.unread)!r}" if asking.unread else ""
            logger.warning(f"{self.backend.label}: {failures} of {asked} verdicts failed after up to "
                           f"{self.max_retries + 1} requests each (left out, never read as 'no'){quoted}")
        judged = [v for row in verdicts for v in row if v is not None]
        stats = {  # counts are ints, so that ranks' counts add up (cat.run.parallel.combine_stats)
            "judge/calls": asking.calls,
            "judge/cache_hits": hits,
            "judge/failures": failures,
            "judge/asked": asked,
            "judge/parse_rate": asking.parsed / asking.replied if asking.replied else float("nan"),  # replies that were verdicts
            "judge/yes_rate": sum(judged) / len(judged) if judged else float("nan"),
            "judge/seconds": time.perf_counter() - start,
            **self.backend.usage.since(spent, "judge"),
        }
        return verdicts, stats

    def scores(self, items: list[tuple[tuple[dict[str, str], ...], str]], template: Template) -> tuple[list[int | None], dict]:
        """For each (conversation, response): the judge's rating of the response on ``SCORES``
        through ``template`` (``{{conversation}}``, ``{{response}}``; reply ``<score>N</score>``), or
        None when no reply to its requests was a score (:meth:`_ask`). Ratings are cached like
        verdicts, keyed by the template's text, and a (conversation, response) given twice is
        asked once. A failure is never read as the lowest score: the caller leaves that response out."""
        start = time.perf_counter()
        spent = self.backend.usage.snapshot()
        criterion = f"score\0{template.text}"  # the cache's criterion slot: a new template is a new question
        keys = [self.cache.key(self.backend.name, criterion, f"{render_conversation(c)}\0{r}") for c, r in items]
        out: list[int | None] = [self.cache.get(k) for k in keys]
        hits = sum(v is not None for v in out)
        first: dict[str, int] = {}  # a response given twice (short answers often are) is rated once
        for i, v in enumerate(out):
            if v is None:
                first.setdefault(keys[i], i)
        todo = list(first.values())

        def read(i: int, text: str | None) -> bool:
            out[i] = parse_score(text)
            return out[i] is not None

        def save() -> None:
            nonlocal todo
            self.cache.put_many([(keys[i], out[i]) for i in todo if out[i] is not None])
            todo = [i for i in todo if out[i] is None]

        asking = self._ask([_Requests(
            list(first.values()), lambda i: template.render(conversation=render_conversation(items[i][0]), response=items[i][1]),
            lambda keys: self.max_new_tokens, read, lambda i: out[i] is not None)], save)
        out = [out[first[k]] if v is None and k in first else v for k, v in zip(keys, out, strict=True)]
        failed = sum(v is None for v in out)  # repeats of a failed response count
        if asking.gave_up:
            logger.warning(f"{self.backend.label}: none of {asking.replied} replies was a score <score>N</score>; not "
                           f"re-asking: {failed} of {len(items)} ratings failed (left out), e.g. "
                           f"{excerpt(asking.unread)!r}. Fix: {SCORE_FIX}")
        elif failed:
            quoted = f"; a reply that did not parse: {excerpt(asking.unread)!r}" if asking.unread else ""
            logger.warning(f"{self.backend.label}: {failed} of {len(items)} ratings failed after up to "
                           f"{self.max_retries + 1} requests each (left out, never read as a score){quoted}")
        return out, {"judge/score_calls": asking.calls, "judge/score_cache_hits": hits, "judge/score_failures": failed,
                     "judge/seconds": time.perf_counter() - start, **self.backend.usage.since(spent, "judge")}

    def _ask(self, requests: list[_Requests], save: Callable[[], None]) -> _Asked:
        """Send every request and re-ask those whose replies did not answer them, up to
        ``judge.max_retries + 1`` requests each, within one budget each (``RequestBudget``) that the
        endpoint's own retries of transient failures share. Each round sends one batch per kind of
        request, in order; the first decodes greedily, re-asks sample. ``save()`` after each round
        (what it answered goes into the cache). When not one reply of a first round of at least
        ``GIVE_UP_AFTER`` was readable, the model does not follow the template: nothing is re-asked."""
        budgets = [{key: RequestBudget(self.max_retries + 1) for key in r.keys} for r in requests]
        todo = [list(r.keys) for r in requests]
        asked = _Asked()
        for attempt in range(self.max_retries + 1):
            todo = [[key for key in keys if budget[key].left] for keys, budget in zip(todo, budgets, strict=True)]
            if not any(todo):
                break
            replies = read = 0  # replies that came back this round, and those that were readable
            for r, keys, budget in zip(requests, todo, budgets, strict=True):
                if not keys:
                    continue
                texts = self.backend.complete([r.prompt(key) for key in keys], r.max_new_tokens(keys), attempt,
                                              [budget[key] for key in keys])
                for key, text in zip(keys, texts, strict=True):
                    read += r.read(key, text)
                    replies += text is not None
                    if text and not r.answered(key):
                        asked.unread = text
                asked.calls += len(keys)
            asked.replied, asked.parsed = asked.replied + replies, asked.parsed + read
            save()
            todo = [[key for key in keys if not r.answered(key)] for r, keys in zip(requests, todo, strict=True)]
            if attempt == 0 and replies >= GIVE_UP_AFTER and read == 0:
                asked.gave_up = True
                break
        return asked


class _Requests(NamedTuple):
    """Requests of one kind for :meth:`Judge._ask`: ``keys`` (what each is for), ``prompt(key)``,
    ``max_new_tokens(keys)`` of one batch, ``read(key, reply) -> bool`` (takes a reply, None when
    none came; True when it was readable) and ``answered(key)`` (nothing left to ask)."""

    keys: list
    prompt: Callable[[Any], str]
    max_new_tokens: Callable[[list], int]
    read: Callable[[Any, str | None], bool]
    answered: Callable[[Any], bool]


@dataclass
class _Asked:
    """What :meth:`Judge._ask` sent and got: requests, replies that came back, replies that were
    readable, the last reply that left its request unanswered, and whether it gave up re-asking."""

    calls: int = 0
    replied: int = 0
    parsed: int = 0
    unread: str = ""
    gave_up: bool = False


_DEFAULT_TEMPLATES = {
    ("per_criterion", False): "judge_criterion",
    ("all_criteria", False): "judge_all_criteria",
    ("per_criterion", True): "judge_healthbench",
    ("all_criteria", True): "judge_healthbench_all_criteria",
}


@accepts_whole_config("judge_template(config.judge, conversation=...)",
                      lambda config, **kwargs: ((config.judge,), kwargs))
def judge_template(judge: JudgeConfig, *, conversation: bool = False) -> Template:
    """The judge's plain template (``conversation=False``: self-proposed rubrics, the
    model-as-judge comparison) or its conversation template (``True``: a dataset's own rubric,
    the HealthBench score), validated against the ``judge`` section's ``mode``.

    ``judge.template`` replaces the default of its own kind: a template that uses
    ``{{conversation}}`` is the conversation template, one that does not is the plain one. A
    conversation template must show ``{{conversation}}``, ``{{response}}`` and ``{{criterion}}``
    (``{{criteria}}`` in ``all_criteria`` mode) and may show ``{{points}}``."""
    key = "criteria" if judge.mode == "all_criteria" else "criterion"
    name = _DEFAULT_TEMPLATES[(judge.mode, conversation)]
    if judge.template is not None:
        custom = load_template(judge.template, kind="rubrics", required={"response", key},
                               allowed={"conversation"} | ({"points"} if key == "criterion" else set()))
        if ("conversation" in custom.placeholders) == conversation:
            name = judge.template
    if conversation:
        allowed = {"points"} if key == "criterion" else set()
        return load_template(name, kind="rubrics", required={"response", key, "conversation"}, allowed=allowed)
    return load_template(name, kind="rubrics", required={"response", key}, allowed=set())


class JudgeOpener:
    """The run's judge (config ``judge``) built when called, not before: a reward or an estimator
    is built before the run loads any model. Its local model runs in the policy's dtype on its
    device (``model.dtype``, ``model.device``), sampling as ``generation`` says, seeded by
    ``run.seed``; its verdicts are cached at ``cache_path`` (None: in memory only)."""

    def __init__(self, config: Config):
        self._judge, self._generation = config.judge, config.generation
        self._dtype, self._device, self._seed = config.model.dtype, config.model.device, config.run.seed

    def __call__(self, cache_path: Path | None = None) -> Judge:
        return Judge.from_config(self._judge, cache_path=cache_path, generation=self._generation, dtype=self._dtype,
                                 device=self._device, seed=self._seed)

"""Chat-level model calls for the teachers (anchor, rubric proposer, judge): messages -> Completions.

Two implementations of one seam, ``complete(conversations, params) -> list[Completion | None]``:
* ``LocalChat``: a ``Generator`` (hf or vLLM, any weights) plus the tokenizer and chat-template
  options that turn messages into the ids it generates from. Never fails a request: ``None``
  never comes back.
* ``OpenAIChat``: any OpenAI-compatible endpoint (a vLLM or ``transformers serve`` server, a
  hosted API) through the ``openai`` client, with a per-request timeout, retries of transient
  failures only (Retry-After honoured, a 4xx other than 408/409/429 never repeated) within one
  budget per request (``RequestBudget``), and a concurrency limit. A request that still fails is
  ``None`` and is logged; when every request of a call fails the endpoint is down and
  ``TeacherError`` names it, with the HTTP status and the start of the body. The API key is read
  from the environment variable named in the config and never logged.

``check()`` sends one real request, so that an endpoint which cannot chat fails before any
evaluation or training, not after.

Both count what they spend in ``usage`` (``Usage``: requests answered, prompt and completion
tokens, as the local tokenizer counts them or as the endpoint reports them), so the judge and the
rubric proposer can say what they cost beside the policy's rollouts.

Not here: what the text means (templates and parsing belong to the anchor and the judge).
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import logging
import math
import os
import re
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from cat.display import excerpt
from cat.errors import ConfigError, TeacherError
from cat.generation import Generator, SamplingParams
from cat.types import Completion

logger = logging.getLogger(__name__)

Messages = list[dict[str, str]]

RETRIED_4XX = frozenset({408, 409, 429})
"""The 4xx answers worth repeating (request timeout, conflict, too many requests); any other 4xx
says the request itself is wrong."""

BODY_EXCERPT = 200
"""Characters of a failed response's body quoted in an error."""


def chat_ids(tokenizer, messages, *, use_chat_template: bool = True, chat_template_kwargs: dict | None = None) -> list[int]:
    """Token ids a model continues for ``messages``: the tokenizer's chat template with a
    generation prompt when it has one (and ``use_chat_template``), else the contents joined as
    plain text. The one place prompts become ids: policy, anchor and judge all use it."""
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=True, **(chat_template_kwargs or {})
        )
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer("\n\n".join(m["content"] for m in messages))["input_ids"]


class RequestBudget:
    """What one request (a verdict, a synthesis) may spend, shared by every layer that repeats it:
    ``attempts`` requests in all, the first included, and the seconds it has waited between them
    (``waited_s``, which the endpoint holds under its ``max_wait_s``). The judge's re-ask of an
    unparsable verdict and the transport's retry of a 503 draw on the same count, so they add up
    and never multiply. A failure that no repeat will mend (a 400) closes it."""

    def __init__(self, attempts: int):
        self.granted = self.attempts = attempts
        self.waited_s = 0.0

    @property
    def left(self) -> bool:
        return self.attempts > 0

    @property
    def whole(self) -> bool:
        """Nothing spent yet."""
        return self.attempts == self.granted

    def spend(self) -> None:
        self.attempts -= 1

    def close(self) -> None:
        self.attempts = 0


class Usage:
    """What a chat model has spent so far: completions it returned, and their prompt and
    completion tokens. Thread-safe (an endpoint answers on several threads); ``since(before)`` is
    the spend after a ``snapshot()``."""

    def __init__(self):
        self.completions = self.prompt_tokens = self.completion_tokens = 0
        self._lock = threading.Lock()

    def add(self, prompt_tokens: int, completion_tokens: int) -> None:
        with self._lock:
            self.completions += 1
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens

    def snapshot(self) -> tuple[int, int, int]:
        with self._lock:
            return self.completions, self.prompt_tokens, self.completion_tokens

    def since(self, before: tuple[int, int, int], prefix: str) -> dict[str, int]:
        """``PREFIX/prompt_tokens`` and ``PREFIX/completion_tokens`` spent after ``before``."""
        now = self.snapshot()
        return {f"{prefix}/prompt_tokens": now[1] - before[1], f"{prefix}/completion_tokens": now[2] - before[2]}


class ChatModel(Protocol):
    name: str
    label: str
    """The model and where it runs, for messages (an endpoint's base URL and model name)."""
    usage: Usage

    def complete(self, conversations: list[Messages], params: SamplingParams,
                 budgets: list[RequestBudget] | None = None) -> list[Completion | None]:
        """One completion per conversation (``params.n`` is ignored: always 1); None = failed.
        ``budgets``: one per conversation, spent by one request each and by any retry (None: a
        fresh one each)."""
        ...

    def check(self, messages: Messages | None = None, max_new_tokens: int = 8) -> str | None:
        """Raise TeacherError now, naming the model, if it cannot answer a request. An endpoint
        sends ``messages`` (by default a greeting) and returns the reply; a local model sends
        nothing and returns None."""
        ...


class LocalChat:
    def __init__(self, generator: Generator, tokenizer, *, name: str, use_chat_template: bool = True,
                 chat_template_kwargs: dict | None = None):
        self.generator = generator
        self.tokenizer = tokenizer
        self.name = name
        self.label = f"local model {name}"
        self.use_chat_template = use_chat_template
        self.chat_template_kwargs = chat_template_kwargs or {}
        self._recent: OrderedDict[tuple, list[int]] = OrderedDict()
        self.usage = Usage()

    RECENT = 1024
    """Conversations whose ids are kept: the anchor counts a prompt's tokens to fit it, then sends
    it, and the chat template and the tokenizer run once for both."""

    def ids(self, messages: Messages) -> list[int]:
        key = tuple(tuple(sorted(m.items())) for m in messages)
        try:
            ids = self._recent.pop(key)
        except KeyError:
            ids = chat_ids(self.tokenizer, messages, use_chat_template=self.use_chat_template,
                           chat_template_kwargs=self.chat_template_kwargs)
        except TypeError:  # a message with unhashable parts: not kept
            return chat_ids(self.tokenizer, messages, use_chat_template=self.use_chat_template,
                            chat_template_kwargs=self.chat_template_kwargs)
        self._recent[key] = ids
        if len(self._recent) > self.RECENT:
            self._recent.popitem(last=False)
        return list(ids)

    def check(self, messages: Messages | None = None, max_new_tokens: int = 8) -> None:
        """Nothing to check: the weights are loaded, and a local model answers every request."""

    def complete(self, conversations: list[Messages], params: SamplingParams,
                 budgets: list[RequestBudget] | None = None) -> list[Completion | None]:
        for budget in budgets or ():
            budget.spend()
        params = SamplingParams(**{**params.__dict__, "n": 1})
        prompts = [self.ids(m) for m in conversations]
        outputs = [g[0] for g in self.generator.generate(prompts, params)]
        for ids, out in zip(prompts, outputs, strict=True):
            self.usage.add(len(ids), out.length)
        return outputs


class OpenAIChat:
    """A ``ChatModel`` on an OpenAI-compatible endpoint, a careful HTTP client:

    * a connection error, a timeout, a 5xx, a 408, 409 or 429 is retried, after the server's
      ``Retry-After`` (seconds or an HTTP date; ``retry-after-ms``) where it sends one, else after
      an exponential backoff (``backoff_s``, doubling);
    * any other 4xx fails at once: the request is wrong (bad model name, unknown parameter,
      refused key) and repeating it changes nothing;
    * one budget per request (``RequestBudget``), which a caller that repeats requests itself
      (the judge re-asking an unparsable verdict) shares, so retries add up and never multiply:
      ``max_retries + 1`` requests and ``max_wait_s`` seconds of waiting in all. A Retry-After
      beyond the wait that is left ends the request at once, and says so;
    * a failure names the endpoint (base URL and model), the HTTP status and up to 200
      characters of the response body, the API key cut out of it.
    """

    def __init__(self, model: str, *, base_url: str | None, api_key_env: str, timeout_s: float, max_retries: int,
                 backoff_s: float, max_wait_s: float, max_concurrency: int, role: str = "judge"):
        import openai

        self.name = model
        self.role = role
        self.api_key_env = api_key_env
        self.base_url = base_url or "https://api.openai.com/v1"
        self.timeout_s, self.max_retries, self.backoff_s = timeout_s, max_retries, backoff_s
        self.max_wait_s, self.max_concurrency = max_wait_s, max_concurrency
        key = (os.environ.get(api_key_env) or "").strip() or ("EMPTY" if base_url else None)
        if key is None:
            raise ConfigError(f"{role}.api_key_env: environment variable {api_key_env} is not set")
        if any(c.isspace() for c in key):
            raise ConfigError(f"{role}.api_key_env: the key in ${api_key_env} contains whitespace inside it")
        # retries are ours (one budget per request, Retry-After honoured, 4xx never repeated), not the client's
        self.client = openai.OpenAI(base_url=base_url, api_key=key, timeout=timeout_s, max_retries=0)
        self.errors = 0
        self._errors_lock = threading.Lock()
        self.usage = Usage()

    @property
    def label(self) -> str:
        return f"{self.role} endpoint {self.base_url} (model {self.name})"

    def budget(self) -> RequestBudget:
        """A fresh budget for one request: ``max_retries + 1`` requests."""
        return RequestBudget(self.max_retries + 1)

    def check(self, messages: Messages | None = None, max_new_tokens: int = 8) -> str:
        """One real chat request now (greedy; by default a one-word greeting): its reply.
        TeacherError naming the endpoint, the HTTP status and the body when it cannot chat:
        unreachable, the key refused, the model unknown, no chat endpoint."""
        params = SamplingParams(max_new_tokens=max_new_tokens, greedy=True, seed=0)
        completion, why = self._one(messages or [{"role": "user", "content": "Say OK."}], params, self.budget())
        if completion is None:
            raise TeacherError(f"{self.label} cannot be used: {why}")
        return completion.text

    def _one(self, messages: Messages, params: SamplingParams, budget: RequestBudget) -> tuple[Completion | None, str]:
        """One request within ``budget``: (its completion, "") or (None, why it failed)."""
        import openai

        delay = self.backoff_s
        sampling = {"temperature": 0.0} if params.greedy else {"temperature": params.temperature, "top_p": params.top_p}
        sent = 0
        while True:
            budget.spend()
            sent += 1
            try:
                out = self.client.chat.completions.create(
                    model=self.name, messages=messages, max_tokens=params.max_new_tokens,
                    stop=list(params.stop) or None, seed=params.seed, **sampling,
                )
                if not getattr(out, "choices", None):
                    raise ValueError(f"the answer is not a chat completion: {self._excerpt(str(out))}")
                choice = out.choices[0]
                tokens = getattr(out.usage, "completion_tokens", 0) or 0
                self.usage.add(getattr(out.usage, "prompt_tokens", 0) or 0, tokens)
                return Completion(text=choice.message.content or "", token_ids=(), logprobs=(),
                                  finish_reason="length" if choice.finish_reason == "length" else "stop",
                                  num_tokens=tokens), ""
            except Exception as exc:  # noqa: BLE001 - every failure is described and counted, none is lost
                with self._errors_lock:
                    self.errors += 1
                why = self._describe(exc)
                if not _transient(exc):
                    budget.close()
                    return None, why
                if not budget.left:
                    return None, f"{why} ({sent} request(s) sent, the budget of {self.role}.max_retries is spent)"
                left = self.max_wait_s - budget.waited_s
                asked = retry_after_s(exc.response.headers) if isinstance(exc, openai.APIStatusError) else None
                if asked is not None and asked > left:
                    budget.close()
                    return None, (f"{why}; the server asks to retry after {asked:.0f} s, more than the {left:.0f} s "
                                  f"left of {self.role}.max_wait_s ({self.max_wait_s:g} s): raise it, or lower "
                                  f"{self.role}.max_concurrency")
                if asked is None and left <= 0:
                    budget.close()
                    return None, f"{why} (still failing after {budget.waited_s:.0f} s of waiting, {self.role}.max_wait_s)"
                wait = asked if asked is not None else min(delay, left)
                time.sleep(wait)
                budget.waited_s += wait
                delay *= 2

    def _describe(self, exc: Exception) -> str:
        """What went wrong, for a person: the HTTP status and the start of the body, or the transport's error."""
        import openai

        if isinstance(exc, openai.APITimeoutError):
            return f"no answer within {self.timeout_s:g} s ({self.role}.timeout_s)"
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc
            return f"unreachable ({type(cause).__name__}: {self._excerpt(str(cause))})"
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            hint = {401: f"; check the API key in ${self.api_key_env}", 403: f"; check the API key in ${self.api_key_env}",
                    404: f"; check {self.role}.base_url and {self.role}.model (the served model's name)"}.get(status, "")
            return f"HTTP {status} {exc.response.reason_phrase}: {self._excerpt(exc.response.text)}{hint}"
        return f"{type(exc).__name__}: {self._excerpt(str(exc))}"

    def _excerpt(self, text: str) -> str:
        """At most ``BODY_EXCERPT`` characters of ``text`` on one line, the API key never among them."""
        key = self.client.api_key
        if key and key != "EMPTY":
            for form in (key, repr(key)[1:-1], repr(key.encode())[2:-1]):
                text = text.replace(form, "***")
        return excerpt(re.sub(r"(?i)(bearer\s+)\S+", r"\1***", text), BODY_EXCERPT)

    def complete(self, conversations: list[Messages], params: SamplingParams,
                 budgets: list[RequestBudget] | None = None) -> list[Completion | None]:
        budgets = budgets if budgets is not None else [self.budget() for _ in conversations]
        # every request failing with its whole budget says the endpoint is down; a re-ask that
        # fails on the tail of a spent budget says only that this request is done
        whole = all(b.whole for b in budgets)
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            results = list(pool.map(lambda mb: self._one(mb[0], params, mb[1]),
                                    zip(conversations, budgets, strict=True)))
        failed = [why for completion, why in results if completion is None]
        if conversations and len(failed) == len(conversations) and whole:
            raise TeacherError(f"{self.label}: all {len(conversations)} requests failed, the first with: {failed[0]}; "
                               f"stopping rather than training without rewards")
        if failed:
            logger.warning(f"{self.label}: {len(failed)} of {len(conversations)} requests failed (left out, never "
                           f"read as an answer), the first with: {failed[0]}")
        return [completion for completion, _ in results]


def _transient(exc: Exception) -> bool:
    """Worth repeating: no connection, no answer in time, a 5xx, or a 408, 409 or 429."""
    import openai

    if isinstance(exc, openai.APIConnectionError):  # timeouts included
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code >= 500 or exc.status_code in RETRIED_4XX
    return False


def retry_after_s(headers, now: float | None = None) -> float | None:
    """The wait, in seconds, a server asks for before the next request: ``retry-after-ms``, else
    ``Retry-After`` as seconds or as an HTTP date (RFC 9110; a date in the past is 0). None when
    there is none or it cannot be read. ``now``: the clock the date is read against (time.time())."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        with contextlib.suppress(ValueError):
            seconds = float(ms) / 1000
            if not math.isnan(seconds):
                return max(seconds, 0.0)
    value = headers.get("retry-after")
    if value is None:
        return None
    with contextlib.suppress(ValueError):
        seconds = float(value)
        return None if math.isnan(seconds) else max(seconds, 0.0)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)

"""Chat-level model calls for the teachers (anchor, rubric proposer, judge): messages -> Completions.

Two implementations of one seam, ``complete(conversations, params) -> list[Completion | None]``:
* ``LocalChat``: a ``Generator`` (hf or vLLM, any weights) plus the tokenizer and chat-template
  options that turn messages into the ids it generates from. Never fails a request: ``None``
  never comes back.
* ``OpenAIChat``: any OpenAI-compatible endpoint (a vLLM or ``transformers serve`` server, a
  hosted API) through the ``openai`` client, with a per-request timeout, retries with exponential
  backoff, and a concurrency limit. A request that still fails is ``None``; when every request of
  a call fails the endpoint is down and ``TeacherError`` names it. The API key is read from the
  environment variable named in the config and never logged.

Not here: what the text means (templates and parsing belong to the anchor and the judge).
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from cat.errors import ConfigError, TeacherError
from cat.generation import Generator, SamplingParams
from cat.types import Completion

Messages = list[dict[str, str]]


class ChatModel(Protocol):
    name: str

    def complete(self, conversations: list[Messages], params: SamplingParams) -> list[Completion | None]:
        """One completion per conversation (``params.n`` is ignored: always 1); None = failed."""
        ...

    def check(self) -> None:
        """Raise a clear error now if the model cannot be reached."""
        ...


class LocalChat:
    def __init__(self, generator: Generator, tokenizer, *, name: str, use_chat_template: bool = True,
                 chat_template_kwargs: dict | None = None):
        self.generator = generator
        self.tokenizer = tokenizer
        self.name = name
        self.use_chat_template = use_chat_template
        self.chat_template_kwargs = chat_template_kwargs or {}
        self._recent: OrderedDict[tuple, list[int]] = OrderedDict()

    RECENT = 1024
    """Conversations whose ids are kept: the anchor counts a prompt's tokens to fit it, then sends
    it (the chat template and the tokenizer ran twice per prompt: 3 ms each on the tiny world)."""

    def ids(self, messages: Messages) -> list[int]:
        from cat.data import chat_ids

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

    def check(self) -> None:
        pass

    def complete(self, conversations: list[Messages], params: SamplingParams) -> list[Completion | None]:
        params = SamplingParams(**{**params.__dict__, "n": 1})
        return [g[0] for g in self.generator.generate([self.ids(m) for m in conversations], params)]


class OpenAIChat:
    def __init__(self, model: str, *, base_url: str | None, api_key_env: str, timeout_s: float, max_retries: int,
                 backoff_s: float, max_concurrency: int, role: str = "judge"):
        import openai

        self.name = model
        self.role = role
        self.api_key_env = api_key_env
        self.base_url = base_url or "https://api.openai.com/v1"
        self.max_retries, self.backoff_s, self.max_concurrency = max_retries, backoff_s, max_concurrency
        key = os.environ.get(api_key_env) or ("EMPTY" if base_url else None)
        if key is None:
            raise ConfigError(f"{role}.api_key_env: environment variable {api_key_env} is not set")
        # retries are ours (with backoff and counting), not the client's
        self.client = openai.OpenAI(base_url=base_url, api_key=key, timeout=timeout_s, max_retries=0)
        self.errors = 0

    def check(self) -> None:
        """Fail at start, naming the endpoint, if it cannot be reached or refuses the key.

        Any other HTTP answer (some servers do not implement /models) proves it is reachable."""
        import openai

        try:
            self.client.models.list()
        except openai.APIConnectionError as exc:
            raise TeacherError(f"{self.role} endpoint {self.base_url} is unreachable ({type(exc).__name__}: {exc})") from None
        except openai.AuthenticationError:
            raise TeacherError(f"{self.role} endpoint {self.base_url} rejected the API key in ${self.api_key_env}") from None
        except openai.APIStatusError:
            pass

    def _one(self, messages: Messages, params: SamplingParams) -> Completion | None:
        delay = self.backoff_s
        sampling = {"temperature": 0.0} if params.greedy else {"temperature": params.temperature, "top_p": params.top_p}
        for attempt in range(self.max_retries + 1):
            try:
                out = self.client.chat.completions.create(
                    model=self.name, messages=messages, max_tokens=params.max_new_tokens,
                    stop=list(params.stop) or None, seed=params.seed, **sampling,
                )
                choice = out.choices[0]
                tokens = getattr(out.usage, "completion_tokens", 0) or 0
                return Completion(text=choice.message.content or "", token_ids=(), logprobs=(),
                                  finish_reason="length" if choice.finish_reason == "length" else "stop",
                                  num_tokens=tokens)
            except Exception:
                self.errors += 1
                if attempt == self.max_retries:
                    return None
                time.sleep(delay)
                delay *= 2
        return None

    def complete(self, conversations: list[Messages], params: SamplingParams) -> list[Completion | None]:
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            results = list(pool.map(lambda m: self._one(m, params), conversations))
        if conversations and all(r is None for r in results):
            raise TeacherError(f"{self.role} endpoint {self.base_url}: all {len(conversations)} requests failed after "
                               f"{self.max_retries} retries; stopping rather than training without rewards")
        return results

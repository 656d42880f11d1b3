"""The judge: an independent model that answers yes/no for (response, criterion) pairs.

Two backends behind one seam, ``complete(prompts, max_new_tokens, attempt) -> list[str | None]``:
* ``HFBackend``: an in-process transformers model (greedy first, sampled on retries).
* ``OpenAIBackend``: any OpenAI-compatible endpoint through the ``openai`` client, with a
  per-request timeout, retries with exponential backoff, and a concurrency limit. The API key is
  read from the environment variable named in the config and never logged.

``Judge`` adds what both need:
* a persistent verdict cache keyed by (judge model, criterion, response), so a resumed run does
  not pay twice;
* retries of unparsable verdicts;
* exclusion of the verdicts that still fail. A failure is never read as "no": it is ``None``,
  and the reward leaves that criterion out for that rollout.

If every request of a batch fails, the judge is down: ``TeacherError`` stops the run with the
endpoint's name rather than training on nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cat.errors import ConfigError, TeacherError
from cat.templates import Template, load_template

_YES_NO = re.compile(r"^\W*(yes|no)\b", re.I)
_TAGGED = re.compile(r"<verdict>\s*(yes|no)\s*</verdict>", re.I)
_LINE = re.compile(r"^\s*(\d+)\s*[:.)\-]\s*\**\s*(yes|no)\b", re.I | re.M)


def parse_verdict(text: str | None) -> bool | None:
    """yes -> True, no -> False, anything else (empty, both, hedged) -> None."""
    if not text:
        return None
    tagged = _TAGGED.findall(text)
    if tagged:
        return tagged[-1].lower() == "yes" if len({t.lower() for t in tagged}) == 1 else None
    match = _YES_NO.match(text.strip())
    return None if match is None else match.group(1).lower() == "yes"


def parse_verdict_lines(text: str | None, n: int) -> list[bool | None]:
    """``k: yes|no`` lines for criteria 1..n; a missing or repeated-and-contradicting k is None."""
    found: dict[int, set[bool]] = {}
    for k, word in _LINE.findall(text or ""):
        found.setdefault(int(k), set()).add(word.lower() == "yes")
    return [next(iter(found[k])) if len(found.get(k, ())) == 1 else None for k in range(1, n + 1)]


class VerdictCache:
    """Append-only JSONL of verdicts; safe to share between a run and its resumption."""

    def __init__(self, path: Path | None):
        self.path = path
        self.data: dict[str, bool] = {}
        self._lock = threading.Lock()
        if path is not None and path.exists():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                    self.data[row["key"]] = bool(row["verdict"])
                except (json.JSONDecodeError, KeyError):
                    continue  # a torn last line from a kill: the verdict is simply asked again

    @staticmethod
    def key(model: str, criterion: str, response: str) -> str:
        return hashlib.sha256(f"{model}\0{criterion}\0{response}".encode()).hexdigest()

    def get(self, key: str) -> bool | None:
        return self.data.get(key)

    def put_many(self, items: list[tuple[str, bool]]) -> None:
        if not items:
            return
        with self._lock:
            self.data.update(items)
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a", encoding="utf-8") as f:
                    for key, verdict in items:
                        f.write(json.dumps({"key": key, "verdict": verdict}) + "\n")


class HFBackend:
    def __init__(self, model_path: str, *, batch_size: int = 32, device: str = "auto", dtype: str = "float32"):
        from cat.generation.hf import HFGenerator
        from cat.models import load_model, load_tokenizer, resolve_device

        self.name = model_path
        self.tokenizer = load_tokenizer(model_path)
        self.model = load_model(model_path, dtype=dtype, device=resolve_device(device), frozen=True)
        self.generator = HFGenerator(self.model, self.tokenizer, batch_size=batch_size)

    def check(self) -> None:
        pass

    def complete(self, prompts: list[str], max_new_tokens: int, attempt: int) -> list[str | None]:
        from cat.data import chat_ids
        from cat.generation import SamplingParams

        ids = [chat_ids(self.tokenizer, [{"role": "user", "content": p}]) for p in prompts]
        params = SamplingParams(max_new_tokens=max_new_tokens, greedy=attempt == 0, temperature=0.7, seed=attempt)
        return [g[0].text for g in self.generator.generate(ids, params)]


class OpenAIBackend:
    def __init__(self, model: str, *, base_url: str | None, api_key_env: str, timeout_s: float, max_retries: int,
                 backoff_s: float, max_concurrency: int):
        import openai

        self.name = model
        self.api_key_env = api_key_env
        self.base_url = base_url or "https://api.openai.com/v1"
        self.max_retries, self.backoff_s, self.max_concurrency = max_retries, backoff_s, max_concurrency
        key = os.environ.get(api_key_env) or ("EMPTY" if base_url else None)
        if key is None:
            raise ConfigError(f"judge.api_key_env: environment variable {api_key_env} is not set")
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
            raise TeacherError(f"judge endpoint {self.base_url} is unreachable ({type(exc).__name__}: {exc})") from None
        except openai.AuthenticationError:
            raise TeacherError(f"judge endpoint {self.base_url} rejected the API key in ${self.api_key_env}") from None
        except openai.APIStatusError:
            pass

    def _one(self, prompt: str, max_new_tokens: int) -> str | None:
        delay = self.backoff_s
        for attempt in range(self.max_retries + 1):
            try:
                out = self.client.chat.completions.create(
                    model=self.name, messages=[{"role": "user", "content": prompt}],
                    max_tokens=max_new_tokens, temperature=0.0,
                )
                return out.choices[0].message.content or ""
            except Exception:
                self.errors += 1
                if attempt == self.max_retries:
                    return None
                time.sleep(delay)
                delay *= 2
        return None

    def complete(self, prompts: list[str], max_new_tokens: int, attempt: int) -> list[str | None]:
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            results = list(pool.map(lambda p: self._one(p, max_new_tokens), prompts))
        if prompts and all(r is None for r in results):
            raise TeacherError(f"judge endpoint {self.base_url}: all {len(prompts)} requests failed after "
                               f"{self.max_retries} retries; stopping rather than training without rewards")
        return results


class Judge:
    def __init__(self, backend, *, mode: str, template: Template, max_new_tokens: int, max_retries: int,
                 cache: VerdictCache):
        self.backend, self.mode, self.template = backend, mode, template
        self.max_new_tokens, self.max_retries, self.cache = max_new_tokens, max_retries, cache

    @classmethod
    def from_config(cls, config, cache_path: Path | None) -> Judge:
        j = config.judge
        if j.backend == "openai":
            backend = OpenAIBackend(j.model, base_url=j.base_url, api_key_env=j.api_key_env, timeout_s=j.timeout_s,
                                    max_retries=j.max_retries, backoff_s=j.backoff_s, max_concurrency=j.max_concurrency)
        else:
            backend = HFBackend(j.model, batch_size=j.batch_size, device=config.model.device, dtype=config.model.dtype)
        return cls(backend, mode=j.mode, template=judge_template(config), max_new_tokens=j.max_new_tokens,
                   max_retries=j.max_retries, cache=VerdictCache(cache_path))

    def judge(self, items: list[tuple[str, list[str]]]) -> tuple[list[list[bool | None]], dict]:
        """For each (response, criteria): one verdict per criterion (None = judge failure)."""
        start = time.perf_counter()
        verdicts: list[list[bool | None]] = [[None] * len(criteria) for _, criteria in items]
        todo: list[tuple[int, int]] = []
        hits = 0
        for i, (response, criteria) in enumerate(items):
            for k, criterion in enumerate(criteria):
                cached = self.cache.get(self.cache.key(self.backend.name, criterion, response))
                if cached is None:
                    todo.append((i, k))
                else:
                    verdicts[i][k] = cached
                    hits += 1
        calls = 0
        for attempt in range(self.max_retries + 1):
            if not todo:
                break
            if self.mode == "all_criteria":
                rows = sorted({i for i, _ in todo})
                prompts = [self.template.render(response=items[i][0], criteria="\n".join(
                    f"{k + 1}. {c}" for k, c in enumerate(items[i][1]))) for i in rows]
                texts = self.backend.complete(prompts, 8 * max(len(items[i][1]) for i in rows), attempt)
                for i, text in zip(rows, texts, strict=True):
                    parsed = parse_verdict_lines(text, len(items[i][1]))
                    for k, v in enumerate(parsed):
                        if verdicts[i][k] is None and v is not None:
                            verdicts[i][k] = v
            else:
                prompts = [self.template.render(response=items[i][0], criterion=items[i][1][k], reference=items[i][1][k])
                           for i, k in todo]
                texts = self.backend.complete(prompts, self.max_new_tokens, attempt)
                for (i, k), text in zip(todo, texts, strict=True):
                    verdicts[i][k] = parse_verdict(text)
            calls += len(prompts)
            fresh = [(i, k) for i, k in todo if verdicts[i][k] is not None]
            self.cache.put_many([(self.cache.key(self.backend.name, items[i][1][k], items[i][0]), verdicts[i][k])
                                 for i, k in fresh])
            todo = [(i, k) for i, k in todo if verdicts[i][k] is None]
        flat = [v for row in verdicts for v in row]
        judged = [v for v in flat if v is not None]
        stats = {
            "judge/calls": float(calls),
            "judge/cache_hits": float(hits),
            "judge/failures": float(len(todo)),
            "judge/yes_rate": sum(judged) / len(judged) if judged else float("nan"),
            "judge/seconds": time.perf_counter() - start,
        }
        return verdicts, stats


def judge_template(config) -> Template:
    j = config.judge
    if j.mode == "all_criteria":
        return load_template(j.template or "judge_all_criteria", kind="rubrics", required={"response", "criteria"}, allowed=set())
    return load_template(j.template or "judge_criterion", kind="rubrics", required={"response", "criterion"}, allowed=set())

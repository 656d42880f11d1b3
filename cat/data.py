"""Datasets -> Prompts, and the seeded order in which training visits them.

Sources: a local ``.jsonl`` (read line by line, so a bad row is reported by number), a local
``.json`` / ``.parquet`` or a hub dataset id (through ``datasets``). Schemas are picked by field
names in the config: MATH-500 (``problem`` / ``answer``), GSM8K (``question`` / ``answer`` with
``answer_format: gsm8k``), the tiny world (``problem`` / ``answer``).

The gold answer is kept on each Prompt for the ``gold`` estimator and for diagnostics only.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from cat import tiny
from cat.errors import DataError
from cat.types import Prompt


def _read_rows(path: str, name: str | None, split: str) -> tuple[list[dict], str]:
    """Rows as dicts, and a label naming where they came from (for messages)."""
    path = tiny.resolve(path)
    local = Path(path)
    if local.suffix in (".jsonl", ".json", ".parquet") or local.exists():
        if not local.is_file():
            raise DataError(f"dataset file not found: {path}")
        if local.suffix == ".jsonl":
            rows = []
            with open(local, encoding="utf-8") as f:
                for lineno, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{path}: row {lineno} is not valid JSON ({exc.msg})") from None
                    if not isinstance(row, dict):
                        raise DataError(f"{path}: row {lineno} must be a JSON object, got {type(row).__name__}")
                    rows.append(row)
            return rows, path
        from datasets import load_dataset

        kind = "parquet" if local.suffix == ".parquet" else "json"
        try:
            ds = load_dataset(kind, data_files=str(local), split="train")
        except Exception as exc:  # datasets wraps parse errors in several types
            raise DataError(f"cannot read {path}: {exc}") from None
        return [dict(r) for r in ds], path
    from datasets import load_dataset

    try:
        ds = load_dataset(path, name, split=split)
    except Exception as exc:
        raise DataError(f"cannot load dataset '{path}' (config {name!r}, split {split!r}): {exc}") from None
    return [dict(r) for r in ds], f"{path}[{split}]"


def _gold(value, fmt: str) -> str:
    text = str(value).strip()
    if fmt == "gsm8k":
        text = text.split("####")[-1].strip().replace(",", "")
    return text


def _healthbench_prompt(i: int, row: dict, label: str, system_prompt: str | None) -> Prompt:
    from pydantic import ValidationError

    from cat.rubrics import Criterion

    conversation = row.get("prompt")
    if not isinstance(conversation, list) or not conversation:
        raise DataError(f"{label}: field 'prompt' must be a non-empty list of chat messages")
    for k, m in enumerate(conversation):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                or not isinstance(m.get("content"), str):
            raise DataError(f"{label}: prompt[{k}] must be {{'role': system|user|assistant, 'content': str}}, got {m!r:.80}")
    items = row.get("rubrics")
    if not isinstance(items, list) or not items:
        raise DataError(f"{label}: field 'rubrics' must be a non-empty list")
    criteria = []
    for k, item in enumerate(items):
        if not isinstance(item, dict):
            raise DataError(f"{label}: rubrics[{k}] must be an object")
        points = item.get("points")
        if isinstance(points, bool) or not isinstance(points, int | float):
            raise DataError(f"{label}: rubrics[{k}].points must be a number, got {points!r}")
        try:
            criteria.append(Criterion(text=item.get("criterion", ""), points=float(points),
                                      tags=tuple(item.get("tags") or ())))
        except ValidationError as exc:
            raise DataError(f"{label}: rubrics[{k}]: {exc.errors()[0]['msg']}") from None
    tags = row.get("example_tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise DataError(f"{label}: field 'example_tags' must be a list of strings")
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [dict(m) for m in conversation]
    text = "\n".join(f"{m['role']}: {m['content']}" for m in conversation)
    meta = {"prompt_id": row["prompt_id"]} if isinstance(row.get("prompt_id"), str) else {}
    return Prompt(index=i, text=text, messages=tuple(messages), meta=meta, rubric=tuple(criteria), tags=tuple(tags))


def load_prompts(
    path: str,
    *,
    format: str = "qa",
    name: str | None = None,
    split: str = "train",
    prompt_field: str = "problem",
    answer_field: str | None = "answer",
    answer_format: str = "plain",
    prompt_template: str = "{problem}",
    system_prompt: str | None = None,
    limit: int | None = None,
    require_answer: bool = False,
) -> list[Prompt]:
    """Validated prompts. Every malformed row is an error naming the source, the row and the field."""
    rows, where = _read_rows(path, name, split)
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise DataError(f"{where}: no rows")
    prompts = []
    for i, row in enumerate(rows):
        label = f"{where}: row {i + 1}"
        if format == "healthbench":
            prompts.append(_healthbench_prompt(i, row, label, system_prompt))
            continue
        if prompt_field not in row:
            raise DataError(f"{label}: missing field '{prompt_field}' (fields: {sorted(row)})")
        text = row[prompt_field]
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{label}: field '{prompt_field}' must be a non-empty string, got {text!r:.60}")
        gold = None
        if answer_field is not None:
            value = row.get(answer_field)
            if value is None and require_answer:
                raise DataError(f"{label}: missing field '{answer_field}' (needed by the gold estimator / evaluation)")
            if value is not None:
                if not isinstance(value, str | int | float):
                    raise DataError(f"{label}: field '{answer_field}' must be a string or number, got {type(value).__name__}")
                gold = _gold(value, answer_format)
        messages = []
        if system_prompt:
            messages.append({"role": "system", "content": system_prompt})
        messages.append({"role": "user", "content": prompt_template.replace("{problem}", text)})
        meta = {k: v for k, v in row.items() if k not in (prompt_field, answer_field) and isinstance(v, str | int | float)}
        prompts.append(Prompt(index=i, text=text, messages=tuple(messages), gold=gold, meta=meta))
    return prompts


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


def encode_prompt(prompt: Prompt, tokenizer, *, use_chat_template: bool = True, chat_template_kwargs: dict | None = None) -> list[int]:
    """Token ids the policy continues for ``prompt``."""
    return chat_ids(tokenizer, prompt.messages, use_chat_template=use_chat_template,
                    chat_template_kwargs=chat_template_kwargs)


@dataclass
class PromptOrder:
    """Which prompts each step uses: a seeded permutation per epoch, so step s's batch is a pure
    function of (seed, s). Resuming at step s therefore needs no saved cursor beyond s itself."""

    size: int
    per_step: int
    seed: int
    shuffle: bool = True

    def _epoch(self, epoch: int) -> list[int]:
        order = list(range(self.size))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def batch(self, step: int) -> list[int]:
        start = step * self.per_step
        out = []
        for position in range(start, start + self.per_step):
            epoch, offset = divmod(position, self.size)
            out.append(self._epoch(epoch)[offset])
        return out


def load_split(config, which: str) -> list[Prompt]:
    """The training (``"train"``) or evaluation (``"eval"``) prompts a config names.

    Evaluation needs a gold answer (or, for HealthBench, the physician rubric) on every row;
    training needs one only for the ``gold`` estimator.
    """
    d = config.data
    if which == "train":
        path, name, split, limit = d.path, d.name, d.split, d.limit
        require = config.estimator.name == "gold"
    else:
        e = config.eval
        path, name, split, limit = e.path, e.name, e.split, e.limit
        require = True
    return load_prompts(
        path, format=d.format, name=name, split=split, prompt_field=d.prompt_field, answer_field=d.answer_field,
        answer_format=d.answer_format, prompt_template=d.prompt_template, system_prompt=config.model.system_prompt,
        limit=limit, require_answer=require and d.format == "qa",
    )

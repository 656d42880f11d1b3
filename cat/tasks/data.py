"""Datasets -> Prompts, and the seeded order in which training visits them.

Sources:
* a local ``.jsonl`` file (JSON lines; a row's number is its line number, blank lines counted);
* a local ``.json`` file (a JSON array of objects, or JSON lines under a .json name; a row's
  number is its position in the array);
* a local ``.parquet`` file (read with pyarrow);
* a hub dataset id (through ``datasets``);
* ``reasoning-gym:TASK``, a procedural task generated on the fly (``cat.tasks.reasoning_gym``);
* a path with a scheme a plug-in registered (``tiny:arith/train.jsonl``: ``cat.paths``), read as
  the local file it names.

Every way a file can be unreadable (missing, empty, compressed, binary, not UTF-8, UTF-16,
broken or truncated JSON, a JSON array in a ``.jsonl``, not Parquet) and every malformed row
(missing field, wrong type) is a ``DataError`` that names the file, the row and the field; the
CLI prints it and exits 2.

Schemas are picked by field names in the config: MATH-500 (``problem`` / ``answer``), GSM8K
(``question`` / ``answer`` with ``answer_format: gsm8k``), the tiny world (``problem`` /
``answer``), and HealthBench (``format: healthbench``: chat ``prompt``, ``rubrics`` of
``criterion`` / ``points`` / ``tags``, ``example_tags``, ``prompt_id``; other fields of the real
benchmark, such as ``ideal_completions_data`` or ``canary``, are accepted and ignored). A
HealthBench criterion is kept exactly as written: any length, line breaks included (the
500-character limit is for self-proposed rubrics only, ``cat.rewards.criteria``).

The gold answer is kept on each Prompt for the ``gold`` estimator and for diagnostics only.
"""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from cat import paths
from cat.errors import DataError
from cat.generation.chat import chat_ids
from cat.tasks.settings import TaskSettings
from cat.templates import check_prompt_template, render_prompt
from cat.types import Prompt

_SUFFIXES = (".jsonl", ".json", ".parquet")
logger = logging.getLogger(__name__)

_ROLES = ("system", "user", "assistant")


def _what_bytes(data: bytes) -> str | None:
    """Why ``data`` is not UTF-8 JSON text at all (None when it may be): compressed, a known
    binary container, UTF-16 or binary."""
    if data.startswith(b"\x1f\x8b"):
        return "is gzip-compressed; decompress it first"
    if data.startswith(b"PK\x03\x04"):
        return "is a zip archive; extract it first"
    if data.startswith(b"PAR1"):
        return "is a Parquet file; give it the .parquet suffix"
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "is UTF-16 text (it starts with a UTF-16 byte-order mark); save it as UTF-8"
    nul = data.find(b"\0")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        return f"holds binary data (a NUL byte on line {line}), not UTF-8 text"
    return None


def _read_bytes(local: Path, path: str) -> bytes:
    try:
        data = local.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not data.strip():
        raise DataError(f"{path}: no rows (the file is empty)")
    return data


def _utf8(data: bytes, path: str, row: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: {row} is not UTF-8 text (byte 0x{data[exc.start]:02x} at column {exc.start + 1}); "
                        "save the file as UTF-8") from None


def _json_error(exc: json.JSONDecodeError) -> str:
    return f"{exc.msg}: column {exc.colno}"


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # more digits than sys.get_int_max_str_digits()
        raise ValueError(f"an integer of {len(text)} digits is too long to read") from None


_DECODER = json.JSONDecoder(parse_int=_int)


def _loads(text: str):
    """``json.loads`` that reports an integer too long for Python as a ValueError with a plain message."""
    return _DECODER.decode(text)


def _surrogate(value, where: str = "") -> str | None:
    """The path (``prompt[0].content``) of a string in a parsed row that holds an unpaired UTF-16
    surrogate (a ``\\ud800`` escape JSON lets through and no tokenizer can encode), or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _surrogate(item, f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}" if where else key)
        if found is not None:
            return found
    return None


def _check_text(rows: list[tuple[int, dict]], raw: str, path: str) -> None:
    """No row holds an unpaired surrogate. Only a ``\\u`` escape in ``raw`` (the text the rows
    were read from) can make one, so most files skip the walk."""
    if "\\u" not in raw:
        return
    for number, row in rows:
        where = _surrogate(row)
        if where is not None:
            raise DataError(f"{path}: row {number}: field '{where}' holds an unpaired UTF-16 surrogate (a lone "
                            "\\ud800-\\udfff escape), which is not text; fix or drop it")


def _read_jsonl(local: Path, path: str) -> list[tuple[int, dict]]:
    data = _read_bytes(local, path)
    why = _what_bytes(data)
    if why:
        raise DataError(f"{path} {why}")
    data = data.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark is harmless
    if not data.strip():
        raise DataError(f"{path}: no rows (the file is empty)")
    lines = data.split(b"\n")
    last = max(i for i, line in enumerate(lines) if line.strip()) + 1
    rows = []
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        line = _utf8(raw, path, f"row {lineno}")
        try:
            row = _loads(line)
        except json.JSONDecodeError as exc:
            hint = ""
            if lineno == 1 and line.lstrip().startswith("["):
                hint = "; the file looks like a JSON array: name it .json, or write one object per line"
            elif line.strip() in ("{", "["):
                hint = "; a .jsonl file holds one whole JSON object per line"
            elif lineno == last and not line.rstrip().endswith("}"):
                hint = "; the last line looks truncated"
            raise DataError(f"{path}: row {lineno} is not valid JSON ({_json_error(exc)}){hint}") from None
        except ValueError as exc:  # _loads: an over-long integer
            raise DataError(f"{path}: row {lineno} is not valid JSON ({exc})") from None
        except RecursionError:
            raise DataError(f"{path}: row {lineno} is not valid JSON (nested too deeply)") from None
        if not isinstance(row, dict):
            hint = " (a JSON array: a .jsonl file holds one object per line)" if isinstance(row, list) else ""
            raise DataError(f"{path}: row {lineno} must be a JSON object, got {type(row).__name__}{hint}")
        _check_text([(lineno, row)], line, path)
        rows.append((lineno, row))
    return rows


def _read_json(local: Path, path: str) -> list[tuple[int, dict]]:
    data = _read_bytes(local, path)
    why = _what_bytes(data)
    if why:
        raise DataError(f"{path} {why}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}: line {line} is not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file as UTF-8") from None
    try:
        doc = _loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # several top-level values: JSON lines under a .json name
            return _read_jsonl(local, path)
        raise DataError(f"{path}: line {exc.lineno} is not valid JSON ({_json_error(exc)})") from None
    except ValueError as exc:  # _loads: an over-long integer
        raise DataError(f"{path} is not valid JSON ({exc})") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply") from None
    if isinstance(doc, dict):
        doc = [doc]
    if not isinstance(doc, list):
        raise DataError(f"{path} must hold a JSON array of objects (or JSON lines), got {_kind(doc)}")
    for k, row in enumerate(doc, start=1):
        if not isinstance(row, dict):
            raise DataError(f"{path}: row {k} must be a JSON object, got {type(row).__name__}")
    rows = list(enumerate(doc, start=1))
    _check_text(rows, text, path)
    return rows


def _read_parquet(local: Path, path: str) -> list[tuple[int, dict]]:
    data = _read_bytes(local, path)
    if len(data) < 12 or not (data.startswith(b"PAR1") and data.endswith(b"PAR1")):
        why = _what_bytes(data)
        if why is None and data.lstrip()[:1] in (b"{", b"["):
            why = "holds JSON; name it .jsonl or .json"
        raise DataError(f"{path} is not a Parquet file" + (f": it {why}" if why else " (no Parquet magic bytes)"))
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(local)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for a damaged file
        raise DataError(f"cannot read {path} as Parquet: {_first_line(exc)}") from None
    return list(enumerate(table.to_pylist(), start=1))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _got(value, width: int = 60) -> str:
    """What a message says it got: the value's JSON type and the value, or null alone."""
    return "null" if value is None else f"{_kind(value)} {value!r:.{width}}"


def _kind(value) -> str:
    """A value's JSON type name, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _read_rows(path: str, name: str | None, split: str) -> tuple[list[tuple[int, dict]], str]:
    """(row number, row) pairs, and a label naming where they came from (for messages)."""
    path = paths.resolve(path)
    local = Path(path)
    try:
        is_local, is_dir, is_file = local.suffix in _SUFFIXES or local.exists(), local.is_dir(), local.is_file()
    except OSError as exc:  # a name too long for the file system
        raise DataError(f"dataset path {path}: {exc.strerror or exc}") from None
    if is_local:
        if is_dir:
            raise DataError(f"dataset path {path} is a folder; give a .jsonl, .json or .parquet file")
        if not is_file:
            raise DataError(f"dataset file not found: {path}")
        if local.suffix == ".jsonl":
            return _read_jsonl(local, path), path
        if local.suffix == ".json":
            return _read_json(local, path), path
        if local.suffix == ".parquet":
            return _read_parquet(local, path), path
        raise DataError(f"{path}: unsupported file type '{local.suffix}'; use .jsonl, .json or .parquet")
    from datasets import load_dataset

    try:
        ds = load_dataset(path, name, split=split)
    except Exception as exc:  # datasets raises many types (not found, offline, bad config, parse errors)
        raise DataError(f"cannot load dataset '{path}' (config {name!r}, split {split!r}): {_first_line(exc)}") from None
    return [(i, dict(r)) for i, r in enumerate(ds, start=1)], f"{path}[{split}]"


def _gold(value, fmt: str) -> str:
    text = str(value).strip()
    if fmt == "gsm8k":
        text = text.split("####")[-1].strip().replace(",", "")
    return text


def _string_list(value, where: str) -> tuple[str, ...]:
    """A list of distinct strings (tags); missing or null is empty."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        bad = value if not isinstance(value, list) else next(t for t in value if not isinstance(t, str))
        raise DataError(f"{where} must be a list of strings, got {_got(bad)}")
    seen = set()
    for tag in value:
        if tag in seen:
            raise DataError(f"{where} lists {tag!r} twice")
        seen.add(tag)
    return tuple(value)


def _conversation(value, label: str) -> tuple[dict[str, str], ...]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{label}: field 'prompt' must be a non-empty list of chat messages, got {_got(value)}")
    for k, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in _ROLES or not isinstance(m.get("content"), str):
            raise DataError(f"{label}: prompt[{k}] must be {{'role': system|user|assistant, 'content': str}}, got {m!r:.80}")
    return tuple({"role": m["role"], "content": m["content"]} for m in value)


def _healthbench_prompt(i: int, row: dict, label: str, system_prompt: str | None) -> Prompt:
    """One HealthBench row, validated as the benchmark's grader would need it: every criterion
    kept verbatim (any length, line breaks included), numeric finite points, string tags, and at
    least one positive-point criterion (without one the example's score is undefined)."""
    from cat.rewards.criteria import Criterion

    if "prompt" not in row:
        raise DataError(f"{label}: missing field 'prompt' (fields: {sorted(row)})")
    conversation = _conversation(row["prompt"], label)
    if "rubrics" not in row:
        raise DataError(f"{label}: missing field 'rubrics' (fields: {sorted(row)})")
    items = row["rubrics"]
    if not isinstance(items, list) or not items:
        raise DataError(f"{label}: field 'rubrics' must be a non-empty list, got {_got(items)}")
    criteria = []
    for k, item in enumerate(items):
        where = f"{label}: rubrics[{k}]"
        if not isinstance(item, dict):
            raise DataError(f"{where} must be an object with 'criterion', 'points' and 'tags', got {_kind(item)}")
        text = item.get("criterion")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}.criterion must be a non-empty string, got {_got(text)}")
        points = item.get("points")
        if isinstance(points, bool) or not isinstance(points, int | float) or not math.isfinite(points):
            raise DataError(f"{where}.points must be a number, got {_got(points, 40)}")
        criteria.append(Criterion(text=text, points=float(points), tags=_string_list(item.get("tags"), f"{where}.tags")))
    if not any(c.points > 0 for c in criteria):
        raise DataError(f"{label}: field 'rubrics' has no criterion with positive points, so the example's score is undefined")
    tags = _string_list(row.get("example_tags"), f"{label}: field 'example_tags'")
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + list(conversation)
    text = "\n".join(f"{m['role']}: {m['content']}" for m in conversation)
    prompt_id = row.get("prompt_id")
    meta = {"prompt_id": str(prompt_id)} if isinstance(prompt_id, str | int) and not isinstance(prompt_id, bool) else {}
    return Prompt(index=i, text=text, messages=tuple(messages), meta=meta, rubric=tuple(criteria), tags=tags,
                  conversational=True)


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
    """Validated prompts. Every unreadable file and malformed row is a ``DataError`` naming the
    source, the row and the field."""
    check_prompt_template(prompt_template, prompt_field)
    if limit is not None and limit < 1:
        raise DataError(f"limit must be at least 1 (None: every row), got {limit}")
    rows, where = _read_rows(path, name, split)
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise DataError(f"{where}: no rows")
    prompts = []
    for i, (number, row) in enumerate(rows):
        label = f"{where}: row {number}"
        if format == "healthbench":
            prompts.append(_healthbench_prompt(i, row, label, system_prompt))
            continue
        field = prompt_field
        if field not in row and field == "problem" and "prompt" in row:
            field = "prompt"  # TRL's column: a string, or chat messages (its conversational format)
        if field not in row:
            raise DataError(f"{label}: missing field '{prompt_field}' (fields: {sorted(row)}); data.prompt_field "
                            "names the prompt column (a 'prompt' column, TRL's name, is read when it is left at 'problem')")
        text, conversation = row[field], None
        if field == "prompt" and isinstance(text, list):
            conversation = _conversation(text, label)
            if not any(m["role"] == "user" and m["content"].strip() for m in conversation):
                raise DataError(f"{label}: field 'prompt' has no user message with text")
            # what an anchor shown the question reads: the one message, or the conversation as HealthBench's
            text = conversation[0]["content"] if len(conversation) == 1 else \
                "\n".join(f"{m['role']}: {m['content']}" for m in conversation)
        elif not isinstance(text, str) or not text.strip():
            raise DataError(f"{label}: field '{field}' must be a non-empty string, got {_got(text)}")
        gold = None
        if answer_field is not None:
            value = row.get(answer_field)
            if value is None and require_answer:
                raise DataError(f"{label}: missing field '{answer_field}' (needed by the gold estimator / evaluation)")
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, str | int | float):
                    raise DataError(f"{label}: field '{answer_field}' must be a string or number, got {_got(value)}")
                if isinstance(value, float) and not math.isfinite(value):  # NaN, Infinity, 1e999
                    raise DataError(f"{label}: field '{answer_field}' is {value}, not an answer")
                gold = _gold(value, answer_format)
        messages = []
        if system_prompt and not (conversation and conversation[0]["role"] == "system"):
            messages.append({"role": "system", "content": system_prompt})
        if conversation:  # used as given, as TRL does: data.prompt_template shapes string prompts only
            messages.extend(conversation)
        else:
            messages.append({"role": "user", "content": render_prompt(prompt_template, text)})
        meta = {k: v for k, v in row.items() if k not in (field, answer_field) and isinstance(v, str | int | float)}
        prompts.append(Prompt(index=i, text=text, messages=tuple(messages), gold=gold, meta=meta,
                              conversational=conversation is not None))
    chats = sum(p.conversational for p in prompts)
    if chats and prompt_template != "{problem}":
        logger.warning(f"{where}: {chats} row(s) give their prompt as chat messages, used as written: "
                       f"data.prompt_template ({prompt_template!r:.60}) shapes only the string prompts")
    return prompts


def encode_prompt(prompt: Prompt, tokenizer, *, use_chat_template: bool = True, chat_template_kwargs: dict | None = None) -> list[int]:
    """Token ids the policy continues for ``prompt``."""
    return chat_ids(tokenizer, prompt.messages, use_chat_template=use_chat_template,
                    chat_template_kwargs=chat_template_kwargs)


@dataclass
class PromptOrder:
    """Which prompts each step uses: a seeded permutation per epoch, so step s's batch is a pure
    function of (seed, s). Resuming at step s therefore needs no saved cursor beyond s itself.
    An epoch's permutation is drawn once and kept (the two latest), so a step costs O(prompts
    per step), not O(dataset)."""

    size: int
    per_step: int
    seed: int
    shuffle: bool = True
    _epochs: dict = field(default_factory=dict, repr=False, compare=False)

    def _epoch(self, epoch: int) -> list[int]:
        order = self._epochs.get(epoch)
        if order is None:
            order = list(range(self.size))
            if self.shuffle:
                random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            if len(self._epochs) >= 2:
                self._epochs.pop(min(self._epochs))
            self._epochs[epoch] = order
        return order

    def batch(self, step: int) -> list[int]:
        start = step * self.per_step
        out = []
        for position in range(start, start + self.per_step):
            epoch, offset = divmod(position, self.size)
            out.append(self._epoch(epoch)[offset])
        return out


def load_split(settings: TaskSettings, which: str) -> list[Prompt]:
    """The training (``"train"``) or evaluation (``"eval"``) prompts the task's settings name.

    Evaluation needs a gold answer (or, for HealthBench, the physician rubric) on every row;
    training needs one only for the ``gold`` estimator. Evaluation rows of a reasoning-gym task
    whose question is also a training row's are dropped (``cat.tasks.reasoning_gym.held_out``).
    """
    d = settings.data
    from cat.tasks import reasoning_gym

    train_source, test_source = reasoning_gym.sources(d, settings.eval)
    gym_source = train_source if which == "train" else test_source
    if gym_source is not None:
        prompts = reasoning_gym.load_gym_prompts(gym_source, prompt_template=d.prompt_template,
                                                 system_prompt=settings.model.system_prompt)
        if which == "eval":
            prompts = reasoning_gym.held_out(prompts, load_split(settings, "train"))
        return prompts
    if which == "train":
        path, name, split, limit = d.path, d.name, d.split, d.limit
        require = settings.train_needs_answers
    else:
        e = settings.eval
        path, name, split, limit = e.path, e.name, e.split, e.limit
        require = True
    return load_prompts(
        path, format=d.format, name=name, split=split, prompt_field=d.prompt_field, answer_field=d.answer_field,
        answer_format=d.answer_format, prompt_template=d.prompt_template, system_prompt=settings.model.system_prompt,
        limit=limit, require_answer=require and d.format == "qa",
    )

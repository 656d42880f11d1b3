"""reasoning-gym tasks as a data source: ``data.path: reasoning-gym:TASK``.

The ``reasoning-gym`` package (``pip install reasoning-gym``, the ``reasoning`` extra) generates
100+ procedural reasoning tasks (``chain_sum``, ``basic_arithmetic``, ``gsm_symbolic``,
``leg_counting``, ...), each with its generator's settings and its own answer scorer
(``score_answer(answer, entry) -> float in [0, 1]``). A source here is a task name, its settings
(``task_config``), a seed and a number of rows (``limit``); each row becomes a Prompt whose text is
the generated question and whose gold answer is the generator's, kept only for measurement as in
the rest of the data layer. The row itself (question, answer, metadata) rides along as the
prompt's ``scorer`` (:class:`GymEntry`), so the task's own scorer can grade an answer: in
evaluation, and in the ``reasoning_gym`` reward, which refuses any estimator but ``gold``.

Seeds. A generator draws row ``i`` from ``random.Random(seed + i)`` (97 of the 106 tasks in
0.1.25 say so in their code), so seeds 0 and 1 share all but one row: two sources of one task are
disjoint only when their ranges ``[seed, seed + rows)`` do not overlap, and that is what is
checked. Disjoint ranges still give the same question twice where a task has few distinct ones
(chain_sum with two or three terms of one or two digits), so evaluation rows whose question also
occurs among the training rows are dropped and counted (:func:`held_out`).

Not here: the reward (``cat.rewards.reasoning_gym``) and reading the answer from a reply (the
run's answer chain, ``cat.rewards.answers``). The package is imported only when a source names it.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from cat.errors import ConfigError
from cat.templates import render_prompt
from cat.types import Prompt

logger = logging.getLogger(__name__)

PREFIX = "reasoning-gym:"
OWN_SETTINGS = ("seed", "size")
"""Generator settings this project sets itself, from ``seed`` and ``limit``."""


def is_gym(path: str | None) -> bool:
    return path is not None and path.startswith(PREFIX)


def _package():
    try:
        import reasoning_gym
    except ImportError:
        raise ConfigError("reasoning-gym data sources need the reasoning-gym package: "
                          "pip install reasoning-gym (or the extra: pip install 'cat-rl[reasoning]')") from None
    return reasoning_gym


def _tasks() -> dict[str, tuple[type, type]]:
    """Task name -> (dataset class, settings dataclass), as registered by reasoning-gym."""
    _package()
    from reasoning_gym.factory import DATASETS

    return DATASETS


@dataclass(frozen=True)
class GymSource:
    """One reasoning-gym source: ``rows`` rows of ``task`` with ``settings``, seeds ``seed`` ..
    ``seed + rows - 1``. ``where`` names its config section in messages (``data``, ``eval``)."""

    task: str
    settings: dict[str, Any]
    seed: int
    rows: int | None
    where: str

    @property
    def seeds(self) -> range:
        return range(self.seed, self.seed + len(self.dataset()))

    def dataset(self):
        """The task's generator (a reasoning-gym ``ProceduralDataset``), built once per source."""
        return _dataset(self.task, json.dumps(self.settings, sort_keys=True), self.seed, self.rows, self.where)


def task_name(path: str, where: str) -> str:
    """The task a ``reasoning-gym:TASK`` path names; an unknown one is refused with close matches."""
    name = path.removeprefix(PREFIX).strip()
    tasks = _tasks()
    if name not in tasks:
        close = difflib.get_close_matches(name, tasks, n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(tasks))}"
        raise ConfigError(f"{where}.path {path!r}: reasoning-gym has no task {name!r}{hint}")
    return name


@lru_cache(maxsize=16)
def _dataset(task: str, settings_json: str, seed: int, rows: int | None, where: str):
    settings = json.loads(settings_json)
    dataset_cls, settings_cls = _tasks()[task]
    known = [f.name for f in dataclasses.fields(settings_cls) if f.name not in OWN_SETTINGS]
    for key in settings:
        if key in OWN_SETTINGS:
            own = "seed" if key == "seed" else "limit"
            raise ConfigError(f"{where}.task_config sets {key!r}: set {where}.{own} instead")
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"{where}.task_config: {task} has no setting {key!r}{hint}; its settings: {', '.join(known)}")
    sized = {} if rows is None else {"size": rows}
    try:
        config = settings_cls(**settings, seed=seed, **sized)
        return dataset_cls(config=config)
    except Exception as exc:  # noqa: BLE001 - the generator's own check (AssertionError, TypeError, ValueError)
        raise ConfigError(f"{where}.task_config {settings}: the {task} generator refuses it: "
                          f"{type(exc).__name__}: {exc}") from None


def source(path: str, settings: dict[str, Any], seed: int, rows: int | None, where: str) -> GymSource:
    """A checked source: the task exists and its generator accepts the settings."""
    out = GymSource(task_name(path, where), dict(settings), seed, rows, where)
    out.dataset()
    return out


def check_disjoint(train: GymSource, test: GymSource) -> None:
    """Refuse evaluation rows drawn from seeds the training rows use (same task only)."""
    if train.task != test.task:
        return
    a, b = train.seeds, test.seeds
    if a.start < b.stop and b.start < a.stop:
        raise ConfigError(
            f"data.seed {train.seed} and eval.seed {test.seed} overlap: reasoning-gym draws row i from seed + i, so "
            f"training uses seeds {a.start}..{a.stop - 1} and evaluation {b.start}..{b.stop - 1}; set eval.seed to "
            f"{a.stop} or more (or leave it unset: it then starts right after the training rows)")


@dataclass(frozen=True)
class GymEntry:
    """One generated row (``question``, ``answer``, ``metadata``) and its generator, so that the
    task's own scorer can grade an answer. It holds the gold answer: like ``Prompt.gold`` it is read
    only by evaluation and by the ``reasoning_gym`` reward (with the ``gold`` estimator)."""

    task: str
    entry: dict[str, Any]
    dataset: Any = field(repr=False, compare=False)

    def score(self, answer: str | None) -> float:
        """The task's score of ``answer`` (already read from the reply) in [0, 1]; no answer is 0.
        Scorers give partial credit for some near misses (chain_sum: ``1-103`` for ``-103`` is 0.8)."""
        if answer is None:
            return 0.0
        try:
            value = float(self.dataset.score_answer(answer, self.entry))
        except Exception:  # noqa: BLE001 - a scorer that cannot parse the student's answer: it is not right
            return 0.0
        return min(max(value, 0.0), 1.0)


def load_gym_prompts(src: GymSource, *, prompt_template: str = "{problem}",
                     system_prompt: str | None = None) -> list[Prompt]:
    """The source's rows as Prompts: the question as ``text``, the generator's answer as ``gold``,
    the row as ``scorer``; ``meta`` names the task and the row only (no answer in it: meta reaches
    TRL-style reward functions as columns)."""
    dataset = src.dataset()
    prompts = []
    for i in range(len(dataset)):
        entry = dataset[i]
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else [])
        messages.append({"role": "user", "content": render_prompt(prompt_template, entry["question"])})
        prompts.append(Prompt(index=i, text=entry["question"], messages=tuple(messages), gold=str(entry["answer"]),
                              meta={"task": src.task, "seed": src.seed + i},
                              scorer=GymEntry(src.task, entry, dataset)))
    return prompts


def held_out(test: list[Prompt], train: list[Prompt]) -> list[Prompt]:
    """``test`` without the prompts whose question also occurs in ``train`` (logged with a count)."""
    seen = {p.text for p in train}
    kept = [p for p in test if p.text not in seen]
    if len(kept) < len(test):
        logger.info(f"evaluation: dropped {len(test) - len(kept)} of {len(test)} reasoning-gym question(s) that also "
                    f"occur among the {len(train)} training rows; {len(kept)} left")
    if not kept:
        raise ConfigError(f"every one of the {len(test)} evaluation questions also occurs among the training rows: "
                          "the task has too few distinct questions for these settings; widen eval.task_config")
    return kept


def sources(data, evaluation) -> tuple[GymSource | None, GymSource | None]:
    """The training and evaluation sources that the ``data`` and ``eval`` config sections name
    (None where a section names no reasoning-gym task), checked. Evaluation defaults, where it
    names the training task: ``task_config`` the training settings, ``seed`` the first one after the
    training rows (with another task: the generator's defaults, seed 0)."""
    train = source(data.path, data.task_config, data.seed, data.limit, "data") if is_gym(data.path) else None
    if not is_gym(evaluation.path):
        return train, None
    same = train is not None and task_name(evaluation.path, "eval") == train.task
    settings = evaluation.task_config if evaluation.task_config is not None else (train.settings if same else {})
    seed = evaluation.seed if evaluation.seed is not None else (train.seeds.stop if same else 0)
    test = source(evaluation.path, settings, seed, evaluation.limit, "eval")
    if train is not None:
        check_disjoint(train, test)
    return train, test

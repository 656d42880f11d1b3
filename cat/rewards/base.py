"""The reward contract, its registry and the built-in ``math_equivalence`` and ``length_penalty``:
how each rollout of a group is scored against the group's reference.

The contract (:class:`Reward`) is one batch-level call per step::

    reward.score(groups, references, ctx) -> Scored(scores, metrics, audit)

with one :class:`~cat.types.GroupScore` per group. Its ``rewards`` hold one value per rollout:
a float, or ``None`` for "this function does not apply to this rollout" (TRL's meaning: it adds
nothing to the rollout's weighted sum). ``rewards=None`` for the whole group means the group
cannot be scored (no usable reference, a teacher failure): the trainer drops it from the update
and counts it; it never becomes 0. A reward declares what it needs (``needs``: ``"anchor"``,
``"run_dir"``) and gets it in ``ctx`` and ``open``; ``preflight(config)`` checks its templates
and settings before any model is loaded.

Write one by subclassing :class:`RewardFunction` (batch-level) or :class:`GroupReward`
(``score_group(group, reference) -> GroupScore``), register it with ``@register_reward(name)``
and list it in ``reward.functions`` (with ``reward.weights``); a TRL-style per-completion
function ``f(completions, **kwargs) -> list[float | None]`` plugs in through
``from_completion_fn``. Several functions combine as ``sum(weight * reward)`` per rollout over
those that returned a value, each logged as ``reward/NAME/mean``.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from math import isnan
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from cat.config import Config, ReadsThroughToConfig, warn_whole_config
from cat.errors import CatError, ConfigError
from cat.registry import Registry
from cat.rewards.answers import AnswerChain
from cat.rewards.math import answers_match
from cat.types import Group, GroupScore, Reference

if TYPE_CHECKING:
    from cat.config import AnchorConfig, JudgeConfig, RewardConfig, RubricConfig

NEEDS = frozenset({"anchor", "run_dir"})


class RewardError(CatError):
    """A reward broke its contract (wrong number of scores, a non-numeric value)."""


@dataclass(frozen=True)
class RewardContext:
    """What a reward may use while scoring one step: the frozen anchor (only for rewards that
    need it, else None), a seed for anything it samples, and the step (0-based)."""

    anchor: Any = None
    seed: int = 0
    step: int = 0


@dataclass
class Scored:
    """A reward's output for one step: one GroupScore per group, step metrics (logged as given:
    name them ``judge/...``, ``rubric/...``), and audit rows for ``rubrics.jsonl``."""

    scores: list[GroupScore]
    metrics: dict[str, float] = field(default_factory=dict)
    audit: list[dict] = field(default_factory=list)


@runtime_checkable
class Reward(Protocol):
    """What the trainer calls. :class:`RewardFunction` gives every member but ``score`` a default."""

    needs: frozenset[str]
    judge: Any

    def open(self, run_dir: Path | None) -> None: ...

    def score(self, groups: list[Group], references: list[Reference], ctx: RewardContext) -> Scored: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class RewardSettings(ReadsThroughToConfig):
    """What a reward is built from: the sections of the run it may read, not the whole config tree
    (``from_config`` picks them, in this one place).

    ``reward``, ``judge``, ``rubric``, ``anchor``: those config sections themselves (``anchor``:
    how the anchor writes a rubric). ``answer_of``: the run's answer chain (config ``answer``).
    ``steps``: the run's length (``run.steps``; TRL's ``trainer_state.max_steps``).
    ``label_columns``: the columns a label-free run withholds (``data.answer_field``,
    ``data.label_fields``). ``open_judge(cache_path)`` builds the run's judge (config ``judge``),
    to be called when the reward is opened, since a reward is built before the run loads any model.

    A plug-in reward written for the whole Config keeps working: it reads ``self.config.reward``
    as before (a field here), and a section that is not a field (``config.data``) is read from
    the run's Config with a DeprecationWarning naming what to read instead.
    """

    reward: RewardConfig
    answer_of: AnswerChain
    judge: JudgeConfig
    rubric: RubricConfig
    anchor: AnchorConfig
    steps: int
    label_columns: tuple[str, ...]
    open_judge: Callable[[Path | None], Any] | None = field(default=None, repr=False, compare=False)
    _config: Config | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_config(cls, config: Config) -> RewardSettings:
        """The settings a run of ``config`` builds its rewards with."""
        from cat.rewards.judge import JudgeOpener

        return cls(reward=config.reward, answer_of=AnswerChain.from_config(config.answer), judge=config.judge,
                   rubric=config.rubric, anchor=config.anchor, steps=config.run.steps,
                   label_columns=tuple(dict.fromkeys(f for f in (config.data.answer_field, *config.data.label_fields)
                                                     if f)),
                   open_judge=JudgeOpener(config), _config=config)

    _KIND: ClassVar[str] = "a reward"
    _READ_INSTEAD: ClassVar[dict[str, str]] = {  # where the settings a reward read from the whole Config are now
        "answer": "settings.answer_of (the run's AnswerChain, built from config.answer)",
        "run": "settings.steps (run.steps)",
        "data": "settings.label_columns (data.answer_field, data.label_fields)",
        "generation": "settings.open_judge(cache_path) for the judge (it runs with the run's generation settings)",
        "model": "settings.open_judge(cache_path) for the judge (it runs in model.dtype on model.device)",
    }


def reward_settings(settings, *, stacklevel: int = 1) -> RewardSettings:
    """``settings`` as :class:`RewardSettings`: a whole Config (a reward built the old way,
    ``cls(config)``) is turned into them with a DeprecationWarning at ``stacklevel`` (1: this
    function's caller, 2: its caller's caller, ...)."""
    if isinstance(settings, RewardSettings):
        return settings
    if not isinstance(settings, Config):
        raise TypeError(f"a reward is built from RewardSettings, not {type(settings).__name__}: "
                        "RewardSettings.from_config(config), or build_rewards(config)")
    warn_whole_config("a reward", "cat.rewards.build_rewards(config), or cls(RewardSettings.from_config(config))",
                      stacklevel=stacklevel + 2, built_from="RewardSettings")
    return RewardSettings.from_config(settings)


def _constructor_depth(obj, skip: int = 0) -> int:
    """How many ``__init__`` frames of ``obj`` are on the stack from this function's caller up
    (``skip`` frames above it), a subclass's ``__init__`` calling its base's: a warning that
    points past them all points at the line that built ``obj``."""
    frame, depth = sys._getframe(1 + skip), 0
    while frame is not None and frame.f_code.co_name == "__init__" and frame.f_locals.get("self") is obj:
        frame, depth = frame.f_back, depth + 1
    return depth


class RewardFunction:
    """Base of every reward: built once per run from :class:`RewardSettings`, opened with the run
    directory, called once per step on the step's groups (a multi-process run: this rank's groups).

    ``needs`` (class or instance attribute): ``"anchor"`` to receive the frozen pi_0 anchor in
    ``ctx.anchor``; ``"run_dir"`` to be opened with the run directory (caches). ``judge``: a
    reward that owns a judge exposes it here (it also grades HealthBench evaluations).
    ``self.settings`` holds the settings (``self.config`` is the same object, the name plug-ins
    written for the whole Config read)."""

    needs: frozenset[str] = frozenset()
    judge: Any = None

    def __init__(self, settings: RewardSettings):
        self.settings = reward_settings(settings, stacklevel=_constructor_depth(self) + 1)  # past every __init__

    @property
    def config(self) -> RewardSettings:
        return self.settings

    @config.setter
    def config(self, value) -> None:  # a plug-in written for the whole Config sets it in its own __init__
        self.settings = reward_settings(value, stacklevel=_constructor_depth(self, skip=1) + 2)

    @classmethod
    def preflight(cls, config) -> None:
        """Check templates and settings before any model is loaded (raise ConfigError). It sees the
        whole Config, as it checks combinations (a reward that needs the gold estimator)."""

    def open(self, run_dir: Path | None) -> None:
        """Acquire what the reward holds for the run (a judge, a cache file); fail fast here."""

    def score(self, groups: list[Group], references: list[Reference], ctx: RewardContext) -> Scored:
        raise NotImplementedError

    def close(self) -> None:
        """Release what ``open`` acquired."""


class GroupReward(RewardFunction):
    """A reward that scores each group on its own: implement ``score_group``."""

    def score_group(self, group: Group, reference: Reference) -> GroupScore:
        raise NotImplementedError

    def score(self, groups: list[Group], references: list[Reference], ctx: RewardContext) -> Scored:
        return Scored([self.score_group(g, r) for g, r in zip(groups, references, strict=True)])


def _check_reward(name: str, obj) -> None:
    if not (isinstance(obj, type) and callable(getattr(obj, "score", None))):
        raise TypeError(f"reward '{name}' must be a class with score(groups, references, ctx) -> Scored "
                        "(subclass cat.rewards.RewardFunction or GroupReward)")
    needs = getattr(obj, "needs", frozenset())
    if not isinstance(needs, (frozenset, set)) or needs - NEEDS:
        raise TypeError(f"reward '{name}': needs must be a set drawn from {sorted(NEEDS)}, got {needs!r}")


REWARDS: Registry[type] = Registry("reward", check=_check_reward)
register_reward = REWARDS.register


@register_reward("math_equivalence")
class MathEquivalence(GroupReward):
    """1 when a rollout's final answer (the run's answer chain, ``answer``) is equivalent to the
    reference's answer, else 0.

    No reference answer -> the group is not scored (no signal), never all zeros.
    """

    def __init__(self, settings: RewardSettings):
        super().__init__(settings)
        self.mode, self.timeout_s = self.settings.reward.mode, self.settings.reward.timeout_s
        self.answer_of = self.settings.answer_of

    def __call__(self, group: Group, reference: Reference) -> GroupScore:
        return self.score_group(group, reference)

    def score_group(self, group: Group, reference: Reference) -> GroupScore:
        if reference.answer is None:
            return GroupScore(rewards=None, reason="reference has no final answer")
        answers = [self.answer_of(c.text) for c in group.completions]
        rewards = tuple(
            1.0 if answers_match(a, reference.answer, mode=self.mode, timeout_s=self.timeout_s) else 0.0
            for a in answers
        )
        answered = sum(a is not None for a in answers) / max(len(answers), 1)
        return GroupScore(rewards=rewards, info={"answer_rate": answered})


@register_reward("length_penalty")
class LengthPenalty(GroupReward):
    """``reward.length_penalty`` (paper: -1) for a completion longer than
    ``reward.length_penalty_tokens`` tokens, else 0. Added automatically (weight 1) when
    ``reward.length_penalty`` is not 0 and ``reward.functions`` does not list it."""

    def score_group(self, group: Group, reference: Reference) -> GroupScore:
        r = self.settings.reward
        over = [c.length > r.length_penalty_tokens for c in group.completions]
        return GroupScore(rewards=tuple(r.length_penalty * o for o in over),
                          info={"length_penalized": sum(over) / max(len(over), 1)})


def from_completion_fn(fn: Callable[..., list[float | None]]) -> type:
    """Adapt a TRL reward function, ``f(completions, **kwargs) -> list[float | None]``.

    Called as TRL calls it, every argument by keyword, one entry per rollout of the group:
    ``prompts`` and ``completions`` (strings; for a row whose ``prompt`` column held chat messages,
    TRL's conversational format: the prompt's messages, and ``[{"role": "assistant", "content":
    text}]`` per completion), ``completion_ids``, ``trainer_state`` (``global_step``, ``max_steps``),
    ``log_metric(name, value)`` (logged as ``reward/FUNCTION/NAME``, the mean over the step's
    groups), ``log_extra(column, values)`` (accepted and dropped: ``samples.jsonl`` holds the
    rollouts), then the reference (``reference``: its text, ``reference_answer``: its answer) and
    the row's other columns (strings and numbers; a column with one of these names is not passed).
    In a label-free run the label firewall (``cat.teacher.firewall``) has taken out the
    label-bearing columns (``data.answer_field``, ``data.label_fields``): the reference is the
    teacher's. Only a
    ``gold`` run passes them, with ``reference_answer`` the label. ``None`` follows TRL: that rollout gets nothing from this function (the other
    functions' weighted rewards still count); a rollout no function scored gets 0.
    """
    signature = inspect.signature(fn)

    class _Adapted(RewardFunction):
        def score(self, groups: list[Group], references: list[Reference], ctx: RewardContext) -> Scored:
            state = SimpleNamespace(global_step=ctx.step, max_steps=self.settings.steps)
            return Scored([self.score_group(g, r, state) for g, r in zip(groups, references, strict=True)])

        def score_group(self, group: Group, reference: Reference, state) -> GroupScore:
            n = len(group.completions)
            taken = {"prompts", "completions", "completion_ids", "trainer_state", "log_metric", "log_extra",
                     "reference", "reference_answer"}
            columns = {k: [v] * n for k, v in group.prompt.meta.items() if k not in taken}
            if group.prompt.conversational:
                prompts = [list(group.prompt.messages)] * n
                completions = [[{"role": "assistant", "content": t}] for t in group.texts]
            else:
                prompts, completions = [group.prompt.text] * n, group.texts
            logged: dict[str, float] = {}
            kwargs = dict(prompts=prompts, completions=completions,
                          completion_ids=[list(c.token_ids) for c in group.completions], trainer_state=state,
                          log_metric=lambda name, value: logged.__setitem__(f"{fn.__name__}/{name}", float(value)),
                          log_extra=lambda column, values: None,
                          reference=[reference.text] * n, reference_answer=[reference.answer] * n, **columns)
            try:
                signature.bind(**kwargs)
            except TypeError as exc:
                raise RewardError(
                    f"reward function {fn.__name__} cannot be called with what a reward receives ({exc}): prompts, "
                    f"completions, completion_ids, trainer_state, log_metric, log_extra, reference, "
                    f"reference_answer and the columns {sorted(columns) or '(none)'}. A label-free run withholds "
                    f"the label columns {list(self.settings.label_columns)} (data.answer_field, data.label_fields); "
                    f"under estimator gold the label is reference_answer. Give "
                    "the function **kwargs and read what it needs from them"
                ) from None
            scores = fn(**kwargs)
            if not isinstance(scores, (list, tuple)) or len(scores) != n:
                got = len(scores) if isinstance(scores, (list, tuple)) else type(scores).__name__
                raise RewardError(f"reward function {fn.__name__} returned {got} scores for {n} completions")
            bad = [s for s in scores if s is not None and not isinstance(s, (int, float))]
            if bad:
                raise RewardError(f"reward function {fn.__name__} returned {bad[0]!r}: give a number or None")
            return GroupScore(rewards=tuple(None if s is None else float(s) for s in scores), info=logged)

    _Adapted.__name__ = f"Adapted_{fn.__name__}"
    _Adapted.__doc__ = fn.__doc__
    return _Adapted


class WeightedRewards(RewardFunction):
    """The run's reward: ``sum(weight_i * reward_i)`` per rollout over the functions that returned a
    value for it (TRL's nansum: a rollout none scored gets 0; their share is ``reward/none_rate``).
    A group any function could not score is not scored. Per scored group, each function's mean
    goes into the group's info as ``NAME/mean``, beside the functions' own info keys; the trainer
    logs the mean of each over the step's groups as ``reward/KEY`` (so ``reward/NAME/mean``)."""

    def __init__(self, functions: list[tuple[str, float, RewardFunction]]):
        self.functions = functions
        self.needs = frozenset().union(*(f.needs for _, _, f in functions))

    @property
    def judge(self):
        return next((f.judge for _, _, f in self.functions if f.judge is not None), None)

    def open(self, run_dir: Path | None) -> None:
        for _, _, f in self.functions:
            f.open(run_dir)

    def close(self) -> None:
        for _, _, f in self.functions:
            f.close()

    def score(self, groups: list[Group], references: list[Reference], ctx: RewardContext) -> Scored:
        parts = []
        metrics: dict[str, float] = {}
        audit: list[dict] = []
        for name, _, f in self.functions:
            ctx_f = ctx if "anchor" in f.needs else RewardContext(None, ctx.seed, ctx.step)
            out = f.score(groups, references, ctx_f)
            _check_scored(name, out, groups)
            parts.append(out.scores)
            metrics.update(out.metrics)
            audit.extend(out.audit)
        reserved = {"mean", "std", "none_rate", *(f"{name}/mean" for name, _, _ in self.functions)}
        combined = []
        for gi, group in enumerate(groups):
            per_fn = [p[gi] for p in parts]
            info: dict[str, float] = {}
            for (name, _, _), s in zip(self.functions, per_fn, strict=True):
                for key, value in s.info.items():
                    if key in reserved or key in info:
                        raise RewardError(f"reward {name}: info key {key!r} is taken (by the trainer's own "
                                          "reward/ metrics or another reward function); rename it")
                    info[key] = value
            failed = next((s for s in per_fn if s.rewards is None), None)
            if failed is not None:
                combined.append(GroupScore(rewards=None, info=info, reason=failed.reason))
                continue
            totals, none = [], 0
            for ri in range(len(group.completions)):
                values = [(w, s.rewards[ri]) for (_, w, _), s in zip(self.functions, per_fn, strict=True)
                          if s.rewards[ri] is not None]
                none += not values
                totals.append(sum(w * v for w, v in values))
            # per group, so that the trainer's averages over groups (after gathering every rank's) give the step's
            for (name, _, _), s in zip(self.functions, per_fn, strict=True):
                values = [v for v in s.rewards if v is not None]
                if values:
                    info[f"{name}/mean"] = sum(values) / len(values)
            info["none_rate"] = none / max(len(group.completions), 1)
            combined.append(GroupScore(rewards=tuple(totals), info=info))
        return Scored(combined, metrics, audit)


def _check_scored(name: str, out, groups: list[Group]) -> None:
    if not isinstance(out, Scored):
        raise RewardError(f"reward {name}: score() returned {type(out).__name__}, expected cat.rewards.Scored")
    if len(out.scores) != len(groups):
        raise RewardError(f"reward {name}: {len(out.scores)} group scores for {len(groups)} groups")
    for group, s in zip(groups, out.scores, strict=True):
        if s.rewards is None:
            continue
        if len(s.rewards) != len(group.completions):
            raise RewardError(f"reward {name}: {len(s.rewards)} rewards for a group of {len(group.completions)} "
                              f"rollouts (prompt {group.prompt.text[:60]!r})")
        for v in s.rewards:
            if v is not None and (not isinstance(v, (int, float)) or isnan(v)):
                raise RewardError(f"reward {name}: reward {v!r} for a rollout of prompt {group.prompt.text[:60]!r}; "
                                  "give a number, or None where it does not apply")


def reward_names(config) -> list[tuple[str, float]]:
    """(name, weight) of the run's reward functions: ``reward.functions`` / ``reward.weights``, or
    ``reward.name`` alone; plus ``length_penalty`` when ``reward.length_penalty`` is set."""
    r = config.reward
    names = list(r.functions) if r.functions is not None else [r.name]
    weights = list(r.weights) if r.weights is not None else [1.0] * len(names)
    pairs = list(zip(names, weights, strict=True))
    if r.length_penalty != 0 and "length_penalty" not in names:
        pairs.append(("length_penalty", 1.0))
    return pairs


def preflight_rewards(config) -> None:
    """Every reward function named by the config exists and passes its own preflight."""
    for name, _ in reward_names(config):
        REWARDS.get(name).preflight(config)


def build_rewards(config) -> WeightedRewards:
    """The run's reward functions, built from the config's :class:`RewardSettings` and combined."""
    functions = []
    settings = RewardSettings.from_config(config)
    for name, weight in reward_names(config):
        try:
            fn = REWARDS.get(name)(settings)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - a plug-in's constructor, named
            raise ConfigError(f"reward {name} could not be built: {type(exc).__name__}: {exc}") from None
        functions.append((name, weight, fn))
    return WeightedRewards(functions)

"""A Python API for notebooks: a training from a config object, a ``datasets.Dataset`` and reward
callables, no YAML. ::

    from datasets import Dataset
    import cat

    def brevity(completions, **kwargs):                     # a TRL reward function, unchanged
        return [1.0 if len(c) < 200 else 0.0 for c in completions]

    result = cat.train("experiments/tiny_arith_cat.yaml", train_dataset=Dataset.from_list(rows),
                       reward_funcs=["math_equivalence", brevity], reward_weights=[1.0, 0.1],
                       output_dir="runs/notebook", overrides=["run.steps=10"])
    result.evals["after"]["accuracy"], result.metrics[-1]["reward/brevity/mean"]

It runs exactly what ``cat-rl train`` runs. The datasets are written into the run directory
(``data/train-HASH.jsonl``, named by their content) and the config points at them, so the run
directory stays self-contained: calling ``train`` again with the same arguments continues or
finishes the run, and changed data is refused like any changed config. Reward callables are
registered under their ``__name__`` (a later definition with the same name replaces an earlier
one, as re-running a notebook cell does); to resume such a run from the command line, put them
in a module named in ``plugins``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cat.config import Config, config_from_tree, load_config
from cat.errors import ConfigError
from cat.files import write_text_atomic
from cat.run.logs import console


@dataclass
class RunResult:
    run_dir: Path
    evals: dict
    metrics: list[dict]


def _config(config: Config | dict | str | Path | None, overrides: list[str]) -> Config:
    if isinstance(config, Config):
        return config_from_tree(config.model_dump(mode="json"), overrides, source="a Config")
    if isinstance(config, dict):
        return config_from_tree(config, overrides)
    return load_config(config, overrides)


def _write_dataset(dataset: Any, folder: Path, split: str) -> Path:
    """A datasets.Dataset (or a list of dicts) as JSON lines named by their content."""
    rows = dataset.to_list() if hasattr(dataset, "to_list") else list(dataset)
    if not rows or not all(isinstance(r, dict) for r in rows):
        raise ConfigError(f"{split}_dataset must be a non-empty datasets.Dataset or list of dicts")
    text = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows)
    path = folder / f"{split}-{hashlib.sha256(text.encode()).hexdigest()[:12]}.jsonl"
    if not path.exists():
        write_text_atomic(path, text)
    return path


def _register(fn) -> str:
    from cat.rewards import REWARDS, RewardFunction, from_completion_fn, register_reward

    if isinstance(fn, str):
        REWARDS.get(fn)
        return fn
    if isinstance(fn, type) and issubclass(fn, RewardFunction):
        name = getattr(fn, "reward_name", fn.__name__)
        register_reward(name, replace=True)(fn)
        return name
    if callable(fn) and getattr(fn, "__name__", "<lambda>") != "<lambda>":
        register_reward(fn.__name__, replace=True)(from_completion_fn(fn))
        return fn.__name__
    raise ConfigError(f"reward_funcs: {fn!r} is neither a registered reward name, a RewardFunction subclass, "
                      "nor a named TRL reward function f(completions, **kwargs)")


def train(config: Config | dict | str | Path | None = None, *, train_dataset=None, eval_dataset=None,
          reward_funcs: list | None = None, reward_weights: list[float] | None = None,
          output_dir: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
          progress: bool = False) -> RunResult:
    """Run (or continue) a training; returns its run directory, evaluations and metric rows.

    ``config``: a Config, a dict of sections, a YAML path, or None (the defaults).
    ``train_dataset`` / ``eval_dataset``: a ``datasets.Dataset`` (or list of dicts) with the
    config's ``data.prompt_field`` (and, to measure, ``answer_field``) columns; they replace
    ``data.path`` / ``eval.path``. ``reward_funcs``: registered reward names, RewardFunction
    subclasses, or TRL-style functions; they replace the config's reward functions, weighted by
    ``reward_weights``. ``overrides``: ``section.key=value`` strings applied last.

    Progress is logged under the ``cat`` logger; unless the application gave it a handler, one
    line per step shows on stdout (:func:`cat.run.logs.console`).
    """
    from cat.registry import import_plugin
    from cat.tools.train import train_run

    console()
    overrides = list(overrides)
    base = _config(config, overrides)
    for plugin in base.plugins:  # reward names below may be a plug-in's
        import_plugin(plugin)
    run_dir = Path(output_dir or base.run.output_dir)
    extra = []
    if train_dataset is not None:
        extra.append(f"data.path={json.dumps(str(_write_dataset(train_dataset, run_dir / 'data', 'train')))}")
    if eval_dataset is not None:
        extra.append(f"eval.path={json.dumps(str(_write_dataset(eval_dataset, run_dir / 'data', 'eval')))}")
    if reward_funcs is not None:
        names = [_register(f) for f in reward_funcs]
        extra.append(f"reward.functions={json.dumps(names)}")
        extra.append(f"reward.weights={json.dumps(reward_weights)}")
        extra.append(f"reward.name={json.dumps(names[0])}")
    elif reward_weights is not None:
        raise ConfigError("reward_weights without reward_funcs: set reward.weights in the config instead")
    final = _config(config, [*overrides, *extra])
    train_run(final, run_dir, progress=progress)
    from cat.tools.report import read_jsonl

    evals = json.loads((run_dir / "eval.json").read_text()) if (run_dir / "eval.json").exists() else {}
    metrics = read_jsonl(run_dir / "metrics.jsonl")[0] if (run_dir / "metrics.jsonl").exists() else []
    return RunResult(run_dir, evals, metrics)

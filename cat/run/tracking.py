"""Experiment trackers (``run.report_to``): each step's metrics and each evaluation, mirrored.

``metrics.jsonl`` and ``eval.json`` in the run directory stay the record; trackers are a view of
them. The trackers are accelerate's (``accelerate.tracking``): ``tensorboard`` writes event files
under ``RUN_DIR/tensorboard``; ``wandb``, ``trackio``, ``mlflow``, ``comet_ml``, ``aim``,
``clearml``, ``dvclive`` and ``swanlab`` log to a project named ``run.tracker_project`` (wandb and
trackio name the run PARENT/DIR after its directory), with
``run.tracker_kwargs[name]`` passed to that library's init (``{wandb: {mode: offline}}`` needs no
network). Only rank 0 of a multi-process run reports.

A tracker that cannot start stops the run before any step (the message names it); one that fails
while logging is reported once on stderr and dropped, and the run goes on: its rows are in the
JSONL files regardless.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from cat.errors import ConfigError

logger = logging.getLogger(__name__)

TRACKERS = ("tensorboard", "wandb", "trackio", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab")
_PACKAGE = {"comet_ml": "comet-ml"}


def check_available(names: list[str]) -> None:
    """Refuse trackers whose library is not installed, before anything expensive runs."""
    from accelerate.utils import imports

    for name in names:
        available = getattr(imports, f"is_{name}_available", None)
        if available is None:
            raise ConfigError(f"run.report_to names {name}, which this accelerate ({_version()}) has no tracker "
                              "for: pip install -U accelerate")
        if not available():
            raise ConfigError(f"run.report_to names {name}, which is not installed here: "
                              f"pip install {_PACKAGE.get(name, name)}")


def _version() -> str:
    from accelerate import __version__

    return __version__


def flat_config(tree: dict, prefix: str = "") -> dict[str, Any]:
    """A config tree as ``section.key`` -> scalar (lists and mappings as text), for hyperparameter panels."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_config(value, f"{name}."))
        else:
            out[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return out


class Trackers:
    """The trackers of one run (empty on ranks other than 0, or when ``report_to`` is empty)."""

    def __init__(self, names: list[str], run_dir: Path, config, *, main: bool):
        self.active: list = []
        if not main or not names:
            return
        from accelerate import PartialState
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        check_available(names)
        PartialState()  # accelerate's trackers log through its state (the Learner's Accelerator made it already)
        run = config.run
        for name in names:
            kwargs = dict(run.tracker_kwargs.get(name, {}))
            if name == "tensorboard":
                tracker = LOGGER_TYPE_TO_CLASS[name]("tensorboard", run_dir, **kwargs)
            else:
                label = f"{run_dir.parent.name}/{run_dir.name}"  # compare's ARM/seedS stay apart
                if name == "wandb":
                    kwargs = {"name": label, "dir": str(run_dir), **kwargs}
                elif name == "trackio":
                    kwargs = {"name": label, **kwargs}
                tracker = LOGGER_TYPE_TO_CLASS[name](run.tracker_project, **kwargs)
            tracker.main_process_only = False  # this class decides which rank reports
            try:
                tracker.start()
                tracker.store_init_configuration(flat_config(config.model_dump(mode="json")))
            except Exception as exc:  # noqa: BLE001 - any library's failure to start, named
                self.close()  # the ones already started
                raise ConfigError(f"run.report_to: the {name} tracker could not start: "
                                  f"{type(exc).__name__}: {exc}") from None
            self.active.append(tracker)

    def log(self, values: dict, step: int) -> None:
        numbers = {k: float(v) for k, v in values.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step" and math.isfinite(v)}
        for tracker in list(self.active):
            try:
                tracker.log(numbers, step=step)
            except Exception as exc:  # noqa: BLE001 - the JSONL files keep the record
                logger.warning(f"warning: the {tracker.name} tracker failed and is dropped for the rest of the run "
                               f"({type(exc).__name__}: {exc}); metrics.jsonl has every row")
                self.active.remove(tracker)

    def log_eval(self, result: dict, step: int) -> None:
        self.log({f"eval/{k}": v for k, v in result.items()
                  if k in ("accuracy", "greedy_accuracy", "score", "greedy_score")}, step)

    def close(self) -> None:
        for tracker in self.active:
            try:
                tracker.finish()
            except Exception as exc:  # noqa: BLE001
                logger.warning(f"warning: the {tracker.name} tracker did not close cleanly: {exc}")
        self.active = []

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

"""The label firewall: what a label-free run's estimators and rewards may see of a prompt.

CaT's claim is that no labelled answer is used in training. In a run whose estimator is not
``gold``, the reference estimator and every reward (built-in, plug-in or a TRL function) receive
the step's groups through :func:`blind`: each prompt without its gold answer (``Prompt.gold``), its
dataset scorer (reasoning-gym's, which holds the answer), its dataset rubric (HealthBench's
physician criteria) and its label-bearing columns (``data.answer_field`` and
``data.label_fields``, such as MATH's ``solution``). What they return can then not depend on a
label, whatever their code does. The full prompts go to the teacher diagnostics, the samples log
and evaluation, which measure against the labels and never feed the update.

A ``gold`` run is reference-based GRPO: it reads labels by definition and sees whole prompts.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from cat.types import Group

if TYPE_CHECKING:
    from cat.config import DataConfig


def label_fields(data: DataConfig) -> frozenset[str]:
    """The columns kept from a label-free run's estimators and rewards (``data.label_fields`` and
    ``data.answer_field``)."""
    return frozenset(data.label_fields) | ({data.answer_field} if data.answer_field else set())


def hidden_fields(estimator: str, data: DataConfig) -> frozenset[str] | None:
    """What a run with the estimator named ``estimator`` keeps from its estimator and rewards: None
    for a ``gold`` run (reference-based GRPO reads labels by definition), else the label columns."""
    return None if estimator == "gold" else label_fields(data)


def blind(groups: list[Group], fields: frozenset[str]) -> list[Group]:
    """The groups with every label taken out of their prompts (see the module's docstring)."""
    out = []
    for group in groups:
        p = group.prompt
        meta = {k: v for k, v in p.meta.items() if k not in fields}
        out.append(replace(group, prompt=replace(p, gold=None, scorer=None, rubric=None, meta=meta)))
    return out


def view(groups: list[Group], hidden: frozenset[str] | None) -> list[Group]:
    """What a run's estimator and rewards receive of ``groups``: the whole groups where ``hidden``
    is None (a ``gold`` run), else the groups blind to their labels and the columns ``hidden``
    (:func:`hidden_fields`)."""
    return groups if hidden is None else blind(groups, hidden)

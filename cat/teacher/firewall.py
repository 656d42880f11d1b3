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

from cat.types import Group


def reads_labels(config) -> bool:
    """Whether this run's estimator and rewards see labels: only reference-based (``gold``) runs."""
    return config.estimator.name == "gold"


def label_fields(config) -> frozenset[str]:
    """The columns kept from a label-free run's estimators and rewards."""
    d = config.data
    return frozenset(d.label_fields) | ({d.answer_field} if d.answer_field else set())


def blind(groups: list[Group], fields: frozenset[str]) -> list[Group]:
    """The groups with every label taken out of their prompts (see the module's docstring)."""
    out = []
    for group in groups:
        p = group.prompt
        meta = {k: v for k, v in p.meta.items() if k not in fields}
        out.append(replace(group, prompt=replace(p, gold=None, scorer=None, rubric=None, meta=meta)))
    return out


def view(config, groups: list[Group]) -> list[Group]:
    """What ``config``'s estimator and rewards receive of ``groups``."""
    return groups if reads_labels(config) else blind(groups, label_fields(config))

"""The offline tiny worlds, a plug-in that registers the ``tiny:`` path scheme.

``tiny:arith`` (``arith``: two-digit addition, a tokenizer and a small causal LM built from
scratch, and the build machinery the other worlds share), ``tiny:arith-hard`` (``arith_hard``:
the carrying problems, where majority vote is wrong) and ``tiny:rubric`` (``rubric``: the
arithmetic model taught to propose rubrics and judge). ``tiny:WORLD`` names the world's model
folder and ``tiny:WORLD/FILE`` a file in it (``train.jsonl``, ``test.jsonl``); a world is shipped
in ``worlds/``, cached, or built on first use.

The library never imports this package: ``cat.paths`` imports it, as it would any plug-in, the
first time a path starts with ``tiny:``. Only the command line (``cat-rl tiny-world``), the tests
and the benchmarks import it by name.
"""

from __future__ import annotations

from cat.errors import ConfigError
from cat.paths import register_scheme
from cat.worlds import arith, arith_hard, rubric

SCHEME = "tiny:"
WORLDS = {"arith": arith, "arith-hard": arith_hard, "rubric": rubric}
"""``tiny:NAME`` -> the module that builds that world (``ensure_built``)."""


@register_scheme("tiny")
def resolve(path: str) -> str:
    """Map ``tiny:arith`` (the model) or ``tiny:arith/<file>`` to a real path, building if
    needed."""
    if not path.startswith(SCHEME):
        return path
    world, _, inner = path[len(SCHEME) :].partition("/")
    if world not in WORLDS:
        raise ConfigError(f"unknown tiny world '{world}' in '{path}'; known: {sorted(WORLDS)}")
    return str(WORLDS[world].ensure_built() / (inner or "model"))

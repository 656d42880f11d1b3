"""The package layout: no import circles, and dependencies that point one way.

Every module under ``cat/`` is parsed, not imported, and every import of a ``cat`` module in it is
an edge, at module level or inside a function alike (``from cat.run import checkpoint`` is an edge
to ``cat.run.checkpoint``, ``from cat.rewards import REWARDS`` one to ``cat.rewards``). A package's
implicit import of its ``__init__`` is not an edge.

The layers, lowest first: a module imports from its own layer and the layers below it, never
above. The tiny worlds sit just under the entry points, so that only the command line reaches
them (the library meets ``tiny:`` paths through ``cat.paths``, which imports ``cat.worlds`` by
name, as a plug-in, the first time one is resolved).
"""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

LIBRARY = ROOT / "cat"

LAYERS = [
    ("core", ["cat.errors", "cat.types", "cat.registry", "cat.templates", "cat.display", "cat.paths", "cat.files", "cat.config"]),
    ("models", ["cat.models"]),  # loading (hub, .gguf, path schemes), precision, LoRA, token log-probs
    ("generation", ["cat.generation"]),  # rollouts: the Generator seam, chat calls
    ("rewards", ["cat.rewards"]),  # answers, equivalence, rubrics, the judge, the reward contract
    ("teacher", ["cat.teacher"]),  # estimators, the anchor, the label firewall, diagnostics
    # the Task picks the teacher diagnostics that fit its replies, so tasks sit above the teacher
    ("tasks", ["cat.tasks"]),  # data sources, the Task, evaluation, HealthBench scoring
    ("algo", ["cat.algo"]),  # GRPO maths, batches
    ("run", ["cat.run"]),  # trainer, loop, learner, ranks, checkpoints, trackers, logging
    ("worlds", ["cat.worlds"]),  # the tiny worlds, a plug-in
    # entry points: the command line, the Python API, the package root (cat.train) and the old
    # module names kept for plug-ins (cat.cli, cat.estimators, cat.grpo)
    ("entry", ["cat.tools", "cat.api", "cat", "cat.cli", "cat.estimators", "cat.grpo"]),
]

KNOWN_BACK_EDGES = {
    ("cat.config", "cat.tasks.reasoning_gym"):
        "the config refuses, when it loads, a reasoning-gym task that does not exist or settings its generator refuses",
    ("cat.rewards.reasoning_gym", "cat.tasks.reasoning_gym"):
        "the reasoning_gym reward's preflight checks that data.path is a reasoning-gym source",
}
"""Imports against the layering, each inside a function, each with its reason. Removing one is
welcome; adding one is a design decision to argue for, not a way to make this test pass."""


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path, missing: list[str] | None = None) -> dict[str, dict[str, bool]]:
    """{module: {imported cat module: whether any import of it is at module level}}. An import of a
    ``cat`` module that does not exist goes into ``missing`` (``module -> name``)."""
    paths = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, dict[str, bool]] = {}
    for name, path in paths.items():
        edges: dict[str, bool] = {}
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]

        def add(target: str, top: bool, name=name, edges=edges) -> None:
            if target.split(".")[0] == "cat" and target not in paths and missing is not None:
                missing.append(f"{name} -> {target}")
            if target != name and target in paths:
                edges[target] = edges.get(target, False) or top

        def visit(node: ast.AST, top: bool, package=package, add=add) -> None:
            for child in ast.iter_child_nodes(node):
                inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                if isinstance(child, ast.Import):
                    for alias in child.names:
                        add(alias.name, top)
                elif isinstance(child, ast.ImportFrom):
                    base = child.module or ""
                    if child.level:
                        up = package.split(".")[: len(package.split(".")) - child.level + 1]
                        base = ".".join([*up, base] if base else up)
                    for alias in child.names:
                        submodule = f"{base}.{alias.name}"
                        add(submodule if submodule in paths else base, top)
                visit(child, inner)

        visit(ast.parse(path.read_text(encoding="utf-8")), True)
        graph[name] = edges
    return graph


def layer_of(module: str) -> int:
    found = [(len(prefix), i) for i, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
             if module == prefix or (prefix != "cat" and module.startswith(prefix + "."))]
    assert found, f"{module} is in no layer: add it to LAYERS in tests/test_layout.py"
    return max(found)[1]


def cycles(graph: dict[str, dict[str, bool]], *, module_level: bool) -> list[list[str]]:
    """The import circles among modules (strongly connected components of more than one module),
    using only module-level imports if ``module_level``. A package's ``__init__`` importing one of
    its own submodules inside a function (a backend chosen at run time: ``cat.generation`` picking
    hf or vllm) does not count: that submodule runs only after the package has loaded."""
    def counts(source: str, target: str, top: bool) -> bool:
        if module_level:
            return top
        return top or not target.startswith(source + ".")

    edges = {m: [t for t, top in out.items() if counts(m, t, top)] for m, out in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(m: str) -> None:  # Tarjan's algorithm
        index[m] = low[m] = len(index)
        stack.append(m)
        on_stack.add(m)
        for t in edges[m]:
            if t not in index:
                connect(t)
                low[m] = min(low[m], low[t])
            elif t in on_stack:
                low[m] = min(low[m], index[t])
        if low[m] == index[m]:
            component = []
            while True:
                t = stack.pop()
                on_stack.discard(t)
                component.append(t)
                if t == m:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for m in sorted(edges):
        if m not in index:
            connect(m)
    return found


def back_edges(graph: dict[str, dict[str, bool]]) -> list[str]:
    out = []
    for source, targets in sorted(graph.items()):
        for target, top in sorted(targets.items()):
            if layer_of(target) > layer_of(source):
                where = "at module level" if top else "inside a function"
                out.append(f"{source} ({LAYERS[layer_of(source)][0]}) imports {target} "
                           f"({LAYERS[layer_of(target)][0]}) {where}")
    return out


GRAPH = import_graph(LIBRARY)


def test_every_module_is_in_a_layer():
    assert len(GRAPH) > 40
    for module in GRAPH:
        layer_of(module)


def test_every_import_names_a_module_that_exists():
    """Inside a function an import of a module that moved fails only when that code runs: here,
    at once (``from cat.judge import Judge`` after the judge moved to ``cat.rewards.judge``)."""
    missing: list[str] = []
    import_graph(LIBRARY, missing)
    assert missing == []


def test_no_import_circles():
    assert cycles(GRAPH, module_level=True) == []
    assert cycles(GRAPH, module_level=False) == []


def test_dependencies_point_down_the_layers():
    known = {f"{s} ({LAYERS[layer_of(s)][0]}) imports {t} ({LAYERS[layer_of(t)][0]}) inside a function"
             for s, t in KNOWN_BACK_EDGES}
    found = back_edges(GRAPH)
    assert [e for e in found if e not in known] == []
    assert sorted(known - set(found)) == [], "a known back edge is gone: take it out of KNOWN_BACK_EDGES"


def test_only_the_entry_points_reach_the_worlds():
    reach = {s for s, targets in GRAPH.items() for t in targets
             if t.startswith("cat.worlds") and not s.startswith("cat.worlds")}
    assert reach == {"cat.tools.cli"}


def library_with(tmp_path: Path, module: str, line: str) -> Path:
    """A copy of the library's sources with ``line`` appended to ``module`` (``cat/types.py``)."""
    copy = tmp_path / "cat"
    for path in LIBRARY.rglob("*.py"):
        target = copy / path.relative_to(LIBRARY)
        target.parent.mkdir(parents=True, exist_ok=True)
        extra = line if path.relative_to(LIBRARY.parent).as_posix() == module else ""
        target.write_text(path.read_text(encoding="utf-8") + extra, encoding="utf-8")
    return copy


@pytest.mark.parametrize(("module", "line", "expected"), [
    ("cat/types.py", "from cat.run import checkpoint\n",
     "cat.types (core) imports cat.run.checkpoint (run) at module level"),
    ("cat/models/load.py", "def f():\n    from cat.worlds import arith\n",
     "cat.models.load (models) imports cat.worlds.arith (worlds) inside a function"),
    ("cat/algo/grpo.py", "def f():\n    from cat.tools import compare\n",
     "cat.algo.grpo (algo) imports cat.tools.compare (entry) inside a function"),
])
def test_a_back_edge_fails(tmp_path, module, line, expected):
    """The check on a copy of the library with one import added against the layering."""
    assert expected in back_edges(import_graph(library_with(tmp_path, module, line)))


def test_a_circle_fails(tmp_path):
    """compare importing cli again (inside a function, as before this layout): a circle."""
    graph = import_graph(library_with(tmp_path, "cat/tools/compare.py", "def f():\n    from cat.tools import cli\n"))
    assert ["cat.tools.cli", "cat.tools.compare"] in cycles(graph, module_level=False)
    assert cycles(graph, module_level=True) == []


def test_the_library_loads_no_world_until_a_tiny_path_is_resolved():
    """The trainer and everything it imports load without ``cat.worlds``; the first ``tiny:`` path
    imports it through ``cat.paths``, as a plug-in."""
    code = ("import sys\nimport cat.run.trainer, cat.tools.testtime, cat.api\n"
            "assert not [m for m in sys.modules if m.startswith('cat.worlds')], 'a world was imported'\n"
            "from cat.models.load import resolve_path\nprint(resolve_path('tiny:arith'))\n"
            "assert 'cat.worlds' in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(ROOT / "worlds" / "tiny-arith" / "model")


# Functions below the run that still take the whole Config, and why. Components are built from
# their own sections or settings (RewardSettings, EstimatorSettings, TaskSettings); these build the
# settings, choose among sections, or keep an old call working.
TAKES_THE_CONFIG = {
    ("cat.rewards.base", "RewardSettings.from_config"): "builds the settings",
    ("cat.teacher.estimators", "EstimatorSettings.from_config"): "builds the settings",
    ("cat.tasks.settings", "TaskSettings.from_config"): "builds the settings",
    ("cat.rewards.base", "build_rewards"): "the rewards a run's reward section names, each from its settings",
    ("cat.rewards.base", "reward_names"): "reads reward.name or reward.rewards",
    ("cat.rewards.base", "preflight_rewards"): "each reward's preflight",
    ("cat.rewards.base", "RewardFunction.preflight"): "a reward checks its sections against the rest before any model loads",
    ("cat.rewards.rubric", "_JudgedReward.preflight"): "as RewardFunction.preflight",
    ("cat.rewards.reasoning_gym", "ReasoningGymScore.preflight"): "as RewardFunction.preflight: data.path must be its task",
    ("cat.teacher.estimators", "build_estimator"): "the estimator estimator.name names, from its settings",
    ("cat.tasks.evaluate", "grader_section"): "chooses eval.judge or judge",
    ("cat.rewards.judge", "JudgeOpener.__init__"): "the judge section with the run's dtype, device and seed",
    ("cat.rewards.judge", "_judge_call"): "Judge.from_config's old call (deprecated)",
    ("cat.rewards.criteria", "propose_rubrics"): "its old config= argument (deprecated)",
}


def _takes_the_config() -> set[tuple[str, str]]:
    """(module, function) of every function in the layers below the run with a ``config``
    parameter or one annotated ``Config``."""
    found = set()
    for package in ("models", "generation", "rewards", "teacher", "tasks", "algo"):
        for path in sorted((ROOT / "cat" / package).glob("*.py")):
            module = f"cat.{package}.{path.stem}"
            tree = ast.parse(path.read_text())
            scopes = [(node, "") for node in tree.body]
            while scopes:
                node, prefix = scopes.pop()
                if isinstance(node, ast.ClassDef):
                    scopes += [(child, f"{prefix}{node.name}.") for child in node.body]
                elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    params = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                    if any(a.arg == "config" or (a.annotation is not None and re.search(
                            r"(^|[^\w.])(cat\.config\.)?Config\b", ast.unparse(a.annotation))) for a in params):
                        found.add((module, prefix + node.name))
                    scopes += [(child, f"{prefix}{node.name}.") for child in node.body]  # nested functions too
    return found


def test_components_below_the_run_are_built_from_their_sections():
    """No function below the run takes the whole Config, except the few that build settings from
    it, choose among its sections, or keep an old call working (``TAKES_THE_CONFIG``, with why)."""
    found = _takes_the_config()
    assert found - TAKES_THE_CONFIG.keys() == set(), "take the sections or settings you need, not the whole Config"
    assert TAKES_THE_CONFIG.keys() - found == set(), "no longer takes the Config: remove it from TAKES_THE_CONFIG"

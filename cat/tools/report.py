"""``cat-rl report``: figures (PNG) and one self-contained HTML page for runs and synthesize results.

``write_report(inputs, output)`` reads run directories (``metrics.jsonl``, ``eval.json``,
``config.yaml``) and ``cat-rl synthesize`` result files, draws every figure the inputs have data
for, and writes ``index.html`` with the figures embedded (it opens anywhere, alone) and linked to
their PNG files beside it.

Runs whose configs differ only in ``run.seed`` are one arm (``cat-rl compare`` names its arms
itself): an arm has one colour, its runs are drawn thin and their mean over seeds thick, over a
band from the lowest to the highest seed (the min-max range, not a confidence interval: with the
two to five seeds a comparison has, a t-interval is wider than the data). Legends list arms and
sit outside the panels. Undefined values (NaN) read ``n/a`` in the tables.

Figures: reward; held-out accuracy (before, every ``eval.every``, after); the update's KL,
entropy, clipping and gradient norm; the teacher diagnostics (reference vs majority vs single
rollout accuracy against gold, disagreement and its accuracy, right when every rollout was
wrong); completion lengths; time per phase; and, for synthesize results, accuracy against G per
estimator. Nothing here reads a gold label that the run did not already record.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cat.display import NOT_DEFINED, number
from cat.errors import CatError, utf8_text
from cat.files import write_bytes_atomic, write_text_atomic


class ReportError(CatError):
    """An input that is neither a run directory nor a synthesize result, or one that is damaged."""


@dataclass
class Run:
    label: str
    path: Path
    rows: list[dict]
    evals: dict
    config: dict
    notes: list[str] = field(default_factory=list)
    colour: int = 0

    def series(self, key: str) -> tuple[list[int], list[float]]:
        pts = [(r["step"], r[key]) for r in self.rows if isinstance(r.get(key), (int, float)) and r[key] == r[key]]
        return [s for s, _ in pts], [float(v) for _, v in pts]

    def has(self, key: str) -> bool:
        return any(key in r for r in self.rows)


def _text(path: Path) -> str:
    """A run file's text; bytes that are not UTF-8 are a ReportError naming the line."""
    return utf8_text(path.read_bytes(), str(path), error=ReportError, fix="the file is damaged")


def read_jsonl(path: Path) -> tuple[list[dict], list[str]]:
    """Rows of a JSONL file. A torn last line (a run killed mid-write) is left out and noted; a
    damaged line anywhere else is an error naming it."""
    text = _text(path)
    lines = text.split("\n")
    rows, notes = [], []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if i == len(lines) and not text.endswith("\n"):
                notes.append(f"{path.name}: its last line is incomplete (the run stopped while writing it); left out")
                continue
            raise ReportError(f"{path}: line {i} is not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise ReportError(f"{path}: line {i} is not a metrics row (a JSON object with an integer 'step')")
        rows.append(row)
    return rows, notes


def load_run(path: Path, label: str) -> Run:
    metrics = path / "metrics.jsonl"
    rows, notes = read_jsonl(metrics) if metrics.exists() else ([], [f"{path.name}: no steps yet"])
    evals: dict = {}
    if (path / "eval.json").exists():
        try:
            evals = json.loads(_text(path / "eval.json"))
        except json.JSONDecodeError as exc:
            raise ReportError(f"{path / 'eval.json'} is not valid JSON ({exc.msg})") from None
    config: dict = {}
    if (path / "config.yaml").exists():
        try:
            config = yaml.safe_load(_text(path / "config.yaml")) or {}
        except (yaml.YAMLError, RecursionError) as exc:
            raise ReportError(f"{path / 'config.yaml'} is not valid YAML: {exc}") from None
    return Run(label, path, rows, evals, config, notes)


def _labels(paths: list[Path]) -> list[str]:
    """Directory names, lengthened with their parents until they tell the inputs apart."""
    if not paths:
        return []
    parts = [p.resolve().parts for p in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]


def classify(inputs: list[Path]) -> tuple[list[Path], list[Path]]:
    runs, synth = [], []
    for path in inputs:
        if path.is_dir() and ((path / "config.yaml").exists() or (path / "metrics.jsonl").exists()):
            runs.append(path)
        elif path.is_file() and path.suffix == ".json":
            try:
                data = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ReportError(f"{path}: not valid JSON ({exc})") from None
            if not (isinstance(data, dict) and isinstance(data.get("accuracy"), dict) and "group_sizes" in data):
                raise ReportError(f"{path}: not a cat-rl synthesize result (no 'accuracy' and 'group_sizes')")
            synth.append(path)
        elif not path.exists():
            raise ReportError(f"{path}: no such file or directory")
        else:
            raise ReportError(f"{path}: neither a run directory (config.yaml, metrics.jsonl) nor a cat-rl "
                              "synthesize result (.json)")
    return runs, synth


# -------------------------------------------------------------------------------------- arms


@dataclass
class Arm:
    """Runs of one configuration that differ only in ``run.seed``: one colour in every figure, each
    run drawn thin, their mean over seeds thick with the min-max band around it."""

    label: str
    runs: list[Run]
    colour: int

    @property
    def legend(self) -> str:
        return self.label if len(self.runs) == 1 else f"{self.label} ({len(self.runs)} seeds)"


def _arm_key(run: Run) -> str:
    """What makes runs one arm: their config without ``run.seed`` and ``run.output_dir``."""
    if not run.config:
        return f"run {run.path}"
    from cat.config import with_defaults

    config = with_defaults({k: dict(v) if isinstance(v, dict) else v for k, v in run.config.items()})
    for key in ("seed", "output_dir"):  # (and a run saved before an option existed has its default)
        config.get("run", {}).pop(key, None)
    return json.dumps(config, sort_keys=True, default=str)


def _arm_label(runs: list[Run]) -> str:
    """One run's label; several runs' common beginning less a trailing seed marker
    (``cat/seed0``, ``cat/seed1``: ``cat``), or the first label and how many more."""
    if len(runs) == 1:
        return runs[0].label
    common = os.path.commonprefix([r.label for r in runs])
    marker = re.fullmatch(r"(.*?)(?:[/_\-. ]+(?:seed|s)?\d*|seed\d*)", common)  # 'cat/seed', 'cat_s': a seed's marker
    common = marker.group(1) if marker else common  # 'lrs' (lrs1, lrs2) keeps its s
    return common or f"{runs[0].label} +{len(runs) - 1}"


def arms_of(runs: list[Run], groups: list[str] | None = None) -> list[Arm]:
    """Runs gathered into arms, in the order their first run came: by ``groups`` (one arm label
    per run, as ``cat-rl compare`` gives), else runs whose configs differ only in the seed."""
    keys = groups or [_arm_key(run) for run in runs]
    arms = []
    for colour, key in enumerate(dict.fromkeys(keys)):
        members = [run for run, k in zip(runs, keys, strict=True) if k == key]
        for run in members:
            run.colour = colour
        arms.append(Arm(key if groups else _arm_label(members), members, colour))
    return arms


# ----------------------------------------------------------------------------------- figures

SEEDS_KEY = "thin: each seed\nthick: mean over seeds\nshaded: min to max\nover seeds"
SEEDS_CAPTION = (" Runs of one arm (one config, several seeds) share a colour: thin lines are the seeds, the thick "
                 "line their mean, the shaded band the range from the lowest to the highest seed (solid lines; dashed and "
                 "dotted ones show the mean alone).")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure(ncols: int, size: tuple[float, float]):
    """A figure with room kept at its right for the legend (constrained layout), never over the data."""
    fig, axes = _plt().subplots(1, ncols, figsize=size, squeeze=False, layout="constrained")
    return fig, list(axes[0])


def _colour(i: int):
    return _plt().get_cmap("tab10")(i % 10)


def _smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > window:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def over_seeds(series: list[tuple[list[int], list[float]]]) -> tuple[list[int], list[float], list[float], list[float]]:
    """Steps that every run has, with the mean, lowest and highest value over runs at each."""
    steps = sorted(set.intersection(*(set(s) for s, _ in series)))
    at = [dict(zip(s, v, strict=True)) for s, v in series]
    columns = [[a[step] for a in at] for step in steps]
    return steps, [sum(c) / len(c) for c in columns], [min(c) for c in columns], [max(c) for c in columns]


def _draw(ax, arm: Arm, series_of, *, style: str = "-", smooth: bool = True, spread: bool = True) -> bool:
    """One arm on one panel; ``series_of(run)`` gives (steps, values). One run: its values faint,
    their moving average thick. Several: each run's moving average thin, the mean over runs thick,
    the min-max band shaded; ``spread=False`` (a panel's second and third line styles, which would
    bury the first under their bands) draws the mean alone. False when no run has the series."""
    series = [s for s in map(series_of, arm.runs) if s[0]]
    if not series:
        return False
    colour = _colour(arm.colour)
    smoothed = [(s, _smooth(v, max(1, len(s) // 15) if smooth else 1)) for s, v in series]
    if len(series) == 1:
        (steps, values), (_, average) = series[0], smoothed[0]
        if average != values and spread:
            ax.plot(steps, values, style, color=colour, alpha=0.25, linewidth=0.8, markersize=3)
        ax.plot(steps, average, style, color=colour, linewidth=2.2, markersize=5)
        return True
    for steps, values in smoothed if spread else []:
        ax.plot(steps, values, style, color=colour, alpha=0.45, linewidth=0.8, markersize=3)
    steps, mean, low, high = over_seeds(smoothed)
    if steps:
        if spread:
            ax.fill_between(steps, low, high, color=colour, alpha=0.15, linewidth=0)
        ax.plot(steps, mean, style, color=colour, linewidth=2.2, markersize=5)
    return True


def _sane_y(ax) -> None:
    """A y axis that does not mislead: values that never go below 0 get no negative axis, and a
    panel whose values are all one number keeps 0 in view and says which number."""
    if not ax.has_data():
        return
    low, high = ax.dataLim.intervaly
    if not (math.isfinite(low) and math.isfinite(high)):
        return
    if low == high:
        ax.set_ylim(*sorted((0.0, 2 * low)) if low else (0.0, 1.0))
        ax.text(0.5, 0.95, f"every value is {number(low)}", transform=ax.transAxes, ha="center", va="top",
                fontsize=8, color="0.35")
    elif low >= 0 and ax.get_ylim()[0] < 0:
        ax.set_ylim(bottom=0)


def _legend(fig, arms: list[Arm]) -> None:
    """The arms (not every run), outside the panels at the right."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=_colour(a.colour), linewidth=2.2) for a in arms]
    several = any(len(a.runs) > 1 for a in arms)
    fig.legend(handles, [a.legend for a in arms], loc="outside right upper", fontsize=8,
               title=SEEDS_KEY if several else None, title_fontsize=7, alignment="left")


def _finish(fig, axes, arms: list[Arm]) -> None:
    """Panels over steps: whole-number step ticks, sane y axes, the arms' legend."""
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _sane_y(ax)
    _legend(fig, arms)


def _series(key: str):
    return lambda run: run.series(key)


def fig_reward(arms):
    drawn = [a for a in arms if any(r.has("reward/mean") for r in a.runs)]
    if not drawn:
        return None, ""
    fig, (ax,) = _figure(1, (9, 4))
    for arm in drawn:
        _draw(ax, arm, _series("reward/mean"))
    ax.set(xlabel="step", ylabel="mean reward", title="Reward (moving average)")
    _finish(fig, [ax], drawn)
    return fig, ("Mean reward of each step's rollouts against the step's references; a run alone also shows its "
                 "per-step values, faint.")


def _heldout(key: str):
    def series_of(run: Run) -> tuple[list[int], list[float]]:
        pts = []
        if key in run.evals.get("before", {}):
            pts.append((0, run.evals["before"][key]))
        pts += [(h["step"], h[key]) for h in run.evals.get("history", []) if key in h]
        if key in run.evals.get("after", {}):
            pts.append((max([r["step"] for r in run.rows], default=0), run.evals["after"][key]))
        return [s for s, _ in pts], [float(v) for _, v in pts]

    return series_of


def fig_heldout(arms):
    fig, (ax,) = _figure(1, (9, 4))
    drawn = []
    for arm in arms:
        hits = [_draw(ax, arm, _heldout(key), style=style, smooth=False, spread=spread)
                for key, style, spread in (("accuracy", "o-", True), ("greedy_accuracy", "s--", False))]
        if any(hits):
            drawn.append(arm)
    if not drawn:
        _plt().close(fig)
        return None, ""
    ax.set(xlabel="step", ylabel="held-out accuracy", title="Held-out accuracy (pass@1 over k samples; greedy dashed)")
    _finish(fig, [ax], drawn)
    return fig, "Accuracy on the held-out set against gold answers: before training, every eval.every steps, after."


def fig_update(arms):
    panels = [("kl", "KL to pi_0"), ("entropy", "entropy"), ("clip_ratio/region", "clipped fraction"),
              ("grad_norm", "gradient norm")]
    panels = [(k, t) for k, t in panels if any(r.has(k) for a in arms for r in a.runs)]
    if not panels:
        return None, ""
    fig, axes = _figure(len(panels), (4 * len(panels) + 1.5, 3.4))
    drawn = set()
    for ax, (key, title) in zip(axes, panels, strict=True):
        drawn |= {a.label for a in arms if _draw(ax, a, _series(key))}
        ax.set(xlabel="step", title=title)
    _finish(fig, axes, [a for a in arms if a.label in drawn])
    return fig, "The update: KL to the frozen initial policy, token entropy, share of tokens clipped, gradient norm."


def _cumulative(key: str):
    def series_of(run: Run) -> tuple[list[int], list[float]]:
        steps, values = run.series(key)
        return steps, list(itertools.accumulate(values))

    return series_of


def fig_teacher(arms):
    drawn = [a for a in arms if any(r.has("diag/reference_accuracy") for r in a.runs)]
    if not drawn:
        return None, ""
    fig, axes = _figure(3, (16, 3.8))
    for arm in drawn:
        for key, style in (("diag/reference_accuracy", "-"), ("diag/majority_accuracy", "--"),
                           ("diag/rollout_accuracy", ":")):
            _draw(axes[0], arm, _series(key), style=style, spread=style == "-")
        for key, style in (("diag/disagree_rate", "-"), ("diag/disagree_accuracy", "--")):
            _draw(axes[1], arm, _series(key), style=style, spread=style == "-")
        _draw(axes[2], arm, _cumulative("diag/correct_all_wrong"), smooth=False)
    axes[0].set(xlabel="step", ylabel="accuracy vs gold",
                title="Reference (solid) vs majority (dashed)\nvs one rollout (dotted)")
    axes[1].set(xlabel="step", ylabel="fraction",
                title="Reference and majority disagree (solid);\nreference right when they do (dashed)")
    axes[2].set(xlabel="step", ylabel="groups (cumulative)", title="Reference right when every rollout was wrong")
    _finish(fig, axes, drawn)
    return fig, ("The teacher, measured against gold labels that training never reads (moving averages). "
                 "A reference that beats the majority, especially where they disagree, is what CaT adds over TTRL.")


def fig_diversity(arms):
    drawn = [a for a in arms if any(r.has("diag/distinct_answers") for r in a.runs)]
    if not drawn:
        return None, ""
    fig, axes = _figure(2, (11, 3.6))
    for arm in drawn:
        _draw(axes[0], arm, _series("diag/distinct_answers"))
        _draw(axes[1], arm, _series("diag/answer_entropy"))
    axes[0].set(xlabel="step", ylabel="answers", title="Distinct answers per group")
    axes[1].set(xlabel="step", ylabel="nats", title="Entropy of a group's answers")
    _finish(fig, axes, drawn)
    return fig, ("How varied the rollouts' final answers are within a group (label-free). Both falling to their "
                 "floor (1 answer, 0 nats) means every rollout agrees: nothing left to learn from, right or wrong.")


def fig_lengths(arms):
    drawn = [a for a in arms if any(r.has("completion/mean_length") for r in a.runs)]
    if not drawn:
        return None, ""
    fig, axes = _figure(2, (11, 3.6))
    for arm in drawn:
        _draw(axes[0], arm, _series("completion/mean_length"))
        _draw(axes[0], arm, _series("completion/max_length"), style=":", smooth=False, spread=False)
        _draw(axes[1], arm, _series("completion/clipped_ratio"))
    axes[0].set(xlabel="step", ylabel="tokens", title="Completion length (mean; max dotted)")
    axes[1].set(xlabel="step", ylabel="fraction", title="Completions cut at max_new_tokens")
    _finish(fig, axes, drawn)
    return fig, "Completion lengths in tokens and the share that hit the budget."


PHASES = ("time/generate", "time/reference", "time/reward", "time/logprobs", "time/update", "time/weight_sync")


def _mean_per_step(arm: Arm, key: str) -> float:
    """The arm's mean over its runs of each run's mean seconds per step (0 for a phase not timed)."""
    means = [sum(v) / len(v) for v in (run.series(key)[1] for run in arm.runs) if v]
    return sum(means) / len(means) if means else 0.0


def _stacked(arms: list[Arm], parts: list[tuple[str, tuple[str, ...]]], total: str | None, ylabel: str, title: str):
    """One bar per arm (mean per step over its runs), stacked from ``parts``: (label, metric keys
    added together); ``total`` is drawn as a black mark."""
    plt = _plt()
    fig, (ax,) = _figure(1, (max(6, 1.2 * len(arms) + 4), 4))
    bottoms = [0.0] * len(arms)
    for j, (label, keys) in enumerate(parts):
        means = [sum(_mean_per_step(a, k) for k in keys) for a in arms]
        ax.bar(range(len(arms)), means, bottom=bottoms, color=plt.get_cmap("Set2")(j), label=label)
        bottoms = [b + m for b, m in zip(bottoms, means, strict=True)]
    if total is not None:
        ax.scatter(range(len(arms)), [_mean_per_step(a, total) for a in arms], color="black", marker="_", s=400,
                   label="whole step", zorder=3)
    ax.set_xticks(range(len(arms)), [a.legend for a in arms], rotation=20, ha="right", fontsize=8)
    ax.set(ylabel=ylabel, title=title)
    fig.legend(loc="outside right upper", fontsize=7)
    return fig


def fig_time(arms):
    timed = [Arm(a.label, [r for r in a.runs if r.has("time/step")], a.colour) for a in arms]
    timed = [a for a in timed if a.runs]
    if not timed:
        return None, ""
    fig = _stacked(timed, [(key.split("/")[1], (key,)) for key in PHASES], "time/step", "seconds per step (mean)",
                   "Time per phase")
    return fig, "Mean seconds per step in each phase (over an arm's seeds); the bar's remainder to the black mark is everything else."


SPENDERS = (
    ("policy writes", ("tokens/rollouts",)),
    ("anchor reads", ("anchor/prompt_tokens",)),
    ("anchor writes", ("anchor/completion_tokens",)),
    ("rubrics: anchor reads", ("rubric/prompt_tokens",)),
    ("rubrics: anchor writes", ("rubric/completion_tokens",)),
    ("judge reads", ("judge/prompt_tokens",)),
    ("judge writes", ("judge/completion_tokens",)),
)
"""Who spends the tokens of a step: the policy's rollouts, the anchor's syntheses, its rubric
proposals and the judge's verdicts (prompt tokens read, completion tokens written)."""


def fig_compute(arms):
    counted = [Arm(a.label, [r for r in a.runs if r.has("tokens/rollouts")], a.colour) for a in arms]
    counted = [a for a in counted if a.runs]
    if not counted:
        return None, ""
    parts = [(label, keys) for label, keys in SPENDERS if any(r.has(keys[0]) for a in counted for r in a.runs)]
    fig = _stacked(counted, parts, None, "tokens per step (mean)", "Tokens per step, by who spent them")
    return fig, ("What the teacher costs beside the policy: tokens per step that the policy's rollouts wrote, that "
                 "the anchor read and wrote (syntheses, rubric proposals) and that the judge read and wrote.")


def fig_synthesize(results: list[tuple[str, dict]]):
    if not results:
        return None, ""
    from matplotlib.ticker import NullLocator, ScalarFormatter

    fig, axes = _figure(len(results), (6 * len(results) + 2, 4))
    for ax, (label, data) in zip(axes, results, strict=True):
        by_estimator: dict[str, list[tuple[int, float, float]]] = {}
        intervals = data.get("interval", {})
        graded = "accuracy" not in data  # a HealthBench result: rubric scores, not answers against gold
        for key, acc in data["score" if graded else "accuracy"].items():
            name, _, g = key.rpartition("@")
            if g.isdigit():
                by_estimator.setdefault(name, []).append((int(g), acc, intervals.get(key, float("nan"))))
        names = sorted(by_estimator)
        for i, name in enumerate(names):
            pts = sorted(by_estimator[name])
            # side by side at each G, so the 95% intervals over prompts do not hide each other
            shift = 2 ** (0.04 * (i - (len(names) - 1) / 2))
            ax.errorbar([g * shift for g, _, _ in pts], [a for _, a, _ in pts],
                        yerr=[0.0 if math.isnan(h) else h for _, _, h in pts], fmt="o-", capsize=3,
                        color=_colour(i), label=name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({g for pts in by_estimator.values() for g, _, _ in pts}))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_locator(NullLocator())
        if "single_sample_accuracy" in data:
            ax.axhline(data["single_sample_accuracy"], color="grey", linestyle=":", label="one sample")
        ax.set(xlabel="G (rollouts per question)", ylabel="HealthBench score" if graded else "accuracy vs gold",
               title=f"{label} (n = {data.get('n', '?')})")
        _sane_y(ax)
    entries = {label: handle for ax in axes for handle, label in zip(*ax.get_legend_handles_labels(), strict=True)}
    fig.legend(list(entries.values()), list(entries), loc="outside right upper", fontsize=8)
    return fig, ("Test-time CaT (cat-rl testtime): accuracy (or HealthBench score) of each estimator's answer against "
                 "G, on shared rollouts; bars: 95% intervals over prompts.")


def save_png(fig, path: Path) -> None:
    """``fig`` as a PNG at ``path``, written whole or not at all; the figure is closed."""
    png = io.BytesIO()
    try:
        fig.savefig(png, format="png", dpi=110)
    finally:
        _plt().close(fig)
    write_bytes_atomic(path, png.getvalue())


def synthesize_figure(result: dict, path: Path, label: str) -> None:
    """The accuracy-against-G figure of one test-time result, as a PNG at ``path``."""
    fig, _ = fig_synthesize([(label, result)])
    save_png(fig, path)


def figures(arms: list[Arm], synth: list[tuple[str, dict]]) -> list[tuple[str, object, str]]:
    """(name, matplotlib figure, caption) for every figure the inputs have data for."""
    several = any(len(a.runs) > 1 for a in arms)
    out = []
    for name, make in (("reward", fig_reward), ("heldout", fig_heldout), ("update", fig_update),
                       ("teacher", fig_teacher), ("diversity", fig_diversity), ("lengths", fig_lengths),
                       ("time", fig_time), ("compute", fig_compute)):
        fig, caption = make(arms) if arms else (None, "")
        if fig is not None:
            out.append((name, fig, caption + (SEEDS_CAPTION if several and name not in ("time", "compute") else "")))
    fig, caption = fig_synthesize(synth)
    if fig is not None:
        out.append(("synthesize", fig, caption))
    return out


# -------------------------------------------------------------------------------------- page


def _run_table(runs: list[Run]) -> str:
    from cat.run.loop import teacher_summary_of

    head = ("run", "estimator", "reward", "steps", "before", "after", "gain", "teacher")
    body = []
    for run in runs:
        before = run.evals.get("before", {}).get("accuracy", run.evals.get("before", {}).get("score"))
        after = run.evals.get("after", {}).get("accuracy", run.evals.get("after", {}).get("score"))
        gain = after - before if isinstance(before, (int, float)) and isinstance(after, (int, float)) else None
        steps = f"{len(run.rows)} / {run.config.get('run', {}).get('steps', '?')}"
        cells = [f'<span class="swatch" style="background:{_hex(_colour(run.colour))}"></span>{html.escape(run.label)}',
                 html.escape(str(run.config.get("estimator", {}).get("name", "?"))
                             + (" (sft)" if run.config.get("algorithm") == "sft" else "")),
                 html.escape(str(run.config.get("reward", {}).get("name", "?"))), steps,
                 number(before), number(after), number(gain, signed=True),
                 html.escape(teacher_summary_of(run.rows) or NOT_DEFINED)]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return ("<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(body) + "</table>")


def _hex(rgba) -> str:
    return "#" + "".join(f"{round(c * 255):02x}" for c in rgba[:3])


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.85em; margin-bottom: 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; text-align: left; }}
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; border: 1px solid #eee; }}
figcaption {{ font-size: 0.9em; color: #555; }} .swatch {{ display: inline-block; width: 0.8em; height: 0.8em;
margin-right: 0.4em; }} .note {{ color: #a60; }}
</style></head><body>
<h1>{title}</h1>
<p>Written {when} by <code>cat-rl report</code> from: {sources}</p>
{notes}
{extra}
{table}
{figures}
</body></html>
"""


def write_report(inputs: list[Path], output: Path, *, title: str = "cat report", extra_html: str = "",
                 labels: list[str] | None = None, groups: list[str] | None = None) -> Path:
    """Write ``output/*.png`` and ``output/index.html``; returns the page's path. ``labels`` name
    the runs (default: their directories); ``groups`` names each run's arm (default: runs whose
    configs differ only in ``run.seed`` are one arm)."""
    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise ReportError("nothing to report: name at least one run directory or synthesize result")
    run_paths, synth_paths = classify(inputs)
    names = labels or _labels(run_paths)
    runs = [load_run(p, label) for p, label in zip(run_paths, names, strict=True)]
    arms = arms_of(runs, groups)
    synth_labels = _labels(synth_paths) if synth_paths else []
    synth = [(label, json.loads(p.read_text())) for p, label in zip(synth_paths, synth_labels, strict=True)]
    output.mkdir(parents=True, exist_ok=True)
    figures_ = figures(arms, synth)
    blocks = []
    for name, fig, caption in figures_:
        png = output / f"{name}.png"
        save_png(fig, png)
        data = base64.b64encode(png.read_bytes()).decode()
        blocks.append(f'<figure id="{name}"><img alt="{name}" src="data:image/png;base64,{data}">'
                      f'<figcaption>{html.escape(caption)} <a href="{name}.png">{name}.png</a></figcaption></figure>')
    notes = [n for run in runs for n in run.notes]
    page = PAGE.format(
        title=html.escape(title), when=time.strftime("%Y-%m-%d %H:%M"),
        sources=", ".join(f"<code>{html.escape(str(p))}</code>" for p in inputs),
        notes="".join(f'<p class="note">{html.escape(n)}</p>' for n in notes),
        extra=extra_html, table=_run_table(runs) if runs else "", figures="\n".join(blocks))
    index = output / "index.html"
    write_text_atomic(index, page)
    return index

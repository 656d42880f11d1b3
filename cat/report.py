"""``cat-rl report``: figures (PNG) and one self-contained HTML page for runs and synthesize results.

``write_report(inputs, output)`` reads run directories (``metrics.jsonl``, ``eval.json``,
``config.yaml``) and ``cat-rl synthesize`` result files, draws every figure the inputs have data
for, several runs overlaid with one colour per run, and writes ``index.html`` with the figures
embedded (it opens anywhere, alone) and linked to their PNG files beside it.

Figures: reward; held-out accuracy (before, every ``eval.every``, after); the update's KL,
entropy, clipping and gradient norm; the teacher diagnostics (reference vs majority vs single
rollout accuracy against gold, disagreement and its accuracy, right when every rollout was
wrong); completion lengths; time per phase; and, for synthesize results, accuracy against G per
estimator. Nothing here reads a gold label that the run did not already record.
"""

from __future__ import annotations

import base64
import html
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cat.errors import CatError, utf8_text


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


# ----------------------------------------------------------------------------------- figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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


def _lines(ax, runs: list[Run], key: str, *, style="-", label_suffix="", smooth=True):
    drawn = False
    for run in runs:
        steps, values = run.series(key)
        if not steps:
            continue
        drawn = True
        window = max(1, len(steps) // 15) if smooth else 1
        if window > 1:
            ax.plot(steps, values, style, color=_colour(run.colour), alpha=0.25, linewidth=1)
            values = _smooth(values, window)
        ax.plot(steps, values, style, color=_colour(run.colour), linewidth=1.6, label=f"{run.label}{label_suffix}")
    return drawn


def fig_reward(runs):
    if not any(r.has("reward/mean") for r in runs):
        return None, ""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4))
    _lines(ax, runs, "reward/mean")
    ax.set(xlabel="step", ylabel="mean reward", title="Reward (faint: per step; solid: moving average)")
    ax.legend(fontsize=8)
    return fig, "Mean reward of each step's rollouts against the step's references."


def fig_heldout(runs):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4))
    drawn = False
    for run in runs:
        for key, style, suffix in (("accuracy", "o-", ""), ("greedy_accuracy", "s--", " (greedy)")):
            pts = []
            if key in run.evals.get("before", {}):
                pts.append((0, run.evals["before"][key]))
            pts += [(h["step"], h[key]) for h in run.evals.get("history", []) if key in h]
            if key in run.evals.get("after", {}):
                pts.append((max([r["step"] for r in run.rows], default=0), run.evals["after"][key]))
            if pts:
                drawn = True
                ax.plot([s for s, _ in pts], [v for _, v in pts], style, color=_colour(run.colour), label=run.label + suffix)
    if not drawn:
        plt.close(fig)
        return None, ""
    ax.set(xlabel="step", ylabel="held-out accuracy", title="Held-out accuracy (pass@1 over k samples; greedy dashed)")
    ax.legend(fontsize=8)
    return fig, "Accuracy on the held-out set against gold answers: before training, every eval.every steps, after."


def fig_update(runs):
    panels = [("kl", "KL to pi_0"), ("entropy", "entropy"), ("clip_ratio/region", "clipped fraction"),
              ("grad_norm", "gradient norm")]
    panels = [(k, t) for k, t in panels if any(r.has(k) for r in runs)]
    if not panels:
        return None, ""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        _lines(ax, runs, key)
        ax.set(xlabel="step", title=title)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig, "The update: KL to the frozen initial policy, token entropy, share of tokens clipped, gradient norm."


def fig_teacher(runs):
    runs_d = [r for r in runs if r.has("diag/reference_accuracy")]
    if not runs_d:
        return None, ""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for run in runs_d:
        c = _colour(run.colour)
        for key, style, name in (("diag/reference_accuracy", "-", "reference"), ("diag/majority_accuracy", "--", "majority"),
                                 ("diag/rollout_accuracy", ":", "single rollout")):
            steps, values = run.series(key)
            if steps:
                axes[0].plot(steps, _smooth(values, max(1, len(steps) // 15)), style, color=c, label=f"{run.label}: {name}")
        for key, style, name in (("diag/disagree_rate", "-", "disagrees with majority"),
                                 ("diag/disagree_accuracy", "--", "right when it disagrees")):
            steps, values = run.series(key)
            if steps:
                axes[1].plot(steps, _smooth(values, max(1, len(steps) // 15)), style, color=c, label=f"{run.label}: {name}")
        steps, values = run.series("diag/correct_all_wrong")
        if steps:
            total, cum = 0.0, []
            for v in values:
                total += v
                cum.append(total)
            axes[2].plot(steps, cum, color=c, label=run.label)
    axes[0].set(xlabel="step", ylabel="accuracy vs gold", title="Reference vs majority vs one rollout")
    axes[1].set(xlabel="step", ylabel="fraction", title="Reference and majority disagree")
    axes[2].set(xlabel="step", ylabel="groups (cumulative)", title="Reference right when every rollout was wrong")
    for ax in axes:
        ax.legend(fontsize=6)
    fig.tight_layout()
    return fig, ("The teacher, measured against gold labels that training never reads (moving averages). "
                 "A reference that beats the majority, especially where they disagree, is what CaT adds over TTRL.")


def fig_lengths(runs):
    if not any(r.has("completion/mean_length") for r in runs):
        return None, ""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    _lines(axes[0], runs, "completion/mean_length")
    _lines(axes[0], runs, "completion/max_length", style=":", label_suffix=" (max)", smooth=False)
    axes[0].set(xlabel="step", ylabel="tokens", title="Completion length (mean; max dotted)")
    _lines(axes[1], runs, "completion/clipped_ratio")
    axes[1].set(xlabel="step", ylabel="fraction", title="Completions cut at max_new_tokens")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig, "Completion lengths in tokens and the share that hit the budget."


PHASES = ("time/generate", "time/reference", "time/reward", "time/logprobs", "time/update", "time/weight_sync")


def fig_time(runs):
    timed = [r for r in runs if r.has("time/step")]
    if not timed:
        return None, ""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(timed) + 3), 4))
    bottoms = [0.0] * len(timed)
    for j, key in enumerate(PHASES):
        means = []
        for run in timed:
            _, values = run.series(key)
            means.append(sum(values) / len(values) if values else 0.0)
        ax.bar(range(len(timed)), means, bottom=bottoms, color=_plt().get_cmap("Set2")(j), label=key.split("/")[1])
        bottoms = [b + m for b, m in zip(bottoms, means, strict=True)]
    steps = []
    for run in timed:
        _, values = run.series("time/step")
        steps.append(sum(values) / len(values))
    ax.scatter(range(len(timed)), steps, color="black", marker="_", s=400, label="whole step", zorder=3)
    ax.set_xticks(range(len(timed)), [r.label for r in timed], rotation=20, ha="right", fontsize=8)
    ax.set(ylabel="seconds per step (mean)", title="Time per phase")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig, "Mean seconds per step in each phase; the bar's remainder to the black mark is everything else."


def fig_synthesize(results: list[tuple[str, dict]]):
    if not results:
        return None, ""
    plt = _plt()
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    for ax, (label, data) in zip(axes[0], results, strict=True):
        by_estimator: dict[str, list[tuple[int, float]]] = {}
        for key, acc in data["accuracy"].items():
            name, _, g = key.rpartition("@")
            if g.isdigit():
                by_estimator.setdefault(name, []).append((int(g), acc))
        for i, (name, pts) in enumerate(sorted(by_estimator.items())):
            pts.sort()
            ax.plot([g for g, _ in pts], [a for _, a in pts], "o-", color=_colour(i), label=name)
        if "single_sample_accuracy" in data:
            ax.axhline(data["single_sample_accuracy"], color="grey", linestyle=":", label="one sample")
        ax.set_xscale("log", base=2)
        ax.set(xlabel="G (rollouts per question)", ylabel="accuracy vs gold", title=f"{label} (n = {data.get('n', '?')})")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig, "Test-time CaT (cat-rl synthesize): accuracy of each estimator's answer against G, on shared rollouts."


# -------------------------------------------------------------------------------------- page


def _fmt(x, spec=".3f") -> str:
    return format(x, spec) if isinstance(x, (int, float)) and not (isinstance(x, float) and math.isnan(x)) else "–"


def _run_table(runs: list[Run]) -> str:
    from cat.loop import teacher_summary_of

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
                 _fmt(before), _fmt(after), _fmt(gain, "+.3f"), html.escape(teacher_summary_of(run.rows) or "–")]
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
    the runs (default: their directories); runs of one ``groups`` entry share a colour."""
    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise ReportError("nothing to report: name at least one run directory or synthesize result")
    run_paths, synth_paths = classify(inputs)
    names = labels or _labels(run_paths)
    runs = [load_run(p, label) for p, label in zip(run_paths, names, strict=True)]
    keys = groups or names
    order = list(dict.fromkeys(keys))
    for run, key in zip(runs, keys, strict=True):
        run.colour = order.index(key)
    synth_labels = _labels(synth_paths) if synth_paths else []
    synth = [(label, json.loads(p.read_text())) for p, label in zip(synth_paths, synth_labels, strict=True)]
    output.mkdir(parents=True, exist_ok=True)
    plt = _plt()
    figures = []
    makers = [("reward", fig_reward), ("heldout", fig_heldout), ("update", fig_update), ("teacher", fig_teacher),
              ("lengths", fig_lengths), ("time", fig_time)]
    for name, make in makers:
        fig, caption = make(runs) if runs else (None, "")
        if fig is not None:
            figures.append((name, fig, caption))
    fig, caption = fig_synthesize(synth)
    if fig is not None:
        figures.append(("synthesize", fig, caption))
    blocks = []
    for name, fig, caption in figures:
        png = output / f"{name}.png"
        tmp = png.with_suffix(".png.tmp")
        fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)
        tmp.replace(png)
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
    tmp = output / "index.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(index)
    return index

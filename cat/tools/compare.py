"""``cat-rl compare``: arms of one base config over several seeds, and whether they differ.

    cat-rl compare experiments/tiny_arith_cat.yaml --arms synthesis,majority_vote,gold --seeds 0,1,2
    cat-rl compare CONFIG --arm long "anchor.max_new_tokens=128" --arm short "anchor.max_new_tokens=32" ...

An arm is an estimator name (``--arms``: shorthand for ``estimator.name=NAME``) or a label with its
own overrides (``--arm LABEL "key=value key=value"``). Every arm runs with every seed
(``run.seed``) into ``OUTPUT_DIR/ARM/seedS``, an ordinary run directory, one after another, each
in a process of its own: whatever a run held (its vLLM engine, models, optimizer) goes back to the
system before the next one starts, and a run killed for memory takes only its own process. Running
the command again continues: finished runs are kept, interrupted ones resume from their newest
checkpoint (``cat-rl train --resume`` on one of them works too).

It writes ``compare.md`` (the table printed at the end), ``compare.json`` (the same numbers) and
``report/`` (``cat-rl report`` of every run, the table on top). Per arm: held-out accuracy before
and after and the gain, with 95% t-intervals over seeds; the teacher's diagnostics; training time.
Between arms: the difference of their gains paired by seed (the same seed gives the same prompts,
initial evaluation and sampling streams) with its interval, and in words whether it is within noise.
The initial policy is evaluated once per seed: a run whose evaluation settings equal an earlier
arm's (everything but the estimator, anchor, GRPO, optimiser and step settings) starts from that
arm's initial evaluation (``before_from`` in its ``eval.json``).
"""

from __future__ import annotations

import json
import logging
import shlex
import time
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from cat.display import NOT_DEFINED, number
from cat.errors import CatError, ConfigError
from cat.files import write_json_atomic, write_text_atomic
from cat.tools.stats import Interval, mean_ci

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArmSpec:
    """An arm as asked for: its label and the config overrides that make it (``cat.tools.report.Arm``
    is the runs one arm gave)."""

    label: str
    overrides: tuple[str, ...]


def parse_arms(names: str | None, labelled: list[list[str]] | None) -> list[ArmSpec]:
    arms: list[ArmSpec] = []
    for name in (names or "").split(","):
        if name.strip():
            arms.append(ArmSpec(name.strip(), (f"estimator.name={name.strip()}",)))
    for label, text in labelled or []:
        try:
            overrides = tuple(shlex.split(text))
        except ValueError as exc:  # an unclosed quote
            raise ConfigError(f"--arm {label} {text!r}: {exc} (the overrides are split as a shell would)") from None
        bad = [o for o in overrides if "=" not in o or o.startswith("-")]
        if bad:
            raise ConfigError(f"--arm {label}: {' '.join(bad)} is not of the form section.key=value")
        arms.append(ArmSpec(label, overrides))
    if not arms:
        raise ConfigError("no arms: give --arms NAME,NAME,... (estimator names) and/or --arm LABEL \"key=value ...\"")
    labels = [a.label for a in arms]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ConfigError(f"arm labels must differ: {', '.join(dupes)} given twice")
    for a in arms:
        if not a.label.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ConfigError(f"arm label {a.label!r}: use letters, digits, '-', '_' or '.' (it names a folder)")
    return arms


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: give comma-separated integers, e.g. 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r}: give distinct comma-separated integers, e.g. 0,1,2")
    return seeds


def run_dir_of(output: Path, arm: ArmSpec, seed: int) -> Path:
    return output / arm.label / f"seed{seed}"


def check_configs(config_path: str, overrides: list[str], arms: list[ArmSpec], seeds: list[int], output: Path):
    """Every run's config, loaded and preflighted before the first one trains (a typo in the last
    arm costs seconds, not hours)."""
    from cat.config import load_config
    from cat.run.trainer import preflight

    configs = {}
    for arm in arms:
        for seed in seeds:
            run_dir = run_dir_of(output, arm, seed)
            try:
                config = load_config(config_path, [*overrides, *arm.overrides, f"run.seed={seed}",
                                                   f"run.output_dir={run_dir}"])
            except ConfigError as exc:
                raise ConfigError(f"arm {arm.label}: {exc}") from None
            if config.eval.path is None:
                raise ConfigError(f"arm {arm.label}: eval.path is not set; compare ranks arms by held-out accuracy")
            configs[arm.label, seed] = config
        try:
            preflight(configs[arm.label, seeds[0]])
        except ConfigError as exc:
            raise ConfigError(f"arm {arm.label}: {exc}") from None
    return configs


def finished(run_dir: Path, steps: int) -> bool:
    try:
        evals = json.loads((run_dir / "eval.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return ("after" in evals and evals.get("after_step", steps) >= steps and (run_dir / "metrics.jsonl").exists()
            and len(_metric_rows(run_dir)) >= steps)


def run_all(config_path: str, overrides: list[str], arms: list[ArmSpec], seeds: list[int], output: Path, *,
            progress: bool, log=None, allow_change: bool = False) -> dict:
    """Train every (arm, seed) not yet finished, each in a child process; returns the summary (also
    written to OUTPUT_DIR). ``allow_change``: an unfinished run whose saved config differs from
    its config now (more ``run.steps``, say) continues under the new one, as ``cat-rl train
    --allow-config-change`` does; a finished one is still refused (its results are its old
    config's)."""
    from cat.config import dump_config
    from cat.tools.train import same_run

    log = log or logger.info
    configs = check_configs(config_path, overrides, arms, seeds, output)
    output.mkdir(parents=True, exist_ok=True)
    total = len(arms) * len(seeds)
    for i, (arm, seed) in enumerate(((a, s) for a in arms for s in seeds), 1):
        run_dir = run_dir_of(output, arm, seed)
        config = configs[arm.label, seed]
        if finished(run_dir, config.run.steps):
            if not same_run((run_dir / "config.yaml").read_text(), dump_config(config)):
                raise ConfigError(f"{run_dir} finished under a different config than arm {arm.label} seed {seed} has "
                                  "now; give compare another --output-dir (or remove that run: --allow-config-change "
                                  "continues unfinished runs only, a finished run's results being its old config's)")
            log(f"[{i}/{total}] {arm.label} seed {seed}: finished earlier ({run_dir})")
            continue
        log(f"[{i}/{total}] {arm.label} seed {seed}: training into {run_dir}")
        source = reuse_initial_eval(output, seed, config, run_dir)
        if source is not None:
            log(f"  the initial policy's evaluation is {source}'s: the same model, seed and evaluation settings")
        start = time.perf_counter()
        train_apart(config, run_dir, progress=progress, name=f"{arm.label} seed {seed}", allow_change=allow_change)
        _add_wall(run_dir, time.perf_counter() - start)
    summary = summarize(output, arms, seeds)
    write_outputs(output, summary, arms, seeds, config_path, overrides)
    return summary


def train_apart(config, run_dir: Path, *, progress: bool, name: str, allow_change: bool = False) -> None:
    """``train_run`` in a child process that exits when the run ends, so that nothing of the run
    stays for the next one. Inside one process ``Trainer.close`` frees the engine, the models and the
    optimizer, but not what vLLM keeps per process: an exception it stores when it first imports a
    module (an optional audio decoder missing) holds the frames, and with them the model, of
    whoever built the first engine; its ``gc.freeze()`` at start hides everything older from the
    collector until its engine shuts down.

    The child is forked from a fork server that imported the trainer once (forked from it, not from
    this process: no threads or CUDA state of this one's come along), so a run starts in a
    fraction of a second, not the seconds an interpreter takes to import torch. Its error is
    raised here; a Ctrl-C reaches both processes: the run finishes its step and saves, and this one
    waits for it."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(_PRELOAD)
    else:
        context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        try:
            pool.submit(_train_in_child, config, run_dir, progress, allow_change).result()
        except BrokenProcessPool:
            raise CatError(f"{name}: its training process died without a word (killed by the system: out of "
                           f"memory, perhaps; memory/peak_rss_mib in its metrics.jsonl shows how close it came); "
                           f"run compare again to resume it from its newest checkpoint in {run_dir}") from None


_PRELOAD = ["cat.tools.train", "cat.run.trainer", "transformers.models.auto.modeling_auto",
            "transformers.models.auto.tokenization_auto"]
"""What the fork server imports once for every run: the trainer, and the transformers modules that
``AutoModelForCausalLM`` and ``AutoTokenizer`` load on first use, most of a tiny run's start-up time."""


def _train_in_child(config, run_dir: Path, progress: bool, allow_change: bool) -> None:
    from cat.run.logs import console
    from cat.tools.train import train_run

    console()  # the fork server's logging is not this process's parent's
    train_run(config, run_dir, progress=progress, allow_change=allow_change)


# Settings that cannot change the initial policy's evaluation: how it then trains, and bookkeeping.
_NOT_EVALUATION = {"estimator", "anchor", "grpo", "optim", "algorithm", "sft"}
_NOT_EVALUATION_RUN = {"steps", "output_dir", "prompts_per_step", "micro_batch_size", "save_every", "keep_last",
                       "log_samples", "max_nonfinite_in_a_row", "preflight_prompts", "max_unscored_share",
                       "max_unscored_steps", "report_to", "tracker_project", "tracker_kwargs"}


def evaluation_settings(config_text: str) -> dict:
    """A dumped config without the settings that cannot change the initial evaluation."""
    import yaml

    from cat.config import with_defaults

    tree = with_defaults(yaml.safe_load(config_text))  # a run saved before an option existed has its default
    tree = {k: v for k, v in tree.items() if k not in _NOT_EVALUATION}
    tree["run"] = {k: v for k, v in tree.get("run", {}).items() if k not in _NOT_EVALUATION_RUN}
    return tree


def reuse_initial_eval(output: Path, seed: int, config, run_dir: Path) -> Path | None:
    """Start a fresh run with the initial evaluation of another arm's run of the same seed whose
    evaluation settings are the same (it would compute the same numbers: the same model, prompts
    and sampling streams). Returns that run's directory, or None (the run evaluates for itself)."""
    from cat.config import dump_config

    if (run_dir / "config.yaml").exists() or (run_dir / "eval.json").exists():
        return None
    mine = evaluation_settings(dump_config(config))
    for other in sorted(output.glob(f"*/seed{seed}")):
        try:
            before = json.loads((other / "eval.json").read_text()).get("before")
            theirs = evaluation_settings((other / "config.yaml").read_text())
        except (OSError, ValueError, AttributeError):
            continue
        if other != run_dir and before is not None and theirs == mine:
            write_json_atomic(run_dir / "eval.json", {"before": before, "before_from": str(other)}, indent=None)
            return other
    return None


def _add_wall(run_dir: Path, seconds: float) -> None:
    """Wall time spent on a run by compare, summed over invocations (a resumed run adds its part)."""
    path = run_dir / "compare-wall.json"
    before = json.loads(path.read_text())["seconds"] if path.exists() else 0.0
    write_json_atomic(path, {"seconds": before + seconds}, indent=None)


def _metric_rows(run_dir: Path) -> list[dict]:
    from cat.tools.report import read_jsonl

    return read_jsonl(run_dir / "metrics.jsonl")[0]


TEACHER = ("diag/reference_accuracy", "diag/majority_accuracy", "diag/rollout_accuracy", "diag/disagree_rate",
           "diag/disagree_accuracy")


def summarize(output: Path, arms: list[ArmSpec], seeds: list[int]) -> dict:
    def score(evals: dict, key: str) -> float:
        part = evals.get(key, {})
        return float(part.get("accuracy", part.get("score", float("nan"))))

    per_arm: dict[str, dict] = {}
    prompts: dict[str, list[dict]] = {}  # per arm, per seed: per-prompt accuracies before and after
    for arm in arms:
        before, after, gain, teacher, wall = [], [], [], {k: [] for k in TEACHER}, []
        correct_all_wrong = []
        for seed in seeds:
            run_dir = run_dir_of(output, arm, seed)
            evals = json.loads((run_dir / "eval.json").read_text())
            b, a = score(evals, "before"), score(evals, "after")
            before.append(b)
            after.append(a)
            gain.append(a - b)
            prompts.setdefault(arm.label, []).append(
                {"before": _per_prompt(evals, "before"), "after": _per_prompt(evals, "after"), "before_accuracy": b})
            rows = _metric_rows(run_dir)
            for k in TEACHER:
                values = [r[k] for r in rows if isinstance(r.get(k), (int, float)) and r[k] == r[k]]
                if values:
                    teacher[k].append(sum(values) / len(values))
            if any("diag/correct_all_wrong" in r for r in rows):
                correct_all_wrong.append(sum(r.get("diag/correct_all_wrong", 0) for r in rows))
            wall_file = run_dir / "compare-wall.json"
            wall.append(json.loads(wall_file.read_text())["seconds"] if wall_file.exists()
                        else sum(r.get("time/step", 0.0) for r in rows))
        per_arm[arm.label] = {
            "before": _iv(mean_ci(before)), "after": _iv(mean_ci(after)), "gain": _iv(mean_ci(gain)),
            "per_seed": {"before": before, "after": after, "gain": gain},
            "teacher": {k: sum(v) / len(v) for k, v in teacher.items() if v},
            "correct_all_wrong": sum(correct_all_wrong) / len(correct_all_wrong) if correct_all_wrong else None,
            "wall_seconds": sum(wall) / len(wall),
        }
    pairs = []
    for a, b in combinations([arm.label for arm in arms], 2):
        diffs = [x - y for x, y in zip(per_arm[a]["per_seed"]["gain"], per_arm[b]["per_seed"]["gain"], strict=True)]
        iv = mean_ci(diffs)
        over_prompts = _paired_over_prompts(prompts[a], prompts[b])
        pairs.append({"a": a, "b": b, "difference": _iv(iv), "per_seed": diffs, "verdict": _verdict(a, b, iv),
                      "over_prompts": None if over_prompts is None else _iv(over_prompts)})
    return {"seeds": seeds, "arms": per_arm, "pairs": pairs}


def _per_prompt(evals: dict, key: str) -> dict | None:
    """{held-out row index: accuracy} from ``eval.json``'s ``per_prompt`` record of ``key``
    (``before`` or ``after``); None when that evaluation kept none."""
    record = evals.get(key, {}).get("per_prompt")
    return dict(zip(record["index"], record["accuracy"], strict=True)) if record else None


def _paired_over_prompts(a: list[dict], b: list[dict]) -> Interval | None:
    """The difference of two arms' gains paired by seed and held-out prompt, with its 95% interval
    over the (seed, prompt) pairs: the evaluation's sampling noise, not the training seeds'.

    ``a`` and ``b`` hold, per seed, a run's ``before`` and ``after`` per-prompt accuracies and its
    overall ``before_accuracy``. Where a run's initial evaluation kept no per-prompt record (saved
    before they existed) the afters alone are paired, which is the same difference when both runs
    of the seed started from one initial evaluation (equal befores). None when a run kept no record,
    two runs of a seed were scored on different prompts, or their befores differ unrecorded."""
    diffs = []
    for x, y in zip(a, b, strict=True):
        if x["after"] is None or y["after"] is None or x["after"].keys() != y["after"].keys():
            return None
        if x["before"] is not None and y["before"] is not None and x["before"].keys() == y["before"].keys() == x["after"].keys():
            diffs += [(x["after"][i] - x["before"][i]) - (y["after"][i] - y["before"][i]) for i in x["after"]]
        elif x["before_accuracy"] == y["before_accuracy"]:
            diffs += [x["after"][i] - y["after"][i] for i in x["after"]]
        else:
            return None
    return mean_ci(diffs) if diffs else None


def _iv(iv: Interval) -> dict:
    return {"mean": iv.mean, "half_width": iv.half_width, "n": iv.n}


def _verdict(a: str, b: str, iv: Interval) -> str:
    if iv.n < 2:
        return f"one seed: no interval, so no claim that {a} and {b} differ"
    if iv.excludes_zero:
        better, worse = (a, b) if iv.mean > 0 else (b, a)
        return f"{better} gains more than {worse} by {abs(iv.mean):.3f} (the 95% interval excludes 0)"
    return (f"within noise: the 95% interval of the difference ({iv.low:+.3f} to {iv.high:+.3f}) includes 0 "
            f"over {iv.n} seeds")


def _cell(d: dict, spec: str = ".3f") -> str:
    return Interval(d["mean"], d["half_width"], d["n"]).text(spec).replace(" (one seed: no interval)", "")


def table(summary: dict) -> str:
    """The summary as Markdown (also what the console shows)."""
    n = len(summary["seeds"])
    lines = [f"Held-out accuracy over {n} seed(s) ({', '.join(map(str, summary['seeds']))}); "
             "brackets: 95% t-interval over seeds.", "",
             "| arm | before | after | gain | reference acc | majority acc | rollout acc | disagree | right when "
             "disagreeing | right when all wrong | train+eval s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, arm in summary["arms"].items():
        t = arm["teacher"]
        g = {k: number(t.get(k)) for k in TEACHER}.get
        caw = f"{arm['correct_all_wrong']:.1f}" if arm["correct_all_wrong"] is not None else NOT_DEFINED
        lines.append(f"| {label} | {_cell(arm['before'])} | {_cell(arm['after'])} | {_cell(arm['gain'], '+.3f')} | "
                     f"{g('diag/reference_accuracy')} | {g('diag/majority_accuracy')} | {g('diag/rollout_accuracy')} | "
                     f"{g('diag/disagree_rate')} | {g('diag/disagree_accuracy')} | {caw} | {arm['wall_seconds']:.0f} |")
    if summary["pairs"]:
        lines += ["", "Paired by seed (gain of the first minus gain of the second); over prompts: the same difference "
                  "paired by seed and held-out prompt, its interval the evaluation's sampling noise alone (n: pairs):",
                  "", "| arms | difference | verdict | over prompts |", "|---|---|---|---|"]
        for p in summary["pairs"]:
            prompts = p.get("over_prompts")
            cell = NOT_DEFINED if prompts is None else f"{_cell(prompts, '+.3f')} (n {prompts['n']})"
            lines.append(f"| {p['a']} − {p['b']} | {_cell(p['difference'], '+.3f')} | {p['verdict']} | {cell} |")
    lines += ["", "Teacher columns: means over steps and seeds, measured against gold labels that training never "
              "reads (absent for arms without them); right when all wrong: groups per run."]
    return "\n".join(lines)


def write_outputs(output: Path, summary: dict, arms: list[ArmSpec], seeds: list[int], config_path: str,
                  overrides: list[str]) -> None:

    from cat.tools.report import write_report

    record = {"config": str(config_path), "overrides": overrides,
              "arms": {a.label: list(a.overrides) for a in arms}, **summary}
    for name, text in (("compare.json", json.dumps(record, indent=2)), ("compare.md", table(summary) + "\n")):
        write_text_atomic(output / name, text)
    runs = [run_dir_of(output, a, s) for a in arms for s in seeds]
    extra = f"<h2>Comparison</h2>{markdown_to_html(table(summary))}"
    write_report(runs, output / "report", title=f"cat compare: {Path(config_path).name}", extra_html=extra,
                 labels=[f"{a.label}/seed{s}" for a in arms for s in seeds], groups=[a.label for a in arms for _ in seeds])


def markdown_to_html(text: str) -> str:
    """The table's Markdown (pipe tables and paragraphs) as HTML for the report page."""
    import html

    out, rows = [], []

    def flush():
        if rows:
            head, *body = [r for r in rows if not set(r.replace("|", "").strip()) <= {"-"}]
            cells = [c.strip() for c in head.strip("|").split("|")]
            out.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cells) + "</tr>" + "".join(
                "<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in r.strip("|").split("|")) + "</tr>"
                for r in body) + "</table>")
            rows.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            rows.append(line)
            continue
        flush()
        if line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    flush()
    return "\n".join(out)

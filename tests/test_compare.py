"""``cat-rl compare``: two arms x two seeds of a short tiny config, the table with intervals, the
paired difference in words, the report; a second invocation finishes an interrupted compare."""

import json
import math
import shutil

import pytest
from conftest import ROOT, cli, run_cli

from cat.errors import ConfigError
from cat.tools.compare import parse_arms
from cat.tools.stats import mean_ci, t975

CAT = str(ROOT / "experiments" / "tiny_arith_cat.yaml")


def short(tiny_world):
    return [f"model.name_or_path={tiny_world / 'model'}", f"data.path={tiny_world / 'train.jsonl'}", "data.limit=32",
            f"eval.path={tiny_world / 'test.jsonl'}", "eval.limit=8", "eval.num_samples=1", "eval.greedy=false",
            "run.prompts_per_step=2", "run.steps=2", "generation.num_generations=4", "--no-progress"]


@pytest.fixture(scope="module")
def compared(tmp_path_factory, tiny_world):
    out_dir = tmp_path_factory.mktemp("compare") / "cmp"
    # a real process: each run trains in a child of its own, whose output reaches the terminal, not sys.stdout
    out = run_cli("compare", CAT, "--arms", "majority_vote", "--arm", "gold", "estimator.name=gold", "--seeds", "0,1",
                  "--output-dir", str(out_dir), *short(tiny_world))
    assert out.returncode == 0, out.stderr[-3000:]
    return out_dir, out


def test_compare_writes_runs_table_intervals_and_report(compared):
    out_dir, out = compared
    summary = json.loads((out_dir / "compare.json").read_text())
    assert summary["seeds"] == [0, 1] and list(summary["arms"]) == ["majority_vote", "gold"]
    for arm in ("majority_vote", "gold"):
        gains = []
        for seed in (0, 1):
            run_dir = out_dir / arm / f"seed{seed}"
            evals = json.loads((run_dir / "eval.json").read_text())
            gains.append(evals["after"]["accuracy"] - evals["before"]["accuracy"])
            assert f"seed: {seed}" in (run_dir / "config.yaml").read_text()  # an ordinary run directory
            if arm == "gold":  # the base model is evaluated once per seed: gold only changes the estimator
                first = out_dir / "majority_vote" / f"seed{seed}"
                assert evals["before_from"] == str(first)
                assert evals["before"] == json.loads((first / "eval.json").read_text())["before"]
                assert f"(evaluated by {first})" in out.stderr + out.stdout  # its "before:" line is printed too
        iv = summary["arms"][arm]["gain"]
        assert iv["mean"] == pytest.approx(sum(gains) / 2)
        spread = abs(gains[0] - gains[1]) / 2  # the sample std / sqrt(2) for two values
        assert iv["half_width"] == pytest.approx(t975(1) * spread)
    [pair] = summary["pairs"]
    diffs = [a - b for a, b in zip(summary["arms"]["majority_vote"]["per_seed"]["gain"],
                                   summary["arms"]["gold"]["per_seed"]["gain"], strict=True)]
    assert pair["difference"]["mean"] == pytest.approx(sum(diffs) / 2)
    assert "95% interval" in pair["verdict"]  # within noise, or which arm gains more
    # paired by seed and held-out prompt: every prompt's gain difference, recomputed from eval.json
    per_prompt = []
    for seed in (0, 1):
        ev = {arm: json.loads((out_dir / arm / f"seed{seed}" / "eval.json").read_text()) for arm in ("majority_vote", "gold")}
        records = {arm: {k: e[k]["per_prompt"] for k in ("before", "after")} for arm, e in ev.items()}
        for arm, e in ev.items():
            assert len(records[arm]["after"]["index"]) == e["after"]["n"] == 8
            assert sum(records[arm]["after"]["accuracy"]) / 8 == pytest.approx(e["after"]["accuracy"])
        assert records["majority_vote"]["after"]["index"] == records["gold"]["after"]["index"]
        per_prompt += [(ma - mb) - (ga - gb) for ma, mb, ga, gb in zip(
            records["majority_vote"]["after"]["accuracy"], records["majority_vote"]["before"]["accuracy"],
            records["gold"]["after"]["accuracy"], records["gold"]["before"]["accuracy"], strict=True)]
    assert pair["over_prompts"]["n"] == 16
    assert pair["over_prompts"]["mean"] == pytest.approx(pair["difference"]["mean"])  # the same mean, finer pairs
    assert pair["over_prompts"]["half_width"] == pytest.approx(mean_ci(per_prompt).half_width)
    # the majority arm's teacher is measured against gold; the gold arm's reference is gold itself
    assert summary["arms"]["gold"]["teacher"]["diag/reference_accuracy"] == 1.0
    assert 0 <= summary["arms"]["majority_vote"]["teacher"]["diag/majority_accuracy"] <= 1
    table = (out_dir / "compare.md").read_text()
    assert "| majority_vote |" in table and "| gold |" in table and "majority_vote − gold" in table
    assert table.strip() in out.stdout
    page = (out_dir / "report" / "index.html").read_text()
    for name in ("reward", "heldout", "teacher"):
        assert (out_dir / "report" / f"{name}.png").stat().st_size > 10_000 and f'href="{name}.png"' in page
    assert "majority_vote/seed1" in page and "Paired by seed" in page
    assert out.stdout.count("the initial policy's evaluation is") == 2


def test_compare_again_keeps_finished_runs_and_finishes_the_rest(compared, tmp_path, tiny_world):
    out_dir, _ = compared
    again = tmp_path / "cmp"
    shutil.copytree(out_dir, again)
    shutil.rmtree(again / "gold" / "seed1")  # as if stopped before this run
    shutil.rmtree(again / "majority_vote" / "seed1")  # evaluates the base model again, for gold seed 1 too
    (again / "gold" / "seed0" / "eval.json").write_text(
        json.dumps({k: v for k, v in json.loads((out_dir / "gold" / "seed0" / "eval.json").read_text()).items()
                    if k != "after"}))  # and this one killed before its final evaluation
    for saved in again.glob("*/seed*/config.yaml"):  # the runs moved with the folder, saved before anchor.orders
        saved.write_text(saved.read_text().replace(str(out_dir), str(again)).replace("  orders: 1\n", "", 1))
    out = cli("compare", CAT, "--arms", "majority_vote", "--arm", "gold", "estimator.name=gold", "--seeds", "0,1",
              "--output-dir", str(again), *short(tiny_world))
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("finished earlier") == 1  # progress is logged (cat.run.logs: stdout)
    assert "[2/4] majority_vote seed 1: training" in out.stdout
    assert "[3/4] gold seed 0: training" in out.stdout and "[4/4] gold seed 1: training" in out.stdout
    first, second = (json.loads((d / "compare.json").read_text()) for d in (out_dir, again))
    for arm in ("majority_vote", "gold"):  # same seeds, same runs; the base evaluated again gives the same
        assert second["arms"][arm]["per_seed"] == first["arms"][arm]["per_seed"]
    assert "before_from" not in json.loads((again / "majority_vote" / "seed1" / "eval.json").read_text())
    out = cli("compare", CAT, "--arms", "majority_vote", "--seeds", "0", "--output-dir", str(again),
              *short(tiny_world), "optim.lr=0.5")
    assert out.returncode == 2 and "finished under a different config" in out.stderr  # not reused silently
    # a finished run is unfinished at 3 steps: refused as a changed config (test_resume.py), unless
    # --allow-config-change, the flag that refusal names, which compare takes too
    longer = [*short(tiny_world), "run.steps=3"]
    out = cli("compare", CAT, "--arms", "majority_vote", "--seeds", "0", "--output-dir", str(again), *longer,
              "--allow-config-change")
    assert out.returncode == 0, out.stderr[-3000:]
    run = again / "majority_vote" / "seed0"
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert json.loads((run / "eval.json").read_text())["after_step"] == 3


def test_bad_arms_and_seeds_are_named(tmp_path, tiny_world):
    out = cli("compare", CAT, "--arms", "synthesys", "--seeds", "0", "--output-dir", str(tmp_path / "c"),
              *short(tiny_world))
    assert out.returncode == 2 and "arm synthesys" in out.stderr and "majority_vote" in out.stderr
    assert not (tmp_path / "c").exists()  # refused before any run
    out = cli("compare", CAT, "--arms", "gold", "--seeds", "0,x", "--output-dir", str(tmp_path / "c"))
    assert out.returncode == 2 and "--seeds '0,x'" in out.stderr
    out = cli("compare", CAT, "--seeds", "0", "--output-dir", str(tmp_path / "c"))
    assert out.returncode == 2 and "no arms" in out.stderr
    with pytest.raises(ConfigError, match="given twice"):
        parse_arms("gold,gold", None)
    with pytest.raises(ConfigError, match="not of the form"):
        parse_arms(None, [["x", "anchor.max_new_tokens"]])


def test_intervals():
    iv = mean_ci([0.5, 0.7, 0.6])
    assert iv.mean == pytest.approx(0.6) and iv.half_width == pytest.approx(4.303 * 0.1 / math.sqrt(3))
    assert math.isnan(mean_ci([0.4]).half_width) and "one seed" in mean_ci([0.4]).text()
    assert mean_ci([0.30, 0.32, 0.31]).excludes_zero and not mean_ci([-0.1, 0.3, 0.1]).excludes_zero


def test_runs_without_initial_per_prompt_records_pair_their_afters(tmp_path):
    """A run whose initial evaluation predates per-prompt records (its eval.json ``before`` has
    none) is paired on its afters when the arms share one initial evaluation, and not at all when
    their befores differ."""
    from cat.tools.compare import ArmSpec, summarize

    def run(label, after, before=0.5):
        run_dir = tmp_path / label / "seed0"
        run_dir.mkdir(parents=True)
        record = {"index": [3, 7, 9, 12], "accuracy": after}
        (run_dir / "eval.json").write_text(json.dumps({
            "before": {"accuracy": before},
            "after": {"accuracy": sum(after) / 4, "per_prompt": record}}))
        (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 1}) + "\n")
        return ArmSpec(label, (f"estimator.name={label}",))

    arms = [run("a", [1.0, 1.0, 0.0, 1.0]), run("b", [0.0, 1.0, 0.0, 0.0]), run("c", [1.0, 0.0, 0.0, 0.0], before=0.25)]
    pairs = {(p["a"], p["b"]): p for p in summarize(tmp_path, arms, [0])["pairs"]}
    ab = pairs["a", "b"]
    assert ab["over_prompts"]["n"] == 4 and ab["over_prompts"]["mean"] == pytest.approx(0.5)
    assert ab["over_prompts"]["half_width"] == pytest.approx(mean_ci([1.0, 0.0, 0.0, 1.0]).half_width)
    assert "one seed" in ab["verdict"]
    assert pairs["a", "c"]["over_prompts"] is None  # different initial evaluations: the afters alone are not the gains


@pytest.mark.parametrize("fails", [False, True], ids=["finished", "failed"])
def test_a_run_releases_its_models_engines_and_optimizer_when_it_ends(tmp_path, tiny_world, monkeypatch, fails):
    """``train_run``, what compare's child runs (and ``cat-rl train``, ``cat.train``), here in this
    process: once it returns or raises, nothing that held the run's weights is alive, even while
    the failure's traceback keeps its frames (a notebook's next run would be built beside it)."""
    import gc
    import weakref

    from cat.config import load_config
    from cat.run.loop import RunLoop
    from cat.tools.train import train_run

    held = {}
    train = RunLoop.train

    def recording(self, **kwargs):
        if not fails:
            train(self, **kwargs)
        t = self.trainer
        held.update({name: weakref.ref(part) for name, part in (
            ("policy", t.policy), ("pi_0", t.initial_policy), ("anchor", t.anchor),
            ("optimizer", t.learner.optimizer), ("engine", t.engine), ("trainer", t))})
        del t
        if fails:  # this frame, in the traceback, holds the loop (``self``), and through it the trainer
            raise RuntimeError("the step failed")

    monkeypatch.setattr(RunLoop, "train", recording)
    config = load_config(CAT, [o for o in short(tiny_world) if o != "--no-progress"] + ["eval.path=null"])
    if fails:
        with pytest.raises(RuntimeError, match="the step failed") as failure:
            train_run(config, tmp_path / "run", progress=False)
        held.pop("trainer")  # the traceback in ``failure`` still holds its frames: the loop, the trainer itself
    else:
        train_run(config, tmp_path / "run", progress=False)
        failure = None
    gc.collect()
    assert held and not [name for name, ref in held.items() if ref() is not None]
    assert failure is None or failure.traceback  # kept alive until here


def test_a_finished_run_continued_to_more_steps_drops_its_old_final_evaluation(tmp_path, tiny_world, monkeypatch):
    """A finished run resumed with more ``run.steps`` evaluates again at its new end; its old
    "after" leaves eval.json as soon as training continues, so a run stopped on the way never
    shows the old policy's score as its own, and compare does not count it finished."""
    from cat.config import load_config
    from cat.run.trainer import Trainer
    from cat.tools.compare import finished
    from cat.tools.train import train_run

    run_dir = tmp_path / "run"
    base = [o for o in short(tiny_world) if o != "--no-progress"]
    train_run(load_config(CAT, base), run_dir, progress=False)
    first = json.loads((run_dir / "eval.json").read_text())
    assert first["after_step"] == 2 and finished(run_dir, 2)

    step = Trainer.step

    def failing_at_four(self, *args, **kwargs):
        if len((run_dir / "metrics.jsonl").read_text().splitlines()) == 3:
            raise RuntimeError("stopped on the way")
        return step(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "step", failing_at_four)
    with pytest.raises(RuntimeError, match="stopped on the way"):
        train_run(load_config(CAT, base + ["run.steps=4"]), run_dir, progress=False, allow_change=True)
    stopped = json.loads((run_dir / "eval.json").read_text())
    assert "after" not in stopped and "after_step" not in stopped and stopped["before"] == first["before"]
    assert not finished(run_dir, 3)
    monkeypatch.setattr(Trainer, "step", step)
    train_run(load_config(CAT, base + ["run.steps=3"]), run_dir, progress=False, allow_change=True)
    again = json.loads((run_dir / "eval.json").read_text())
    assert again["after_step"] == 3 and "accuracy" in again["after"] and finished(run_dir, 3)

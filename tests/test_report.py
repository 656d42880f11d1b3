"""``cat-rl report``: PNG figures and one HTML page from real runs and a real synthesize result;
rendered in headless Chromium where it is installed (Debian: ``apt install chromium``)."""

import base64
import json
import re
import shutil
import subprocess

import pytest
from conftest import ROOT, cli

from cat.display import number
from cat.run.loop import teacher_summary_of
from cat.tools.report import arms_of, figures, load_run, over_seeds, read_jsonl

EXPERIMENTS = ROOT / "experiments"


def short(tiny_world) -> list[str]:
    return [f"model.name_or_path={tiny_world / 'model'}", f"data.path={tiny_world / 'train.jsonl'}", "data.limit=32",
            f"eval.path={tiny_world / 'test.jsonl'}", "eval.limit=8", "eval.num_samples=1", "eval.every=2",
            "run.prompts_per_step=2", "run.steps=3", "--no-progress"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_world):
    """Two short runs (CaT and gold, evaluated before, at step 2 and after) and a synthesize result."""
    root = tmp_path_factory.mktemp("report")
    common = short(tiny_world)
    for name in ("tiny_arith_cat", "tiny_arith_gold"):
        out = cli("train", str(EXPERIMENTS / f"{name}.yaml"), "--output-dir", str(root / name), *common)
        assert out.returncode == 0, out.stderr[-3000:]
        mid = json.loads((root / name / "eval.json").read_text())["history"][0]  # printed, not only saved
        assert f"step 2: accuracy {number(mid['accuracy'])} (pass@1 over 1 samples, n=8)" in out.stdout
    out = cli("synthesize", str(EXPERIMENTS / "tiny_arith_cat.yaml"), "--estimators", "majority_vote,synthesis",
              "--group-sizes", "1,2,4", "--output", str(root / "tt.json"), *common[:2], *common[3:5])
    assert out.returncode == 0, out.stderr[-3000:]
    return root


def test_report_writes_figures_and_a_page_that_embeds_and_links_them(inputs, tmp_path):
    import matplotlib.image

    out = cli("report", str(inputs / "tiny_arith_cat"), str(inputs / "tiny_arith_gold"), str(inputs / "tt.json"),
              "--output", str(tmp_path / "rep"))
    assert out.returncode == 0, out.stderr
    page = (tmp_path / "rep" / "index.html").read_text()
    assert out.stdout.strip() == str(tmp_path / "rep" / "index.html")
    names = {"reward", "heldout", "update", "teacher", "diversity", "lengths", "time", "compute", "synthesize"}
    assert {p.stem for p in (tmp_path / "rep").glob("*.png")} == names
    for name in names:
        png = (tmp_path / "rep" / f"{name}.png").read_bytes()
        pixels = matplotlib.image.imread(tmp_path / "rep" / f"{name}.png")
        assert pixels.shape[0] > 200 and pixels.shape[1] > 400 and pixels.std() > 0.05, name  # a drawn figure
        assert f'href="{name}.png"' in page, name
        [embedded] = re.findall(rf'<img alt="{name}" src="data:image/png;base64,([^"]+)"', page)
        assert base64.b64decode(embedded) == png, name  # the page stands alone
    for name in ("tiny_arith_cat", "tiny_arith_gold"):
        evals = json.loads((inputs / name / "eval.json").read_text())
        assert len(evals["history"]) == 1  # step 2
        row = re.search(rf"{name}</td>.*?</tr>", page, re.S).group(0)
        assert f"{evals['before']['accuracy']:.3f}" in row and f"{evals['after']['accuracy']:.3f}" in row
        assert "3 / 3" in row
    assert "teacher over 3 steps" in page  # the CaT run's teacher summary


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no headless Chromium here (Debian: apt install chromium)")
def test_the_page_renders_in_headless_chromium(inputs, tmp_path):
    out = cli("report", str(inputs / "tiny_arith_cat"), "--output", str(tmp_path / "rep"))
    assert out.returncode == 0, out.stderr
    page = (tmp_path / "rep" / "index.html").read_text()
    probe = tmp_path / "rep" / "probe.html"  # the page plus a script that records each image as the browser decoded it
    probe.write_text(page.replace("</body>", "<script>addEventListener('load', () => { document.body.dataset.images = "
                                  "JSON.stringify([...document.images].map(i => [i.alt, i.complete, i.naturalWidth]));"
                                  " });</script></body>"))
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    images = json.loads(re.search(r'data-images="([^"]*)"', dom).group(1).replace("&quot;", '"'))
    assert {alt for alt, *_ in images} == {"reward", "heldout", "update", "teacher", "diversity", "lengths", "time",
                                           "compute"}
    assert all(complete and width > 400 for _, complete, width in images), images


def test_one_run_defaults_to_its_own_report_folder_and_a_torn_last_row_is_noted(inputs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(inputs / "tiny_arith_gold", run)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "reward/me')  # killed while writing
    out = cli("report", str(run))
    assert out.returncode == 0, out.stderr
    page = (run / "report" / "index.html").read_text()
    assert "its last line is incomplete" in page and (run / "report" / "reward.png").stat().st_size > 0


@pytest.mark.parametrize("setup, needle", [
    (lambda d: None, "no such file or directory"),
    (lambda d: d.write_text('{"accuracy": 1}'), "not a cat-rl synthesize result"),
    (lambda d: d.mkdir(), "neither a run directory"),
])
def test_inputs_that_are_not_runs_are_named(tmp_path, setup, needle):
    target = tmp_path / "thing.json"
    setup(target)
    out = cli("report", str(target), "--output", str(tmp_path / "rep"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert str(target) in out.stderr and needle in out.stderr, out.stderr


def test_a_damaged_metrics_row_is_named_and_several_inputs_need_an_output(inputs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(inputs / "tiny_arith_gold", run)
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text(lines[0] + "{oops\n" + "".join(lines[1:]))
    out = cli("report", str(run), "--output", str(tmp_path / "rep"))
    assert out.returncode == 2 and f"{run / 'metrics.jsonl'}: line 2 is not valid JSON" in out.stderr
    out = cli("report", str(inputs / "tiny_arith_cat"), str(inputs / "tiny_arith_gold"))
    assert out.returncode == 2 and "--output" in out.stderr
    out = cli("report", str(inputs / "tiny_arith_cat"), "run.steps=3")
    assert out.returncode == 2 and "takes no config overrides" in out.stderr


@pytest.fixture(scope="module")
def seeds(inputs, tmp_path_factory, tiny_world):
    """Two arms of two seeds each (CaT, whose seed 0 is the run above, and the majority vote) in
    compare's ARM/seedS layout, and the gold run alone: directories as ``cat-rl train`` writes them."""
    root = tmp_path_factory.mktemp("seeds")
    shutil.copytree(inputs / "tiny_arith_cat", root / "cat" / "seed0")
    outputs = {}
    for arm, name, seed in (("cat", "tiny_arith_cat", 1), ("majority", "tiny_arith_majority", 0),
                            ("majority", "tiny_arith_majority", 1)):
        out = cli("train", str(EXPERIMENTS / f"{name}.yaml"), "--output-dir", str(root / arm / f"seed{seed}"),
                  f"run.seed={seed}", *short(tiny_world))
        assert out.returncode == 0, out.stderr[-3000:]
        outputs[arm, seed] = out.stdout
    return root, [root / "cat" / "seed0", root / "cat" / "seed1", root / "majority" / "seed0",
                  root / "majority" / "seed1", inputs / "tiny_arith_gold"], outputs


def arm_figures(paths):
    runs = [load_run(p, f"{p.parent.name}/{p.name}" if p.name.startswith("seed") else p.name) for p in paths]
    arms = arms_of(runs)  # not told: runs whose configs differ only in run.seed are one arm
    return arms, {name: fig for name, fig, _ in figures(arms, [])}


def test_runs_of_one_arm_share_a_colour_and_their_mean_is_drawn_thick_over_a_min_max_band(seeds):
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba

    _, paths, _ = seeds
    arms, figs = arm_figures(paths)
    assert [(a.label, len(a.runs)) for a in arms] == [("cat", 2), ("majority", 2), ("tiny_arith_gold", 1)]
    assert len({a.colour for a in arms}) == 3
    ax = figs["reward"].axes[0]
    for arm in arms:
        colour = to_rgba(plt.get_cmap("tab10")(arm.colour))
        lines = [line for line in ax.get_lines() if to_rgba(line.get_color()) == colour]
        thick = [line for line in lines if line.get_linewidth() > 2]
        thin = [line for line in lines if line.get_linewidth() < 1]
        assert len(thick) == 1 and len(lines) == len(thick) + len(thin), arm.label
        rewards = [[r["reward/mean"] for r in read_jsonl(run.path / "metrics.jsonl")[0]] for run in arm.runs]
        # three steps: no moving average (its window is steps // 15), so the mean is over raw values
        assert list(thick[0].get_ydata()) == pytest.approx([sum(v) / len(v) for v in zip(*rewards, strict=True)])
        bands = [c for c in ax.collections if to_rgba(c.get_facecolor()[0])[:3] == colour[:3]]
        if len(arm.runs) == 1:
            assert not thin and not bands  # one run: its line, nothing to spread
            continue
        assert len(thin) == 2 and {tuple(t.get_ydata()) for t in thin} == {tuple(v) for v in rewards}
        [band] = bands
        edge = {round(y, 9) for y in band.get_paths()[0].vertices[:, 1]}
        assert edge == {round(y, 9) for v in zip(*rewards, strict=True) for y in (min(v), max(v))}
    plt.close("all")


def test_the_legend_lists_arms_and_sits_outside_every_panel(seeds):
    import matplotlib.pyplot as plt

    _, paths, _ = seeds
    arms, figs = arm_figures(paths)
    assert set(figs) == {"reward", "heldout", "update", "teacher", "diversity", "lengths", "time", "compute"}
    for name, fig in figs.items():
        fig.canvas.draw()
        [legend] = fig.legends
        assert all(ax.get_legend() is None for ax in fig.axes), name
        box = legend.get_window_extent()
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent()), (name, box, ax.get_window_extent())
        if name not in ("time", "compute"):  # these legends name phases and spenders; their bars are the arms
            assert [t.get_text() for t in legend.get_texts()] == ["cat (2 seeds)", "majority (2 seeds)",
                                                                  "tiny_arith_gold"], name
            assert "min to max" in legend.get_title().get_text()
    assert [t.get_text() for t in figs["time"].axes[0].get_xticklabels()] == [
        "cat (2 seeds)", "majority (2 seeds)", "tiny_arith_gold"]
    # tokens by who spent them: the policy in every arm, the anchor only where it synthesizes
    legend = [t.get_text() for t in figs["compute"].legends[0].get_texts()]
    assert legend[:3] == ["policy writes", "anchor reads", "anchor writes"]
    policy, anchor_reads = figs["compute"].axes[0].containers[:2]
    for bar, arm in zip(policy, arms, strict=True):
        runs = [[r["tokens/rollouts"] for r in run.rows if "tokens/rollouts" in r] for run in arm.runs]
        assert bar.get_height() == pytest.approx(sum(sum(v) / len(v) for v in runs) / len(runs))
    heights = dict(zip([a.legend for a in arms], [b.get_height() for b in anchor_reads], strict=True))
    assert heights["cat (2 seeds)"] > 0 and heights["majority (2 seeds)"] == heights["tiny_arith_gold"] == 0
    plt.close("all")


def test_panels_of_zeros_start_at_zero_and_no_positive_data_gets_a_negative_axis(seeds):
    import matplotlib.pyplot as plt

    _, paths, _ = seeds
    rows = [row for p in paths for row in read_jsonl(p / "metrics.jsonl")[0]]
    assert all(r["clip_ratio/region"] == 0 for r in rows)  # one pass per batch: the ratio is 1, nothing clips
    _, figs = arm_figures(paths)
    [clipped] = [ax for ax in figs["update"].axes if ax.get_title() == "clipped fraction"]
    assert clipped.get_ylim() == (0, 1)
    assert "every value is 0" in [t.get_text() for t in clipped.texts]
    for name, fig in figs.items():
        for ax in fig.axes:
            low, high = ax.dataLim.intervaly
            if ax.has_data() and low >= 0:
                assert ax.get_ylim()[0] >= 0, (name, ax.get_title(), ax.get_ylim())
            if ax.has_data() and low == high:
                assert ax.get_ylim()[0] <= low <= ax.get_ylim()[1] and ax.get_ylim()[0] < ax.get_ylim()[1]
    plt.close("all")


def test_undefined_values_read_n_a_in_the_summary_and_the_page(seeds, tmp_path):
    """The majority vote's reference is the majority, so they never disagree and "right when they
    disagree" is undefined (NaN) at every step: it reads n/a, never nan%."""
    root, paths, outputs = seeds
    rows = read_jsonl(root / "majority" / "seed0" / "metrics.jsonl")[0]
    assert all(r["diag/disagree_accuracy"] != r["diag/disagree_accuracy"] for r in rows)
    summary = teacher_summary_of(rows)
    assert "is right n/a of those" in summary and "nan" not in summary.lower()
    assert summary in outputs["majority", 0] and "nan" not in outputs["majority", 0].lower()
    out = cli("report", *map(str, paths), "--output", str(tmp_path / "rep"))
    assert out.returncode == 0, out.stderr
    page = re.sub(r"data:image/png;base64,[^\"]+", "", (tmp_path / "rep" / "index.html").read_text())
    assert "nan" not in page.lower() and "is right n/a of those" in page
    assert "thin lines are the seeds" in page  # the band is named in each figure's caption


def test_over_seeds_takes_the_steps_every_run_has():
    assert over_seeds([([1, 2, 3], [0.0, 1.0, 2.0]), ([1, 2], [2.0, 3.0])]) == ([1, 2], [1.0, 2.0], [0.0, 1.0], [2.0, 3.0])


@pytest.mark.parametrize("labels, arm", [(["cat/seed0", "cat/seed1"], "cat"), (["run_s1", "run_s2"], "run"),
                                         (["cat-0", "cat-1"], "cat"), (["lrs1", "lrs2"], "lrs"),
                                         (["exps1", "exps2"], "exps"), (["a", "b"], "a +1")])
def test_an_arm_is_named_by_its_runs_labels_less_a_seed_marker(labels, arm):
    from types import SimpleNamespace

    from cat.tools.report import _arm_label

    assert _arm_label([SimpleNamespace(label=label) for label in labels]) == arm

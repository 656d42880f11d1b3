"""``cat-rl report``: PNG figures and one HTML page from real runs and a real synthesize result;
rendered in headless Chromium where it is installed (Debian: ``apt install chromium``)."""

import base64
import json
import re
import shutil
import subprocess

import pytest
from conftest import ROOT, cli

EXPERIMENTS = ROOT / "experiments"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_world):
    """Two short runs (CaT and gold, evaluated before, at step 2 and after) and a synthesize result."""
    root = tmp_path_factory.mktemp("report")
    common = [f"model.name_or_path={tiny_world / 'model'}", f"data.path={tiny_world / 'train.jsonl'}", "data.limit=32",
              f"eval.path={tiny_world / 'test.jsonl'}", "eval.limit=8", "eval.num_samples=1", "eval.every=2",
              "run.prompts_per_step=2", "run.steps=3", "--no-progress"]
    for name in ("tiny_arith_cat", "tiny_arith_gold"):
        out = cli("train", str(EXPERIMENTS / f"{name}.yaml"), "--output-dir", str(root / name), *common)
        assert out.returncode == 0, out.stderr[-3000:]
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
    names = {"reward", "heldout", "update", "teacher", "lengths", "time", "synthesize"}
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
    assert {alt for alt, *_ in images} == {"reward", "heldout", "update", "teacher", "lengths", "time"}
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

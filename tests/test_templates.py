import subprocess
import sys
from pathlib import Path

import pytest

from cat.errors import ConfigError
from cat.templates import data_dir, load_template

ROOT = Path(__file__).resolve().parent.parent


def test_builtin_anchor_templates_load_and_render():
    t = load_template("math_synthesis", kind="anchors", required={"rollouts"}, allowed={"num_rollouts"})
    text = t.render(rollouts="### Response 1\nx", num_rollouts="1")
    assert "### Response 1" in text and "\\boxed{}" in text and "{{" not in text
    q = load_template("math_synthesis_with_question", kind="anchors", required={"rollouts", "question"}, allowed={"num_rollouts"})
    assert "What is 2+2?" in q.render(rollouts="r", num_rollouts="1", question="What is 2+2?")
    for name in ("freeform_synthesis", "self_bon", "mutual_predictability"):
        load_template(name, kind="anchors", required={"rollouts"}, allowed={"num_rollouts", "question"})


def test_missing_rollouts_placeholder_is_an_error(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_text("Reconcile the responses. {{num_rollouts}}")
    with pytest.raises(ConfigError, match=r"missing required placeholder\(s\) \['rollouts'\]"):
        load_template(str(p), kind="anchors", required={"rollouts"}, allowed={"num_rollouts"})


def test_unknown_placeholder_is_an_error(tmp_path):
    p = tmp_path / "typo.txt"
    p.write_text("{{rollout}} {{rollouts}}")
    with pytest.raises(ConfigError, match=r"unknown placeholder\(s\) \['rollout'\].*allowed"):
        load_template(str(p), kind="anchors", required={"rollouts"}, allowed={"num_rollouts"})


def test_question_template_without_question_is_an_error():
    with pytest.raises(ConfigError, match="question"):
        load_template("math_synthesis", kind="anchors", required={"rollouts", "question"}, allowed={"num_rollouts"})


def test_unknown_template_lists_builtins():
    with pytest.raises(ConfigError, match="math_synthesis"):
        load_template("nope", kind="anchors", required={"rollouts"}, allowed=set())


def test_templates_ship_in_the_wheel(tmp_path):
    """A non-editable install finds anchors/ without the source tree."""
    wheel_dir, target = tmp_path / "wheel", tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheel_dir), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    if build.returncode != 0 and "hatchling" in build.stderr:
        build = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheel_dir), str(ROOT)],
            capture_output=True, text=True, timeout=300,
        )
    assert build.returncode == 0, build.stderr
    wheel = next(wheel_dir.glob("*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)], check=True, timeout=300)
    code = ("import cat.templates as t; d = t.data_dir('anchors'); assert 'site' in str(d), d; "
            "t.load_template('math_synthesis', kind='anchors', required={'rollouts'}, allowed={'num_rollouts'}); print(d)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert (Path(out.stdout.strip()) / "math_synthesis.txt").is_file()


def test_source_tree_resolution():
    assert (data_dir("anchors") / "math_synthesis.txt").is_file()


def test_a_known_placeholder_with_single_braces_is_an_error(tmp_path):
    """``{rollouts}`` would be sent as written; other single-braced words (LaTeX) are text."""
    p = tmp_path / "single.txt"
    p.write_text("Merge these, ending in \\boxed{} and \\text{answer}.\n\n{rollouts}\n{{rollouts}}")
    with pytest.raises(ConfigError, match=rf"template {p}, line 3: {{rollouts}} has single braces.*{{{{rollouts}}}}"):
        load_template(str(p), kind="anchors", required={"rollouts"}, allowed={"num_rollouts"})


KNOWN = {"rollouts", "num_rollouts", "question", "reference", "min_criteria", "response", "criterion", "criteria",
         "conversation", "points"}


@pytest.mark.parametrize("path", sorted([*(ROOT / "anchors").glob("*.txt"), *(ROOT / "rubrics").glob("*.txt")]),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_template_loads(path):
    load_template(str(path), kind=path.parent.name, required=set(), allowed=KNOWN)


def test_a_template_that_cannot_be_read_is_named(tmp_path):
    p = tmp_path / "latin1.txt"
    p.write_bytes("{{rollouts}}\nR\xe9sum\xe9".encode("latin-1"))
    with pytest.raises(ConfigError, match=rf"template {p} is not UTF-8 text \(byte 0xe9 on line 2\)"):
        load_template(str(p), kind="anchors", required={"rollouts"}, allowed=set())
    with pytest.raises(ConfigError, match="template 'xxx.*' cannot be read"):
        load_template("x" * 5000, kind="anchors", required={"rollouts"}, allowed=set())

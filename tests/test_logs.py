"""Library messages go through logging (the ``cat`` logger); the console handler puts progress on
stdout and warnings on stderr, and gives way to an application's own logging setup."""

import ast
import io
import logging
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import cat
from cat.run import logs

LIBRARY = Path(cat.__file__).parent


def test_the_library_does_not_print():
    """Only the command line prints; every other module logs (the one exception is the Ctrl-C
    handler, which must not take logging's locks inside a signal handler)."""
    offenders = []
    for path in sorted(LIBRARY.rglob("*.py")):
        if path.relative_to(LIBRARY).as_posix() in ("tools/cli.py", "tools/train.py"):  # the command line
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                offenders.append(f"{path.relative_to(LIBRARY)}:{node.lineno}")
    assert [o.split(":")[0] for o in offenders] == ["run/loop.py"], offenders


def test_console_routes_by_level_and_follows_redirection(monkeypatch):
    logger = logging.getLogger("cat")
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    monkeypatch.setattr(logger, "propagate", True)
    logs.console()
    logs.console()  # idempotent
    assert len(logger.handlers) == 1 and logger.propagate is False
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        logging.getLogger("cat.run.trainer").info("step 1")
        logging.getLogger("cat.worlds.arith").warning("warning: template changed")
        logging.getLogger("cat.worlds.arith").debug("not shown")
    assert out.getvalue() == "step 1\n" and err.getvalue() == "warning: template changed\n"


def test_console_tags_other_ranks(monkeypatch):
    logger = logging.getLogger("cat")
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    logs.console()
    out = io.StringIO()
    with redirect_stdout(out):
        logging.getLogger("cat.run.loop").info("hello 100%")
    assert out.getvalue() == "[rank 1/2] hello 100%\n"


def test_an_application_handler_is_kept(monkeypatch):
    logger = logging.getLogger("cat")
    mine = logging.NullHandler()
    monkeypatch.setattr(logger, "handlers", [mine])
    logs.console()
    assert logger.handlers == [mine]


def test_a_piped_training_run_logs_step_of_total_elapsed_eta_and_small_values(tmp_path, tiny_world):
    """``cat-rl train`` with its output piped into a log (no terminal, so no live bar): each step's
    line still says step i/N, the time so far and the time to the last step; a KL of 2.6e-04 reads
    as such, not as 0.000."""
    import json
    import re

    from conftest import ROOT, run_cli

    from cat.display import number

    out = run_cli("train", str(ROOT / "experiments" / "tiny_arith_cat.yaml"), "--output-dir", str(tmp_path / "run"),
                  f"model.name_or_path={tiny_world / 'model'}", f"data.path={tiny_world / 'train.jsonl'}",
                  "data.limit=32", "eval.path=null", "run.prompts_per_step=2", "run.steps=3", "grpo.beta=0.04")
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("step ")]
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == len(rows) == 3, out.stdout
    for i, (line, row) in enumerate(zip(lines, rows, strict=True), 1):
        assert re.match(rf"step {i}/3  reward ", line), line
        span = r"(\d+\.\ds|\d+s|\d+m\d\ds|\d+h\d\dm)"  # cat.display.duration's forms: a loaded machine takes longer
        assert re.search(rf"  elapsed {span}  eta {span}$", line), line
        assert f"  kl {number(row['kl'])}  " in line, line
    assert lines[-1].endswith("eta 0.0s")
    small = [row["kl"] for row in rows if 0 < row["kl"] < 0.01]
    assert small, [row["kl"] for row in rows]  # the policy moved a little: a KL that .3f would print as 0.000
    assert not re.search(r"kl 0\.000\b", out.stdout)

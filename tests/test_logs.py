"""Library messages go through logging (the ``cat`` logger); the console handler puts progress on
stdout and warnings on stderr, and gives way to an application's own logging setup."""

import ast
import io
import logging
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from cat import logs

LIBRARY = Path(logs.__file__).parent


def test_the_library_does_not_print():
    """Only the command line prints; every other module logs (the one exception is the Ctrl-C
    handler, which must not take logging's locks inside a signal handler)."""
    offenders = []
    for path in sorted(LIBRARY.rglob("*.py")):
        if path.name == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                offenders.append(f"{path.relative_to(LIBRARY)}:{node.lineno}")
    assert [o.split(":")[0] for o in offenders] == ["loop.py"], offenders


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
        logging.getLogger("cat.trainer").info("step 1")
        logging.getLogger("cat.tiny").warning("warning: template changed")
        logging.getLogger("cat.tiny").debug("not shown")
    assert out.getvalue() == "step 1\n" and err.getvalue() == "warning: template changed\n"


def test_console_tags_other_ranks(monkeypatch):
    logger = logging.getLogger("cat")
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    logs.console()
    out = io.StringIO()
    with redirect_stdout(out):
        logging.getLogger("cat.loop").info("hello 100%")
    assert out.getvalue() == "[rank 1/2] hello 100%\n"


def test_an_application_handler_is_kept(monkeypatch):
    logger = logging.getLogger("cat")
    mine = logging.NullHandler()
    monkeypatch.setattr(logger, "handlers", [mine])
    logs.console()
    assert logger.handlers == [mine]

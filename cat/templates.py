"""Prompt templates as data: text files with ``{{name}}`` placeholders.

Templates live in the top-level ``anchors/`` and ``rubrics/`` folders of the repository. A wheel
ships them inside the package (``cat/_data/``), so they are found whether ``cat`` runs from a
checkout, an editable install or a plain install. A template argument is either a bare name
(``math_synthesis`` -> ``anchors/math_synthesis.txt``) or a path to any text file.

Placeholders use double braces so that templates can contain LaTeX such as ``\\boxed{}`` freely.
Every placeholder is checked when the template is loaded: an unknown name, a missing required
one, or a known one written with single braces (``{rollouts}``, which would render literally) is
an error that names the file.

The data's prompt template (``data.prompt_template``, one line in a config) is the other kind:
``{problem}`` is its one field, ``{{name}}`` the literal text ``{name}``, and every other brace
is text; :func:`check_prompt_template` refuses any other ``{name}`` when the config loads.

This module knows nothing about models or tokenizers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from cat.errors import ConfigError, utf8_text

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_SINGLE = re.compile(r"(?<!\{)\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}(?!\})")
_PROMPT_FIELD = re.compile(r"\{\{([A-Za-z_][A-Za-z0-9_]*)\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PACKAGE_DATA = Path(__file__).resolve().parent / "_data"
_REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir(kind: str) -> Path:
    """The folder that holds templates of ``kind`` ("anchors" or "rubrics")."""
    for candidate in (_PACKAGE_DATA / kind, _REPO_ROOT / kind):
        if candidate.is_dir():
            return candidate
    raise ConfigError(f"template folder '{kind}' not found (looked in {_PACKAGE_DATA} and {_REPO_ROOT})")


@dataclass(frozen=True)
class Template:
    """A validated template: its text, where it came from and the placeholders it uses."""

    text: str
    source: str
    placeholders: frozenset[str]

    def render(self, **values: str) -> str:
        missing = self.placeholders - values.keys()
        if missing:
            raise ValueError(f"template {self.source} needs values for {sorted(missing)}")
        return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), self.text)


def load_template(
    name_or_path: str, *, kind: str, required: set[str], allowed: set[str]
) -> Template:
    """Load and validate a template.

    ``required`` placeholders must appear; any placeholder outside ``allowed | required`` is an
    error (a typo such as ``{{rollout}}`` would otherwise render literally).
    """
    path = Path(name_or_path)
    try:
        if not path.suffix and not path.exists():
            path = data_dir(kind) / f"{name_or_path}.txt"
        data = path.read_bytes() if path.is_file() else None
    except OSError as exc:  # a name too long for the file system, a file it may not read
        raise ConfigError(f"template '{name_or_path}' cannot be read: {exc.strerror or exc}") from None
    if data is None:
        known = sorted(p.stem for p in data_dir(kind).glob("*.txt"))
        raise ConfigError(f"template '{name_or_path}' not found; built-in {kind} templates: {known}")
    text = utf8_text(data, f"template {path}")
    used = frozenset(_PLACEHOLDER.findall(text))
    unknown = used - allowed - required
    if unknown:
        raise ConfigError(
            f"template {path} uses unknown placeholder(s) {sorted(unknown)}; "
            f"allowed: {sorted(allowed | required)}"
        )
    missing = required - used
    if missing:
        raise ConfigError(f"template {path} is missing required placeholder(s) {sorted(missing)}")
    for m in _SINGLE.finditer(text):
        if m.group(1) in allowed | required:
            line = text.count("\n", 0, m.start()) + 1
            raise ConfigError(f"template {path}, line {line}: {m.group(0)} has single braces and would be sent "
                              f"as written; placeholders take two: {{{{{m.group(1)}}}}}")
    return Template(text=text, source=str(path), placeholders=used)


def score_template(name: str = "judge_score") -> Template:
    """A rating template (``judge.score_template``, read by ``Judge.scores``): shows
    ``{{conversation}}`` and ``{{response}}``; the judge replies ``<score>N</score>``."""
    return load_template(name, kind="rubrics", required={"conversation", "response"}, allowed=set())


def check_prompt_template(template: str, prompt_field: str, where: str = "data.prompt_template") -> None:
    """``template`` has the field ``{problem}`` and no other ``{name}``. The message names the
    unknown field, the template and the one field there is."""
    fields = [m.group(2) for m in _PROMPT_FIELD.finditer(template) if m.group(2)]
    unknown = [f for f in fields if f != "problem"]
    if unknown:
        name = unknown[0]
        raise ConfigError(
            f"{where} {template!r:.120} uses the field {{{name}}}, which does not exist: the one field is "
            f"{{problem}}, the row's '{prompt_field}' column (data.prompt_field). For the literal text "
            f"{{{name}}} write {{{{{name}}}}}.")
    if not fields:
        raise ConfigError(f"{where} must contain {{problem}} (where the row's '{prompt_field}' column goes), "
                          f"got {template!r:.120}")


def render_prompt(template: str, problem: str) -> str:
    """``template`` with ``{problem}`` replaced by ``problem`` and ``{{name}}`` by ``{name}``
    (checked by :func:`check_prompt_template`)."""
    if "{{" not in template:  # no escapes: every {name} left is {problem} (the fast path, once per row)
        return template.replace("{problem}", problem)
    return _PROMPT_FIELD.sub(lambda m: "{" + m.group(1) + "}" if m.group(1) else problem, template)

"""Prompt templates as data: text files with ``{{name}}`` placeholders.

Templates live in the top-level ``anchors/`` and ``rubrics/`` folders of the repository. A wheel
ships them inside the package (``cat/_data/``), so they are found whether ``cat`` runs from a
checkout, an editable install or a plain install. A template argument is either a bare name
(``math_synthesis`` -> ``anchors/math_synthesis.txt``) or a path to any text file.

Placeholders use double braces so that templates can contain LaTeX such as ``\\boxed{}`` freely.
Every placeholder is checked when the template is loaded: an unknown name, or a missing required
one, is an error that names the file.

This module knows nothing about models or tokenizers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from cat.errors import ConfigError

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
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
    if not path.suffix and not path.exists():
        path = data_dir(kind) / f"{name_or_path}.txt"
    if not path.is_file():
        known = sorted(p.stem for p in data_dir(kind).glob("*.txt"))
        raise ConfigError(f"template '{name_or_path}' not found; built-in {kind} templates: {known}")
    text = path.read_text(encoding="utf-8")
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
    return Template(text=text, source=str(path), placeholders=used)

"""The documentation stays true: README's opening rule, its length, every relative link and
``#anchor`` in README.md and docs/*.md, every docs/ page the code names, the README's Python
example (the same as docs/python.md's), and docs/configuration.md (the generator's output)."""

import re
from pathlib import Path

from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def outside_code(text: str) -> str:
    """The text with fenced code blocks and inline code blanked out (their brackets are not links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation but ``-`` and ``_``
    dropped, spaces as ``-``, a repeated one numbered ``-1``, ``-2``, ..."""
    found: set[str] = set()
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", text, flags=re.M):
        base = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        name, n = base, 0
        while name in found:
            n += 1
            name = f"{base}-{n}"
        found.add(name)
    return found


def test_readme_opens_with_the_two_commands():
    """A rule of the project: the title, then exactly the two commands in one bash block; CI runs the second."""
    lines = (ROOT / "README.md").read_text().splitlines()
    assert lines[0].startswith("# ") and lines[1] == "" and lines[2] == "```bash", lines[:3]
    block = lines[3:lines.index("```", 3)]
    assert [line.split("#")[0].strip() for line in block] == ["python3 dev.py demo", "python3 dev.py test"], block
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] == "python3 dev.py test", ci


def test_readme_is_at_most_250_lines():
    n = len((ROOT / "README.md").read_text().splitlines())
    assert n <= 250, f"README.md has {n} lines: move detail into docs/ and link to it"


def test_every_relative_link_and_anchor_resolves():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", outside_code(page.read_text())):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(ROOT)}: ({target})"
            if not dest.exists():
                broken.append(f"{where}: no file {dest.relative_to(ROOT) if ROOT in dest.parents else dest}")
            elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
                broken.append(f"{where}: no heading with the anchor #{anchor}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_readme_links_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    unlinked = [p.name for p in PAGES[1:] if f"](docs/{p.name})" not in readme]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


def test_docs_pages_named_in_the_code_exist():
    """A docstring, comment or message that sends the reader to docs/NAME.md names a page that exists."""
    sources = [*(ROOT / "cat").rglob("*.py"), *(ROOT / "tests").glob("*.py"), *(ROOT / "benchmarks").glob("*.py"),
               ROOT / "dev.py", ROOT / "pyproject.toml"]
    missing = sorted({f"{src.relative_to(ROOT)}: {name}" for src in sources
                      for name in re.findall(r"\bdocs/[a-z][\w-]*(?:\.md)?", src.read_text())
                      if not (ROOT / name).exists()})
    assert not missing, "pages that do not exist:\n" + "\n".join(missing)


def test_readme_python_example_is_the_guides():
    """README shows the example that opens docs/python.md; the two must not drift apart."""
    def example(path):
        return re.search(r"```python\n(import cat\n.*?)```", path.read_text(), re.S).group(1)

    assert example(ROOT / "README.md") == example(ROOT / "docs" / "python.md")


def test_configuration_reference_is_generated_from_the_models():
    from cat.tools.config_reference import COMMAND, render

    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == render(), f"docs/configuration.md is stale: regenerate it with `{COMMAND}`"


def test_configuration_reference_documents_every_field():
    """Every key of every section has a row with its description: the models are the single source."""
    from pydantic import BaseModel

    from cat.config import Config

    text = (ROOT / "docs" / "configuration.md").read_text()

    def walk(model: type[BaseModel], path: str):
        for name, field in model.model_fields.items():
            nested = next((a for a in (field.annotation, *getattr(field.annotation, "__args__", ()))
                           if isinstance(a, type) and issubclass(a, BaseModel)), None)
            if nested is not None and path == "":
                yield from walk(nested, name + ".")
                continue
            assert field.description, f"{path}{name} has no docstring"
            assert f"| `{name}` |" in text, f"{path}{name} is missing from docs/configuration.md"
            if nested is not None:
                yield from walk(nested, f"{path}{name}.")
            yield path + name

    assert len(list(walk(Config, ""))) > 100

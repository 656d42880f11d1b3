"""The configuration reference, docs/configuration.md, written from the config's pydantic models.

``python -m cat.tools.config_reference > docs/configuration.md`` regenerates it. Every section's
text is its model's class docstring and every row a field's name, type, bounds, default and
attribute docstring, so the page says what ``cat/config.py`` says and cannot drift from it;
``tests/test_docs.py`` fails when the committed page differs from this module's output.

Not here: what a setting does at run time beyond its docstring (the guides in docs/ say that),
and registry names (``estimator.name``, ``reward.name``), which are checked when a run starts.
"""

from __future__ import annotations

import math
import re
import sys
import types
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from cat.config import Config

COMMAND = "python -m cat.tools.config_reference > docs/configuration.md"

INTRO = """\
One typed tree (`cat/config.py`). Every field carries a docstring, unknown keys are rejected
with the list of valid ones, and any field can be overridden as `section.key=value` on the
command line.

An experiment can name a base and state only what differs. `experiments/tiny_arith_gold.yaml`
is the whole reference-based arm:

```yaml
base: tiny_arith_cat.yaml      # a path relative to this file, or a list of them (merged in order)
estimator:
  name: gold
run:
  output_dir: runs/tiny_arith_gold
```

Sections merge key by key and any other value (a list included) replaces the base's; overrides
apply last. The run directory's `config.yaml` is the flattened result. Fields that contradict
each other are refused when the config loads, for example `rubric.min_criteria` above
`max_criteria`, `grpo.epsilon_high` below `epsilon`, or G = 1, whose groups all have zero advantage.
A key given twice in one file (YAML would silently keep the second), a count below 1 (`eval.limit: 0`;
`eval.path: null` is how to turn evaluation off), NaN or infinity, and a `{name}` in
`data.prompt_template` other than `{problem}` are refused too, naming the file, line or field
(`{{name}}` is the literal text `{name}`; other braces, as in `\\boxed{}`, are text).
Each refusal says where the key or value came from: the file that set it (a base, or the config
over it), the override, or, for a field a check across fields names but nothing set, its default:

```
error: invalid config (experiments/my_run.yaml):
  experiments/my_base.yaml: grpo.betta: unknown key (did you mean beta?); valid keys here: ...
  override 'run.steps=-1': run.steps: Input should be greater than or equal to 1 (got -1)
```
"""


def render() -> str:
    """The whole page: a header, the intro, the top-level keys, then one section per model."""
    sections = [(name, field.annotation) for name, field in Config.model_fields.items()
                if _section_class(field.annotation) is not None]
    top = [name for name in Config.model_fields if name not in dict(sections)]
    homes = {model: name for name, model in sections}  # a model that is a section of its own
    out = [
        "# Configuration reference",
        "",
        f"<!-- Generated from cat/config.py by `{COMMAND}`; edit the models, not this page. -->",
        "",
        INTRO,
        "Sections: " + ", ".join(f"[`{name}`](#{_anchor(name)})" for name, _ in sections) + ".",
        "",
        "## Top level",
        "",
        _text(Config.__doc__),
        "",
        *_table(Config, top, "", homes),
    ]
    for name, model in sections:
        out += _section(name, model, homes)
    return "\n".join(out).rstrip("\n") + "\n"


def _section(path: str, model: type[BaseModel], homes: dict) -> list[str]:
    """A heading, the model's docstring and its fields; sections nested in it follow, one level down."""
    level = "#" * (path.count(".") + 2)
    own = list(model.__dict__.get("__annotations__", {}))  # declared here first, inherited after
    names = [n for n in own if n in model.model_fields] + [n for n in model.model_fields if n not in own]
    out = ["", f"{level} `{path}`", ""]
    if model.__doc__:
        out += [_text(model.__doc__), ""]
    out += _table(model, names, path + ".", homes)
    for name in names:
        nested = _section_class(model.model_fields[name].annotation)
        if nested is not None and nested not in homes:
            out += _section(path + "." + name, nested, homes)
    return out


def _table(model: type[BaseModel], names: list[str], prefix: str, homes: dict) -> list[str]:
    rows = ["| key | type | default | what |", "|---|---|---|---|"]
    for name in names:
        field = model.model_fields[name]
        nested = _section_class(field.annotation)
        if nested is not None:
            home = homes.get(nested, prefix + name)
            kind = f"the [`{home}`](#{_anchor(home)}) section's keys"
            if _allows_none(field.annotation):
                kind += ", or null"
            default = "`null`" if field.default is None else "its defaults"
            what = _text(field.description or "")
        else:
            kind = _type(field.annotation) + _bounds(field.metadata)
            default = f"`{_value(_default(field))}`"
            what = _text(field.description or "")
        rows.append(f"| `{name}` | {_cell(kind)} | {_cell(default)} | {_cell(what)} |")
    return rows


def _section_class(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds (``X`` or ``X | None``), else None."""
    for arg in (annotation, *get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _allows_none(annotation: Any) -> bool:
    return type(None) in get_args(annotation)


def _type(annotation: Any) -> str:
    """A field's type as a YAML writer reads it: ``int``, `` `hf` / `vllm` ``, ``list of str or null``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    if origin is Literal:
        return " / ".join(f"`{a}`" for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_type(a) for a in args)
    if origin is list:
        return f"list of {_type(args[0])}"
    if origin is tuple:
        return f"[{', '.join(_type(a) for a in args)}]"
    if origin is dict:
        return "mapping"
    if isinstance(annotation, type):
        return f"`{annotation.__name__}`"
    return f"`{annotation}`"


def _bounds(metadata: list) -> str:
    """``ge=1, lt=2**63`` as `` ≥ 1, < 2**63``."""
    marks = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    found = [f"{mark} {_number(getattr(m, key))}" for m in metadata for key, mark in marks.items()
             if getattr(m, key, None) is not None]
    return ", " + ", ".join(found) if found else ""


def _number(x: float) -> str:
    if isinstance(x, int) and x > 2**32 and (x & (x - 1)) == 0:
        return f"2**{x.bit_length() - 1}"
    return repr(x)


def _default(field) -> Any:
    if field.default_factory is not None:
        return field.default_factory()
    if field.default is PydanticUndefined:
        return "required"
    return field.default


def _value(value: Any) -> str:
    """A default as it would be written in YAML, on one line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, tuple):
        value = list(value)
    return yaml.safe_dump(value, default_flow_style=True, width=math.inf).strip()


def _text(doc: str) -> str:
    """A docstring as one Markdown paragraph: lines joined, ``code`` as `code`."""
    return re.sub(r"``(.+?)``", r"`\1`", " ".join(doc.split()))


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading made of ``heading`` in backticks: ``model.lora`` -> ``modellora``."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


if __name__ == "__main__":
    sys.stdout.write(render())

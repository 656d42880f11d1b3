"""The documentation stays true: docs/configuration.md is the generator's output, and it
documents every field of the config's models."""

from conftest import ROOT


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

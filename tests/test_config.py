from pathlib import Path

import pytest

from cat.config import Config, dump_config, load_config
from cat.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_run_on_cpu_and_every_field_is_documented():
    c = load_config(None)
    assert c.model.device == "auto" and c.generation.backend == "hf"
    for section_name, section in Config.model_fields.items():
        for name, field in section.annotation.model_fields.items():
            assert field.description, f"{section_name}.{name} has no docstring"


def test_unknown_key_names_key_file_and_choices(tmp_path):
    p = write(tmp_path, "grpo:\n  los_type: dapo\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "grpo.los_type" in msg and str(p) in msg and "loss_type" in msg


def test_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match="optimizer: unknown key; valid keys here: .*optim"):
        load_config(write(tmp_path, "optimizer:\n  lr: 1\n"))


def test_mistyped_value_and_bad_choice(tmp_path):
    with pytest.raises(ConfigError, match="run.steps"):
        load_config(write(tmp_path, "run:\n  steps: many\n"))
    with pytest.raises(ConfigError, match=r"grpo.loss_type.*'grpo', 'bnpo', 'dr_grpo' or 'dapo'.*'ppo'"):
        load_config(write(tmp_path, "grpo:\n  loss_type: ppo\n"))


def test_overrides_are_typed_and_checked(tmp_path):
    c = load_config(write(tmp_path, "run:\n  steps: 3\n"), ["run.steps=7", "grpo.beta=0.01", r'generation.stop=["\n\n"]'])
    assert c.run.steps == 7 and c.grpo.beta == 0.01 and c.generation.stop == ["\n\n"]
    with pytest.raises(ConfigError, match="run.stepz"):
        load_config(None, ["run.stepz=3"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["steps"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "run: [\n"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_dump_round_trips(tmp_path):
    c = load_config(None, ["run.steps=5"])
    again = load_config(write(tmp_path, dump_config(c)))
    assert again == c


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_every_experiment_config_loads(path):
    load_config(path)


def test_tiny_experiments_differ_only_in_estimator():
    def tree(name):
        d = load_config(ROOT / "experiments" / name).model_dump()
        d["run"].pop("output_dir")
        return d

    gold, cat_, maj = tree("tiny_arith_gold.yaml"), tree("tiny_arith_cat.yaml"), tree("tiny_arith_majority.yaml")
    assert (gold["estimator"]["name"], cat_["estimator"]["name"], maj["estimator"]["name"]) == ("gold", "synthesis", "majority_vote")
    for d in (gold, cat_, maj):
        d.pop("estimator")
    assert gold == cat_ == maj

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
        if not hasattr(section.annotation, "model_fields"):  # a top-level setting, not a section
            assert section.description, f"{section_name} has no docstring"
            continue
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


def test_a_config_composed_over_a_base_equals_its_flattened_form(tmp_path):
    """``base:`` names configs (relative to the file) merged underneath: sections key by key,
    lists replaced whole; bases of bases compose; the dump is the flat config that loads the same."""
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "root.yaml").write_text(
        "generation:\n  num_generations: 4\n  stop: ['a', 'b']\nrun:\n  steps: 9\n  seed: 3\n")
    (tmp_path / "shared" / "mid.yaml").write_text("base: root.yaml\nrun:\n  steps: 5\ngrpo:\n  beta: 0.01\n")
    (tmp_path / "extra.yaml").write_text("optim:\n  lr: 0.5\n")
    child = tmp_path / "child.yaml"
    child.write_text("base: [shared/mid.yaml, extra.yaml]\ngeneration:\n  stop: ['c']\nrun:\n  seed: 7\n")
    c = load_config(child, ["optim.lr=0.25"])
    assert (c.generation.num_generations, c.generation.stop) == (4, ["c"])  # kept; list replaced whole
    assert (c.run.steps, c.run.seed, c.grpo.beta, c.optim.lr) == (5, 7, 0.01, 0.25)
    flat = tmp_path / "flat.yaml"
    flat.write_text(dump_config(c))
    assert "base:" not in flat.read_text().replace("base_url:", "") and load_config(flat) == c


def test_the_paper_arms_state_only_what_differs():
    for arm, base in [("tiny_arith_gold.yaml", "tiny_arith_cat.yaml"), ("math500_qwen3_4b_ttrl.yaml", "math500_qwen3_4b_cat.yaml"),
                      ("math500_llama31_8b_cat_lora.yaml", "math500_llama31_8b_cat.yaml")]:
        text = (ROOT / "experiments" / arm).read_text()
        assert f"base: {base}" in text and len(text.splitlines()) < 25, arm


def test_bad_bases_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"config file not found: .*nope.yaml \(base of .*c.yaml\)"):
        load_config(write(tmp_path, "base: nope.yaml\n"))
    with pytest.raises(ConfigError, match="base must be a path or a list of paths"):
        load_config(write(tmp_path, "base: {run: 1}\n"))
    (tmp_path / "a.yaml").write_text("base: c.yaml\n")
    with pytest.raises(ConfigError, match=r"bases form a cycle: .*c.yaml -> .*a.yaml -> .*c.yaml"):
        load_config(write(tmp_path, "base: a.yaml\n"))
    (tmp_path / "bad.yaml").write_text("run:\n  stepz: 1\n")
    with pytest.raises(ConfigError, match="run.stepz"):
        load_config(write(tmp_path, "base: bad.yaml\n"))


@pytest.mark.parametrize("overrides, needle", [
    (["rubric.min_criteria=8", "rubric.max_criteria=6"], "rubric.min_criteria (8) is above rubric.max_criteria (6)"),
    (["grpo.epsilon=0.2", "grpo.epsilon_high=0.1"], "grpo.epsilon_high (0.1) is below grpo.epsilon (0.2)"),
    (["generation.num_generations=1"], "generation.num_generations is 1"),
])
def test_fields_that_contradict_each_other_are_named(overrides, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert needle in str(e.value) and "Value error" not in str(e.value)

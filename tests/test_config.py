from pathlib import Path

import pytest

from cat.config import Config, dump_config, load_config
from cat.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
GRPO_KEYS = Config.model_fields["grpo"].annotation.model_fields


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
    with pytest.raises(ConfigError, match=r"optimizer: unknown key \(did you mean optim\?\); valid keys here: .*optim"):
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


def error_lines(path, overrides=()) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_config(path, list(overrides))
    header, *lines = str(e.value).splitlines()
    assert header == f"invalid config ({path if path is not None else 'defaults'}):"
    return [line.strip() for line in lines]


def test_an_error_names_the_file_or_override_that_set_the_key(tmp_path):
    """Not the top-level file for everything: a typo in a base, a value the config put over its
    base's, and an override each name their own source."""
    base, child = tmp_path / "base_with_typo.yaml", tmp_path / "child.yaml"
    base.write_text("grpo:\n  betta: 0.1\nrun:\n  steps: 2\n")
    child.write_text("base: base_with_typo.yaml\nrun:\n  steps: -1\n")
    assert error_lines(child) == [
        f"{base}: grpo.betta: unknown key (did you mean beta?); valid keys here: {', '.join(sorted(GRPO_KEYS))}",
        f"{child}: run.steps: Input should be greater than or equal to 1 (got -1)"]
    base.write_text("run:\n  steps: 2\n")
    child.write_text("base: base_with_typo.yaml\noptim:\n  lrr: 0.1\n")
    assert error_lines(child)[0].startswith(f"{child}: optim.lrr: unknown key (did you mean lr?)")
    lines = error_lines(child, ["optim.lrr=0.2", "optim.lr=abc", "run.steps=-1"])
    assert len(lines) == 3 and "override 'optim.lr=abc': optim.lr: Input should be a valid number, unable to parse " \
        "string as a number" in lines and "override 'run.steps=-1': run.steps: Input should be greater than or equal " \
        "to 1 (got -1)" in lines
    assert any(line.startswith("override 'optim.lrr=0.2': optim.lrr: unknown key") for line in lines)  # over the file's
    assert error_lines(None, ["grpo.betta=0.1"])[0].startswith("override 'grpo.betta=0.1': grpo.betta: unknown key")


def test_a_check_across_fields_names_where_each_was_set(tmp_path):
    (tmp_path / "base.yaml").write_text("rubric:\n  min_criteria: 8\n")
    child = write(tmp_path, "base: base.yaml\nrubric:\n  max_criteria: 6\n")
    assert error_lines(child) == [f"{tmp_path / 'base.yaml'} and {child}: rubric.min_criteria (8) is above "
                                  "rubric.max_criteria (6): no rubric could pass"]
    assert error_lines(tmp_path / "base.yaml", ["rubric.max_criteria=7"]) == [
        f"{tmp_path / 'base.yaml'} and override 'rubric.max_criteria=7': rubric.min_criteria (8) is above "
        "rubric.max_criteria (7): no rubric could pass"]
    assert error_lines(None, ["rubric.min_criteria=30"]) == [
        "override 'rubric.min_criteria=30' and the default rubric.max_criteria: rubric.min_criteria (30) is above "
        "rubric.max_criteria (20): no rubric could pass"]
    assert error_lines(None, ["answer.rules=[]"]) == [  # a section's own check: no "answer:" before the message
        "override 'answer.rules=[]': answer.rules is empty: list at least one rule, e.g. [boxed]"]


def test_betas_are_two_values(tmp_path):
    assert error_lines(None, ["optim.betas=[0.9]"]) == [
        "override 'optim.betas=[0.9]': optim.betas: needs two values, [beta1, beta2] (default [0.9, 0.999]); got [0.9]"]
    assert "got [0.9, 0.99, 0.999]" in error_lines(write(tmp_path, "optim:\n  betas: [0.9, 0.99, 0.999]\n"))[0]
    assert load_config(None, ["optim.betas=[0.8, 0.9]"]).optim.betas == (0.8, 0.9)


@pytest.mark.parametrize("overrides, needle", [
    (["rubric.min_criteria=8", "rubric.max_criteria=6"], "rubric.min_criteria (8) is above rubric.max_criteria (6)"),
    (["grpo.epsilon=0.2", "grpo.epsilon_high=0.1"], "grpo.epsilon_high (0.1) is below grpo.epsilon (0.2)"),
    (["generation.num_generations=1"], "generation.num_generations is 1"),
    (["generation.vllm_sleep=true"], "generation.vllm_sleep is vLLM's sleep mode: generation.backend is hf"),
])
def test_fields_that_contradict_each_other_are_named(overrides, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert needle in str(e.value) and "Value error" not in str(e.value) and "<root>" not in str(e.value)


def test_a_key_given_twice_names_the_key_the_file_and_both_lines(tmp_path):
    """PyYAML keeps the last of two equal keys silently; a config refuses them, at any depth."""
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "run:\n  steps: 3\ngrpo:\n  beta: 0.0\nrun:\n  seed: 1\n"))
    assert "key 'run' is given twice, on lines 1 and 5" in str(e.value) and str(tmp_path / "c.yaml") in str(e.value)
    with pytest.raises(ConfigError, match=r"key 'run\.steps' is given twice, on lines 2 and 4"):
        load_config(write(tmp_path, "run:\n  steps: 3\n  seed: 1\n  steps: 4\n"))
    with pytest.raises(ConfigError, match=r"key 'generation\.stop\[0\]\.x' is given twice, on line 3 \(columns 6 and 12\)"):
        load_config(write(tmp_path, "generation:\n  stop:\n  - {x: 1, x: 2}\n"))
    (tmp_path / "base.yaml").write_text("# shared\noptim:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match=r"base\.yaml: key 'optim\.lr' is given twice, on lines 3 and 4"):
        load_config(write(tmp_path, "base: base.yaml\nrun:\n  steps: 3\n"))
    # a key set in a base and again on top is composition, not a duplicate; so is a key under a YAML merge key
    (tmp_path / "base.yaml").write_text("run:\n  steps: 2\n")
    assert load_config(write(tmp_path, "base: base.yaml\nrun:\n  steps: 3\n")).run.steps == 3
    c = load_config(write(tmp_path, "judge: &endpoint\n  timeout_s: 5.0\n  max_retries: 1\n"
                                    "anchor:\n  <<: *endpoint\n  max_retries: 2\n"))
    assert (c.anchor.timeout_s, c.anchor.max_retries, c.judge.max_retries) == (5.0, 2, 1)


def test_a_config_file_that_cannot_be_read_as_settings_is_named(tmp_path):
    bad = tmp_path / "c.yaml"
    for content, needle in [
        (b"run:\n  steps: \xff\n", r"is not UTF-8 text \(byte 0xff on line 2\)"),
        (b"", "is empty"),
        (b"# only a comment\n", "is empty"),
        (b"run:\n  steps: " + b"9" * 5000 + b"\n", r"not valid YAML: an integer of 5000 characters is too long.*line 2"),
        (b"run: " + b"[" * 600 + b"\n", "nested too deeply"),
        (b"run:\n  steps: 0x" + b"f" * 4000 + b"\n", r"integer of 4002 characters is too long"),
        (b"run:\n  steps: !!int \n", r"cannot read '' as int \(IndexError"),
        (b"run:\n  stop: !!set [1]\n", "expected a mapping node"),
        (b"\x00run: 1\n", r"character 0x00 on line 1 is not allowed"),
        (b"base: " + b"x" * 5000 + b"\n", r"xxx \(base of"),
    ]:
        bad.write_bytes(content)
        with pytest.raises(ConfigError, match=rf"(?s)^config file .*{needle}") as e:
            load_config(bad)
        assert str(bad) in str(e.value)


def test_an_override_that_is_not_yaml_says_to_quote_it():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["data.prompt_template={problem} {oops}"])
    assert "override 'data.prompt_template={problem} {oops}' is not valid YAML" in str(e.value) and "quote" in str(e.value)
    for item in ("run.steps=[1", "run.steps=\t", "run.steps=" + "9" * 5000, "run.steps=" + "[" * 600):
        with pytest.raises(ConfigError, match="is not valid YAML"):
            load_config(None, [item])
    with pytest.raises(ConfigError, match=r"override 'run\.\.steps=1': the key 'run\.\.steps' has an empty part"):
        load_config(None, ["run..steps=1"])


def test_keys_set_under_a_value_that_is_not_a_section_are_refused(tmp_path):
    """An override (or a file over its base) never silently replaces what the file gave."""
    with pytest.raises(ConfigError, match=r"an override sets keys under run, but the config .* gives run as list \[1\]"):
        load_config(write(tmp_path, "run:\n  - 1\n"), ["run.steps=1"])
    (tmp_path / "base.yaml").write_text("generation:\n  stop: [a]\n")
    with pytest.raises(ConfigError, match=r"sets keys under generation\.stop, but its base \(.*base\.yaml\) gives generation\.stop as list"):
        load_config(write(tmp_path, "base: base.yaml\ngeneration:\n  stop: {x: 1}\n"))
    with pytest.raises(ConfigError, match=r"an override sets keys under generation\.stop, but the config \(.*base\.yaml\) gives"):
        load_config(write(tmp_path, "base: base.yaml\n"), ["generation.stop.x=1"])  # the base gives it, not c.yaml
    c = load_config(write(tmp_path, "model:\n  lora: null\n"), ["model.lora.r=4"])  # null is no value: replaced
    assert c.model.lora.r == 4


def test_prompt_template_with_an_unknown_field_names_it_the_template_and_the_field_there_is():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["data.prompt_template='{problem} {oops}'", "data.prompt_field=question"])
    msg = str(e.value)
    assert "data.prompt_template '{problem} {oops}' uses the field {oops}, which does not exist" in msg
    assert "{problem}, the row's 'question' column" in msg and "write {{oops}}" in msg
    with pytest.raises(ConfigError, match=r"data.prompt_template must contain \{problem\}"):
        load_config(None, ["data.prompt_template='{{problem}} alone'"])


def test_prompt_template_braces_other_than_fields_are_text():
    from cat.templates import render_prompt

    template = r"{problem} {{oops}} \boxed{} {1} { spaced } }}"
    c = load_config(None, [f"data.prompt_template='{template}'"])
    assert render_prompt(c.data.prompt_template, "1+1") == r"1+1 {oops} \boxed{} {1} { spaced } }}"


@pytest.mark.parametrize("override, needle", [
    ("run.seed=99999999999999999999999", r"run.seed: Input should be less than 9223372036854775808"),
    ("run.steps=99999999999999999999999", r"run.steps: a 77-bit integer is too large: at most 2\*\*63 - 1"),
    ("optim.lr=.nan", r"optim.lr: Input should be a finite number \(got nan\)"),
    ("grpo.beta=.inf", r"grpo.beta: Input should be a finite number \(got inf\)"),
    ("eval.limit=0", r"eval.limit: Input should be greater than or equal to 1 \(got 0\)"),
    ("eval.limit=-1", r"eval.limit: Input should be greater than or equal to 1 \(got -1\)"),
    ("data.limit=-5", r"data.limit: Input should be greater than or equal to 1 \(got -5\)"),
    ("data.max_prompt_tokens=0", r"data.max_prompt_tokens: Input should be greater than or equal to 1 \(got 0\)"),
])
def test_out_of_range_numbers_name_the_field_and_value(override, needle):
    """eval.limit=0 used to read "no rows" and eval.limit=-1 dropped the last row (a Python slice);
    a seed past 64 bits failed in torch.manual_seed, after the run directory was written."""
    with pytest.raises(ConfigError, match=needle):
        load_config(None, [override])


def test_yaml_nested_too_deeply_is_refused_whatever_the_recursion_limit(tmp_path):
    """A library imported earlier (torch's compiler, vLLM) may raise Python's recursion limit; the
    refusal of deep YAML does not depend on it (a config needs a handful of levels)."""
    import sys

    old = sys.getrecursionlimit()
    try:
        sys.setrecursionlimit(50_000)
        for text in ("run: " + "[" * 600 + "\n", "run: " + "[" * 65 + "]" * 65 + "\n"):
            (tmp_path / "c.yaml").write_text(text)
            with pytest.raises(ConfigError, match=r"c.yaml is not valid YAML: it is nested too deeply \(more than 64"):
                load_config(tmp_path / "c.yaml")
    finally:
        sys.setrecursionlimit(old)
    (tmp_path / "c.yaml").write_text("run: {steps: 3}\nreward: {functions: [math_equivalence]}\n")
    assert load_config(tmp_path / "c.yaml").run.steps == 3

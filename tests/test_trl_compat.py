"""A TRL GRPOTrainer user's habits work: TRL's reward-function signature, its ``prompt`` column
(string or conversational), its option names answered with cat's, and label-free by default."""

import json

import pytest
import yaml
from conftest import ROOT

import cat
from cat.config import TRL_NAMES, Config, load_config
from cat.errors import ConfigError, DataError
from cat.rewards import RewardContext, RewardError, RewardSettings, from_completion_fn
from cat.tasks.data import load_prompts
from cat.teacher import firewall
from cat.types import Completion, Group, Reference


def test_every_trl_name_points_at_a_real_key_and_is_answered_with_it(tmp_path):
    for trl, ours in TRL_NAMES.items():
        section, key = ours.split(" ")[0].split(".")
        assert key in Config.model_fields[section].annotation.model_fields, (trl, ours)
    with pytest.raises(ConfigError, match=r"learning_rate: unknown key \(TRL's learning_rate is optim.lr here\)"):
        load_config(None, ["learning_rate=1e-5"])
    with pytest.raises(ConfigError, match=r"optim.learning_rate: unknown key \(TRL's learning_rate is optim.lr here\)"):
        load_config(None, ["optim.learning_rate=1e-5"])
    path = tmp_path / "c.yaml"
    path.write_text("run:\n  max_steps: 3\ngeneration:\n  max_completion_length: 64\n  use_vllm: true\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "run.max_steps: unknown key (TRL's max_steps is run.steps here)" in message
    assert "generation.max_completion_length: unknown key (TRL's max_completion_length is generation.max_new_tokens" in message
    assert "generation.use_vllm: unknown key (TRL's use_vllm is generation.backend (vllm or hf) here)" in message
    with pytest.raises(ConfigError, match=r"run.stpes: unknown key \(did you mean steps\?\)"):
        load_config(None, ["run.stpes=3"])


def test_the_python_api_and_the_defaults_train_without_labels():
    import inspect

    assert load_config(None).estimator.name == "synthesis"
    assert inspect.signature(cat.train).parameters["config"].default is None  # None: the defaults, so CaT


def write_rows(tmp_path, rows):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_the_prompt_column_string_or_conversational(tmp_path, caplog):
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+3?"}]
    path = write_rows(tmp_path, [{"prompt": "What is 1+1?", "solution": "2", "level": 1},
                                 {"prompt": chat, "solution": "5", "level": 2}])
    plain, conv = load_prompts(path, prompt_template="{problem} Answer briefly.", answer_field="solution",
                               system_prompt="You add.")
    assert plain.text == "What is 1+1?" and not plain.conversational
    assert plain.messages == ({"role": "system", "content": "You add."},
                              {"role": "user", "content": "What is 1+1? Answer briefly."})
    assert conv.text == "system: Be brief.\nuser: What is 2+3?" and conv.conversational  # what an anchor is shown
    assert conv.messages == tuple(chat)  # as given, as TRL uses it: its own system message kept, no template
    assert plain.gold == "2" and plain.meta == {"level": 1}  # the label is not a column a reward sees
    assert "2 row(s)" not in caplog.text and "1 row(s) give their prompt as chat messages" in caplog.text
    bad = write_rows(tmp_path, [{"prompt": [{"role": "user", "content": 3}]}])
    with pytest.raises(DataError, match=r"row 1: prompt\[0\] must be"):
        load_prompts(bad)
    missing = write_rows(tmp_path, [{"question": "1+1"}])
    with pytest.raises(DataError, match="missing field 'problem'.*'prompt' column, TRL's name"):
        load_prompts(missing)


def test_a_trl_reward_function_is_called_as_trl_calls_it(tmp_path):
    seen = []

    def trl_reward(completions, **kwargs):  # the signature TRL's docs teach
        seen.append({"completions": completions, **kwargs})
        return [float(len(c if isinstance(c, str) else c[0]["content"]) < 4) for c in completions]

    chat = [{"role": "user", "content": "What is 2+3?"}]
    path = write_rows(tmp_path, [{"prompt": "What is 1+1?", "solution": "2", "level": 1},
                                 {"prompt": chat, "solution": "5", "level": 2}])
    plain, conv = load_prompts(path, answer_field="solution")
    reward = from_completion_fn(trl_reward)(RewardSettings.from_config(load_config(None)))
    texts = ["2", "two, surely"]
    comps = tuple(Completion(text=t, token_ids=(5, 6), logprobs=(0.0, 0.0), finish_reason="stop") for t in texts)
    groups = [Group(prompt=p, prompt_ids=(1,), completions=comps) for p in (plain, conv)]
    refs = [Reference(text="it is 2", answer="2", source="synthesis")] * 2
    out = reward.score(groups, refs, RewardContext(step=7))
    assert [s.rewards for s in out.scores] == [(1.0, 0.0), (1.0, 0.0)]
    first, second = seen
    assert first["prompts"] == ["What is 1+1?"] * 2 and first["completions"] == texts
    assert first["completion_ids"] == [[5, 6], [5, 6]] and first["trainer_state"].global_step == 7
    assert first["trainer_state"].max_steps == load_config(None).run.steps
    assert first["reference"] == ["it is 2"] * 2 and first["reference_answer"] == ["2"] * 2
    assert first["level"] == [1, 1] and "solution" not in first  # the label column is withheld
    assert second["prompts"] == [chat] * 2  # conversational: messages in, messages out, as in TRL
    assert second["completions"] == [[{"role": "assistant", "content": t}] for t in texts]


def test_a_trl_dataset_and_reward_train_label_free_by_default(tmp_path, tiny_world, capfd):
    """TRL's ``prompt`` column and a ``f(completions, **kwargs)`` reward through ``cat.train``, from a
    config that names no estimator: the run is CaT (the anchor's synthesis), never gold. Its
    console is the step lines, without transformers' bars for loading and saving weights, which
    stay on for the caller."""
    from datasets import Dataset
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()  # as a Python caller has them

    rows = [json.loads(line) for line in (tiny_world / "train.jsonl").read_text().splitlines()[:8]]
    dataset = Dataset.from_list([{"prompt": r["problem"], "solution": r["answer"]} for r in rows])
    tree = yaml.safe_load((ROOT / "experiments" / "tiny_arith_cat.yaml").read_text())
    del tree["estimator"]
    calls = []

    def boxed(completions, **kwargs):
        calls.append(sorted(kwargs))
        return [1.0 if "\\boxed{" in c else 0.0 for c in completions]

    result = cat.train(tree, train_dataset=dataset, reward_funcs=["math_equivalence", boxed], reward_weights=[1.0, 0.1],
                       output_dir=tmp_path / "run",
                       overrides=[f"model.name_or_path={tiny_world / 'model'}", "eval.path=null", "run.steps=1",
                                  "run.prompts_per_step=2", "data.answer_field=solution"])
    [row] = result.metrics
    assert row["groups/scored"] == 2 and row["reward/boxed/mean"] > 0.5
    assert "diag/reference_is_last" in row  # written for the anchor's synthesis only
    assert calls and all("solution" not in c and "prompts" in c and "trainer_state" in c for c in calls)
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert saved["estimator"]["name"] == "synthesis"
    console = capfd.readouterr()
    assert "step 1/1" in console.out and "Writing model shards" not in console.err + console.out
    assert "Loading weights" not in console.err + console.out and hf_logging.is_progress_bar_enabled()


def test_what_a_trl_reward_cannot_take_is_named_and_its_metrics_are_kept(tmp_path):
    path = write_rows(tmp_path, [{"prompt": "What is 1+1?", "solution": "2"}])
    [prompt] = load_prompts(path)  # answer_field left at 'answer': 'solution' is one more column of the row
    comps = (Completion(text="2", token_ids=(5,), logprobs=(0.0,), finish_reason="stop"),)
    group = Group(prompt=prompt, prompt_ids=(1,), completions=comps)
    ref = Reference(text="2", answer="2", source="synthesis")

    def accuracy(completions, solution, log_metric, **kwargs):  # TRL's accuracy reward takes the label column
        log_metric("seen", len(completions))
        return [float(c == s) for c, s in zip(completions, solution, strict=True)]

    config = load_config(None)
    # what a label-free run's rewards receive
    [seen] = firewall.view([group], firewall.hidden_fields(config.estimator.name, config.data))
    assert group.prompt.meta == {"solution": "2"} and seen.prompt.meta == {}
    with pytest.raises(RewardError, match=r"reward function accuracy cannot be called .*missing a required argument: "
                                          r"'solution'.*withholds the label columns .*'solution'"):
        from_completion_fn(accuracy)(RewardSettings.from_config(config)).score([seen], [ref], RewardContext())
    gold = load_config(None, ["estimator.name=gold"])  # reference-based GRPO reads labels by definition
    [whole] = firewall.view([group], firewall.hidden_fields(gold.estimator.name, gold.data))
    out = from_completion_fn(accuracy)(RewardSettings.from_config(gold)).score([whole], [ref], RewardContext())
    assert out.scores[0].rewards == (1.0,) and out.scores[0].info == {"accuracy/seen": 1.0}


def test_settings_that_would_read_labels_or_do_nothing_are_refused():
    with pytest.raises(ConfigError, match="rubric.source dataset grades with the dataset's own rubrics, which are labels"):
        load_config(None, ["reward.name=rubric", "rubric.source=dataset"])
    load_config(None, ["reward.name=rubric", "rubric.source=dataset", "estimator.name=gold"])
    with pytest.raises(ConfigError, match=r"anchor.orders \(4\) is read by the synthesis estimator only"):
        load_config(None, ["estimator.name=majority_vote", "generation.num_generations=8", "anchor.orders=4"])

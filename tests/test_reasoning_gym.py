"""reasoning-gym as a data source: prompts with gold answers from disjoint seed ranges, the config
errors, the task's own scorer on hand-made answers, an evaluation graded by it on the tiny world,
and the label-free guarantee (a CaT step never calls the scorer; only gold does)."""

import contextlib
import json
import logging

import pytest
from conftest import ROOT

pytest.importorskip("reasoning_gym")

import cat  # noqa: E402
from cat.config import config_from_tree, load_config  # noqa: E402
from cat.errors import ConfigError, TrainingHalted  # noqa: E402
from cat.rewards import REWARDS, RewardError, RewardSettings  # noqa: E402
from cat.tasks.data import load_split  # noqa: E402
from cat.tasks.evaluate import grade  # noqa: E402
from cat.tasks.reasoning_gym import GymEntry  # noqa: E402
from cat.tasks.settings import TaskSettings  # noqa: E402
from cat.types import Completion, Group, Reference  # noqa: E402

CHAIN_SUM = {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2}
# what the tiny world's model was trained on, as near as basic_arithmetic writes it ("Calculate 61 + 36.")
TWO_DIGIT_SUMS = {"min_terms": 2, "max_terms": 2, "min_digits": 2, "max_digits": 2, "operators": ["+"],
                  "allow_parentheses": False, "allow_negation": False}


def gym(data=None, evaluation=None, **sections):
    tree = {"data": {"path": "reasoning-gym:chain_sum", "task_config": CHAIN_SUM, "limit": 300, **(data or {})},
            "eval": {"path": "reasoning-gym:chain_sum", "limit": 100, **(evaluation or {})}, **sections}
    return config_from_tree(tree)


def split(config, which: str):
    return load_split(TaskSettings.from_config(config), which)


def test_train_and_eval_prompts_carry_gold_from_disjoint_seeds(caplog):
    config = gym(evaluation={"seed": 1000})
    train, test = split(config, "train"), split(config, "eval")
    assert len(train) == 300
    first = train[0]
    assert first.text.startswith("State the final answer to the following arithmetic problem: ")
    assert first.messages == ({"role": "user", "content": first.text},)
    assert first.gold == first.scorer.entry["answer"] and first.scorer.score(first.gold) == 1.0
    assert first.meta == {"task": "chain_sum", "seed": 0}  # no answer in meta: it reaches TRL-style rewards
    assert [p.meta["seed"] for p in test[:2]] == [1000, 1001]
    # small settings repeat questions across disjoint seeds: such evaluation rows are dropped, and said so
    assert not {p.text for p in test} & {p.text for p in train}
    with caplog.at_level(logging.INFO, logger="cat.tasks.reasoning_gym"):
        split(config, "eval")
    dropped = 100 - len(test)
    assert dropped > 0 and f"dropped {dropped} of 100" in caplog.text
    assert len(split(config, "train")) == 300 and split(config, "train")[5].text == train[5].text  # seeded


def test_eval_defaults_follow_the_training_rows():
    config = gym()
    assert config.eval.seed is None and config.eval.task_config is None
    test = split(config, "eval")
    assert test[0].meta["seed"] >= 300  # right after the training rows' seeds 0..299
    assert all(p.scorer.entry["metadata"]["difficulty"]["num_terms"] == (2, 3) for p in test)  # data's settings


@pytest.mark.parametrize(("data", "evaluation", "needle"), [
    ({"path": "reasoning-gym:chain_sm"}, {"path": None}, r"no task 'chain_sm'; did you mean chain_sum"),
    ({"task_config": {"min_terms": 3, "max_terms": 2}}, {}, r"data.task_config .*chain_sum generator refuses it: "
                                                            r"AssertionError: max_terms must be >= min_terms"),
    ({"task_config": {"max_term": 3}}, {}, r"data.task_config: chain_sum has no setting 'max_term' \(did you mean "
                                           r"max_terms.*its settings: min_terms, max_terms"),
    ({"task_config": {"seed": 3}}, {}, r"data.task_config sets 'seed': set data.seed instead"),
    ({}, {"seed": 0}, r"data.seed 0 and eval.seed 0 overlap: .* training uses seeds 0..299 and evaluation 0..99; "
                      r"set eval.seed to 300 or more"),
    ({}, {"seed": 250}, r"overlap"),
    ({"path": "tiny:arith/train.jsonl", "task_config": {}, "seed": 4}, {"path": None},
     r"data.seed is set but data.path 'tiny:arith/train.jsonl' is not a reasoning-gym source"),
])
def test_config_errors_name_the_field(data, evaluation, needle):
    with pytest.raises(ConfigError, match=needle):
        gym(data, evaluation)


def test_other_tasks_and_saved_configs_load(tmp_path):
    gym(evaluation={"path": "reasoning-gym:leg_counting", "seed": 0})  # another task: seeds need not differ
    from cat.config import dump_config

    (tmp_path / "c.yaml").write_text(dump_config(gym()))
    assert load_config(tmp_path / "c.yaml") == gym()
    (tmp_path / "d.yaml").write_text(dump_config(config_from_tree({})))  # a saved non-gym config still loads
    load_config(tmp_path / "d.yaml")
    gym(evaluation={"path": None, "seed": 7})  # evaluation turned off by an override: its seed is left unused


def test_missing_package_names_the_install(monkeypatch):
    import sys

    import cat.tasks.reasoning_gym as rg

    monkeypatch.setitem(sys.modules, "reasoning_gym", None)
    with pytest.raises(ConfigError, match=r"pip install reasoning-gym"):
        rg.task_name("reasoning-gym:chain_sum", "data")


def test_the_scorer_on_hand_made_answers():
    [prompt] = split(gym({"limit": 1}, {"path": None}), "train")
    gold = prompt.gold  # -103 for seed 0
    assert gold == "-103"
    scorer: GymEntry = prompt.scorer
    assert scorer.score("-103") == scorer.score("-103.0") == 1.0  # right, as the task reads numbers
    assert scorer.score("103") == 0.0  # wrong
    assert scorer.score("1-103") == pytest.approx(0.8)  # chain_sum's partial credit: the gold inside a longer answer
    assert scorer.score("minus one hundred and three") == scorer.score(None) == 0.0  # unparsable, none
    assert grade("-103", prompt) and not grade("1-103", prompt) and not grade(None, prompt)  # evaluation: full credit only


def completion(text):
    return Completion(text=text, token_ids=(1,), logprobs=(0.0,), finish_reason="stop")


def test_the_reward_pays_the_scorer_and_refuses_labels_free_estimators():
    config = gym(estimator={"name": "gold"}, reward={"name": "reasoning_gym"})
    REWARDS.get("reasoning_gym").preflight(config)
    reward = REWARDS.get("reasoning_gym")(RewardSettings.from_config(config))
    [prompt] = split(gym({"limit": 1}, {"path": None}), "train")
    group = Group(prompt, (1,), tuple(completion(t) for t in
                                      ["15 - 43 - 75 = -103.", "The answer is 103", "no idea", "\\boxed{1-103}"]))
    score = reward.score_group(group, Reference(text="-103", answer="-103", source="gold"))
    assert score.rewards == pytest.approx((1.0, 0.0, 0.0, 0.8))
    assert score.info == {"partial_credit_rate": 0.25}
    with pytest.raises(RewardError, match="got a 'synthesis' reference"):
        reward.score_group(group, Reference(text="x = -103", answer="-103", source="synthesis"))
    for estimator in ("synthesis", "majority_vote"):
        with pytest.raises(ConfigError, match=f"gold estimator only, not '{estimator}'"):
            REWARDS.get("reasoning_gym").preflight(gym(estimator={"name": estimator}, reward={"name": "reasoning_gym"}))


def test_evaluation_on_the_tiny_world_grades_with_the_task_scorer(tiny_world, tiny_model, monkeypatch):
    from cat.generation import generator_from_config
    from cat.tasks.evaluate import evaluate_config
    from cat.tasks.task import Task

    model, tokenizer = tiny_model
    config = config_from_tree({
        "model": {"name_or_path": str(tiny_world / "model")},
        "data": {"path": "reasoning-gym:basic_arithmetic", "task_config": TWO_DIGIT_SUMS, "limit": 8},
        "eval": {"path": "reasoning-gym:basic_arithmetic", "limit": 6, "num_samples": 2}})
    calls = []
    score = GymEntry.score
    monkeypatch.setattr(GymEntry, "score", lambda self, answer: calls.append(answer) or score(self, answer))
    task = Task(TaskSettings.from_config(config), tokenizer)
    generator = generator_from_config(config.generation, model, tokenizer, dtype=config.model.dtype, seed=config.run.seed)
    result = evaluate_config(task.settings, generator, task.eval_prompts, task.eval_ids)
    assert 0.0 <= result["accuracy"] <= 1.0 and 0.0 <= result["greedy_accuracy"] <= 1.0
    assert len(calls) == len(task.eval_prompts) * 3  # 2 samples and the greedy reply, each graded by the scorer
    from cat.rewards.answers import AnswerChain

    answer_of = AnswerChain()
    for prompt, example in zip(task.eval_prompts, result["examples"], strict=True):
        assert example["correct"][0] == (score(prompt.scorer, answer_of(example["sample"])) == 1.0)


def tiny_step(tiny_world, tmp_path, estimator, reward):
    """One training step of the tiny world's model on reasoning-gym prompts, no evaluation."""
    overrides = [f"model.name_or_path={tiny_world / 'model'}", "data.path=reasoning-gym:basic_arithmetic",
                 f"data.task_config={json.dumps(TWO_DIGIT_SUMS)}", "data.limit=16", "eval.path=null",
                 f"estimator.name={estimator}", f"reward.name={reward}", "run.steps=1", "run.prompts_per_step=2",
                 "run.preflight_prompts=0", "generation.num_generations=4"]
    with contextlib.suppress(TrainingHalted):  # a step whose rewards all agree ends the run with its warning
        cat.train(str(ROOT / "experiments" / "tiny_arith_cat.yaml"), output_dir=tmp_path / estimator,
                  overrides=overrides)
    return [json.loads(line) for line in (tmp_path / estimator / "metrics.jsonl").read_text().splitlines()]


def test_label_free_training_never_calls_the_scorer(tiny_world, tmp_path, monkeypatch):
    from reasoning_gym.arithmetic.basic_arithmetic import BasicArithmeticDataset

    calls = []
    score_answer = BasicArithmeticDataset.score_answer
    monkeypatch.setattr(BasicArithmeticDataset, "score_answer",
                        lambda self, answer, entry: calls.append((answer, entry["answer"])) or score_answer(self, answer, entry))
    [row] = tiny_step(tiny_world, tmp_path, "synthesis", "math_equivalence")
    assert row["groups/scored"] >= 1 and calls == []  # CaT scored its groups with no call to the scorer
    # the control: the gold baseline reaches the scorer through the reasoning_gym reward, with the label
    [row] = tiny_step(tiny_world, tmp_path, "gold", "reasoning_gym")
    assert len(calls) == 2 * 4 and "reward/reasoning_gym/mean" in row


def test_the_smollm2_arms_differ_only_in_estimator_reward_and_algorithm():
    def tree(name):
        d = load_config(ROOT / "experiments" / name).model_dump()
        d["run"].pop("output_dir")
        return d

    cat_, gold, ttrl, sft = (tree(f"smollm2_addition_{arm}.yaml") for arm in ("cat", "gold", "ttrl", "cat_sft"))
    assert [(d["estimator"]["name"], d["reward"]["name"]) for d in (cat_, gold, ttrl)] == [
        ("synthesis", "math_equivalence"), ("gold", "reasoning_gym"), ("majority_vote", "math_equivalence")]
    assert (sft["algorithm"], sft["sft"]["target"], sft["estimator"]["name"]) == ("sft", "reference", "synthesis")
    for d in (cat_, gold, ttrl, sft):
        d.pop("estimator"), d.pop("reward"), d.pop("algorithm"), d.pop("sft")
    assert cat_ == gold == ttrl == sft
    REWARDS.get("reasoning_gym").preflight(load_config(ROOT / "experiments" / "smollm2_addition_gold.yaml"))

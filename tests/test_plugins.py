"""The plug-in contracts: a reward written only against the documented interface (docs/plugins.md's
example) runs end to end with weights; TRL's None semantics; contract breaches named; the
estimator declaration checked at registration; and the Python API without YAML."""

import json
import re
from pathlib import Path

import pytest
from conftest import ROOT, cli
from test_faults import group

import cat
from cat.config import load_config
from cat.errors import ConfigError
from cat.rewards import (
    REWARDS,
    GroupReward,
    RewardContext,
    RewardSettings,
    WeightedRewards,
    build_rewards,
    from_completion_fn,
    register_reward,
)
from cat.teacher.estimators import register_estimator
from cat.types import GroupScore, Reference

GOLD = str(ROOT / "experiments" / "tiny_arith_gold.yaml")


def short(tiny_world, *extra):
    return [f"model.name_or_path={tiny_world / 'model'}", f"data.path={tiny_world / 'train.jsonl'}", "data.limit=32",
            "eval.path=null", "run.prompts_per_step=2", "run.steps=2", "--no-progress", *extra]


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_guide_reward_plugin_runs_end_to_end_with_weights(tmp_path, tiny_world):
    guide = (ROOT / "docs" / "plugins.md").read_text()
    (tmp_path / "my_rewards.py").write_text(re.search(r"```python\n(# my_rewards.py\n.*?)```", guide, re.S).group(1))
    run_dir = tmp_path / "run"
    out = cli("train", GOLD, "--output-dir", str(run_dir), *short(
        tiny_world, f"plugins=[{tmp_path / 'my_rewards.py'}]", "reward.functions=[math_equivalence, boxed_format]",
        "reward.weights=[1.0, 0.2]"))
    assert out.returncode == 0, out.stderr[-3000:]
    for r in rows(run_dir):
        assert r["groups/scored"] == 2  # gold references always have an answer
        math_mean, boxed_mean = r["reward/math_equivalence/mean"], r["reward/boxed_format/mean"]
        assert r["reward/mean"] == pytest.approx(math_mean + 0.2 * boxed_mean)  # every rollout scored by both
        assert r["reward/boxed_rate"] == pytest.approx(boxed_mean) and boxed_mean > 0.5  # the tiny model boxes its answers


def test_trl_none_means_not_applicable():
    def only_short(prompts, completions, reference, **columns):
        assert reference == ["r"] * len(completions)
        return [1.0 if len(c) < 3 else None for c in completions]

    settings = RewardSettings.from_config(load_config(None))
    adapted = from_completion_fn(only_short)(settings)
    both = WeightedRewards([("math_equivalence", 1.0, REWARDS.get("math_equivalence")(settings)),
                            ("only_short", 0.5, adapted)])
    g = group(["\\boxed{4}", "ab", "\\boxed{5}"])
    out = both.score([g], [Reference(text="r", answer="4", source="x")], RewardContext())
    assert out.scores[0].rewards == (1.0, 0.0 + 0.5, 0.0)  # None adds nothing; 'ab' gets 0 + 0.5 * 1
    info = out.scores[0].info
    assert info["only_short/mean"] == 1.0 and info["math_equivalence/mean"] == 1 / 3 and info["none_rate"] == 0
    alone = WeightedRewards([("only_short", 1.0, adapted)])
    out = alone.score([g], [Reference(text="r", answer="4", source="x")], RewardContext())
    assert out.scores[0].rewards == (0.0, 1.0, 0.0) and out.scores[0].info["none_rate"] == 2 / 3  # none scored them


def test_a_reward_that_breaks_the_contract_stops_the_run_with_its_name(tmp_path, tiny_world):
    plugin = tmp_path / "bad_reward.py"
    plugin.write_text("from cat.rewards import GroupReward, register_reward\nfrom cat.types import GroupScore\n\n"
                      "@register_reward('too_few')\nclass TooFew(GroupReward):\n"
                      "    def score_group(self, group, reference):\n        return GroupScore(rewards=(1.0,))\n")
    out = cli("train", GOLD, "--output-dir", str(tmp_path / "run"), *short(tiny_world, f"plugins=[{plugin}]",
                                                                             "reward.name=too_few"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "reward too_few: 1 rewards for a group of 8 rollouts" in out.stderr


def test_declarations_are_checked_at_registration():
    with pytest.raises(TypeError, match="must declare needs_anchor"):
        @register_estimator("undeclared")
        class Undeclared:
            def __call__(self, groups, anchor):
                return []
    with pytest.raises(TypeError, match="must be a class with score"):
        register_reward("a_function")(lambda group, reference: None)
    with pytest.raises(TypeError, match="needs must be a set drawn from"):
        @register_reward("wants_gold")
        class WantsGold(GroupReward):
            needs = frozenset({"gold"})
    with pytest.raises(ConfigError, match="estimator.plugins: unknown key"):  # plugins is a top-level key
        load_config(None, ["estimator.plugins=[x]"])
    with pytest.raises(ConfigError, match="reward.weights has 1 entries for 2"):
        load_config(None, ["reward.functions=[a, b]", "reward.weights=[1]"])


def test_the_python_api_trains_from_a_dataset_and_reward_callables(tmp_path, tiny_world):
    from datasets import Dataset

    rows_ = [json.loads(line) for line in (tiny_world / "train.jsonl").read_text().splitlines()[:24]]
    calls = []

    def brevity(prompts, completions, reference, **columns):
        calls.append(len(completions))
        return [1.0 if len(c) < 60 else 0.0 for c in completions]

    config = load_config(ROOT / "experiments" / "tiny_arith_cat.yaml")  # a Config object, no YAML of our own
    result = cat.train(config, train_dataset=Dataset.from_list(rows_), reward_funcs=["math_equivalence", brevity],
                       reward_weights=[1.0, 0.1], output_dir=tmp_path / "run",
                       overrides=[f"model.name_or_path={tiny_world / 'model'}", "eval.path=null", "run.steps=2",
                                  "run.prompts_per_step=2"])
    # the preflight scores step 1's two prompts first, then each step scores its two
    assert [r["step"] for r in result.metrics] == [1, 2] and calls == [8] * 6
    assert "reward/brevity/mean" in result.metrics[0] and result.metrics[0]["diag/reference_accuracy"] >= 0
    saved = (result.run_dir / "config.yaml").read_text()
    assert "data/train-" in saved and "- brevity" in saved  # the run directory holds its data and names its rewards
    again = cat.train(config, train_dataset=Dataset.from_list(rows_), reward_funcs=["math_equivalence", brevity],
                      reward_weights=[1.0, 0.1], output_dir=tmp_path / "run",
                      overrides=[f"model.name_or_path={tiny_world / 'model'}", "eval.path=null", "run.steps=2",
                                 "run.prompts_per_step=2"])
    assert again.metrics == result.metrics and calls == [8] * 6  # finished: nothing ran again
    with pytest.raises(ConfigError, match="different config"):
        cat.train(config, train_dataset=Dataset.from_list(rows_[:12]), output_dir=tmp_path / "run",
                  overrides=[f"model.name_or_path={tiny_world / 'model'}", "eval.path=null", "run.steps=2"])


def test_rewards_are_built_from_their_settings_not_the_whole_config():
    config = load_config(None, ["reward.mode=strict", "answer.rules=[boxed]", "run.steps=7",
                                "data.label_fields=[solution]"])
    settings = RewardSettings.from_config(config)
    assert (settings.reward, settings.judge, settings.rubric, settings.anchor) == (
        config.reward, config.judge, config.rubric, config.anchor)
    assert settings.answer_of.rules == ("boxed",) and settings.steps == 7
    assert "answer" in settings.label_columns and "solution" in settings.label_columns
    assert len(set(settings.label_columns)) == len(settings.label_columns) and None not in settings.label_columns
    reward = REWARDS.get("math_equivalence")(settings)
    assert (reward.mode, reward.answer_of.rules) == ("strict", ("boxed",))
    assert reward.settings is settings and reward.config is settings  # the name plug-ins read
    with pytest.raises(AttributeError, match="no field 'nope' \\(fields: reward, answer_of, judge, rubric"):
        _ = settings.nope
    with pytest.raises(TypeError, match="built from RewardSettings, not dict"):
        REWARDS.get("math_equivalence")({"reward": {}})


def test_a_plugin_reward_written_for_the_whole_config_still_runs_with_a_deprecation_warning(caplog, monkeypatch):
    """The plug-in contract before RewardSettings: ``cls(config)`` reading ``self.config``. It is
    built as every reward is; its reads of the reward section need no change, and a read of a
    section the settings leave out works, with a warning that names what to read instead."""

    @register_reward("old_style_exact")
    class OldStyle(GroupReward):
        def score_group(self, group, reference):
            bonus = self.config.reward.length_penalty  # a field of the settings: no warning
            answer_field = self.config.data.answer_field  # the whole Config's: deprecated
            assert answer_field == "answer"
            return GroupScore(rewards=tuple(float(t == reference.text) + bonus for t in group.texts))

    try:
        monkeypatch.setattr("cat.config._WARNED_READS", set())  # the log says it once per process
        config = load_config(None, ["reward.functions=[old_style_exact]"])
        reward = build_rewards(config)
        g = group(["a", "b"])
        with pytest.warns(DeprecationWarning) as caught:
            out = reward.score([g], [Reference(text="a", answer=None, source="x")], RewardContext())
        assert out.scores[0].rewards == (1.0, 0.0)
        said = [str(w.message) for w in caught]
        assert len(said) == 1 and "a reward read config.data" in said[0] and "settings.label_columns" in said[0]
        assert any("a reward read config.data" in r.getMessage() for r in caplog.records)  # the log says it too
    finally:
        REWARDS._items.pop("old_style_exact")


def test_a_builtin_reward_built_from_a_whole_config_still_works_with_a_deprecation_warning():
    config = load_config(None)
    g = group(["\\boxed{4}", "\\boxed{5}"])
    ref = Reference(text="\\boxed{4}", answer="4", source="x")
    for name in ("math_equivalence", "length_penalty", "rubric"):  # own __init__, none, two levels of them
        with pytest.warns(DeprecationWarning, match="a reward is built from RewardSettings, not the whole Config") as w:
            old = REWARDS.get(name)(config)
        assert [Path(x.filename).name for x in w] == ["test_plugins.py"]  # the warning names the line that built it
    old = REWARDS.get("math_equivalence")
    with pytest.warns(DeprecationWarning):
        assert old(config).score_group(g, ref) == old(RewardSettings.from_config(config)).score_group(g, ref)

    class SetsItsConfig(GroupReward):  # a plug-in that never called the base's __init__
        def __init__(self, config):
            self.config = config

        def score_group(self, group, reference):
            return GroupScore(rewards=tuple(float(self.config.reward.mode == "equivalence") for _ in group.texts))

    with pytest.warns(DeprecationWarning) as w:
        plugin = SetsItsConfig(config)
    assert [Path(x.filename).name for x in w] == ["test_plugins.py"]
    assert isinstance(plugin.settings, RewardSettings) and plugin.score_group(g, ref).rewards == (1.0, 1.0)

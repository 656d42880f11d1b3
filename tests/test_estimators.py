"""Reference estimators on hand-built groups, with the real tiny anchor where one is needed."""

import re
from pathlib import Path

import pytest

from cat.config import load_config
from cat.errors import ConfigError
from cat.generation.hf import HFGenerator
from cat.registry import import_plugin
from cat.rewards import REWARDS, RewardSettings
from cat.rewards.answers import AnswerChain
from cat.teacher.anchor import build_anchor
from cat.teacher.estimators import (
    ESTIMATORS,
    EstimatorSettings,
    build_estimator,
    majority_answer,
    parse_choice,
    register_estimator,
)
from cat.types import Completion, Group, Prompt, Reference

ROOT = Path(__file__).resolve().parent.parent


def group(texts, gold=None, problem="q"):
    prompt = Prompt(index=0, text=problem, messages=({"role": "user", "content": problem},), gold=gold)
    comps = tuple(Completion(text=t, token_ids=(1,), logprobs=(0.0,), finish_reason="stop") for t in texts)
    return Group(prompt=prompt, prompt_ids=(1, 2), completions=comps)


def tiny_group(tokenizer, texts, problem, gold=None):
    prompt = Prompt(index=0, text=problem, messages=({"role": "user", "content": problem},), gold=gold)
    ids = tokenizer.apply_chat_template(list(prompt.messages), tokenize=False, add_generation_prompt=True)
    prompt_ids = tuple(tokenizer(ids, add_special_tokens=False)["input_ids"])
    comps = tuple(
        Completion(text=t, token_ids=tuple(tokenizer(t + tokenizer.eos_token, add_special_tokens=False)["input_ids"]),
                   logprobs=(), finish_reason="stop")
        for t in texts
    )
    return Group(prompt=prompt, prompt_ids=prompt_ids, completions=comps)


CONFIG = load_config(None)


def test_majority_clusters_equivalent_answers_and_breaks_ties_by_first_seen():
    assert majority_answer(["0.5", "\\frac{1}{2}", "3", "3"]) == ("0.5", 0, 2)  # tie 2-2: first cluster wins
    assert majority_answer([None, "3", "\\frac{6}{2}", "4"]) == ("3", 1, 2)
    assert majority_answer([None, None]) == (None, -1, 0)


def test_majority_estimator_and_single_and_gold():
    g = group(["\\boxed{4}", "\\boxed{5}", "no answer", "\\boxed{5}"], gold="4")
    [maj] = build_estimator(CONFIG, "majority_vote")([g])
    assert (maj.answer, maj.meta["votes"], maj.meta["index"]) == ("5", 2, 1)
    [single] = build_estimator(CONFIG, "single")([g])
    assert single.answer == "4"
    [gold] = build_estimator(CONFIG, "gold")([g])
    assert gold.answer == "4"
    [none] = build_estimator(CONFIG, "gold")([group(["\\boxed{1}"])])
    assert none.answer is None


def test_unparsable_reference_leaves_group_unscored_not_zero():
    reward = REWARDS.get("math_equivalence")(RewardSettings.from_config(CONFIG))
    g = group(["\\boxed{4}", "\\boxed{5}"])
    score = reward(g, Reference(text="I could not decide", answer=None, source="synthesis"))
    assert score.rewards is None and "no final answer" in score.reason
    scored = reward(g, Reference(text="\\boxed{4}", answer="4", source="synthesis"))
    assert scored.rewards == (1.0, 0.0) and scored.info["answer_rate"] == 1.0


def test_parse_choice():
    assert parse_choice("BEST: 3", 8) == 2
    assert parse_choice("I pick response 2", 8) == 1
    assert parse_choice("BEST: 9", 8) is None
    assert parse_choice("none of them", 8) is None


def test_unknown_estimator_lists_registered():
    with pytest.raises(ConfigError, match=r"unknown reference estimator 'synth'; registered: \[.*'synthesis'"):
        ESTIMATORS.get("synth")


def test_duplicate_registration_refused():
    with pytest.raises(ValueError, match="already registered"):
        ESTIMATORS.register("gold")(object)


@pytest.fixture(scope="module")
def anchor(tiny_model):
    model, tokenizer = tiny_model
    config = load_config(ROOT / "experiments" / "tiny_arith_cat.yaml")
    gen = HFGenerator(model, tokenizer, batch_size=16)
    return build_anchor(config.anchor, config.model, tokenizer, seed=config.run.seed, device=model.device,
                        pi0_generator=lambda: gen, make_generator=None)


def wrong_everywhere(a, b):
    """Eight rollouts of a+b, each with one wrong column sum (never the same way twice)."""
    a1, a0, b1, b0 = a // 10, a % 10, b // 10, b % 10
    ones = a0 + b0
    tens = a1 + b1 + (ones >= 10)
    out = []
    for k in range(8):
        o, t = ones, tens
        if k % 2 == 0:
            o = ones + (k // 2 + 1) if ones + (k // 2 + 1) <= 18 else ones - (k // 2 + 1)
        else:
            t = tens + (k // 2 + 1) if tens + (k // 2 + 1) <= 19 else tens - (k // 2 + 1)
        out.append(f"ones {a0}+{b0}={o:02d} tens {a1}+{b1}+{int(o >= 10)}={t:02d} so \\boxed{{{t * 10 + o % 10}}}")
    return out


def test_synthesis_can_be_right_when_every_rollout_is_wrong(anchor, tiny_model):
    _, tokenizer = tiny_model
    pairs = [(47, 38), (23, 51), (66, 17), (35, 44), (58, 29), (72, 16)]
    groups = []
    for a, b in pairs:
        texts = wrong_everywhere(a, b)
        assert all(re.search(r"boxed\{(\d+)\}", t).group(1) != str(a + b) for t in texts)
        groups.append(tiny_group(tokenizer, texts, f"{a}+{b}", gold=str(a + b)))
    refs = build_estimator(CONFIG, "synthesis")(groups, anchor)
    right = sum(r.answer == str(a + b) for r, (a, b) in zip(refs, pairs, strict=False))
    assert right >= 4, [r.text for r in refs]
    assert all(r.meta["anchor_prompt_tokens"] > 100 and r.meta["truncated_rollouts"] == 0 for r in refs)


def test_rotations_show_each_rollout_last_once(tiny_model):
    from cat.teacher.estimators import order_seed, rotated

    _, tokenizer = tiny_model
    group = tiny_group(tokenizer, [f"\\boxed{{{i}}}" for i in range(8)], "1+1")
    assert rotated(group, 0, 8) is group
    assert sorted(rotated(group, k, 8).texts[-1] for k in range(8)) == sorted(group.texts)
    assert [rotated(group, k, 4).texts[-1] for k in range(4)] == [group.texts[i] for i in (7, 1, 3, 5)]
    assert all(sorted(rotated(group, k, 3).texts) == sorted(group.texts) for k in range(3))
    assert order_seed(5, 0) == 5 and len({order_seed(5, k) for k in range(8)}) == 8


def test_synthesis_over_several_orders_takes_the_answer_most_orders_give(anchor, tiny_model):
    _, tokenizer = tiny_model
    pairs = [(47, 38), (23, 51), (66, 17), (35, 44)]
    groups = [tiny_group(tokenizer, wrong_everywhere(a, b), f"{a}+{b}", gold=str(a + b)) for a, b in pairs]
    one = build_estimator(CONFIG, "synthesis")(groups, anchor)
    config = load_config(None, ["generation.num_generations=8", "anchor.orders=8"])
    refs = build_estimator(config, "synthesis")(groups, anchor)
    for r, first in zip(refs, one, strict=True):
        answers = r.meta["order_answers"]
        assert len(answers) == 8 and r.meta["orders"] == 8
        assert answers[0] == first.answer  # order 0 is the sampled order: the one-order reference
        assert r.answer == max(answers, key=answers.count) and r.meta["order_votes"] == answers.count(r.answer)
        assert answers[r.meta["order"]] == r.answer and answers.index(r.answer) == r.meta["order"]
        assert r.meta["anchor_prompt_tokens"] > 7 * first.meta["anchor_prompt_tokens"]  # the cost of 8 reads
    assert len({tuple(r.meta["order_answers"]) for r in refs}) > 1
    sampled = anchor.with_params(greedy=False, temperature=1.0)  # one call per order, each its own streams
    twice = [build_estimator(config, "synthesis")(groups[:2], sampled) for _ in range(2)]
    assert [r.meta["order_answers"] for r in twice[0]] == [r.meta["order_answers"] for r in twice[1]]
    assert all(len(r.meta["order_answers"]) == 8 for r in twice[0])
    synthesize = build_estimator(config, "synthesis")
    whole = synthesize(groups[:2], sampled.at(seed=3))
    shard = synthesize(groups[1:2], sampled.at(seed=3, row_offset=1))  # a second rank's share of the step
    assert shard[0].meta["order_texts"] == whole[1].meta["order_texts"]
    assert len(set(whole[1].meta["order_texts"])) > 1
    with pytest.raises(ConfigError, match=r"anchor.orders \(8\) is above generation.num_generations \(4\)"):
        load_config(None, ["generation.num_generations=4", "anchor.orders=8"])


def test_anchor_truncates_rollouts_evenly_to_fit(anchor, tiny_model):
    _, tokenizer = tiny_model
    long = "ones 7+8=15 " * 40 + "so \\boxed{85}"
    g = tiny_group(tokenizer, [long] * 4, "47+38")
    budget = anchor.max_context_tokens
    try:
        anchor.max_context_tokens = 280
        user, n, cut = anchor.render(anchor.template, g.texts, None)
    finally:
        anchor.max_context_tokens = budget
    ids = anchor.ids(user)
    assert n == len(ids)
    text = tokenizer.decode(ids)
    assert cut == 4 and len(ids) <= 280
    assert text.count("[...]") == 4 and text.count("boxed{85}") == 4  # every tail (the answer) survives
    assert text.endswith("<|end|><|assistant|>")  # never cut from the right


def test_min_perplexity_and_mutual_predictability_prefer_typical_rollouts(anchor, tiny_model):
    _, tokenizer = tiny_model
    clean = "ones 7+8=15 tens 4+3+1=08 so \\boxed{85}"
    odd = "tens tens ones so so 9 \\boxed{1}"
    g = tiny_group(tokenizer, [odd, clean, clean, clean], "47+38")
    [mp] = build_estimator(CONFIG, "min_perplexity")([g], anchor)
    assert mp.meta["index"] != 0 and mp.answer == "85"
    [mu] = build_estimator(CONFIG, "mutual_predictability")([g], anchor)
    assert mu.meta["index"] != 0 and mu.answer == "85"


def test_self_bon_unparsable_choice_gives_no_reference(anchor, tiny_model):
    _, tokenizer = tiny_model
    g = tiny_group(tokenizer, ["ones 7+8=15 tens 4+3+1=08 so \\boxed{85}"] * 2, "47+38")
    [ref] = build_estimator(CONFIG, "self_bon")([g], anchor)
    # the tiny anchor was never taught to pick; whatever it says, the outcome is well defined
    if ref.meta["index"] is None:
        assert ref.answer is None
    else:
        assert ref.answer == "85"


def test_estimators_are_built_from_their_settings_not_the_whole_config():
    config = load_config(None, ["reward.mode=strict", "anchor.orders=2", "answer.rules=[boxed]",
                                "judge.score_template=judge_score_brief"])
    settings = EstimatorSettings.from_config(config)
    assert (settings.mode, settings.timeout_s, settings.orders) == ("strict", 3, 2)
    assert settings.answer_of.rules == ("boxed",) and settings.judge_score_template == "judge_score_brief"
    assert settings.estimator is config.estimator
    synthesis = build_estimator(config, "synthesis")
    assert (synthesis.orders, synthesis.mode, synthesis.answer_of.rules) == (2, "strict", ("boxed",))
    with pytest.raises(AttributeError, match="no field 'nope' \\(fields: estimator, answer_of, mode"):
        _ = settings.nope


def test_a_plugin_estimator_written_for_the_whole_config_still_runs_with_a_deprecation_warning(caplog, monkeypatch):
    """The plug-in contract before EstimatorSettings: ``cls(config)`` reading config sections. It
    is built as every estimator is, reads the Config through the settings, and is told which field
    to read instead; its references are the new contract's."""

    @register_estimator("old_style_majority")
    class OldStyle:
        needs_anchor = False

        def __init__(self, config):
            self.mode, self.timeout_s = config.reward.mode, config.reward.timeout_s
            self.answer_of = AnswerChain.from_config(config.answer)

        def __call__(self, groups, anchor=None):
            out = []
            for g in groups:
                answer, index, votes = majority_answer([self.answer_of(t) for t in g.texts], mode=self.mode,
                                                       timeout_s=self.timeout_s)
                out.append(Reference(text=g.texts[index], answer=answer, source="majority_vote",
                                     meta={"index": index, "votes": votes}, answer_rule="boxed"))
            return out

    monkeypatch.setattr("cat.config._WARNED_READS", set())  # the log says it once per process
    g = group(["\\boxed{4}", "\\boxed{5}", "no answer", "\\boxed{5}"])
    with pytest.warns(DeprecationWarning) as caught:
        old = build_estimator(CONFIG, "old_style_majority")
    said = [str(w.message) for w in caught]
    assert any("read config.reward" in m and "settings.mode and settings.timeout_s" in m for m in said)
    assert any("read config.answer" in m and "settings.answer_of" in m for m in said)
    assert any("read config.answer" in r.getMessage() for r in caplog.records)  # the log says it too
    assert old([g]) == build_estimator(CONFIG, "majority_vote")([g])


def test_a_builtin_estimator_built_from_a_whole_config_still_works_with_a_deprecation_warning():
    g = group(["\\boxed{4}", "\\boxed{5}", "no answer", "\\boxed{5}"])
    with pytest.warns(DeprecationWarning, match="build it with cat.teacher.estimators.build_estimator"):
        old = ESTIMATORS.get("majority_vote")(CONFIG)
    assert old([g]) == build_estimator(CONFIG, "majority_vote")([g])


def test_guide_plugin_example_runs_through_the_trainer(tmp_path, tiny_world):
    guide = (ROOT / "docs" / "plugins.md").read_text()
    code = re.search(r"```python\n(# my_estimators.py\n.*?)```", guide, re.S).group(1)
    plugin = tmp_path / "my_estimators.py"
    plugin.write_text(code)
    import_plugin(str(plugin))
    assert "longest_majority" in ESTIMATORS
    from cat.run.trainer import Trainer

    config = load_config(None, [
        f"model.name_or_path={tiny_world / 'model'}", f"data.path={tiny_world / 'train.jsonl'}",
        "data.limit=16", "eval.path=null", "run.prompts_per_step=2", "generation.max_new_tokens=32",
        "estimator.name=longest_majority", f"plugins=['{plugin}']",
    ])
    metrics = Trainer(config, tmp_path / "run", log=lambda *_: None).step(0).metrics
    assert metrics["groups/scored"] + metrics["groups/unscored"] == 2
    assert 0.0 <= metrics["diag/reference_accuracy"] <= 1.0
    rules = ["boxed", "answer_phrase", "equals_end", "last_number"]  # the default chain, logged rule by rule
    assert metrics["answer/rollout_rate"] == pytest.approx(sum(metrics[f"answer/rollout_rule/{r}"] for r in rules))
    assert 0.0 <= metrics["answer/reference_rate"] <= 1.0  # the plug-in's references name no rule


def test_another_local_model_as_the_anchor(tiny_model, tiny_world):
    """anchor.model names a teacher other than pi_0: it gets its own engine and tokenizer, and the
    rollouts are re-encoded for it. With the same weights it must agree with the pi_0 anchor."""
    model, tokenizer = tiny_model
    base = load_config(ROOT / "experiments" / "tiny_arith_cat.yaml")
    other = load_config(ROOT / "experiments" / "tiny_arith_cat.yaml", [f"anchor.model={tiny_world / 'model'}"])
    pi0 = HFGenerator(model, tokenizer, batch_size=16)
    built = []

    def make_generator(teacher, tok):
        built.append(teacher)
        return HFGenerator(teacher, tok, batch_size=16)

    a0 = build_anchor(base.anchor, base.model, tokenizer, seed=base.run.seed, device=model.device,
                      pi0_generator=lambda: pi0, make_generator=None)
    a1 = build_anchor(other.anchor, other.model, tokenizer, seed=other.run.seed, device=model.device,
                      pi0_generator=None, make_generator=make_generator)
    assert len(built) == 1 and built[0] is not model and not a1.shares_policy_tokenizer
    groups = [tiny_group(tokenizer, wrong_everywhere(47, 38), "47+38", gold="85"),
              tiny_group(tokenizer, wrong_everywhere(23, 51), "23+51", gold="74")]
    assert [s.text for s in a1.synthesize(groups)] == [s.text for s in a0.synthesize(groups)]
    nll0 = build_estimator(base, "min_perplexity")(groups, a0)
    nll1 = build_estimator(other, "min_perplexity")(groups, a1)
    assert [r.meta["index"] for r in nll1] == [r.meta["index"] for r in nll0]
    # re-encoded text has no EOS token (pi_0 scores the sampled ids, EOS included): close, not equal
    assert [r.meta["nll"] for r in nll1] == pytest.approx([r.meta["nll"] for r in nll0], abs=0.02)

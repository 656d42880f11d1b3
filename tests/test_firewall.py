"""The label firewall (``cat.teacher.firewall``), proven by planting labels: every gold answer and
every label-bearing column is replaced by a wrong one, and CaT, TTRL and a plug-in estimator that tries
to read the label, with a plug-in reward and a TRL reward function that try too, train bit for bit
as on the clean data. Reference-based GRPO (``gold``) reads labels by definition: it changes."""

import json

import pytest
import torch
from conftest import ROOT

from cat.config import load_config
from cat.run.trainer import Trainer

PLUGIN = '''
from cat.teacher.estimators import read_reference, register_estimator
from cat.rewards import GroupReward, from_completion_fn, register_reward
from cat.types import GroupScore


@register_estimator("peeking")
class Peeking:
    """Would take the label, or the worked solution, as the reference if it could see one."""

    needs_anchor = False

    def __init__(self, settings):
        self.answer_of = settings.answer_of

    def __call__(self, groups, anchor=None):
        return [read_reference(g.prompt.meta.get("solution") or (f"\\\\boxed{{{g.prompt.gold}}}" if g.prompt.gold
                                                                 else g.texts[0]), self.answer_of, "peeking")
                for g in groups]


@register_reward("peeking_reward")
class PeekingReward(GroupReward):
    """Would pay the rollouts that contain the label."""

    def score_group(self, group, reference):
        gold = group.prompt.gold
        return GroupScore(tuple(float(gold is not None and gold in t) for t in group.texts))


def trl_peek(completions, **kwargs):
    """A TRL reward function that would read the dataset's label columns."""
    leak = str(kwargs.get("solution", [""])[0]) + str(kwargs.get("answer", [""])[0])
    return [float(bool(leak) and leak[-3:] in c) for c in completions]


register_reward("trl_peek")(from_completion_fn(trl_peek))
'''


@pytest.fixture(scope="module")
def datasets(tiny_world, tmp_path_factory):
    """The same 16 prompts twice: with their labels, and with every label and label column wrong."""
    folder = tmp_path_factory.mktemp("firewall")
    rows = [json.loads(line) for line in (tiny_world / "train.jsonl").read_text().splitlines()[:16]]
    clean = [{"problem": r["problem"], "answer": r["answer"], "solution": f"the sum is \\boxed{{{r['answer']}}}",
              "level": 1} for r in rows]
    planted = [{**r, "answer": str(int(r["answer"]) + 7 + i), "solution": f"surely \\boxed{{{int(r['answer']) - 3}}}"}
               for i, r in enumerate(clean)]
    for name, data in (("clean", clean), ("planted", planted)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    (folder / "peeking_plugin.py").write_text(PLUGIN)
    return folder


def train(folder, data: str, estimator: str, tiny_world, tmp_path):
    config = load_config(ROOT / "experiments" / "tiny_arith_cat.yaml", [
        f"model.name_or_path={tiny_world / 'model'}", f"data.path={folder / data}", "data.limit=16",
        "eval.path=null", "run.prompts_per_step=2", "generation.max_new_tokens=32", f"estimator.name={estimator}",
        f"plugins=['{folder / 'peeking_plugin.py'}']",
        "reward.functions=[math_equivalence, peeking_reward, trl_peek]", "reward.weights=[1.0, 0.5, 0.5]",
        "reward.name=math_equivalence",
    ])
    trainer = Trainer(config, tmp_path / f"{estimator}-{data}", log=lambda *_: None)
    steps = [trainer.step(s) for s in range(2)]
    samples = [{k: v for k, v in row.items() if k != "gold"} for result in steps for row in result.samples]
    metrics = [{k: v for k, v in r.metrics.items() if not k.startswith(("diag/", "time/", "tokens_per_second", "anchor/seconds"))}
               for r in steps]
    weights = torch.cat([p.detach().flatten() for p in trainer.policy.parameters()])
    return samples, metrics, weights


@pytest.mark.parametrize("estimator", ["synthesis", "majority_vote", "peeking"])
def test_planted_labels_change_nothing_in_a_label_free_run(estimator, datasets, tiny_world, tmp_path):
    clean = train(datasets, "clean.jsonl", estimator, tiny_world, tmp_path)
    planted = train(datasets, "planted.jsonl", estimator, tiny_world, tmp_path)
    assert clean[0] == planted[0]  # every rollout, reference, reward and advantage
    assert clean[1] == planted[1]  # every metric but the ones measured against labels
    assert torch.equal(clean[2], planted[2])  # the trained weights, bit for bit
    assert any(row["reward"] > 0 for row in clean[0])  # and it did train on something
    assert all(m["reward/peeking_reward/mean"] == 0 and m["reward/trl_peek/mean"] == 0 for m in clean[1])


def test_planted_labels_change_reference_based_grpo(datasets, tiny_world, tmp_path):
    clean = train(datasets, "clean.jsonl", "gold", tiny_world, tmp_path)
    planted = train(datasets, "planted.jsonl", "gold", tiny_world, tmp_path)
    assert [r["reference_answer"] for r in clean[0]] != [r["reference_answer"] for r in planted[0]]
    assert not torch.equal(clean[2], planted[2])
    assert any(m["reward/peeking_reward/mean"] > 0 for m in clean[1])  # gold sees labels: the plug-in reads them

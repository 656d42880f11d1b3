"""CaT-SFT (``algorithm: sft``): what each group is fine-tuned on, the update's gradient equal to
the token-mean NLL's, and a label-free tiny run that learns."""

import json

import pytest
import torch
from conftest import FP64_RELATIVE, ROOT, assert_same_maths, cli
from test_estimators import tiny_group

from cat.algo.batch import build_sft_batch, sft_target
from cat.algo.grpo import aggregate, token_losses
from cat.config import load_config
from cat.errors import ConfigError
from cat.models.logprobs import token_logprobs
from cat.types import GroupScore, Reference

RIGHT = "ones 7+8=15 tens 4+3+1=08 so \\boxed{85}"
WRONG = "ones 7+8=14 tens 4+3+1=08 so \\boxed{84}"


@pytest.fixture(scope="module")
def tokenizer(tiny_world):
    from cat.models.load import load_tokenizer

    return load_tokenizer(str(tiny_world / "model"))


def test_targets(tokenizer):
    group = tiny_group(tokenizer, [WRONG, RIGHT, RIGHT], "47+38", gold="85")
    score = GroupScore((0.0, 1.0, 1.0))
    synthesis = Reference(f"SUMMARY: two of three agree.\nUNIFIED RESPONSE: {RIGHT}", "85", "synthesis")
    t = sft_target(group, synthesis, score, tokenizer, target="reference", max_new_tokens=64)
    assert t.text == RIGHT and t.token_ids[-1] == tokenizer.eos_token_id  # the response, not the summary
    assert tokenizer.decode(t.token_ids[:-1]) .replace(" ", "") == RIGHT.replace(" ", "")
    majority = Reference(RIGHT, "85", "majority_vote", meta={"index": 1})
    assert sft_target(group, majority, score, tokenizer, target="reference", max_new_tokens=64) is group.completions[1]
    unparsable = Reference("no answer here", None, "synthesis")
    assert sft_target(group, unparsable, score, tokenizer, target="reference", max_new_tokens=64) is None
    assert sft_target(group, synthesis, score, tokenizer, target="agreeing_rollout", max_new_tokens=64) \
        is group.completions[1]  # the first with the best reward
    assert sft_target(group, synthesis, GroupScore((0.0, 0.0, 0.0)), tokenizer, target="agreeing_rollout",
                      max_new_tokens=64) is None
    assert sft_target(group, synthesis, score, tokenizer, target="reference", max_new_tokens=5) is None  # too long
    free = Reference("UNIFIED RESPONSE: a kind, plain answer", None, "synthesis")  # open-ended: no boxed answer
    assert sft_target(group, free, score, tokenizer, target="reference", max_new_tokens=64) is None
    assert sft_target(group, free, score, tokenizer, target="reference", max_new_tokens=64,
                      require_answer=False).text == "a kind, plain answer"
    batch, kept = build_sft_batch([group, group], [synthesis, unparsable], [score, score], tokenizer,
                                  target="reference", max_new_tokens=64)
    assert kept == 1 and len(batch) == 1 and batch.group_index.tolist() == [0] and batch.advantages.tolist() == [1.0]


@pytest.mark.numerical
def test_the_sft_update_gradient_is_the_token_mean_nll_gradient(tiny_model):
    from cat.models.load import load_model

    model, tokenizer = tiny_model
    model = load_model(model.name_or_path, dtype="float64", device=torch.device("cpu")).train()  # a trainable copy
    groups = [tiny_group(tokenizer, [RIGHT, WRONG], "47+38", gold="85"), tiny_group(tokenizer, [WRONG], "47+38")]
    refs = [Reference(f"UNIFIED RESPONSE: {RIGHT}", "85", "synthesis"), Reference(WRONG, "84", "majority_vote",
                                                                                     meta={"index": 0})]
    batch, kept = build_sft_batch(groups, refs, [GroupScore((1.0, 0.0)), GroupScore((1.0,))], tokenizer,
                                  target="reference", max_new_tokens=64)
    assert kept == 2
    T, mask = batch.completion_length, batch.completion_mask

    def surrogate(logp):
        per_token, _ = token_losses(logp, logp.detach(), None, batch.advantages, mask)
        return aggregate(per_token, mask, loss_type="dapo", total_sequences=len(batch),
                         total_tokens=float(mask.sum()), max_completion_length=64)

    def nll(logp):
        return -(logp * mask).sum() / mask.sum()

    # One forward serves both losses, so the comparison is of the losses' maths alone: a kernel's
    # run-to-run noise in a second forward (seen once on a CI machine, 2.6e-4 relative, never here)
    # is not the loss's doing. Equal gradients at the log-probs are equal gradients at every weight.
    logp, _ = token_logprobs(model, batch.input_ids, batch.attention_mask, T, 1.0)
    [d_surrogate] = torch.autograd.grad(surrogate(logp), logp, retain_graph=True)
    [d_nll] = torch.autograd.grad(nll(logp), logp, retain_graph=True)
    assert_same_maths(d_surrogate, d_nll)
    weights = list(model.parameters())
    nll_grads = torch.cat([g.flatten() for g in torch.autograd.grad(nll(logp), weights, retain_graph=True)])
    gap = torch.cat([g.flatten() for g in torch.autograd.grad(surrogate(logp) - nll(logp), weights)])
    assert gap.abs().max() <= FP64_RELATIVE * nll_grads.abs().max(), gap.abs().max()  # zero, to rounding
    assert nll_grads.abs().max() > 1e-3


def test_config_checks():
    with pytest.raises(ConfigError, match="gold references are bare answers"):
        load_config(None, ["algorithm=sft", "estimator.name=gold"])
    load_config(None, ["algorithm=sft", "estimator.name=gold", "sft.target=agreeing_rollout"])
    with pytest.raises(ConfigError, match="grpo.num_iterations to 1"):
        load_config(None, ["algorithm=sft", "estimator.name=synthesis", "grpo.num_iterations=2"])


def test_cat_sft_learns_without_labels(tmp_path):
    """The shipped CaT-SFT config (anchor references, no labels) for 8 steps on 48 held-out questions
    (measured: 0.383 -> 0.766 over its full 40 steps, 3 seeds; docs/results.md)."""
    run_dir = tmp_path / "run"
    out = cli("train", str(ROOT / "experiments" / "tiny_arith_cat_sft.yaml"), "--output-dir", str(run_dir),
              "run.steps=8", "eval.limit=48", "--no-progress")
    assert out.returncode == 0, out.stderr[-3000:]
    evals = json.loads((run_dir / "eval.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(r["sft/groups"] > 0 and r["sft/nll"] > 0 for r in rows)
    assert evals["after"]["accuracy"] - evals["before"]["accuracy"] >= 0.05, evals


def test_the_two_objectives_declare_what_the_update_reads():
    """SFT: temperature 1, dapo, no sampler correction; its surrogate at ratio 1 is -1 per token and
    it logs the token-mean NLL instead. GRPO logs its surrogate and shows the rollouts' advantages."""
    from cat.algo.grpo import MismatchStats
    from cat.algo.objectives import GRPO, SFT

    config = load_config(None, ["algorithm=sft", "estimator.name=synthesis", "grpo.loss_type=grpo"])
    sft = SFT(config.sft, config.grpo, None, max_completion_length=8, require_answer=True)
    assert (sft.temperature, sft.loss_type, sft.sampler_correction, sft.skip_zero_advantage) == (1.0, "dapo", False, False)
    logp = torch.tensor([[-1.0, -2.0, -3.0]])  # [1, 3]
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, stats = sft.loss(logp, logp, None, torch.ones(1), mask, sampler_weights=None, total_sequences=1,
                           total_tokens=2.0)
    assert float(loss) == -1.0 and float(stats.tokens) == 2.0  # -(1 + 1) / 2
    assert float(sft.logged_loss(loss, logp, mask)) == 3.0
    assert sft.loss_metrics(3.0, 2.0) == {"loss": 1.5, "sft/nll": 1.5}
    assert sft.mismatch_metrics(MismatchStats(1, 1, 1, 1)) == {} and sft.rollout_advantages(None) == {}
    grpo = GRPO(config.grpo, temperature=0.7, sampler_correction=True, pad_id=0, max_completion_length=8)
    assert (grpo.temperature, grpo.loss_type, grpo.needs_spread) == (0.7, "grpo", True)
    assert float(grpo.logged_loss(loss, logp, mask)) == -1.0 and grpo.loss_metrics(-1.0, 2.0) == {"loss": -1.0}
    assert set(grpo.mismatch_metrics(MismatchStats(2, 1, 0, 0))) == {"mismatch/abs_logp_diff", "mismatch/kl",
                                                                      "mismatch/capped_frac"}

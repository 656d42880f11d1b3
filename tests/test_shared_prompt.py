"""The update's two speed-ups that must leave the gradient alone: each group's prompt forwarded
once for its G rows (``run.share_prompt_forward``), and micro-batches cut from rows ordered by
length and trimmed of the padding they all share (``Batch.longest_first`` / ``Batch.trimmed``).

The claims "the same log-probs, the same gradient" are checked in float64 (``model.dtype=float64``),
where summation order cannot hide or fake a difference (``conftest.assert_same_maths``)."""

import pytest
import torch
from conftest import assert_same_maths
from test_trainer import grads_at_optimizer_step, make_trainer

from cat.algo.batch import Batch
from cat.models.load import load_model
from cat.models.logprobs import token_logprobs


def rows_of_three_groups(vocab: int):
    """Prompts of 5, 9 and 7 tokens (left-padded to 9), rows per group 3, 1 and 2, completions of
    6, 2, 4, 5, 1 and 6 tokens (right-padded to 6)."""
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, vocab, (n,), generator=g) for n in (5, 9, 7)]
    groups = [0, 0, 0, 1, 2, 2]
    lengths = [6, 2, 4, 5, 1, 6]
    P, T = 9, 6
    ids = torch.zeros(len(groups), P + T, dtype=torch.long)
    att = torch.zeros_like(ids)
    for r, (gi, n) in enumerate(zip(groups, lengths, strict=True)):
        p = prompts[gi]
        ids[r, P - len(p):P], att[r, P - len(p):P] = p, 1
        ids[r, P:P + n], att[r, P:P + n] = torch.randint(3, vocab, (n,), generator=g), 1
    return ids, att, torch.tensor(groups), T


def logprobs_and_grads(model, ids, att, T, groups, dtype):
    model.zero_grad()
    lp, entropy = token_logprobs(model, ids, att, T, 0.9, with_entropy=True, compute_dtype=dtype,
                                 prompt_groups=groups)
    mask = att[:, -T:].float()
    weights = torch.randn(lp.shape, generator=torch.Generator().manual_seed(1))
    (lp * weights * mask).sum().backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    return lp.detach() * mask, entropy * mask, grads


@pytest.mark.numerical
def test_a_shared_prompt_forward_gives_the_same_logprobs_entropy_and_gradient(tiny_world):
    model = load_model(str(tiny_world / "model"), dtype="float64", device=torch.device("cpu"))
    model.train()
    ids, att, groups, T = rows_of_three_groups(model.config.vocab_size)
    plain = logprobs_and_grads(model, ids, att, T, None, None)
    shared = logprobs_and_grads(model, ids, att, T, groups, None)
    for k, what in enumerate(("log-probs", "entropy", "gradient")):
        assert_same_maths(shared[k], plain[k], msg=what)
    # one completion token: only the prompt's pass runs
    one = logprobs_and_grads(model, ids[:, :-5], att[:, :-5], 1, groups, None)
    assert_same_maths(one[0], logprobs_and_grads(model, ids[:, :-5], att[:, :-5], 1, None, None)[0])


@pytest.mark.numerical
def test_in_bf16_a_shared_prompt_moves_the_numbers_by_no_more_than_bf16_does(tiny_world, bf16_attention):
    """bf16 compute (autocast over the float32 model; autocast leaves float64 alone): the shared
    forward's results lie within four times the plain forward's own bf16 error of the exact
    (float64) ones. The bound comes from this machine's bf16 error, measured here; a misplaced
    position or a gradient not summed back would be off by far more."""
    model = load_model(str(tiny_world / "model"), dtype="float32", device=torch.device("cpu"))
    exact_model = load_model(str(tiny_world / "model"), dtype="float64", device=torch.device("cpu"))
    model.train(), exact_model.train()
    ids, att, groups, T = rows_of_three_groups(model.config.vocab_size)
    exact = logprobs_and_grads(exact_model, ids, att, T, None, None)
    plain16 = logprobs_and_grads(model, ids, att, T, None, "bfloat16")
    shared16 = logprobs_and_grads(model, ids, att, T, groups, "bfloat16")
    for k, what in enumerate(("log-probs", "entropy", "gradient")):
        plain_error = (plain16[k].double() - exact[k]).abs().max()
        assert plain_error > 0
        assert (shared16[k].double() - exact[k]).abs().max() <= 4 * plain_error, what


def test_trimmed_micro_batches_keep_every_token_and_groups_stay_together():
    ids = torch.tensor([[0, 0, 5, 6, 7, 1, 0, 0],
                        [0, 0, 0, 6, 8, 0, 0, 0],
                        [0, 4, 5, 6, 7, 8, 9, 1]])
    att = (ids != 0).long()
    T = 4
    batch = Batch(ids, att, att[:, -T:].float(), torch.tensor([1.0, -1.0, 0.5]), torch.zeros(3),
                  torch.zeros(3, dtype=torch.bool), torch.tensor([0, 1, 1]), torch.zeros(3, T))
    order = batch.longest_first()
    assert order.tolist() == [1, 2, 0]  # group 1 holds the longest row; its rows stay in order
    two = batch.rows(0, 2).trimmed()  # rows 0 and 1: two pad columns on the left, completions of 2 and 1
    assert two.input_ids.tolist() == [[5, 6, 7, 1], [0, 6, 8, 0]]
    assert two.completion_length == 2 and two.completion_mask.tolist() == [[1, 1], [1, 0]]
    assert batch.trimmed().input_ids.shape == (3, 7)  # one column is padding in every row
    assert batch.rows(2, 3).trimmed().input_ids.shape == (1, 7)


@pytest.mark.numerical
def test_the_update_with_shared_prompts_and_trimmed_micro_batches_has_the_plain_gradient(tmp_path, tiny_world):
    """Every loss_type, with a KL term (so pi_0 scores the rows too), and two iterations (old
    log-probs scored before the update): micro-batches of 5 with shared prompt forwards against
    the whole batch in one forward per row."""
    for loss_type, iterations in (("grpo", 1), ("bnpo", 1), ("dr_grpo", 1), ("dapo", 1), ("grpo", 2)):
        common = ("model.dtype=float64", f"grpo.loss_type={loss_type}", f"grpo.num_iterations={iterations}", "grpo.beta=0.05",
                  "optim.max_grad_norm=null", "estimator.name=gold", f"optim.lr={1e-4 if iterations == 1 else 1e-10}")
        plain = make_trainer(tmp_path, tiny_world, "run.micro_batch_size=32", "run.share_prompt_forward=false", *common)
        fast = make_trainer(tmp_path, tiny_world, "run.micro_batch_size=5", *common)
        g_plain, g_fast = grads_at_optimizer_step(plain), grads_at_optimizer_step(fast)
        a, b = plain.step(0).metrics, fast.step(0).metrics
        assert a["reward/mean"] == b["reward/mean"] and a["frac_reward_zero_std"] < 1
        assert abs(a["loss"] - b["loss"]) < 1e-6 and abs(a["kl"] - b["kl"]) < 1e-6
        for k in range(iterations):
            assert_same_maths(g_fast[k], g_plain[k], msg=f"{loss_type}, iteration {k + 1}")

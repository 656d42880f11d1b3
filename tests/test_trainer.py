"""The trainer on the real tiny model: exact accumulation, determinism, label independence."""

import json
from pathlib import Path

import pytest
import torch
from conftest import assert_same_maths

from cat.config import load_config
from cat.errors import ConfigError
from cat.run.trainer import Trainer


def make_trainer(tmp_path, tiny_world, *overrides, data=None):
    config = load_config(None, [
        f"model.name_or_path={tiny_world / 'model'}",
        f"data.path={data or tiny_world / 'train.jsonl'}",
        "data.limit=64", "eval.path=null", "generation.max_new_tokens=32",
        "run.prompts_per_step=4", "generation.num_generations=8", "optim.lr=1e-4",
        "anchor.max_new_tokens=48", "estimator.name=gold", *overrides,  # gold unless a test names another
    ])
    return Trainer(config, tmp_path / "run", log=lambda *_: None)


def checkpoint_after_first_step(trainer) -> Path:
    """The trainer's first step taken, and the checkpoint a run loop saves after it."""
    from cat.run.loop import RunLoop

    trainer.step(0)
    loop = RunLoop(trainer)
    loop.step_done = 1
    return loop.save()


def params(trainer):
    return torch.cat([p.detach().flatten() for p in trainer.policy.parameters()])


def grads_at_optimizer_step(trainer):
    """Record the accumulated gradients the optimizer is handed, through torch's step pre-hook."""
    seen = []
    trainer.optimizer.register_step_pre_hook(
        lambda *_: seen.append(torch.cat([p.grad.detach().flatten().clone() for p in trainer.policy.parameters()])))
    return seen


@pytest.mark.numerical
def test_micro_batches_give_the_full_batch_gradient(tmp_path, tiny_world):
    """One batch of 32 sequences in micro-batches of 5 gives the gradient of the whole batch,
    for every loss_type (the normaliser is the whole batch's). In float64: the two sum in another
    order, which float32 rounding would blur on some kernel sets."""
    for loss_type in ("grpo", "bnpo", "dr_grpo", "dapo"):
        common = ("model.dtype=float64", f"grpo.loss_type={loss_type}", "grpo.beta=0.05", "optim.max_grad_norm=null")
        whole = make_trainer(tmp_path, tiny_world, "run.micro_batch_size=32", *common)
        split = make_trainer(tmp_path, tiny_world, "run.micro_batch_size=5", *common)
        g_whole, g_split = grads_at_optimizer_step(whole), grads_at_optimizer_step(split)
        a, b = whole.step(0).metrics, split.step(0).metrics
        assert a["reward/mean"] == b["reward/mean"]
        assert abs(a["loss"] - b["loss"]) < 1e-6
        assert_same_maths(g_split[0], g_whole[0], msg=loss_type)


@pytest.mark.numerical
def test_skipping_zero_advantage_rows_leaves_the_gradient(tmp_path, tiny_world):
    """Rows of zero-spread groups are left out of the forward/backward; the gradient, loss and
    clip statistics' numerators are the same as computing them: every loss_type over one iteration,
    grpo and dapo over two (old log-probs scored for the kept rows only; a tiny learning rate there, since
    Adam's first step turns float-level gradient differences into visible weight differences).
    Half the prompts carry an answer no rollout gives, so their groups all score 0."""
    rows = [json.loads(line) for line in (tiny_world / "train.jsonl").read_text().splitlines()[:8]]
    data = tmp_path / "half_unreachable.jsonl"
    data.write_text("".join(json.dumps({**r, "answer": r["answer"] if i % 2 else "-1"}) + "\n" for i, r in enumerate(rows)))
    for loss_type, iterations in (("grpo", 1), ("bnpo", 1), ("dr_grpo", 1), ("dapo", 1), ("grpo", 2), ("dapo", 2)):
        common = ("model.dtype=float64", f"grpo.loss_type={loss_type}", f"grpo.num_iterations={iterations}",
                  "run.prompts_per_step=8",
                  "run.micro_batch_size=5", "optim.max_grad_norm=null", "estimator.name=gold", "data.limit=8",
                  f"optim.lr={1e-4 if iterations == 1 else 1e-10}")
        kept = make_trainer(tmp_path, tiny_world, "grpo.skip_zero_advantage=false", *common, data=data)
        skipped = make_trainer(tmp_path, tiny_world, *common, data=data)
        g_kept, g_skipped = grads_at_optimizer_step(kept), grads_at_optimizer_step(skipped)
        a, b = kept.step(0).metrics, skipped.step(0).metrics
        assert a["update/skipped_rows"] == 0 and b["update/skipped_rows"] >= 32
        assert b["update/skipped_rows"] == 8 * b["frac_reward_zero_std"] * 8
        assert abs(a["loss"] - b["loss"]) < 1e-6
        for k in range(iterations):
            # the kept and skipped runs cut different micro-batches: float sums in another order
            assert_same_maths(g_skipped[k], g_kept[k], msg=f"{loss_type}, iteration {k + 1}")


def test_rows_are_not_skipped_under_a_kl_term(tmp_path, tiny_world):
    rows = [json.loads(line) for line in (tiny_world / "train.jsonl").read_text().splitlines()[:4]]
    data = tmp_path / "unreachable.jsonl"
    data.write_text("".join(json.dumps({**r, "answer": "-1"}) + "\n" for r in rows))
    t = make_trainer(tmp_path, tiny_world, "grpo.beta=0.05", "estimator.name=gold", "data.limit=4", data=data)
    m = t.step(0).metrics
    assert m["frac_reward_zero_std"] > 0 and m["update/skipped_rows"] == 0


def test_same_seed_same_run(tmp_path, tiny_world):
    def run(seed):
        t = make_trainer(tmp_path, tiny_world, f"run.seed={seed}", "grpo.num_iterations=2", "grpo.beta=0.01")
        rows = [t.step(s).metrics for s in range(2)]
        for r in rows:
            for k in [k for k in r if k.startswith("time/") or k == "tokens_per_second"]:
                r.pop(k)
        return rows, params(t)

    rows1, p1 = run(0)
    rows2, p2 = run(0)
    rows3, _ = run(1)
    assert json.dumps(rows1) == json.dumps(rows2)
    assert torch.equal(p1, p2)
    assert json.dumps(rows1) != json.dumps(rows3)


def test_cat_training_never_reads_gold(tmp_path, tiny_world):
    """Shuffling or deleting the gold column changes diagnostics only: rewards, advantages,
    loss and weights are bit-identical."""
    rows = [json.loads(line) for line in (tiny_world / "train.jsonl").read_text().splitlines()[:64]]
    shuffled = tmp_path / "shuffled.jsonl"
    answers = [r["answer"] for r in rows][::-1]
    shuffled.write_text("".join(json.dumps({**r, "answer": a}) + "\n" for r, a in zip(rows, answers, strict=False)))
    deleted = tmp_path / "deleted.jsonl"
    deleted.write_text("".join(json.dumps({"problem": r["problem"]}) + "\n" for r in rows))

    def run(path, estimator):
        t = make_trainer(tmp_path, tiny_world, f"estimator.name={estimator}", data=path)
        metrics = t.step(0).metrics
        train_side = {k: v for k, v in metrics.items() if not k.startswith(("diag/", "time/", "anchor/")) and k != "tokens_per_second"}
        return train_side, params(t), metrics

    for estimator in ("synthesis", "majority_vote"):
        base, p_base, m_base = run(tiny_world / "train.jsonl", estimator)
        for path in (shuffled, deleted):
            other, p_other, m_other = run(path, estimator)
            assert json.dumps(base) == json.dumps(other)
            assert torch.equal(p_base, p_other)
        assert "diag/reference_accuracy" in m_base and "diag/reference_accuracy" not in m_other


def test_sampler_old_logprobs_skip_the_extra_scoring_pass(tmp_path, tiny_world):
    """num_iterations=2 recomputes old log-probs with one more forward pass; old_logprobs=sampler takes the
    engine's instead. With the hf engine (which samples from this module) the first update is the same."""
    scored = []
    results = {}
    for mode in ("trainer", "sampler"):
        t = make_trainer(tmp_path / mode, tiny_world, "grpo.num_iterations=2", f"grpo.old_logprobs={mode}",
                         "optim.max_grad_norm=null")
        real = t._logprobs
        t._logprobs = lambda model, *a, _real=real, _mode=mode, **kw: scored.append(_mode) or _real(model, *a, **kw)
        seen = grads_at_optimizer_step(t)
        m = t.step(0).metrics
        results[mode] = seen[0]
        assert m["mismatch/abs_logp_diff"] < 1e-4 and m["mismatch/capped_frac"] == 0
    assert scored == ["trainer"]
    torch.testing.assert_close(results["sampler"], results["trainer"], rtol=1e-3, atol=1e-7)


def test_sampler_correction_reweights_the_update(tmp_path, tiny_world):
    """Forcing the correction on (cap 1: every weight min(ratio, 1)) reaches the gradient."""
    grads = {}
    for on in ("false", "true"):
        t = make_trainer(tmp_path / on, tiny_world, f"grpo.sampler_correction={on}", "grpo.sampler_correction_cap=1.0",
                         "optim.max_grad_norm=null")
        seen = grads_at_optimizer_step(t)
        t.step(0)
        grads[on] = seen[0]
    # cap 1: weights = min(ratio, 1) ~ 1 on this engine, so the update barely moves but is not identical
    torch.testing.assert_close(grads["true"], grads["false"], rtol=1e-2, atol=1e-6)
    assert not torch.equal(grads["true"], grads["false"])


def test_clipping_options_reach_the_update(tmp_path, tiny_world):
    """grpo.advantage_clip, reward_clip and dual_clip (hand-derived in test_grpo.py) are what a
    training step uses: the logged advantages lie within the clip, the dual clip is counted."""
    t = make_trainer(tmp_path, tiny_world, "grpo.advantage_clip=0.5", "grpo.reward_clip=0.5", "grpo.dual_clip=1.5",
                     "grpo.num_iterations=2", "generation.temperature=1.5")  # hot: groups whose rewards differ
    result = t.step(0)
    advantages = [row["advantage"] for row in result.samples]
    assert max(abs(a) for a in advantages) <= 0.5 and any(a != 0 for a in advantages)
    assert 0.0 <= result.metrics["clip_ratio/dual"] <= 1.0


def test_float16_trains_with_dynamic_loss_scaling(tmp_path, tiny_world):
    """fp16 gradients underflow without loss scaling: model.dtype float16 scales the loss with
    torch's GradScaler. An overflow skips that update and halves the scale without counting
    towards run.max_nonfinite_in_a_row; the scale is in the checkpointed state."""
    t = make_trainer(tmp_path, tiny_world, "model.dtype=float16", "generation.temperature=1.5",
                     "estimator.name=single", "run.max_nonfinite_in_a_row=1")
    first = t.step(0).metrics
    assert first["skipped_update"] == 0 and first["loss_scale"] == 2.0 ** 16 and 0 < first["grad_norm"] < 1e3
    t.learner.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 120)  # far too large: the fp16 backward overflows
    before = params(t)
    over = t.step(1).metrics
    assert over["skipped_update"] == 1 and over["loss_scale"] == 2.0 ** 120
    assert torch.equal(before, params(t)) and t.learner.nonfinite_in_a_row == 0  # skipped, and no halt at 1
    assert t.learner.scaler.get_scale() == 2.0 ** 119
    assert t.learner.state_dict()["scaler"]["scale"] == 2.0 ** 119
    (tmp_path / "again").mkdir()
    resumed = make_trainer(tmp_path / "again", tiny_world, "model.dtype=float16", "estimator.name=single")
    resumed.learner.load_state_dict(t.learner.state_dict())  # what a resume loads from the checkpoint
    assert resumed.learner.scaler.get_scale() == 2.0 ** 119
    with pytest.raises(ConfigError, match="float16 with parallel.strategy fsdp"):
        load_config(None, ["model.dtype=float16", "parallel.strategy=fsdp"])


def test_ttrl_votes_over_more_samples_than_it_trains_on(tmp_path, tiny_world):
    """estimator.votes (TTRL: vote over 64, train on 32): the estimator reads `votes` rollouts per
    prompt, the update and rewards the first G, which are the same rollouts a run without votes
    trains on (each sample has its own stream)."""
    common = ("estimator.name=majority_vote", "generation.num_generations=4", "generation.temperature=1.5")
    plain = make_trainer(tmp_path, tiny_world, *common).step(0)
    (tmp_path / "votes").mkdir()
    voting = make_trainer(tmp_path / "votes", tiny_world, *common, "estimator.votes=16")
    read, estimator = [], voting.estimator

    class Reading:  # the run's own estimator, noting how many rollouts of each prompt it is given
        needs_anchor = False

        def __call__(self, groups, anchor):
            read.append([len(g.completions) for g in groups])
            return estimator(groups, anchor)

    voting.estimator = Reading()
    voted = voting.step(0)
    assert read == [[16] * 4]  # the vote read 16 rollouts of each of the step's 4 prompts
    assert [r["completion"] for r in voted.samples] == [r["completion"] for r in plain.samples]  # 4 per prompt
    assert voted.metrics["groups/scored"] == 4 and voted.metrics["completion/mean_length"] > 0
    with pytest.raises(ConfigError, match="estimator.votes above generation.num_generations with algorithm sft"):
        load_config(None, ["algorithm=sft", "estimator.name=majority_vote", "estimator.votes=16"])


def test_the_run_loop_owns_the_trainer_and_its_old_names_still_work_with_a_deprecation_warning(tmp_path, tiny_world):
    """Trainer.train / save / restore / step_done were the loop's before it owned the trainer: they
    go to one loop per trainer, so a restore then a train continues the restored run."""
    from cat.run.loop import RunLoop

    t = make_trainer(tmp_path / "a", tiny_world)
    with pytest.warns(DeprecationWarning, match=r"Trainer.step_done is the run loop's: loop = RunLoop\(trainer\)"):
        t.step_done = 1
    with pytest.warns(DeprecationWarning, match=r"Trainer.save\(\) is the run loop's"):
        path = t.save()
    assert t._loop.step_done == 1 and t._loop.trainer is t
    fresh = make_trainer(tmp_path / "b", tiny_world)
    with pytest.warns(DeprecationWarning, match=r"Trainer.restore\(path\) is the run loop's"):
        fresh.restore(path)
    with pytest.warns(DeprecationWarning):
        assert fresh.step_done == 1
    loop = RunLoop(make_trainer(tmp_path / "c", tiny_world))
    loop.restore(path)
    assert loop.step_done == 1 and loop.state_dict()["step"] == 1


def test_more_prompts_per_step_than_prompts_is_said_and_each_step_still_holds_them_all(tmp_path, tiny_world, caplog):
    """Six prompts a step from four: a warning names both numbers; a step takes every prompt once
    and two of them twice, as separate groups."""
    with caplog.at_level("WARNING"):
        trainer = make_trainer(tmp_path, tiny_world, "data.limit=4", "run.prompts_per_step=6")
    assert "run.prompts_per_step 6 is more than the 4 training prompts" in caplog.text
    batch = trainer.order.batch(0)
    assert len(batch) == 6 and set(batch) == {0, 1, 2, 3}
    trainer.close()


def test_a_failed_rollout_thread_does_not_cost_the_checkpoint_before_it(tmp_path, tiny_world, caplog):
    """One process: the rollout thread making step 2's experience raised while step 1's
    checkpoint waited for it. The checkpoint's state is taken without that experience (so the
    update is saved), the failure is logged, and the error stops the run at step 2."""
    from cat.run.trainer import _Timer

    class Failed:  # the rollout thread's handle, its work having raised
        def result(self):
            raise RuntimeError("the engine died")

    trainer = make_trainer(tmp_path, tiny_world)
    trainer._ahead = Failed()
    with caplog.at_level("WARNING"):
        assert trainer.ahead_state() == {}
    assert "the rollout thread failed (RuntimeError: the engine died)" in caplog.text and trainer._ahead is None
    with pytest.raises(RuntimeError, match="the engine died"):
        trainer._take_ahead(1, _Timer())
    trainer.close()

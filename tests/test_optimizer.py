"""``optim.name: adamw_8bit``: bitsandbytes' AdamW8bit on the CPU, as a run uses it.

Its moments are 8-bit (a quarter of AdamW's fp32 state, which ``cat-rl plan`` models), it trains,
a checkpoint resumes it exactly, and what it cannot do (FSDP's sharded tensors, float64) or lacks
(the package) is said before a model loads."""

import sys

import pytest
import torch
from test_trainer import checkpoint_after_first_step, make_trainer, params
from transformers import AutoConfig

from cat.config import load_config
from cat.errors import ConfigError
from cat.run.learner import build_optimizer
from cat.run.loop import RunLoop
from cat.tools.plan import architecture, plan

pytest.importorskip("bitsandbytes")


def state_bytes(optimizer) -> int:
    """The optimizer state's tensors, less the quantization maps that every 8-bit tensor's state
    points to (256 values; one map, shared)."""
    return sum(v.numel() * v.element_size() for state in optimizer.state.values() for k, v in state.items()
               if torch.is_tensor(v) and not k.startswith("qmap") and k != "step")


def test_the_8bit_state_is_a_quarter_of_adamws_and_the_plan_says_so(tmp_path, tiny_world):
    full = make_trainer(tmp_path, tiny_world)
    small = make_trainer(tmp_path, tiny_world, "optim.name=adamw_8bit")
    before = params(small)
    full.step(0), small.step(0)
    moved = params(small) - before
    assert torch.isfinite(moved).all() and moved.abs().max() > 0
    assert {v.dtype for state in small.optimizer.state.values() for k, v in state.items()
            if k in ("state1", "state2") and v.numel() >= 4096} == {torch.uint8}
    measured, adamw = state_bytes(small.optimizer), state_bytes(full.optimizer)
    assert 0.24 < measured / adamw < 0.27, (measured, adamw)
    rows = dict(plan(small.config, architecture(AutoConfig.from_pretrained(tiny_world / "model"))))
    planned = rows["AdamW8bit state (bitsandbytes: 2 moments in 8 bits, block scales)"]
    # the plan counts every tensor at 8 bits; bitsandbytes keeps the norms' few (under 4,096 each) in fp32
    assert planned == pytest.approx(measured, rel=0.01)


def test_an_8bit_run_learns_and_resumes_from_a_checkpoint_exactly(tmp_path, tiny_world):
    """Two steps straight through against one step, a checkpoint, and a fresh trainer that
    restores it and takes the second step: the same weights bit for bit (the 8-bit moments and
    their block scales come back whole)."""
    straight = make_trainer(tmp_path, tiny_world, "optim.name=adamw_8bit", "optim.lr=1e-3")
    path = checkpoint_after_first_step(straight)
    second = straight.step(1).metrics
    resumed = make_trainer(tmp_path, tiny_world, "optim.name=adamw_8bit", "optim.lr=1e-3")
    RunLoop(resumed).restore(path)
    again = resumed.step(1).metrics
    assert torch.equal(params(resumed), params(straight))
    assert again["loss"] == second["loss"] and again["grad_norm"] == second["grad_norm"]


@pytest.mark.parametrize("override,what", [("parallel.strategy=fsdp", "parallel.strategy fsdp"),
                                           ("model.dtype=float64", "model.dtype float64")])
def test_what_the_8bit_optimizer_cannot_take_is_refused_at_load(override, what):
    with pytest.raises(ConfigError, match=f"optim.name adamw_8bit with {what} is not supported"):
        load_config(None, ["optim.name=adamw_8bit", override])


def test_without_bitsandbytes_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    optim = load_config(None, ["optim.name=adamw_8bit"]).optim
    with pytest.raises(ConfigError, match=r"optim.name adamw_8bit needs bitsandbytes: pip install 'cat-rl\[bnb\]'"):
        build_optimizer(optim, [torch.nn.Parameter(torch.zeros(2))])


def test_a_checkpoint_is_not_resumed_under_another_optimizer(tmp_path, tiny_world):
    path = checkpoint_after_first_step(make_trainer(tmp_path, tiny_world, "optim.name=adamw_8bit"))
    with pytest.raises(ConfigError, match=r"optimizer state is adamw_8bit's and this run has optim.name=adamw: "
                                          r"resume with optim.name=adamw_8bit"):
        RunLoop(make_trainer(tmp_path, tiny_world)).restore(path)


def test_the_memory_check_and_the_sync_buckets_are_not_part_of_what_a_run_is():
    from cat.config import dump_config
    from cat.tools.train import same_run

    old = dump_config(load_config(None, []))
    assert same_run(old, dump_config(load_config(None, ["run.memory_check=false", "run.memory_gib=3",
                                                        "generation.weight_sync_bucket_mb=64"])))
    assert not same_run(old, dump_config(load_config(None, ["optim.name=adamw_8bit"])))

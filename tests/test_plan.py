"""``cat-rl plan``: the memory plan's static parts equal the tensors a real run holds."""

from conftest import ROOT
from test_trainer import make_trainer
from transformers import AutoConfig

from cat.tools.cli import main
from cat.tools.plan import architecture, plan


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def test_plan_matches_a_real_learner_after_an_update(tmp_path, tiny_world):
    t = make_trainer(tmp_path, tiny_world, "grpo.beta=0.04")
    t.step(0)
    arch = architecture(AutoConfig.from_pretrained(tiny_world / "model"))
    assert arch.parameters == sum(p.numel() for p in t.policy.parameters())
    rows = dict(plan(t.config, arch))
    grads = [p.grad for p in t.policy.parameters() if p.grad is not None]
    moments = [v for state in t.optimizer.state.values() for k, v in state.items() if k in ("exp_avg", "exp_avg_sq")]
    assert rows["policy master weights (fp32)"] == nbytes(t.policy.parameters())
    assert rows["gradients (fp32)"] == nbytes(grads) and len(grads) == len(list(t.policy.parameters()))
    assert rows["AdamW state (fp32, 2 moments)"] == nbytes(moments)
    assert rows["pi_0, frozen (float32)"] == nbytes(t.initial_policy.parameters())
    t.config.parallel.strategy = "fsdp"  # the trained state sharded over 2 processes, pi_0 whole
    sharded = dict(plan(t.config, arch, processes=2))
    assert sharded["AdamW state (fp32, 2 moments, 1/2 (FSDP))"] == nbytes(moments) / 2
    assert sharded["pi_0, frozen (float32)"] == rows["pi_0, frozen (float32)"]


def test_lora_plan_matches_a_real_lora_learner(tmp_path, tiny_world):
    t = make_trainer(tmp_path, tiny_world, "model.lora.r=8", "model.lora.target_modules=[q_proj,v_proj,down_proj]")
    t.step(0)
    arch = architecture(AutoConfig.from_pretrained(tiny_world / "model"))
    rows = plan(t.config, arch)
    adapter = [p for p in t.policy.parameters() if p.requires_grad]
    base = [p for p in t.policy.parameters() if not p.requires_grad]
    moments = [v for state in t.optimizer.state.values() for k, v in state.items() if k in ("exp_avg", "exp_avg_sq")]
    assert [size for _, size in rows[:4]] == [nbytes(base), nbytes(adapter), nbytes(p.grad for p in adapter), nbytes(moments)]
    assert not any(name.startswith("pi_0") for name, _ in rows)  # the base is pi_0
    assert {n.split(".")[-4] for n, p in t.policy.named_parameters() if p.requires_grad} == {"q_proj", "v_proj", "down_proj"}


def test_plan_cli_for_a_config_and_its_errors(tiny_world, capsys):
    config = str(ROOT / "experiments" / "tiny_arith_cat.yaml")
    assert main(["plan", config, "--processes", "2", f"model.name_or_path={tiny_world / 'model'}",
                 "generation.backend=vllm", "model.dtype=bfloat16"]) == 0
    out = capsys.readouterr().out
    assert "2 process(es)" in out and "vLLM KV cache, a whole step at once (8 prompts x 8" in out
    assert "AdamW state" in out and "total" in out
    assert main(["plan", config, "model.name_or_path=/nonexistent/model"]) == 2
    assert "error: cannot read the architecture of '/nonexistent/model'" in capsys.readouterr().err
    assert main(["plan", config, "--processes", "0"]) == 2
    assert "--processes must be at least 1" in capsys.readouterr().err


def test_tied_output_layer_is_counted_once():
    from transformers import Qwen3Config

    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=1000)
    tied = architecture(Qwen3Config(**small, tie_word_embeddings=True)).parameters
    untied = architecture(Qwen3Config(**small, tie_word_embeddings=False)).parameters
    assert untied - tied == 1000 * 64

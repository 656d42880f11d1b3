"""``cat-rl plan``: the memory plan's static parts equal the tensors a real run holds."""

import pytest
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
    assert "error: model '/nonexistent/model': no model folder at /nonexistent/model" in capsys.readouterr().err
    assert main(["plan", config, "--processes", "0"]) == 2
    assert "--processes must be at least 1" in capsys.readouterr().err


def test_tied_output_layer_is_counted_once():
    from transformers import Qwen3Config

    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=1000)
    tied = architecture(Qwen3Config(**small, tie_word_embeddings=True)).parameters
    untied = architecture(Qwen3Config(**small, tie_word_embeddings=False)).parameters
    assert untied - tied == 1000 * 64


def _memory_plan():
    import importlib.util

    spec = importlib.util.spec_from_file_location("memory_plan", ROOT / "benchmarks" / "memory_plan.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_gpu_configs_fit_the_hardware_they_name_with_room_for_activations():
    """Each paper config that names its hardware (benchmarks/memory_plan.py's STATED, from the
    configs' headers) fits it with at least 10% of each GPU left for activations; the full 8B
    fine-tune on one 80 GB GPU does not, and the refusal names the settings that would shrink it."""
    from cat.config import load_config
    from cat.tools.plan import GB, HEADROOM, fit

    bench = _memory_plan()
    for name, model_config, processes, gib in bench.STATED:
        config = load_config(ROOT / "experiments" / name, [])
        verdict = fit(config, architecture(model_config), processes=processes, capacity=int(gib * GB),
                      where=f"{gib} GiB", gpu=True)
        assert verdict.fits and verdict.need <= (1 - HEADROOM) * verdict.capacity, (name, verdict.line())
    full = load_config(ROOT / "experiments" / "math500_llama31_8b_cat.yaml", [])
    verdict = fit(full, architecture(bench.LLAMA31_8B), processes=1, capacity=int(bench.H100 * GB), where="an H100",
                  gpu=True)
    assert not verdict.fits
    line = verdict.line()
    assert line.startswith("does not fit an H100: the plan needs 162.") and "turn a knob: model.lora" in line
    assert "parallel.strategy=fsdp on more processes" in line and "optim.name=adamw_8bit" in line


def test_sleep_mode_is_planned_as_the_larger_phase_and_offered_as_a_knob():
    """generation.vllm_sleep frees the engine's share through the update and the gradients while
    the engine generates: the need is the larger of the two phases. Qwen3-4B CaT on one H100 with
    the 8-bit optimizer fits with sleep mode and not without it, whose refusal names it."""
    from cat.config import load_config
    from cat.tools.plan import GB, fit

    bench = _memory_plan()
    config_path = ROOT / "experiments" / "math500_qwen3_4b_cat.yaml"

    def verdict(*overrides):
        config = load_config(config_path, ["optim.name=adamw_8bit", *overrides])
        return config, fit(config, architecture(bench.QWEN3_4B), processes=1, capacity=int(bench.H100 * GB),
                           where="an H100", gpu=True)

    awake_config, awake = verdict()
    asleep_config, asleep = verdict("generation.vllm_sleep=true")
    rows = dict(plan(asleep_config, architecture(bench.QWEN3_4B)))
    share = int(asleep_config.generation.vllm_gpu_memory_utilization * asleep.capacity)
    update = sum(b for name, b in rows.items() if not name.startswith("vLLM"))
    freed = sum(b for name, b in rows.items() if name.startswith(("gradients", "logits of", "log-prob chunks")))
    assert asleep.need == max(update, update - freed + share) < awake.need == update + share
    assert asleep.fits and not awake.fits
    assert "generation.vllm_sleep=true (the engine's 27.7 GiB are released" in awake.line()
    assert "vllm_sleep" not in asleep.line()


def test_plan_cli_says_whether_a_config_fits_a_gpu(tiny_world, capsys):
    config = str(ROOT / "experiments" / "tiny_arith_cat.yaml")
    model = f"model.name_or_path={tiny_world / 'model'}"
    assert main(["plan", config, model, "--gpu-memory", "80"]) == 0
    assert "fits a GPU of 80 GiB (80.0 GiB a process) with 100% to spare" in capsys.readouterr().out
    assert main(["plan", config, model, "--gpu-memory", "0.01"]) == 1
    out = capsys.readouterr().out
    assert "does not fit a GPU of 0.01 GiB" in out and "turn a knob: model.lora" in out
    assert " MiB a process" in out and "0.0 GiB" not in out  # a tiny model's amounts in MiB, not rounded to 0
    assert main(["plan", config, model, "--gpu-memory", "-1"]) == 2
    assert "--gpu-memory must be a positive number of GiB, got -1" in capsys.readouterr().err


def test_training_refuses_a_run_its_plan_does_not_fit_before_anything_loads(tmp_path, tiny_world):
    from conftest import cli

    run_dir = tmp_path / "run"
    out = cli("train", str(ROOT / "experiments" / "tiny_arith_cat.yaml"), f"model.name_or_path={tiny_world / 'model'}",
              "run.memory_gib=0.001", "--output-dir", str(run_dir), "--no-progress")
    assert out.returncode == 2, out.stderr[-2000:]
    assert "memory: does not fit run.memory_gib: the plan needs" in out.stderr
    assert "turn a knob: model.lora" in out.stderr and "(run.memory_check=false starts it anyway)" in out.stderr
    assert not run_dir.exists()  # refused before the run directory was touched


def test_a_model_path_that_is_not_there_is_named_at_once_not_asked_of_the_hub(tmp_path, tiny_world, monkeypatch, capsys):
    """A path that can only be local (absolute, dot-relative, three parts, or under models/, where
    fetch-model puts its models) and is not there stops every command at once, naming the folder
    looked for and the working directory a relative one is read from: transformers would take it
    for a hub id and retry the network for half a minute. A folder fetch-model makes gets its
    command; a hub id (org/name) still goes to transformers."""
    from cat.errors import ConfigError
    from cat.models.load import resolve_path

    config = str(ROOT / "experiments" / "tiny_arith_cat.yaml")
    monkeypatch.chdir(tmp_path)
    assert main(["plan", config, "model.name_or_path=models/SmolLM2-135M-Instruct"]) == 2
    err = capsys.readouterr().err
    assert (f"model 'models/SmolLM2-135M-Instruct': no model folder at {tmp_path}/models/SmolLM2-135M-Instruct "
            f"(a relative model path is read from the working directory, {tmp_path}); "
            "cat-rl fetch-model smollm2 makes it") in err
    assert "huggingface.co" not in err
    assert main(["eval", config, "--model", "./models/SmolLM2-135M-Instruc", "eval.limit=2"]) == 2
    assert f"no model folder at {tmp_path}/models/SmolLM2-135M-Instruc" in capsys.readouterr().err
    (tmp_path / "weights.bin").write_text("")
    with pytest.raises(ConfigError, match="weights.bin is a file, not a model folder"):
        resolve_path(str(tmp_path / "weights.bin"))
    with pytest.raises(ConfigError, match="fetch-model qwen2.5-coder-0.5b --output /data/Qwen2.5-Coder-0.5B-Instruct makes it"):
        resolve_path("/data/Qwen2.5-Coder-0.5B-Instruct")
    run_dir = tmp_path / "run"
    assert main(["train", config, "model.name_or_path=runs/x/checkpoints/model", "--output-dir", str(run_dir),
                 "--no-progress"]) == 2
    assert "no model folder at" in capsys.readouterr().err and not run_dir.exists()
    assert resolve_path("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"  # a hub id
    assert resolve_path(str(tiny_world / "model")) == str(tiny_world / "model")

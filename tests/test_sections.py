"""Each teacher and engine is built from its own config section, not the whole tree (docs/python.md,
"Building the parts"): the judge from ``judge`` (or ``eval.judge``), the anchor from ``anchor``, a
rollout engine from ``generation``, each with the few scalars it needs. The old calls, with the
whole ``Config``, still work: they warn, say the new call, and build the same thing."""

import inspect

import pytest
from conftest import ROOT

import cat.generation
from cat.config import load_config
from cat.generation import generator_from_config
from cat.rewards.judge import Judge, judge_chat, judge_template
from cat.tasks.evaluate import grader_section
from cat.teacher.anchor import Anchor, anchor_template, build_anchor


@pytest.fixture
def engines(monkeypatch):
    """Every engine ``make_generator`` is asked for, as (backend, batch_size, the other options),
    while it still builds the real one."""
    asked, make = [], cat.generation.make_generator

    def record(backend, model, tokenizer, *, batch_size, compute_dtype=None, **options):
        asked.append((backend, batch_size, compute_dtype, options))
        return make(backend, model, tokenizer, batch_size=batch_size, compute_dtype=compute_dtype, **options)

    monkeypatch.setattr(cat.generation, "make_generator", record)
    return asked


def settings(tiny_world, *extra):
    """A config whose every setting these builders read is off its default, so a dropped one shows."""
    return load_config(ROOT / "experiments" / "tiny_arith_cat.yaml", [
        "model.dtype=float64", "run.seed=7", "generation.batch_size=5", "generation.vllm_gpu_memory_utilization=0.5",
        "generation.vllm_tensor_parallel_size=2", "generation.vllm_max_model_len=256",
        "generation.vllm_enforce_eager=true", f"judge.model={tiny_world / 'model'}", "judge.batch_size=3",
        "judge.max_new_tokens=9", "judge.max_retries=1", "judge.mode=all_criteria", "anchor.max_new_tokens=11",
        "anchor.temperature=0.5", "anchor.greedy=false", "anchor.max_context_tokens=300", *extra])


def test_the_new_signatures_name_the_section_not_the_config():
    for fn, section in [(generator_from_config, "generation"), (judge_chat, "judge"), (judge_template, "judge"),
                        (Judge.from_config, "judge"), (anchor_template, "anchor"), (Anchor.from_config, "anchor"),
                        (build_anchor, "anchor")]:
        assert next(iter(inspect.signature(fn).parameters)) == section, fn


def test_a_rollout_engine_from_the_whole_config_warns_and_is_the_same_engine(tiny_world, tiny_model, engines):
    model, tokenizer = tiny_model
    config = settings(tiny_world)
    new = generator_from_config(config.generation, model, tokenizer, dtype="float64", seed=7)
    with pytest.warns(DeprecationWarning, match=r"call generator_from_config\(config.generation, model, tokenizer, "
                                                r"dtype=config.model.dtype, seed=config.run.seed\)"):
        old = generator_from_config(config, model, tokenizer)
    with pytest.warns(DeprecationWarning):
        overridden = generator_from_config(config, model, tokenizer, batch_size=2)
    assert engines[0] == engines[1] == ("hf", 5, "float64", {
        "gpu_memory_utilization": 0.5, "tensor_parallel_size": 2, "seed": 7, "max_model_len": 256,
        "enforce_eager": True, "weight_sync_bucket_mb": 256, "sleep": False})
    assert engines[2][1] == 2 and overridden.batch_size == 2
    assert type(old) is type(new) and (old.batch_size, old.compute_dtype) == (new.batch_size, new.compute_dtype)


def test_a_judge_from_the_whole_config_warns_and_is_the_same_judge(tiny_world, engines, tmp_path):
    config = settings(tiny_world)
    new = Judge.from_config(config.judge, cache_path=tmp_path / "v.jsonl", generation=config.generation,
                            dtype=config.model.dtype, device=config.model.device, seed=config.run.seed)
    with pytest.warns(DeprecationWarning, match=r"call Judge.from_config\(config.judge, cache_path=\.\.\., "):
        old = Judge.from_config(config, tmp_path / "v.jsonl")
    assert engines[0] == engines[1] == ("hf", 3, "float64", {
        "gpu_memory_utilization": 0.5, "tensor_parallel_size": 2, "seed": 7, "max_model_len": 256,
        "enforce_eager": True, "weight_sync_bucket_mb": 256, "sleep": False})
    for judge in (old, new):
        assert judge.backend.name == str(tiny_world / "model") and judge.cache.path == tmp_path / "v.jsonl"
    assert (old.template.source, old.conversation_template.source, old.max_new_tokens, old.max_retries) == \
           (new.template.source, new.conversation_template.source, 9, 1)
    assert new.template.source.endswith("judge_all_criteria.txt")
    with pytest.warns(DeprecationWarning, match=r"call judge_chat\(config.judge, generation=config.generation"):
        chat = judge_chat(config)
    assert chat.name == str(tiny_world / "model") and engines[2] == engines[0]


def test_the_old_evaluation_flag_picks_the_grader_section_as_grader_section_does(tiny_world):
    config = settings(tiny_world, "eval.judge.backend=openai", "eval.judge.base_url=http://127.0.0.1:9/v1",
                      "eval.judge.model=grader", "eval.judge.max_new_tokens=17")
    assert grader_section(config) is config.eval.judge and grader_section(settings(tiny_world)) is not None
    assert grader_section(settings(tiny_world)).model == str(tiny_world / "model")
    new = Judge.from_config(grader_section(config), cache_path=None, generation=config.generation,
                            dtype=config.model.dtype, device=config.model.device, seed=config.run.seed)
    with pytest.warns(DeprecationWarning, match="grader_section"):
        old = Judge.from_config(config, None, evaluation=True)
    assert old.backend.label == new.backend.label == "judge endpoint http://127.0.0.1:9/v1 (model grader)"
    assert old.max_new_tokens == new.max_new_tokens == 17 and old.cache.path is None


def test_templates_from_the_whole_config_warn_and_are_the_same(tiny_world):
    config = settings(tiny_world, "anchor.include_question=true", "anchor.template=math_synthesis_with_question")
    for conversation in (False, True):
        with pytest.warns(DeprecationWarning, match=r"call judge_template\(config.judge, conversation=\.\.\.\)"):
            old = judge_template(config, conversation=conversation)
        assert old.source == judge_template(config.judge, conversation=conversation).source
    with pytest.warns(DeprecationWarning, match=r"call anchor_template\(config.anchor\)"):
        old = anchor_template(config)
    assert old.source == anchor_template(config.anchor).source and "question" in old.placeholders
    with pytest.warns(DeprecationWarning):  # the old parameter's name, config=, still reaches it
        assert anchor_template(config=config).source == old.source


def _same_anchor(old: Anchor, new: Anchor) -> None:
    assert old.params == new.params and old.template.source == new.template.source
    assert (old.include_question, old.max_context_tokens, old.shares_policy_tokenizer, old.chat.name) == \
           (new.include_question, new.max_context_tokens, new.shares_policy_tokenizer, new.chat.name)


def test_an_anchor_from_the_whole_config_warns_and_is_the_same_anchor(tiny_world, tiny_model):
    from cat.generation.chat import LocalChat
    from cat.generation.hf import HFGenerator

    model, tokenizer = tiny_model
    config = settings(tiny_world)
    engine = HFGenerator(model, tokenizer, batch_size=4)
    chat = LocalChat(engine, tokenizer, name="pi_0")
    new = Anchor.from_config(config.anchor, chat, tokenizer, seed=7, context_length=512)
    with pytest.warns(DeprecationWarning, match=r"call Anchor.from_config\(config.anchor, chat, tokenizer, "
                                                r"seed=config.run.seed, context_length=\.\.\.\)"):
        old = Anchor.from_config(config, chat, tokenizer, context_length=512)
    _same_anchor(old, new)
    assert new.params.seed == 7 and new.params.max_new_tokens == 11 and not new.params.greedy
    assert new.max_context_tokens == 300

    new = build_anchor(config.anchor, config.model, tokenizer, seed=7, device=model.device,
                       pi0_generator=lambda: engine, make_generator=None)
    with pytest.warns(DeprecationWarning, match=r"call build_anchor\(config.anchor, config.model, policy_tokenizer, "
                                                r"seed=config.run.seed"):
        old = build_anchor(config, tokenizer, device=model.device, pi0_generator=lambda: engine, make_generator=None)
    _same_anchor(old, new)
    assert new.scorer is old.scorer is engine and new.chat.name.startswith("pi_0 (")


def test_the_deprecation_is_logged_once_per_builder(tiny_world, caplog):
    import cat.config

    config = settings(tiny_world)
    cat.config._WARNED.discard("anchor_template")
    with pytest.warns(DeprecationWarning), caplog.at_level("WARNING", logger="cat.config"):
        anchor_template(config)
        anchor_template(config)
    said = [r.getMessage() for r in caplog.records if r.name == "cat.config"]
    assert len(said) == 1 and "anchor_template is built from its own config section" in said[0]


def test_a_rubric_proposal_template_from_the_whole_config_warns_and_is_the_same_template(tiny_world):
    from cat.rewards.criteria import proposal_template

    config = settings(tiny_world, "rubric.include_question=true", "rubric.template=rubric_proposal_with_question")
    new = proposal_template(config.rubric)
    with pytest.warns(DeprecationWarning, match=r"call proposal_template\(config.rubric\)"):
        old = proposal_template(config)
    assert old.placeholders == new.placeholders and "question" in new.placeholders

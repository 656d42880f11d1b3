"""The OpenAI-compatible judge and anchor against real servers on 127.0.0.1, through the real
``openai`` client: ``transformers serve`` with the tiny rubric model, and ``ScriptedServer``, a
small OpenAI-compatible HTTP server whose answers a test scripts (a rate limit, a 400, a model
that answers "banana") and which counts the requests it gets. The tests start the servers and
stop them."""

import email.utils
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import ROOT, cli, free_port, openai_server, run_cli

from cat.config import load_config
from cat.errors import TeacherError
from cat.generation.chat import retry_after_s
from cat.rewards.judge import PROBE, Judge

KEY = "secret-test-key-7f3a"


@pytest.fixture(scope="module")
def rubric_world():
    from cat.worlds import rubric as tiny_rubric

    return tiny_rubric.ensure_built()


@pytest.fixture(scope="module")
def server(rubric_world):
    with openai_server(str(rubric_world / "model")) as (base_url, model):
        yield base_url, model


def http_config(base_url, model, *extra):
    return load_config(None, ["judge.backend=openai", f"judge.base_url={base_url}", f"judge.model={model}",
                              "judge.api_key_env=CAT_TEST_JUDGE_KEY", "judge.max_retries=1", "judge.backoff_s=0.1",
                              "judge.max_concurrency=4", *extra])


class ScriptedServer:
    """An OpenAI-compatible server on 127.0.0.1 (``/v1/models``, ``/v1/chat/completions``) whose
    chat answers come from ``answer(n, prompt) -> (status, headers, body)`` for the n-th chat
    request (0-based); ``chat`` records (time, prompt) of each. A real server on a real socket,
    so the real ``openai`` client meets real status codes, headers and bodies."""

    def __init__(self, answer):
        self.answer, self.chat, self.lock = answer, [], threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def send(self, status, headers, body):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802 - the http.server hook's name
                self.send(200, {}, {"object": "list", "data": [{"id": "tiny", "object": "model", "created": 0,
                                                                 "owned_by": "test"}]})

            def do_POST(self):  # noqa: N802
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = request["messages"][-1]["content"]
                with server.lock:
                    n = len(server.chat)
                    server.chat.append((time.monotonic(), prompt))
                self.send(*server.answer(n, prompt))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def reply(text):
    """A 200 chat completion whose message is ``text``."""
    return 200, {}, {"id": "c", "object": "chat.completion", "created": 0, "model": "tiny",
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


@pytest.fixture
def scripted(monkeypatch):
    """``scripted(answer)``: a started ScriptedServer, stopped after the test; the judge's key set."""
    monkeypatch.setenv("CAT_TEST_JUDGE_KEY", KEY)
    servers = []

    def start(answer):
        servers.append(ScriptedServer(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def judge_of(config, cache_path=None):
    """The judge ``config.judge`` names, built as the trainer builds the reward's judge."""
    return Judge.from_config(config.judge, cache_path=cache_path, generation=config.generation, dtype=config.model.dtype,
                             device=config.model.device, seed=config.run.seed)


def fast_judge(server, *extra):
    """A judge on ``server`` with waits short enough for a test."""
    return judge_of(http_config(server.base_url, "tiny", "judge.backoff_s=0.05", *extra))


ITEM = ("ones 7+8=15", ["The ones column is 7+8=15."])


def test_retry_after_is_honoured(scripted):
    """A 429 with Retry-After: 1 is retried after a second, not after the 0.05 s backoff."""
    server = scripted(lambda n, _: (429, {"Retry-After": "1"}, {"error": {"message": "slow down"}}) if n == 0
                      else reply("<verdict>yes</verdict>"))
    verdicts, _ = fast_judge(server).judge([ITEM])
    assert verdicts == [[True]] and len(server.chat) == 2
    assert server.chat[1][0] - server.chat[0][0] >= 0.95


def test_retry_after_beyond_the_wait_budget_stops_at_once_and_says_so(scripted):
    server = scripted(lambda n, _: (429, {"Retry-After": "120"}, {"error": {"message": "quota exhausted"}}))
    judge = fast_judge(server, "judge.max_retries=3", "judge.max_wait_s=5")
    start = time.monotonic()
    with pytest.raises(TeacherError) as error:
        judge.judge([ITEM])
    message = str(error.value)
    assert len(server.chat) == 1 and time.monotonic() - start < 3
    assert "HTTP 429" in message and "quota exhausted" in message and "retry after 120 s" in message
    assert "judge.max_wait_s" in message


def test_retry_after_reads_seconds_and_http_dates():
    now = 1_700_000_000.0
    assert retry_after_s({"retry-after": "7"}, now) == 7.0
    assert retry_after_s({"retry-after-ms": "250", "retry-after": "7"}, now) == 0.25
    assert retry_after_s({"retry-after": email.utils.formatdate(now + 30, usegmt=True)}, now) == 30.0
    assert retry_after_s({"retry-after": email.utils.formatdate(now - 30, usegmt=True)}, now) == 0.0  # past: at once
    assert retry_after_s({"retry-after": "soon"}, now) is None and retry_after_s({}, now) is None


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_a_client_error_fails_at_once_with_status_endpoint_and_body(scripted, status):
    """A 4xx other than 408/409/429 is the request's fault: one request, and an error that names
    the status, the endpoint and model, and the start of the body, with the key cut out."""
    body = {"error": {"message": f"model 'tiny' is not served here (key {KEY})", "detail": "x" * 500}}
    server = scripted(lambda n, _: (status, {}, body))
    judge = fast_judge(server, "judge.max_retries=3")
    with pytest.raises(TeacherError) as error:
        judge.judge([ITEM])
    message = str(error.value)
    assert len(server.chat) == 1
    assert f"HTTP {status}" in message and server.base_url in message and "(model tiny)" in message
    assert "model 'tiny' is not served here" in message and KEY not in message
    excerpt = message.split(f"HTTP {status}", 1)[1]
    assert "x" * 200 not in excerpt  # the body is cut to 200 characters


def test_a_key_with_a_trailing_newline_works_and_no_form_of_it_is_ever_shown(scripted, monkeypatch):
    """A key read from a .env file often ends in a newline, which httpx refuses in a header,
    quoting the header (the key escaped) in its error. The key is stripped, and every form of it,
    and any bearer token, is cut out of what a message shows."""
    server = scripted(lambda n, _: reply("<verdict>yes</verdict>"))
    monkeypatch.setenv("CAT_TEST_JUDGE_KEY", KEY + "\n")
    judge = fast_judge(server)
    assert judge.judge([ITEM])[0] == [[True]]
    chat = judge.backend.chat
    for leaked in (f"Illegal header value b'Bearer {KEY}\\n'", f"Authorization: Bearer {KEY}", repr(KEY)):
        assert KEY not in chat._excerpt(leaked), leaked


def test_server_errors_are_retried_with_a_growing_backoff(scripted):
    server = scripted(lambda n, _: (503, {}, {"error": "overloaded"}) if n < 2 else reply("<verdict>no</verdict>"))
    judge = fast_judge(server, "judge.max_retries=3")
    verdicts, _ = judge.judge([ITEM])
    times = [t for t, _ in server.chat]
    assert verdicts == [[False]] and len(times) == 3 and judge.backend.errors == 2
    assert times[1] - times[0] >= 0.05 and times[2] - times[1] >= 0.1


@pytest.mark.parametrize("status", [408, 409, 429])
def test_the_retried_client_errors_are_408_409_and_429(scripted, status):
    """The three 4xx statuses that say "not now" (timeout, conflict, rate limit) are retried, as 5xx are."""
    server = scripted(lambda n, _: (status, {}, {"error": {"message": "not now"}}) if n == 0
                      else reply("<verdict>yes</verdict>"))
    judge = fast_judge(server, "judge.max_retries=1")
    verdicts, _ = judge.judge([ITEM])
    assert verdicts == [[True]] and len(server.chat) == 2 and judge.backend.errors == 1


def test_reasks_and_retries_share_one_budget_per_verdict(scripted):
    """A 503 then an unparsable reply, over and over: the transport's retries and the judge's
    re-asks draw on one budget, max_retries + 1 requests per verdict, not their product."""
    server = scripted(lambda n, _: (503, {}, {"error": "busy"}) if n % 2 == 0 else reply("banana"))
    judge = fast_judge(server, "judge.max_retries=2")
    verdicts, stats = judge.judge([ITEM])
    assert verdicts == [[None]] and stats["judge/failures"] == 1
    assert len(server.chat) == 3
    # the tokens are the endpoint's own count (1 + 1 per answered request), of the replies that came back
    assert stats["judge/prompt_tokens"] == stats["judge/completion_tokens"] == 1
    assert stats["judge/parse_rate"] == 0 and stats["judge/asked"] == 1


@pytest.fixture
def judge_warnings():
    """The messages ``cat.rewards.judge`` logs at WARNING during the test (a handler on that logger
    itself: ``cat-rl`` run in-process turns propagation to the root logger off)."""
    messages = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("cat.rewards.judge")
    logger.addHandler(handler)
    yield messages
    logger.removeHandler(handler)


@pytest.mark.parametrize("mode", ["per_criterion", "all_criteria"])
def test_a_judge_whose_first_eight_replies_are_not_verdicts_is_not_asked_again(scripted, judge_warnings, mode):
    """Eight verdicts, every reply "banana": one request each, not max_retries + 1 each (32), and
    one warning that names the judge, quotes the reply and gives the fix. Seven unreadable
    replies can still be chance, and are asked again."""
    server = scripted(lambda n, _: reply("banana"))
    judge = fast_judge(server, "judge.max_retries=3", f"judge.mode={mode}")
    verdicts, stats = judge.judge([(f"ones {n}+8", ITEM[1]) for n in range(8)])
    assert verdicts == [[None]] * 8 and stats["judge/failures"] == 8
    assert len(server.chat) == 8
    [warning] = judge_warnings
    assert server.base_url in warning and "'banana'" in warning and "judge.template" in warning
    assert "never read as 'no'" in warning
    judge.judge([(f"tens {n}+8", ITEM[1]) for n in range(7)])
    assert len(server.chat) == 8 + 7 * 4


def test_one_verdict_in_the_first_round_keeps_the_reasks(scripted):
    """A judge that answers one of eight as asked does follow the template: the other seven are re-asked."""
    server = scripted(lambda n, prompt: reply("<verdict>yes</verdict>" if "ones 0+8" in prompt else "banana"))
    judge = fast_judge(server, "judge.max_retries=1")
    verdicts, stats = judge.judge([(f"ones {n}+8", ITEM[1]) for n in range(8)])
    assert verdicts[0] == [True] and stats["judge/failures"] == 7 and len(server.chat) == 8 + 7


def test_check_sends_a_chat_request_and_names_what_the_endpoint_answered(scripted):
    """An endpoint that lists its models but cannot chat fails the check, with the status and body."""
    server = scripted(lambda n, _: (404, {}, {"error": {"message": "The model `tiny` does not exist."}}))
    with pytest.raises(TeacherError, match=r"HTTP 404 .*The model `tiny` does not exist") as error:
        fast_judge(server).check()
    assert server.base_url in str(error.value) and len(server.chat) == 1


def test_a_judge_that_does_not_give_verdicts_fails_its_check(scripted):
    server = scripted(lambda n, _: reply("banana"))
    with pytest.raises(TeacherError) as error:
        fast_judge(server).check()
    message = str(error.value)
    assert server.base_url in message and "'banana'" in message and "judge.template" in message
    assert PROBE.criteria[0] in server.chat[0][1] and len(server.chat) == 1
    verdicts = scripted(lambda n, _: reply("The response says 4. <verdict>yes</verdict>"))
    fast_judge(verdicts).check()  # a judge that answers as asked passes, whatever its verdict


def test_a_banana_judge_stops_the_run_before_evaluation(scripted, tmp_path, rubric_world):
    """``cat-rl train`` on the tiny rubric world with a judge endpoint that answers every request
    with "banana": exit 2 at start, before the initial evaluation, naming the endpoint, the reply
    and the fix, after one request (it made 640, then blamed the answer format, after evaluating)."""
    server = scripted(lambda n, _: reply("banana"))
    run_dir = tmp_path / "run"
    out = run_cli("train", str(ROOT / "experiments" / "tiny_rubric_cat.yaml"), "--output-dir", str(run_dir),
                  "--no-progress", "judge.backend=openai", f"judge.base_url={server.base_url}", "judge.model=tiny",
                  "judge.api_key_env=CAT_TEST_JUDGE_KEY", timeout=120)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and KEY not in out.stderr + out.stdout
    assert server.base_url in out.stderr and "'banana'" in out.stderr and "judge.template" in out.stderr
    assert "evaluating" not in out.stderr + out.stdout
    assert len(server.chat) == 1
    assert not (run_dir / "eval.json").exists() and not (run_dir / "metrics.jsonl").exists()


def test_a_judge_that_fails_on_every_item_stops_at_preflight_naming_the_judge(scripted, tmp_path, rubric_world):
    """A judge that passes the check, then gives no usable verdict: the preflight stops the run
    (exit 2) and names the judge as the cause, not the answer format, after one request per
    verdict (judge.max_retries at its default, 3: it made four per verdict)."""
    server = scripted(lambda n, prompt: reply("<verdict>yes</verdict>" if PROBE.criteria[0] in prompt else "banana"))
    out = cli("train", str(ROOT / "experiments" / "tiny_rubric_cat.yaml"), "--output-dir", str(tmp_path / "run"),
              "--no-progress", "eval.path=null", "data.limit=8", "run.preflight_prompts=1", "generation.num_generations=2",
              "judge.backend=openai",
              f"judge.base_url={server.base_url}", "judge.model=tiny", "judge.api_key_env=CAT_TEST_JUDGE_KEY")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "the judge gave no usable verdict" in out.stderr and "judge.template" in out.stderr
    assert "'banana'" in out.stderr  # the judge's warning quotes its reply
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    criteria = 5  # the tiny rubric model proposes rubrics of five criteria
    assert len(server.chat) == 1 + 2 * criteria  # the check, then one request per (rollout, criterion) of one prompt


def test_an_anchor_endpoint_that_cannot_chat_stops_the_trainer_before_evaluation(scripted, tmp_path, rubric_world):
    from cat.run.trainer import Trainer

    server = scripted(lambda n, _: (400, {}, {"error": {"message": "max_tokens is too large"}}))
    config = load_config(ROOT / "experiments" / "tiny_arith_cat.yaml", [
        "anchor.backend=openai", f"anchor.base_url={server.base_url}", "anchor.model=tiny",
        "anchor.api_key_env=CAT_TEST_JUDGE_KEY", "anchor.backoff_s=0.05"])
    with pytest.raises(TeacherError, match=r"anchor endpoint .* \(model tiny\).*HTTP 400.*max_tokens is too large"):
        Trainer(config, tmp_path / "run", log=lambda *_: None)
    assert len(server.chat) == 1


@pytest.mark.parametrize(("attempts", "retries", "requests"), [(3, 3, 4), (5, 1, 5)])
def test_rubric_proposals_and_anchor_retries_share_one_budget(scripted, rubric_world, attempts, retries, requests):
    """An anchor endpoint that answers 503, then a reply that is no rubric, over and over: the
    proposer's new attempts and the endpoint's retries draw on one budget per proposal,
    max(rubric.max_attempts, anchor.max_retries + 1) requests, not their product (it made 6 and
    10 here: each attempt's 503 retried within a fresh budget of its own)."""
    from test_estimators import tiny_group

    from cat.models.load import load_tokenizer
    from cat.rewards.criteria import propose_rubrics
    from cat.teacher.anchor import build_anchor
    from cat.types import Reference

    # the check's request, then 503 and "banana" in turn
    server = scripted(lambda n, _: reply("OK") if n == 0 else (503, {}, {"error": "busy"}) if n % 2 else reply("banana"))
    config = load_config(ROOT / "experiments" / "tiny_rubric_cat.yaml", [
        "anchor.backend=openai", f"anchor.base_url={server.base_url}", "anchor.model=tiny",
        "anchor.api_key_env=CAT_TEST_JUDGE_KEY", "anchor.max_context_tokens=400", "anchor.backoff_s=0.01",
        f"anchor.max_retries={retries}", f"rubric.max_attempts={attempts}"])
    tokenizer = load_tokenizer(str(rubric_world / "model"))
    anchor = build_anchor(config.anchor, config.model, tokenizer, seed=config.run.seed, device=None,
                          pi0_generator=None, make_generator=None)
    group = tiny_group(tokenizer, ["ones 7+8=15 tens 4+3+1=08 so \\boxed{85}"], "47+38", gold="85")
    reference = Reference(text="ones 7+8=15 tens 4+3+1=08 so \\boxed{85}", answer="85", source="synthesis")
    rubrics, stats = propose_rubrics(anchor, [group], [reference], config.rubric, seed=0, anchor_settings=config.anchor)
    assert rubrics == [None] and stats["rubric/failures"] == 1
    assert len(server.chat) - 1 == requests == max(attempts, retries + 1)


@pytest.mark.parametrize("reward", [
    ["reward.name=math_equivalence", "estimator.name=majority_vote"],  # the evaluation's own judge
    ["reward.name=rubric", "rubric.source=dataset", "estimator.name=gold"],  # the reward's judge grades it too
])
def test_a_healthbench_judge_endpoint_that_cannot_chat_stops_the_trainer_before_evaluation(scripted, tmp_path,
                                                                                            rubric_world, reward):
    """HealthBench evaluations are graded by the judge: an endpoint answering 400 stops the
    Trainer's constructor after one request, not the initial evaluation after loading the policy."""
    from cat.run.trainer import Trainer

    server = scripted(lambda n, _: (400, {}, {"error": {"message": "max_tokens is too large"}}))
    healthbench = ROOT / "tests" / "fixtures" / "healthbench_sample.jsonl"
    config = load_config(None, [
        f"model.name_or_path={rubric_world / 'model'}", f"data.path={healthbench}", "data.format=healthbench",
        f"eval.path={healthbench}", *reward, "judge.backend=openai", f"judge.base_url={server.base_url}",
        "judge.model=tiny", "judge.api_key_env=CAT_TEST_JUDGE_KEY", "judge.backoff_s=0.05"])
    with pytest.raises(TeacherError, match=r"judge endpoint .* \(model tiny\).*HTTP 400.*max_tokens is too large"):
        Trainer(config, tmp_path / "run", log=lambda *_: None)
    assert len(server.chat) == 1


@pytest.mark.parametrize("separate", [True, False])
def test_the_evaluation_judge_is_separate_when_asked_and_recorded(scripted, tmp_path, rubric_world, separate):
    """``eval.judge`` grades HealthBench evaluations apart from the reward's judge (the paper's
    separate grader): its endpoint is checked before anything loads and receives the evaluation's
    verdict requests. Left unset, the reward's own judge grades, with a warning. The evaluation
    records which judge graded it."""
    from cat.run.trainer import Trainer

    server = scripted(lambda n, _: reply("<verdict>yes</verdict>"))
    healthbench = ROOT / "tests" / "fixtures" / "healthbench_sample.jsonl"
    grader = ["eval.judge.backend=openai", f"eval.judge.base_url={server.base_url}", "eval.judge.model=grader",
              "eval.judge.api_key_env=CAT_TEST_JUDGE_KEY"] if separate else []
    config = load_config(None, [
        f"model.name_or_path={rubric_world / 'model'}", f"data.path={healthbench}", "data.format=healthbench",
        f"eval.path={healthbench}", "eval.limit=2", "eval.num_samples=1", "eval.greedy=false",
        "generation.max_new_tokens=8", "reward.name=rubric", "rubric.source=dataset", "estimator.name=gold",
        f"judge.model={rubric_world / 'model'}", "judge.max_new_tokens=8", "judge.max_retries=0", *grader])
    logs = []
    trainer = Trainer(config, tmp_path / "run", log=logs.append)
    assert len(server.chat) == int(separate)  # the separate grader's probe, before any model loads
    result = trainer.evaluate()
    assert result["judge"] == {"model": "grader" if separate else str(rubric_world / "model"),
                               "backend": "openai" if separate else "hf", "is_reward_judge": not separate}
    assert (len(server.chat) > 1) == separate
    assert any("graded by the reward's own judge" in line for line in logs) == (not separate)


def test_http_judge_answers_through_a_real_server(server, tmp_path, monkeypatch):
    base_url, model = server
    monkeypatch.setenv("CAT_TEST_JUDGE_KEY", "secret-test-key")
    judge = judge_of(http_config(base_url, model), tmp_path / "verdicts.jsonl")
    judge.check()  # the tiny rubric model answers the probe as a judge
    response = "ones 7+8=15 tens 4+3+1=08 so \\boxed{85}"
    criteria = ["The ones column is 7+8=15.", "The final answer is 85.", "The final answer is 96.",
                "The tens column is 4+3+1=09."]
    verdicts, stats = judge.judge([(response, criteria)])
    assert stats["judge/calls"] >= 4 and all(v is not None for v in verdicts[0])
    # the same model judged in-process (greedy both ways) gives the same verdicts
    local = judge_of(load_config(None, [f"judge.model={model}"]))
    assert local.judge([(response, criteria)])[0] == verdicts
    again, stats = judge.judge([(response, criteria)])
    assert again == verdicts and stats["judge/cache_hits"] == 4 and stats["judge/calls"] == 0
    assert "secret-test-key" not in (tmp_path / "verdicts.jsonl").read_text()


def test_timeouts_are_retried_then_stop_with_the_endpoint_named(server, monkeypatch):
    base_url, model = server
    monkeypatch.setenv("CAT_TEST_JUDGE_KEY", "k")
    judge = judge_of(http_config(base_url, model, "judge.timeout_s=0.001"))
    with pytest.raises(TeacherError, match=base_url):
        judge.judge([("ones 7+8=15", ["The ones column is 7+8=15."])])
    assert judge.backend.errors == 2  # one try + one retry


def test_unreachable_endpoint_fails_before_training(tmp_path, rubric_world):
    port = free_port()  # nothing listens here
    out = cli("train", str(ROOT / "experiments" / "tiny_rubric_cat.yaml"), "--output-dir", str(tmp_path / "run"),
              "judge.backend=openai", f"judge.base_url=http://127.0.0.1:{port}/v1", "judge.model=tiny",
              "judge.backoff_s=0.05")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"judge endpoint http://127.0.0.1:{port}/v1 (model tiny) cannot be used: unreachable" in out.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_anchor_on_an_endpoint_synthesizes_and_refuses_token_scoring(server, rubric_world):
    """anchor.backend: openai points the teacher at a served model (here the tiny rubric model)."""
    from test_estimators import tiny_group

    from cat.errors import ConfigError
    from cat.models.load import load_tokenizer
    from cat.teacher.anchor import build_anchor
    from cat.teacher.estimators import build_estimator

    base_url, model = server
    config = load_config(ROOT / "experiments" / "tiny_arith_cat.yaml", [
        "anchor.backend=openai", f"anchor.base_url={base_url}", f"anchor.model={model}",
        "anchor.max_context_tokens=400", "anchor.max_retries=1", "anchor.backoff_s=0.1"])
    tokenizer = load_tokenizer(model)
    anchor = build_anchor(config.anchor, config.model, tokenizer, seed=config.run.seed, device=None,
                          pi0_generator=None, make_generator=None)
    texts = ["ones 7+8=15 tens 4+3+1=08 so \\boxed{85}"] * 3 + ["ones 7+8=14 tens 4+3+1=08 so \\boxed{84}"]
    group = tiny_group(tokenizer, texts, "47+38", gold="85")
    [synthesis] = anchor.synthesize([group])
    assert synthesis.text.strip() and synthesis.finish_reason in ("stop", "length")
    assert synthesis.prompt_tokens > 50 and synthesis.truncated_rollouts == 0
    with pytest.raises(ConfigError, match="local anchor"):
        build_estimator(config, "min_perplexity")([group], anchor)


def test_a_group_without_a_reference_is_counted_apart_from_rubrics_that_failed(scripted, rubric_world, caplog):
    """Two groups: one whose synthesis is empty (no rubric is asked for: rubric/no_reference) and
    one whose first proposal is no rubric and whose second is one. Nothing failed, nothing is
    warned about, and the proposer does not stop on the group it never asked about."""
    from test_estimators import tiny_group

    from cat.models.load import load_tokenizer
    from cat.rewards.criteria import propose_rubrics
    from cat.teacher.anchor import build_anchor
    from cat.types import Reference

    rubric = "<rubric>" + "".join(f"<criterion>point {k}</criterion>" for k in range(5)) + "</rubric>"
    server = scripted(lambda n, _: reply("OK") if n == 0 else reply("banana") if n == 1 else reply(rubric))
    config = load_config(ROOT / "experiments" / "tiny_rubric_cat.yaml", [
        "anchor.backend=openai", f"anchor.base_url={server.base_url}", "anchor.model=tiny",
        "anchor.api_key_env=CAT_TEST_JUDGE_KEY", "anchor.max_context_tokens=400", "rubric.max_attempts=2"])
    tokenizer = load_tokenizer(str(rubric_world / "model"))
    anchor = build_anchor(config.anchor, config.model, tokenizer, seed=config.run.seed, device=None,
                          pi0_generator=None, make_generator=None)
    groups = [tiny_group(tokenizer, ["so \\boxed{85}"], "47+38", gold="85") for _ in range(2)]
    references = [Reference(text="so \\boxed{85}", answer="85", source="synthesis"),
                  Reference(text="", answer=None, source="synthesis")]
    with caplog.at_level(logging.WARNING, logger="cat.rewards.criteria"):
        rubrics, stats = propose_rubrics(anchor, groups, references, config.rubric, seed=0, anchor_settings=config.anchor)
    assert rubrics[0] is not None and rubrics[1] is None
    assert stats["rubric/failures"] == 0 and stats["rubric/no_reference"] == 1 and stats["rubric/attempts"] == 2
    assert stats["rubric/parse_rate"] == 0.5 and not caplog.records  # one of two proposals parsed
    # the old call, with the whole Config, still works and says the new one
    with pytest.warns(DeprecationWarning, match=r"config.rubric, anchor_settings=config.anchor"):
        again, _ = propose_rubrics(anchor, groups, references, config, seed=0)
    assert again == rubrics

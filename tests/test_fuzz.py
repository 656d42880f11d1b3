"""Malformed input, generated and by hand, never ends in a traceback: configs, data files and
command lines each give a non-zero exit and one message saying what was wrong and where.

Every case fails before a model loads. ``cat.tools.cli.main`` runs in this process
(``conftest.cli``: an exception other than SystemExit comes back as exit 1 with its traceback on
stderr, which the checks refuse); a few cases run as real processes to prove the exit status and
the stderr a user sees. ``train`` is given an output directory under a file, so a case that turns
out to be valid still stops, at the run directory, before training."""

import json
import random
import subprocess
import sys

import pytest
from conftest import ROOT, cli

CAT = ROOT / "experiments" / "tiny_arith_cat.yaml"
CONFIG_TEXT = CAT.read_text()
GOOD_ROWS = "".join(json.dumps({"problem": f"{a}+{b}", "answer": str(a + b)}) + "\n" for a, b in [(1, 2), (30, 4), (5, 60)])


@pytest.fixture
def blocked(tmp_path):
    """An output directory that cannot be created (its parent is a file)."""
    (tmp_path / "afile").write_text("x")
    return str(tmp_path / "afile" / "run")


def assert_clean_failure(out, *needles) -> None:
    assert "Traceback" not in out.stderr, f"{out.args}\n{out.stderr[-3000:]}"
    assert out.returncode not in (0, 1), (out.args, out.returncode, out.stderr[-1000:])
    assert out.stderr.strip(), out.args
    for needle in needles:
        assert needle in out.stderr, (out.args, needle, out.stderr[-1000:])


# ---- configs -------------------------------------------------------------------------------------

CONFIGS = [  # (file content, what the message must say)
    (b"run: [\n", "not valid YAML"),
    (b"run:\n\tsteps: 3\n", "not valid YAML"),
    (b"run:\n  - 1\n", "run: Input should be a valid dictionary"),
    (b"- run\n- grpo\n", "must hold a mapping of sections, got list"),
    (b"just words\n", "must hold a mapping of sections, got str"),
    (b"run:\n  steps: many\n", "run.steps"),
    (b"run:\n  stepz: 3\n", "run.stepz: unknown key"),
    (b"optimizer:\n  lr: 1\n", "optimizer: unknown key"),
    (b"run:\n  steps: 3\nrun:\n  seed: 1\n", "key 'run' is given twice, on lines 1 and 3"),
    (b"grpo:\n  beta: 0.1\n  beta: 0.2\n", "key 'grpo.beta' is given twice, on lines 2 and 3"),
    (b"base: loop.yaml\n", "its bases form a cycle"),
    (bytes(random.Random(0).randrange(256) for _ in range(400)), "config file"),
    (b"\x00\x01\x02run: 1\n", "config file"),
    (b"run:\n  steps: \xff\xfe\n", "is not UTF-8 text (byte 0xff on line 2)"),
    (b"", "is empty"),
    (b"run:\n  steps: " + b"9" * 5000 + b"\n", "integer of 5000 characters is too long"),
    (b"run: " + b"[" * 600 + b"\n", "nested too deeply"),
    (b"run:\n  steps: -3\n", "run.steps: Input should be greater than or equal to 1 (got -3)"),
    (b"generation:\n  num_generations: 0\n", "generation.num_generations"),
    (b"eval:\n  limit: 0\n", "eval.limit: Input should be greater than or equal to 1 (got 0)"),
    (b"data:\n  limit: -1\n", "data.limit"),
    (b"optim:\n  lr: .nan\n", "optim.lr: Input should be a finite number"),
    (b"grpo:\n  beta: .inf\n", "grpo.beta: Input should be a finite number"),
    (b"data:\n  prompt_template: '{problem} {oops}'\n", "uses the field {oops}"),
    (b"model:\n  device: gpu\n", "model.device 'gpu' is not a device"),
    (b"base: [1, 2]\n", "base must be a path or a list of paths"),
    (b"a: &a [*a]\n", "a: unknown key"),
    (b"a: &a\n  b: *a\n", "a: unknown key"),  # a section holding itself: its keys' origins are finite
    (b"judge:\n  backend: !!int \n", "cannot read '' as int"),
    (b"run:\n  steps: 0x" + b"f" * 4000 + b"\n", "integer of 4002 characters is too long"),
    (b"run:\n  seed: 99999999999999999999999\n", "run.seed"),
    (b"run:\n  steps: 99999999999999999999999\n", "run.steps: a 77-bit integer is too large"),
    (b"base: " + b"x" * 5000 + b"\n", "(base of"),
    (b"estimator:\n  name: synthesis\nanchor:\n  template: " + b"x" * 5000 + b"\n", "cannot be read"),
]


@pytest.mark.parametrize("content, needle", CONFIGS, ids=range(len(CONFIGS)))
def test_malformed_config_files(tmp_path, blocked, content, needle):
    (tmp_path / "loop.yaml").write_text("base: c.yaml\n")
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    assert_clean_failure(cli("train", str(path), "--output-dir", blocked), needle)


_GARBAGE = ["", " ", "\t", ":", "- ", "[", "]", "{", "}", "&a", "*a", "'", '"', "\n", "#", "!!int ", "|", ">",
            "\x00", "\xe9", "~", ".nan", "-.inf", "-1", "0", "1e999", "9" * 5000, "0x" + "f" * 4000, "9" * 30,
            "{oops}", "? ", "<<: ", "!!set ", "!!int ", "%YAML 1.1\n"]


def _mutate(text: str, rng: random.Random) -> str:
    """One random edit of a config's text: a character dropped, garbage inserted, a line repeated,
    dropped or moved, a value replaced, the text cut short."""
    lines = text.splitlines(keepends=True)
    if not lines:
        return rng.choice(_GARBAGE)
    kind = rng.randrange(6)
    if kind == 0:
        i = rng.randrange(len(text))
        return text[:i] + text[i + 1:]
    if kind == 1:
        i = rng.randrange(len(text) + 1)
        return text[:i] + rng.choice(_GARBAGE) + text[i:]
    if kind == 2:
        i = rng.randrange(len(lines))
        return "".join(lines[:i + 1] + [lines[rng.randrange(len(lines))]] + lines[i + 1:])
    if kind == 3:
        del lines[rng.randrange(len(lines))]
        return "".join(lines)
    if kind == 4:
        i = rng.randrange(len(lines))
        key, colon, _ = lines[i].partition(":")
        lines[i] = f"{key}: {rng.choice(_GARBAGE)}\n" if colon else lines[i]
        return "".join(lines)
    return text[:rng.randrange(len(text))]


def test_random_edits_of_a_valid_config(tmp_path, blocked):
    """Whatever one to three random edits make of a shipped config, it loads or is refused with a
    message; never a traceback."""
    rng = random.Random(23)
    path = tmp_path / "c.yaml"
    refused = 0
    for _ in range(60):
        text = CONFIG_TEXT
        for _ in range(rng.randint(1, 3)):
            text = _mutate(text, rng)
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
        out = cli("train", str(path), "--output-dir", blocked)
        assert_clean_failure(out, "error: ")
        refused += "not writable" not in out.stderr
    assert refused > 30, refused  # the edits do break configs, so the refusals are exercised


# ---- data files ----------------------------------------------------------------------------------

def _parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)


DATA = [  # (file name, content or a function writing it, what the message must say)
    ("d.jsonl", GOOD_ROWS + '{"problem": "1+1", "ans\n', "row 4 is not valid JSON"),
    ("d.jsonl", GOOD_ROWS + '{"question": "1+1", "answer": "2"}\n', "row 4: missing field 'problem'"),
    ("d.jsonl", '{"problem": 7, "answer": "2"}\n', "row 1: field 'problem' must be a non-empty string"),
    ("d.jsonl", '{"problem": "1+1", "answer": [2]}\n', "row 1: field 'answer' must be a string or number"),
    ("d.jsonl", '{"problem": "1+1", "answer": NaN}\n', "row 1: field 'answer' is nan, not an answer"),
    ("d.jsonl", '{"problem": "1+1", "answer": ' + "9" * 5000 + "}\n", "row 1 is not valid JSON (an integer of 5000"),
    ("d.jsonl", '{"problem": "1+1\\ud800", "answer": "2"}\n', "row 1: field 'problem' holds an unpaired UTF-16 surrogate"),
    ("d.jsonl", "", "no rows (the file is empty)"),
    ("d.jsonl", b'{"problem": "\xff", "answer": "2"}\n', "row 1 is not UTF-8 text"),
    ("d.jsonl", b"\x1f\x8b\x08\x00", "gzip-compressed"),
    ("d.jsonl", "[1, 2]\n", "row 1 must be a JSON object"),
    ("d.json", "[]", "no rows"),
    ("d.json", '{"rows": ' * 3000, "nested too deeply"),
    ("d.csv", "problem,answer\n1+1,2\n", "unsupported file type '.csv'"),
    ("d.parquet", "not parquet", "is not a Parquet file"),
    ("d.parquet", lambda p: _parquet(p, [{"question": "1+1", "answer": "2"}]), "row 1: missing field 'problem'"),
    ("d.parquet", lambda p: _parquet(p, [{"problem": 5, "answer": "2"}]), "row 1: field 'problem' must be a non-empty string"),
    ("folder", lambda p: p.mkdir(), "is a folder"),
    ("missing.jsonl", None, "dataset file not found"),
    ("x" * 5000 + ".jsonl", None, "dataset path"),
]


@pytest.mark.parametrize("name, content, needle", DATA, ids=range(len(DATA)))
@pytest.mark.parametrize("which", ["data", "eval"])
def test_malformed_data_files(tmp_path, blocked, name, content, needle, which):
    path = tmp_path / name
    if callable(content):
        content(path)
    elif content is not None:
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    assert_clean_failure(cli("train", str(CAT), f"{which}.path={path}", "--output-dir", blocked), str(path), needle)


def test_random_byte_edits_of_a_valid_data_file(tmp_path, blocked):
    rng = random.Random(5)
    path = tmp_path / "d.jsonl"
    for _ in range(30):
        data = bytearray(GOOD_ROWS.encode())
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(data))
            data[i:i + rng.randint(0, 2)] = bytes(rng.randrange(256) for _ in range(rng.randint(0, 2)))
        path.write_bytes(bytes(data))
        assert_clean_failure(cli("train", str(CAT), f"data.path={path}", "--output-dir", blocked), "error: ")


# ---- command lines -------------------------------------------------------------------------------

COMMANDS = [  # (arguments after cat-rl, what the message must say)
    ([], "the following arguments are required: command"),
    (["nope"], "invalid choice: 'nope'"),
    (["train"], "the following arguments are required: config"),
    (["train", str(CAT), "--stepz", "3"], "unrecognized arguments: --stepz"),
    (["train", str(CAT), "a.b"], "unrecognized arguments: a.b"),
    (["train", str(CAT), "model.name_or_path"], "unrecognized arguments: model.name_or_path"),
    (["train", str(CAT), "=x"], "override '=x' is not of the form section.key=value"),
    (["train", str(CAT), "run..steps=1"], "has an empty part"),
    (["train", str(CAT), "a.b=1"], "a: unknown key"),
    (["train", str(CAT), "run.steps=[1"], "override 'run.steps=[1' is not valid YAML"),
    (["train", str(CAT), "run.steps=\t"], "is not valid YAML"),
    (["train", str(CAT), "data.prompt_template={problem} {oops}"], "quote"),
    (["train", str(CAT), "data.prompt_template='{problem} {oops}'"], "uses the field {oops}"),
    (["train", str(CAT), "run.steps.x=1"], "run.steps"),
    (["train", str(CAT), "eval.limit=-1"], "eval.limit"),
    (["train", "/nonexistent/c.yaml"], "config file not found: /nonexistent/c.yaml"),
    (["train", str(ROOT / "experiments")], "config file not found"),
    (["train", "x" * 5000], "config file xxx"),
    (["eval", str(CAT), "--model", "x" * 5000], "--model xxx"),
    (["eval", str(CAT), "eval.path=null"], "eval.path is not set"),
    (["eval", str(CAT), "--model"], "expected one argument"),
    (["compare", str(CAT), "--arms", "gold", "--seeds", "x"], "--seeds 'x': give comma-separated integers"),
    (["compare", str(CAT), "--arms", ","], "no arms"),
    (["compare", str(CAT), "--arm", "a", "'unclosed"], "--arm a \"'unclosed\": No closing quotation"),
    (["synthesize", str(CAT), "--group-sizes", "0,a"], "--group-sizes must be comma-separated integers"),
    (["synthesize", str(CAT), "--group-sizes", "0"], "group sizes [0] must lie in 1..generation.num_generations"),
    (["synthesize", str(CAT), "--anchor-decoding", "loud"], "anchor decoding 'loud'"),
    (["plan", str(CAT), "--processes", "0"], "--processes must be at least 1, got 0"),
    (["plan", str(CAT), "--processes", "x"], "invalid int value: 'x'"),
    (["report"], "the following arguments are required: RUN_DIR"),
    (["report", "/nonexistent/run"], "/nonexistent/run"),
    (["tiny-world", "nope"], "invalid choice: 'nope'"),
    (["tiny-world", "arith", "run.steps=2"], "cat-rl tiny-world takes no config overrides (got run.steps=2)"),
    (["fetch-model", "smollm2", "run.steps=2"], "cat-rl fetch-model takes no config overrides (got run.steps=2)"),
    (["fetch-model", "nope"], "invalid choice: 'nope'"),
]


@pytest.mark.parametrize("args, needle", COMMANDS, ids=[" ".join(a)[-40:] for a, _ in COMMANDS])
def test_malformed_command_lines(tmp_path, blocked, args, needle):
    if args[:1] in (["train"], ["compare"]) and len(args) > 1:
        args = [*args, "--output-dir", blocked]
    assert_clean_failure(cli(*args), needle)


@pytest.mark.parametrize("name, content", [
    ("metrics.jsonl", b'{"step": 1}\n\xff\n'),
    ("metrics.jsonl", b'{"step": 1}\n[1]\n'),
    ("config.yaml", b"run:\n  steps: \xff\n"),
    ("config.yaml", b"run: " + b"[" * 600 + b"\n"),
    ("eval.json", b'{"before": \xff}'),
])
def test_damaged_run_directories_for_report(tmp_path, name, content):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("run:\n  steps: 1\n")
    (run / name).write_bytes(content)
    assert_clean_failure(cli("report", str(run), "--output", str(tmp_path / "report")), str(run / name))


def test_as_real_processes(tmp_path):
    """What the user sees: exit status 2 and the message, no traceback (two processes at once)."""
    dup = tmp_path / "dup.yaml"
    dup.write_text("run:\n  steps: 3\nrun:\n  steps: 4\n")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"run:\n  steps: \xff\n")
    cases = [(["train", str(dup)], f"config file {dup}: key 'run' is given twice, on lines 1 and 3"),
             (["plan", str(binary)], f"config file {binary} is not UTF-8 text (byte 0xff on line 2)")]
    running = [subprocess.Popen([sys.executable, "-m", "cat.tools.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for args, _ in cases]
    for (args, needle), proc in zip(cases, running, strict=True):
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 2 and "Traceback" not in stderr and needle in stderr, (args, stderr[-2000:])


def test_an_output_dir_that_is_a_file_is_named_as_such(tmp_path):
    (tmp_path / "afile").write_text("x")
    out = cli("train", str(CAT), "--output-dir", str(tmp_path / "afile"), "--no-progress")
    assert_clean_failure(out, f"output directory {tmp_path / 'afile'} is a file, not a folder")
    assert (tmp_path / "afile").read_text() == "x"

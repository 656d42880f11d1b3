"""Every unreadable data file and malformed row is one clear DataError naming the file, the row
and the field: wrong encodings, binary content, broken JSON lines, wrong types, non-Parquet
Parquet. Most cases go through ``load_prompts``; a few through the real CLI (exit 2, no traceback)."""

import gzip
import json
import random

import pytest
from conftest import ROOT, cli

from cat.errors import DataError
from cat.tasks.data import load_prompts

GOOD = {"problem": "1+1?", "answer": "2"}
HB = {"prompt": [{"role": "user", "content": "I feel dizzy."}], "example_tags": ["theme:x"],
      "rubrics": [{"criterion": "Asks about fluids.", "points": 5, "tags": ["axis:completeness"]}]}


def write(tmp_path, data: bytes | str, name="d.jsonl"):
    p = tmp_path / name
    p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return p


def lines(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def fails(path, match, **kwargs) -> str:
    with pytest.raises(DataError, match=match) as info:
        load_prompts(str(path), **kwargs)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


# ---- bytes that are not UTF-8 JSON text ---------------------------------------------------------

def test_latin1_bytes_name_the_row_and_byte(tmp_path):
    data = lines(GOOD).encode() + json.dumps({"problem": "café?", "answer": "1"}, ensure_ascii=False).encode("latin-1")
    fails(write(tmp_path, data), r"row 2 is not UTF-8 text \(byte 0xe9 at column \d+\); save the file as UTF-8")


@pytest.mark.parametrize("encoding,match", [
    ("utf-16", "UTF-16 text"),            # with a byte-order mark
    ("utf-16-le", "binary data .*NUL"),   # without one: NUL bytes
])
def test_utf16_files(tmp_path, encoding, match):
    fails(write(tmp_path, lines(GOOD, GOOD).encode(encoding)), match)


def test_utf8_with_a_byte_order_mark_is_fine(tmp_path):
    assert load_prompts(str(write(tmp_path, b"\xef\xbb\xbf" + lines(GOOD).encode())))[0].gold == "2"


@pytest.mark.parametrize("make,match", [
    (lambda: gzip.compress(lines(GOOD).encode()), "gzip-compressed"),
    (lambda: random.Random(0).randbytes(2048), "binary data|not UTF-8 text"),
    (lambda: b"PAR1" + bytes(100) + b"PAR1", "Parquet file; give it the .parquet suffix"),
    (lambda: b"PK\x03\x04rest of a zip", "zip archive"),
    (lambda: b"", r"no rows \(the file is empty\)"),
    (lambda: b"\n  \n\t\n", r"no rows \(the file is empty\)"),
    (lambda: b"\xef\xbb\xbf\n", r"no rows \(the file is empty\)"),
])
def test_binary_and_empty_files(tmp_path, make, match):
    fails(write(tmp_path, make()), match)


# ---- broken JSON lines -------------------------------------------------------------------------

@pytest.mark.parametrize("text,match", [
    (lines(GOOD) + '{"problem": "2+2?", "ans', r"row 2 is not valid JSON \(Unterminated string.*; the last line looks truncated"),
    (lines(GOOD, '{"problem": "2+2?", "answer": "4",}'), r"row 2 is not valid JSON"),
    (lines(GOOD, "", "", '{"problem": }'), r"row 4 is not valid JSON"),  # row = line, blank lines counted
    (json.dumps([GOOD, GOOD]) + "\n", r"row 1 must be a JSON object, got list \(a JSON array"),
    (json.dumps([GOOD, GOOD], indent=2), r"row 1 is not valid JSON .*looks like a JSON array"),
    (json.dumps(GOOD, indent=2), r"row 1 is not valid JSON .*one whole JSON object per line"),
    (lines(GOOD, '"just a string"'), "row 2 must be a JSON object, got str"),
    (lines(GOOD, "null"), "row 2 must be a JSON object, got NoneType"),
    ("[" * 100_000 + "\n", "row 1 is not valid JSON"),
    (lines(GOOD, '{"problem": "1+1?", "answer": ' + "9" * 5000 + "}"),
     r"row 2 is not valid JSON \(an integer of 5000 digits is too long to read\)"),
])
def test_broken_json_lines(tmp_path, text, match):
    fails(write(tmp_path, text), match)


def test_an_over_long_integer_in_a_json_array(tmp_path):
    fails(write(tmp_path, '[{"problem": "1+1?", "answer": ' + "9" * 5000 + "}]", "d.json"),
          r"is not valid JSON \(an integer of 5000 digits is too long to read\)")


@pytest.mark.parametrize("name", ["d.jsonl", "d.json"])
def test_an_unpaired_surrogate_names_the_row_and_field(tmp_path, name):
    """JSON lets a lone \\ud800 escape through; no tokenizer can encode it (a traceback after the model loaded)."""
    rows = [GOOD, {"problem": "1+1?", "answer": "2", "extra": {"notes": ["fine \U0001F600", "bad \ud800"]}}]
    text = lines(*rows) if name.endswith("l") else json.dumps(rows)
    assert "\\ud83d\\ude00" in text  # a surrogate pair, which is fine
    fails(write(tmp_path, text, name), r"row 2: field 'extra.notes\[1\]' holds an unpaired UTF-16 surrogate")


# ---- wrong types and missing fields ------------------------------------------------------------

@pytest.mark.parametrize("row,match", [
    ({"problem": ["1+1?"], "answer": "2"}, r"row 2: field 'problem' must be a non-empty string, got a list"),
    ({"problem": 7, "answer": "2"}, r"row 2: field 'problem' must be a non-empty string, got a number"),
    ({"problem": None, "answer": "2"}, r"row 2: field 'problem' must be a non-empty string, got null$"),
    ({"problem": "  ", "answer": "2"}, r"row 2: field 'problem' must be a non-empty string"),
    ({"problem": "1+1?", "answer": ["2"]}, r"row 2: field 'answer' must be a string or number, got a list"),
    ({"problem": "1+1?", "answer": True}, r"row 2: field 'answer' must be a string or number, got a boolean"),
    ({"question": "1+1?"}, r"row 2: missing field 'problem' \(fields: \['question'\]\)"),
    ('{"problem": "1+1?", "answer": NaN}', r"row 2: field 'answer' is nan, not an answer"),
    ('{"problem": "1+1?", "answer": 1e999}', r"row 2: field 'answer' is inf, not an answer"),
])
def test_wrong_types_and_missing_fields(tmp_path, row, match):
    fails(write(tmp_path, lines(GOOD, row)), match)


def test_a_limit_below_one_and_an_unknown_template_field_are_refused(tmp_path):
    """``load_prompts`` checks its own arguments: a negative limit used to drop the last rows."""
    path = write(tmp_path, lines(GOOD, GOOD))
    with pytest.raises(DataError, match="limit must be at least 1"):
        load_prompts(str(path), limit=-1)
    from cat.errors import ConfigError

    with pytest.raises(ConfigError, match=r"uses the field \{oops\}"):
        load_prompts(str(path), prompt_template="{problem} {oops}")


@pytest.mark.parametrize("change,match", [
    ({"prompt": "I feel dizzy."}, r"field 'prompt' must be a non-empty list of chat messages, got a string"),
    ({"prompt": [{"role": "user", "content": ["a"]}]}, r"prompt\[0\] must be \{'role'"),
    ({"prompt": [{"role": "patient", "content": "a"}]}, r"prompt\[0\] must be \{'role'"),
    ({"rubrics": "Asks about fluids."}, r"field 'rubrics' must be a non-empty list, got a string"),
    ({"rubrics": [{"criterion": "Asks.", "points": "5", "tags": []}]}, r"rubrics\[0\].points must be a number, got a string '5'"),
    ({"rubrics": [{"criterion": "Asks.", "points": 5, "tags": "axis:x"}]}, r"rubrics\[0\].tags must be a list of strings"),
    ({"rubrics": [{"criterion": "Asks.", "points": 5, "tags": [["axis:x"]]}]}, r"rubrics\[0\].tags must be a list of strings, got a list"),
    ({"rubrics": [{"criterion": 3, "points": 5}]}, r"rubrics\[0\].criterion must be a non-empty string, got a number"),
    ({"example_tags": [1]}, r"field 'example_tags' must be a list of strings, got a number"),
])
def test_healthbench_wrong_types(tmp_path, change, match):
    fails(write(tmp_path, lines(HB, {**HB, **change})), "row 2: .*" + match, format="healthbench")


def test_healthbench_extra_fields_and_missing_optional_ones_are_accepted(tmp_path):
    row = {"prompt": HB["prompt"], "rubrics": [{"criterion": "Asks about fluids.", "points": 5}],
           "ideal_completions_data": None, "canary": "x", "completion": None, "prompt_id": 17}
    [prompt] = load_prompts(str(write(tmp_path, lines(row))), format="healthbench")
    assert prompt.tags == () and prompt.rubric[0].tags == () and prompt.meta == {"prompt_id": "17"}


# ---- .json and .parquet --------------------------------------------------------------------------

def test_json_array_and_json_lines_under_a_json_name(tmp_path):
    assert len(load_prompts(str(write(tmp_path, json.dumps([GOOD, GOOD], indent=2), "a.json")))) == 2
    assert len(load_prompts(str(write(tmp_path, lines(GOOD, GOOD), "b.json")))) == 2
    fails(write(tmp_path, json.dumps([GOOD, 3]), "c.json"), "row 2 must be a JSON object, got int")
    fails(write(tmp_path, '[\n  {"problem": "a",\n  }\n]', "d.json"), r"line 3 is not valid JSON")
    fails(write(tmp_path, "3", "e.json"), "must hold a JSON array of objects")
    fails(write(tmp_path, json.dumps([GOOD, {"problem": None}]), "f.json"), "row 2: field 'problem' must be a non-empty string")
    fails(write(tmp_path, json.dumps([GOOD]).encode("utf-16"), "g.json"), "UTF-16")
    fails(write(tmp_path, '[{"problem": "\xe9"}]'.encode("latin-1"), "h.json"), r"line 1 is not UTF-8 text \(byte 0xe9\)")


@pytest.mark.parametrize("data,match", [
    (lines(GOOD).encode(), "is not a Parquet file: it holds JSON; name it .jsonl or .json"),
    (b"hello, world", r"is not a Parquet file \(no Parquet magic bytes\)"),
    (gzip.compress(b"x", mtime=0), "is not a Parquet file: it is gzip-compressed"),
], ids=["json", "text", "gzip"])  # the bytes would make the ids, and gzip's hold the time: xdist's workers must agree
def test_parquet_that_is_not_parquet(tmp_path, data, match):
    fails(write(tmp_path, data, "d.parquet"), match)


def test_damaged_and_mistyped_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"problem": ["a", "b"], "answer": ["1", "2"]}), good)
    data = good.read_bytes()
    fails(write(tmp_path, data[:4] + data[-40:], "cut.parquet"), "cannot read .* as Parquet")
    fails(write(tmp_path, data[: len(data) // 2], "half.parquet"), "is not a Parquet file")
    typed = tmp_path / "typed.parquet"
    pq.write_table(pa.table({"problem": ["a", None], "answer": [[1], [2]]}), typed)
    fails(typed, r"row 1: field 'answer' must be a string or number, got a list")
    pq.write_table(pa.table({"problem": [1, 2]}), typed)
    fails(typed, r"row 1: field 'problem' must be a non-empty string, got a number")


# ---- paths and hub datasets ----------------------------------------------------------------------

def test_paths_that_are_not_data_files(tmp_path):
    fails(tmp_path / "nope.jsonl", "dataset file not found")
    (tmp_path / "dir.jsonl").mkdir()
    fails(tmp_path / "dir.jsonl", "is a folder")
    fails(write(tmp_path, "problem,answer\n1+1,2\n", "d.csv"), r"unsupported file type '.csv'")
    fails(tmp_path / ("x" * 5000 + ".jsonl"), "dataset path")  # too long for the file system: OSError before


def test_hub_rows_are_validated_like_files(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: [GOOD, {"problem": "x", "answer": {"a": 1}}])
    with pytest.raises(DataError, match=r"^org/set\[test\]: row 2: field 'answer' must be a string or number"):
        load_prompts("org/set", split="test")

    def broken(*a, **k):
        raise ValueError("first line\nsecond line")

    monkeypatch.setattr(datasets, "load_dataset", broken)
    with pytest.raises(DataError, match=r"cannot load dataset 'org/set' .*ValueError: first line$"):
        load_prompts("org/set")


# ---- through the real CLI: exit 2, the file and row named, no traceback ---------------------------

CAT = str(ROOT / "experiments" / "tiny_arith_cat.yaml")


def assert_clean_failure(out, *needles):
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr and out.stderr.startswith("error: "), out.stderr
    for needle in needles:
        assert needle in out.stderr, out.stderr


def test_cli_latin1_and_gzip_training_data(tmp_path):
    bad = write(tmp_path, lines(GOOD).encode() + b'{"problem": "caf\xe9", "answer": "1"}\n', "latin.jsonl")
    out = cli("train", CAT, f"data.path={bad}", "--output-dir", str(tmp_path / "r"))
    assert_clean_failure(out, str(bad), "row 2 is not UTF-8 text")
    packed = write(tmp_path, gzip.compress(lines(GOOD).encode()), "packed.jsonl")
    out = cli("train", CAT, f"data.path={packed}", "--output-dir", str(tmp_path / "r"))
    assert_clean_failure(out, str(packed), "gzip-compressed")


def test_cli_truncated_eval_file_and_bad_healthbench_points(tmp_path):
    cut = write(tmp_path, lines(GOOD) + '{"problem": "2+2?", "ans', "cut.jsonl")
    out = cli("eval", CAT, f"eval.path={cut}")
    assert_clean_failure(out, str(cut), "row 2 is not valid JSON", "truncated")
    hb = write(tmp_path, lines(HB, {**HB, "rubrics": [{"criterion": "x", "points": "five", "tags": []}]}), "hb.jsonl")
    out = cli("eval", CAT, "data.format=healthbench", f"eval.path={hb}")
    assert_clean_failure(out, str(hb), "row 2: rubrics[0].points must be a number")


def test_cli_parquet_that_is_not_parquet(tmp_path):
    fake = write(tmp_path, lines(GOOD), "fake.parquet")
    out = cli("train", CAT, f"data.path={fake}", "--output-dir", str(tmp_path / "r"))
    assert_clean_failure(out, str(fake), "is not a Parquet file")

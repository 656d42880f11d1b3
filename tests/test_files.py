"""Files written whole or not at all (``cat.files``), and the report's figures written through it."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from cat.files import write_bytes_atomic, write_json_atomic, write_text_atomic


def test_a_file_is_written_whole_into_a_new_folder_with_no_temporary_left(tmp_path):
    path = tmp_path / "a" / "b" / "eval.json"
    write_json_atomic(path, {"accuracy": 0.5})
    assert path.read_text() == '{\n  "accuracy": 0.5\n}'
    write_text_atomic(path, "é")
    assert path.read_text(encoding="utf-8") == "é"
    assert sorted(p.name for p in path.parent.iterdir()) == ["eval.json"]


def test_a_write_that_fails_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    write_text_atomic(path, "old")

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_bytes_atomic(path, b"new")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_a_process_killed_while_writing_leaves_the_old_file_or_the_new_one(tmp_path):
    """SIGKILL (no cleanup runs) at a random moment of a loop that rewrites a 4 MB file: what is
    at the path is always one whole version."""
    path = tmp_path / "result.json"
    writer = textwrap.dedent(f"""
        import sys
        from cat.files import write_bytes_atomic
        print("ready", flush=True)
        i = 0
        while True:
            write_bytes_atomic({str(path)!r}, bytes([97 + i % 2]) * (4 << 20))
            i += 1
    """)
    for delay in (0.3, 0.7):
        proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        data = path.read_bytes()
        assert len(data) == 4 << 20 and data in (b"a" * (4 << 20), b"b" * (4 << 20))


def test_a_figure_is_written_whole_and_a_failed_one_keeps_the_old(tmp_path):
    pytest.importorskip("matplotlib")
    from cat.tools.report import _plt, save_png

    path = tmp_path / "reward.png"
    fig, ax = _plt().subplots()
    ax.plot([1, 2, 3])
    save_png(fig, path)
    first = path.read_bytes()
    assert first.startswith(b"\x89PNG\r\n\x1a\n")

    fig, ax = _plt().subplots()
    ax.set_title("$\\notacommand$")  # mathtext refuses it when the figure is drawn
    with pytest.raises(ValueError):
        save_png(fig, path)
    assert path.read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reward.png"]

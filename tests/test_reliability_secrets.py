"""Issue 16 item 13: stream credentials never reach a log line; escape codes in file names never reach
the terminal raw; spreadsheet formulas in names never reach `--format csv` output as formulas."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys

import pytest

from usedge.runtime.sinks import csv_text
from usedge.runtime.sources import open_source, redact_source

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

SECRET_SOURCES = [
    "rtsp://admin:p@ssw0rdSECRET@10.0.0.5:554/stream1",            # '@' inside the password
    "rtsp://admin:SECRET@10.0.0.5/stream1",
    "http://cam.local/video.mjpg?user=admin&password=SECRET",
    "https://cam.local/live?token=SECRET&x=1",
    "http://cam.local/live?api_key=SECRET#frag",
    "http://cam.local/live?a=1;sig=SECRET",
    "rtspsrc location=rtsp://u:SECRET@h/s user-pw=SECRET ! decodebin ! appsink",
]


@pytest.mark.parametrize("source", SECRET_SOURCES)
def test_redact_source_hides_every_secret(source):
    shown = redact_source(source)
    assert "SECRET" not in shown and "ssw0rd" not in shown
    assert "***" in shown


def test_redact_source_keeps_plain_names():
    for name in ("rtsp://10.0.0.5:554/live", "/data/scan.mp4", "camera:0", "http://h/v?fps=30&width=640"):
        assert redact_source(name) == name


@pytest.mark.parametrize("source", [s for s in SECRET_SOURCES if "://" in s.split(" ")[0]] + [SECRET_SOURCES[-1]])
def test_reader_name_is_redacted(source):
    # the reader's name is what logs, errors, the summary, JSONL/CSV 'source' and the server banner print
    name = open_source(source).name
    assert "SECRET" not in name and "ssw0rd" not in name


def test_csv_text_neutralises_formulas():
    for cell in ("=HYPERLINK(\"http://x\")", "+1+1", "-2+3", "@SUM(A1)", "\t=1", "\r=1"):
        assert csv_text(cell) == "'" + cell
    for cell in ("scan.png", "lipoma", "", "a=b"):
        assert csv_text(cell) == cell


def _usedge(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "usedge", *map(str, args)], capture_output=True, text=True,
                          timeout=180, env=ENV, cwd=cwd)


def test_infer_csv_neutralises_formula_file_names(serve_model, serve_images, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    evil = src / "=HYPERLINK(1)+cmd.png"
    shutil.copy(serve_images[0], evil)
    shutil.copy(serve_images[1], src / "@SUM(A1).png")
    out = tmp_path / "out.csv"
    # relative names, as a user in that folder types them: the cell starts with the name
    proc = _usedge("infer", serve_model, evil.name, "@SUM(A1).png", "--format", "csv", "--out", out,
                   "--threads", "1", cwd=src)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(out.open(newline="")))
    assert len(rows) == 2
    for row in rows:
        assert row["source"].startswith("'"), row["source"]
        assert not any(v.startswith(("=", "+", "@")) for v in row.values() if v)


def test_infer_escapes_terminal_codes_in_file_names(serve_model, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    name = "\x1b]0;pwned\x07\x1b[2J\x9bscan.png"
    (src / name).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # a PNG signature, then garbage: unreadable
    proc = _usedge("infer", serve_model, str(src), "--threads", "1", "--out", tmp_path / "r.jsonl")
    assert proc.returncode == 1
    assert "\x1b" not in proc.stderr and "\x07" not in proc.stderr and "\x9b" not in proc.stderr
    assert "\\x1b]0;pwned\\x07" in proc.stderr          # shown, visibly escaped


def test_library_messages_print_as_plain_one_line_text():
    """The CLI's Rich consoles never hard-wrap a message, and library messages are never read as Rich
    markup: a path such as `scans/[old]/x.png` kept its brackets only by luck, `[/x]` raised."""
    import io

    from usedge.cli.terminal import line_printer, rich_console

    buf = io.StringIO()
    log = line_printer(rich_console(file=buf, width=80))
    message = "note: scans/[old]/x.png and scans/[/x]/y.png " + "z" * 120 + " \x1b[2J"
    log(message)
    assert buf.getvalue() == message.replace("\x1b", "\\x1b") + "\n"


def test_a_table_in_a_pipe_is_not_cut_to_80_columns(monkeypatch):
    """`usedge export > log` cut its check table's cells to 80 columns (`max_abs_diff=0.00…`; regression round)."""
    import io

    from rich.table import Table

    from usedge.cli.terminal import rich_console

    monkeypatch.delenv("COLUMNS", raising=False)
    table = Table()
    for col in ("check", "figures"):
        table.add_column(col)
    table.add_row("int8 vs fp32 accuracy (held-out)", "max_abs_diff=0.0123 decisive_top1_agreement=1.0 top1_agreement=1.0")
    buf = io.StringIO()
    rich_console(file=buf).print(table)
    assert "top1_agreement=1.0" in buf.getvalue() and "…" not in buf.getvalue()

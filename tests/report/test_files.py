"""Reports are written whole or not at all, and a refusal by the OS is one line, exit 2.

servecheck's tests run as root in CI containers, where ``chmod`` does not stop a write: there
the read-only directory is a test double, ``os.open`` raising ``EROFS`` as a read-only mount
would. A lone surrogate (what a JSON ``\\ud800`` escape decodes to) is put into records in
Python, past any refusal when a file is read, to show that the writers cannot be crashed by it.
"""

from __future__ import annotations

import errno
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from servecheck.checks.core.results import CheckResult, Finding, NoDetails
from servecheck.errors import InputError
from servecheck.report import files
from servecheck.report.junit import write_junit
from servecheck.report.pages import write_page
from servecheck.report.summary import to_json, write_json

FAILING = [CheckResult("template", "fail", "1/2 prompts differ", NoDetails(),
                       [Finding("r1", "role name 'assistant'", 1.0)])]


def read_only(monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
    """``directory`` refuses new files: by its mode, or as root (whom modes do not stop) by a
    test double that fails as a read-only mount does."""
    if os.geteuid() != 0:
        directory.chmod(0o500)
        return
    real = os.open

    def refuse(path, flags, mode=0o777, *args, **kwargs):
        if Path(path).parent == directory and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(files.os, "open", refuse)


def test_a_failure_mid_write_leaves_the_destination_as_it_was(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk halfway through JUnit: one line naming the file, no half file, no temp."""
    def half_then_full(self, file, *args, **kwargs) -> None:
        file.write(b"<?xml version='1.0' encoding='utf-8'?>\n<testsuites")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ET.ElementTree, "write", half_then_full)
    new = tmp_path / "junit.xml"
    with pytest.raises(InputError, match=r"junit\.xml: cannot write \(No space left on device\)"):
        write_junit(new, FAILING, {})
    old = tmp_path / "old.xml"
    old.write_text("<testsuites/>")
    with pytest.raises(InputError):
        write_junit(old, FAILING, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.xml"]  # no junit.xml, no temp
    assert old.read_text() == "<testsuites/>"


def test_an_error_of_any_kind_removes_the_temporary_file(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), files.replacing(tmp_path / "report.html") as f:
        f.write(b"<html>half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_read_only_directory_is_one_line(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    read_only(monkeypatch, out)
    reason = "Read-only file system" if os.geteuid() == 0 else "Permission denied"
    for write in (lambda p: write_json(p, to_json(FAILING, {})),
                  lambda p: write_junit(p, FAILING, {}), lambda p: write_page(p, "<p>x</p>")):
        with pytest.raises(InputError) as e:
            write(out / "report")
        assert str(e.value) == f"{out / 'report'}: cannot write ({reason})"
    assert list(out.iterdir()) == []


def test_check_with_an_unwritable_summary_keeps_the_table_and_exits_2(
        lite_responses: Path, tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    read_only(monkeypatch, out)
    code = run_cli("check", lite_responses, "--reference", "builtin", "--no-progress",
                   "--json", out / "summary.json")
    captured = capsys.readouterr()
    assert code == 2
    assert "verdict: PASS" in captured.out  # the table, printed before the write, stays
    assert captured.err.strip().splitlines() == [
        f"servecheck: error: {out / 'summary.json'}: cannot write "
        f"({'Read-only file system' if os.geteuid() == 0 else 'Permission denied'})"]
    assert list(out.iterdir()) == []


def test_writing_replaces_an_existing_report_and_follows_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "reports" / "summary.json"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / "latest.json"
    link.symlink_to(real)
    write_json(link, to_json(FAILING, {}))
    assert link.is_symlink() and json.loads(real.read_text())["verdict"] == "fail"
    assert sorted(p.name for p in real.parent.iterdir()) == ["summary.json"]


def test_lone_surrogates_and_nan_make_valid_files(tmp_path: Path) -> None:
    """A lone surrogate is written as its escape: valid UTF-8 everywhere, in the JSON the same
    string again, in XML (which cannot hold it) U+FFFD. NaN, which JSON has not, is null."""
    bad = [CheckResult("answered", "fail", "1/2 failed requests \ud800", NoDetails(),
                       [Finding("r\udcff", "error: HTTP 500 \ud800 <script>", 1.0)])]
    meta = {"responses": "shard-\udcff.jsonl", "p": float("nan")}
    write_json(tmp_path / "s.json", to_json(bad, meta))
    write_junit(tmp_path / "j.xml", bad, meta)
    write_page(tmp_path / "p.html", "<p>\ud800 &lt;script&gt;</p>")
    text = (tmp_path / "s.json").read_bytes().decode("utf-8")  # strict: valid UTF-8
    summary = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    assert summary["responses"] == "shard-\udcff.jsonl" and summary["p"] is None
    assert summary["checks"][0]["findings"][0]["record"] == "r\udcff"
    root = ET.fromstring((tmp_path / "j.xml").read_bytes())
    assert "HTTP 500 \ufffd <script>" in root.find(".//failure").text
    assert (tmp_path / "p.html").read_bytes().decode("utf-8") == "<p>\\ud800 &lt;script&gt;</p>"


@pytest.mark.parametrize("where, reason", [
    ("afile/report.html", "Not a directory"),  # mkdir alone would say "File exists"
    ("afile/sub/report.html", "Not a directory"),
    ("/dev/full", "No space left on device"),  # a real full disk, written in place
])
def test_the_os_reason_is_named(tmp_path: Path, where: str, reason: str) -> None:
    (tmp_path / "afile").write_text("a file, not a folder")
    if where.startswith("/dev/") and not Path(where).exists():
        pytest.skip(f"{where} does not exist here")
    path = tmp_path / where
    with pytest.raises(InputError) as e:
        write_page(path, "<p>x</p>")
    assert str(e.value) == f"{path}: cannot write ({reason})"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]

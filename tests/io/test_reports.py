"""Report files: written whole, and readable by whoever could read a file ``open`` makes there."""

from __future__ import annotations

import os
import stat

from osteo_pipeline.io.reports import write_json, write_text_atomic


def test_a_report_gets_the_permissions_open_would_give_it(tmp_path):
    reference = tmp_path / "plain.txt"
    reference.write_text("x")
    written = write_text_atomic(tmp_path / "validation.html", "<html></html>")
    assert written.read_text() == "<html></html>"
    mode = stat.S_IMODE(os.stat(written).st_mode)
    assert mode == stat.S_IMODE(os.stat(reference).st_mode)
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_a_private_umask_keeps_a_report_private(tmp_path):
    old = os.umask(0o077)
    try:
        written = write_json(tmp_path / "validation.json", {"passed": True})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(written).st_mode) == 0o600

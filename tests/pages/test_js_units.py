"""The pages' pure JavaScript modules (static/js: redirect rules, terminal
text, reconnect bookkeeping, spec building) under Node's own test runner.

The modules are ES modules without DOM access at import time, so Node runs
the exact files the browser loads. The DOM parts (log view, page
controllers) are tested in Chromium (tests/e2e).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent


def test_js_unit_tests_pass() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: run scripts/setup.sh", pytrace=False)
    proc = subprocess.run(
        [node, "--test", "--test-reporter=tap", "tests/pages/js/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    passed = re.search(r"^# pass (\d+)$", output, re.M)
    failed = re.search(r"^# fail (\d+)$", output, re.M)
    assert proc.returncode == 0 and failed and failed.group(1) == "0", output[-6000:]
    # Every file ran: one test per vector and then some.
    assert passed and int(passed.group(1)) >= 100, output[-2000:]

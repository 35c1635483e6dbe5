"""The serving process hides its environment (the operator token) from same-user processes."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")

PROBE = """
import ctypes
from metasup_mcp.commands.serve import refuse_inspection
PR_GET_DUMPABLE = 3
before = ctypes.CDLL(None).prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)
assert refuse_inspection()
after = ctypes.CDLL(None).prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)
print(before, after)
"""


def test_serving_makes_the_process_non_dumpable_so_children_cannot_read_its_environ() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "0"]


def test_a_child_of_a_non_dumpable_process_is_dumpable_again() -> None:
    probe = PROBE + (
        "import subprocess, sys\n"
        "child = subprocess.run([sys.executable, '-c', 'import ctypes; print(ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))'],"
        " capture_output=True, text=True)\n"
        "print(child.stdout.strip())\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "0", "1"]

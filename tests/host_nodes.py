"""Test-only stand-in nodes (moved to `harness/`, shared with the benchmarks); re-exported for the tests.

A test node pack in a ComfyUI server process imports this file with only tests/ on sys.path: the repository root
(for `harness` and `magicprop`) is put there first.
"""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from harness.tiny_nodes import CONTROL_LOG, TEST_NODES, register  # noqa: E402, F401


class TestSpy:
    """Passes its input on (None without one) and records each run: put upstream of a node, it tells whether
    anything upstream ran before the node's error (a prompt refused by validation runs nothing)."""

    runs: list = []

    @classmethod
    def INPUT_TYPES(cls):
        return {"optional": {"value": ("*",)}}

    RETURN_TYPES = ("*",)
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, value=None):
        TestSpy.runs.append(value)
        return (value,)

"""The benchmarks stand on their own: nothing in bench/ imports from tests/ or puts tests/ on sys.path."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "bench").glob("*.py"))
HOST_MODULES = {"comfy", "comfy_api", "comfy_extras", "folder_paths", "nodes", "server", "execution", "utils"}
"""ComfyUI's own modules: the host benchmarks import them after finding ComfyUI (COMFYUI_PATH)."""


def imports_of(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every import in a script, including those inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module != "__future__":
            found.append((node.module, [a.name for a in node.names]))
    return found


@pytest.fixture(scope="module")
def copy_without_tests(tmp_path_factory) -> Path:
    """The repository without tests/, as a benchmark user would not need it."""
    dst = tmp_path_factory.mktemp("no-tests") / "repo"
    shutil.copytree(ROOT, dst, ignore=shutil.ignore_patterns("tests", ".git", "__pycache__", "*.safetensors"))
    assert not (dst / "tests").exists() and (dst / "bench").is_dir()
    return dst


def test_there_are_benchmarks():
    assert {p.name for p in SCRIPTS} >= {"depth.py", "memory.py", "propagate.py"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_no_bench_script_refers_to_tests(script):
    tree = ast.parse(script.read_text())
    strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    assert not [s for s in strings if s.strip("/") == "tests"], f"{script.name} names the tests/ folder"
    assert not [m for m, _ in imports_of(script) if m.split(".")[0] in {"conftest", "tiny", "host", "host_models",
                                                                         "host_nodes", "graphs"}]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bench_script_imports_without_tests(script, copy_without_tests):
    """Every module (and name) a benchmark imports resolves in a copy of the repository that has no tests/."""
    wanted = [(m, names) for m, names in imports_of(script) if m.split(".")[0] not in HOST_MODULES]
    probe = (
        "import importlib, json, sys\n"
        f"sys.path.insert(0, {str(copy_without_tests)!r})\n"
        f"for module, names in json.loads({json.dumps(json.dumps(wanted))}):\n"
        "    m = importlib.import_module(module)\n"
        "    for n in names:\n"
        "        if not hasattr(m, n): importlib.import_module(module + '.' + n)\n"
        "bad = [p for p in sys.path if p.rstrip('/').endswith('tests')]\n"
        "assert not bad, bad\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-I", "-c", probe], check=True, cwd=copy_without_tests, env=env)
    # and the script itself starts (argument parsing) from the copy
    out = subprocess.run([sys.executable, "-I", str(copy_without_tests / "bench" / script.name), "--help"],
                         cwd=copy_without_tests, env=env, capture_output=True, text=True)
    assert out.returncode == 0 and "usage:" in out.stdout, out.stderr[-2000:]

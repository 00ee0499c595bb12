"""The core is host-free and a good guest: no ComfyUI imports, no prints, nothing done at import time."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST_MODULES = {"comfy", "comfy_api", "comfy_extras", "folder_paths", "nodes", "server", "execution", "latent_preview"}


def test_core_imports_in_a_bare_interpreter():
    """Every magicprop module imports with no ComfyUI on the path, and none pulls a host module in."""
    probe = (
        "import sys, pkgutil, importlib, magicprop\n"
        "for m in pkgutil.walk_packages(magicprop.__path__, 'magicprop.'):\n"
        "    if m.name != 'magicprop.__main__': importlib.import_module(m.name)\n"
        f"bad = sorted(set(sys.modules) & set({sorted(HOST_MODULES)!r}))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r})\n" + probe],
                   check=True, cwd="/")


def test_core_source_has_no_host_imports_and_no_print():
    for path in (ROOT / "magicprop").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                names = []
            for name in names:
                assert name.split(".")[0] not in HOST_MODULES, f"{path.name} imports {name}"
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                raise AssertionError(f"{path.name}:{node.lineno} prints; use a named logger")


def test_requirements_do_not_pin_torch():
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        assert not line.strip().lower().startswith("torch"), line

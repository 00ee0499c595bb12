"""The code's layout as a checked rule: no import cycle inside the core, no node file importing another node file,
and each folder of nodes/ (one per path: flow/, refine/, propdpm/) built on common/ alone.

Read from the source (ast), so a cycle hidden inside a function body counts too: it is still a knot a reader must
untie, and the next refactor turns it into an import-time failure.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_names(package: Path) -> dict[str, Path]:
    """Dotted module name (relative to the repository) -> file, for every module of `package`."""
    out = {}
    for f in sorted(package.rglob("*.py")):
        parts = f.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of `known` that module `name` imports, anywhere in its body (absolute `magicprop.` imports too)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m in known and m != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_core_has_no_import_cycle():
    known = module_names(ROOT / "magicprop")
    graph = {m: imports(m, f, known) for m, f in known.items()}
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def node_files() -> dict[str, Path]:
    """The modules of nodes/ that define a ComfyUI node (a class deriving from io.ComfyNode)."""
    out = {}
    for name, f in module_names(ROOT / "nodes").items():
        tree = ast.parse(f.read_text())
        if any(isinstance(n, ast.ClassDef) and any(ast.unparse(b).endswith("ComfyNode") for b in n.bases)
               for n in ast.walk(tree)):
            out[name] = f
    return out


def test_no_node_file_imports_another_node_file():
    known = module_names(ROOT / "nodes")
    nodes = node_files()
    assert len(nodes) == 7, sorted(nodes)
    crossing = {m: sorted(imports(m, f, known) & set(nodes)) for m, f in nodes.items()}
    assert {m: i for m, i in crossing.items() if i} == {}


def folder(module: str) -> str:
    """nodes.propdpm.loader -> nodes.propdpm; nodes (the extension itself) -> nodes."""
    return ".".join(module.split(".")[:2])


CROSSING_ALLOWED = {("nodes.refine.refine", "nodes.propdpm.model")}
"""FlowRefine refuses a PropDPM model (by its class) before sampling with it as an image model."""


def test_each_node_folder_imports_only_itself_and_common():
    known = module_names(ROOT / "nodes")
    folders = {folder(m) for m in known} - {"nodes"}
    assert folders == {"nodes.common", "nodes.flow", "nodes.propdpm", "nodes.refine"}, sorted(folders)
    crossing = {}
    for m, f in known.items():
        if m == "nodes":  # the extension lists every node
            continue
        allowed = {folder(m)} if folder(m) == "nodes.common" else {folder(m), "nodes.common"}
        out = sorted(i for i in imports(m, f, known)
                     if folder(i) not in allowed and (m, i) not in CROSSING_ALLOWED)
        if out:
            crossing[m] = out
    assert crossing == {}

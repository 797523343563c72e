"""The import contracts that keep the layers pointing down (model <- pipelines <- CLI).

Every import counts, including those inside functions (the lazy imports that keep ``mien --help``
fast are still dependencies). The graph is read from the source with ``ast``, so the test needs
none of the heavy packages and a new violation fails here, naming the file and line.

Layers, lowest first:
  workflows.core    the Ray-free shared base (config, storage, assets, tracking, faults) plus
                    the cluster connection; imports nothing else of the project
  model             the facial MLLM; imports only itself and workflows.core
  workflows.*       the pipelines (annotate, faces, corpus, training, evaluation, retrain, outputs);
                    never import jobs
  jobs              the CLI and job entry points; may import anything but mien
  mien              the Python API (``import mien``), the top layer beside jobs: may import
                    workflows and model, not jobs; nothing of the project imports it
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("workflows", "model", "jobs", "mien")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module ``name`` refers to (the longest existing prefix), or None."""
    parts = name.split(".")
    while parts:
        cand = ".".join(parts)
        if cand in modules:
            return cand
        parts.pop()
    return None


def imports_of(path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(project module, line) for every import in ``path``, at any depth."""
    me = _module_name(path)
    is_pkg = path.name == "__init__.py"
    out: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = me.split(".") if is_pkg else me.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from pkg import sub` depends on the submodule when there is one
            names = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
        for n in names:
            target = _resolve(n, modules)
            if target and target != me:
                out.append((target, node.lineno))
    return out


def _graph() -> dict[str, list[tuple[str, int]]]:
    modules = _modules()
    return {m: imports_of(p, modules) for m, p in modules.items()}


def _in(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _allowed(src: str, dst: str) -> bool:
    if _in(dst, "mien"):
        return _in(src, "mien")
    if _in(src, "workflows.core"):
        return _in(dst, "workflows.core") or dst == "workflows"
    if _in(src, "model"):
        return _in(dst, "model") or _in(dst, "workflows.core") or dst == "workflows"
    if _in(src, "workflows") or _in(src, "mien"):
        return not _in(dst, "jobs")
    return True


def test_layers_point_down():
    graph = _graph()
    bad = [f"{graph_src_path(src)}:{line} {src} imports {dst}"
           for src, deps in graph.items() for dst, line in deps if not _allowed(src, dst)]
    assert not bad, "imports against the layering (see this module's docstring):\n" + "\n".join(bad)


def graph_src_path(module: str) -> str:
    return str(_modules()[module].relative_to(ROOT))


def _cycles(graph: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w, _ in graph.get(v, []):
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

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles among project modules (in-function imports count):\n" + \
        "\n".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("src,dst,ok", [
    ("model.mllm", "workflows.core.storage", True),
    ("model.mllm", "workflows.training.ray_train", False),
    ("workflows.core.config", "model.config", False),
    ("workflows.annotate.runner", "jobs.cli", False),
    ("jobs.cli", "workflows.annotate.pipeline", True),
    ("mien.annotation", "workflows.annotate.pipeline", True),
    ("mien.models", "model", True),
    ("mien.annotation", "jobs.commands.annotate", False),
    ("jobs.commands.annotate", "mien.annotation", False),
    ("workflows.corpus.reader", "mien.tables", False),
])
def test_the_contract_itself(src, dst, ok):
    assert _allowed(src, dst) is ok


def test_the_checker_sees_in_function_imports():
    # pipeline.py connects to the cluster from inside a function
    modules = _modules()
    found = {m for m, _ in imports_of(modules["workflows.annotate.pipeline"], modules)}
    assert "workflows.core.cluster" in found

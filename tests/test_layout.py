"""Architecture guards: module size, the model bundle's imports (what travels with saved models imports only torch,
numpy, transformers, the standard library and its siblings; the library only lazily), no import cycle between the
bundle and `mtl_st`, no relative-import fallbacks outside the bundle, loggers named by module, no task-type dispatch
outside the task-type classes, the packaging in pyproject.toml.

Each check is a function over source text, run on the project and, first, on a planted violation (so that a check
that can no longer see anything fails too).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import tomllib

from tasks_mtl import TASK_TYPES
from tests.utils import BUNDLE, REPO

MAX_LINES = 450
# Modules over MAX_LINES at the package move, each with its line count then: it may shrink (and leaves this list once
# under the limit), never grow. Every other module is held to MAX_LINES.
OVER_THE_LIMIT: dict[str, int] = {}  # modules allowed over MAX_LINES for now (none)
TOP_LEVEL_MODULES = {*BUNDLE, "trainer_mtl", "train", "onnx_mtl"}  # what stays outside the package
ALLOWED_IN_BUNDLE = {"torch", "numpy", "transformers", "__future__", *sys.stdlib_module_names, *BUNDLE}


def project_modules() -> dict[str, Path]:
    """Module name -> file: the top-level `*.py` (tests, bench and fixtures are not at the top) and `mtl_st/**`."""
    modules = {path.stem: path for path in sorted(REPO.glob("*.py"))}
    for path in sorted((REPO / "mtl_st").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MODULES = project_modules()
SOURCES = {name: path.read_text(encoding="utf-8") for name, path in MODULES.items()}


def is_package(name: str, modules) -> bool:
    return name == "mtl_st" or any(other.startswith(name + ".") for other in modules)


def with_parents(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            child.parent = node
    return tree


def ancestors(node: ast.AST):
    while hasattr(node, "parent"):
        node = node.parent
        yield node


def imported_names(node: ast.AST, module: str, modules) -> list[str]:
    """The dotted names an import statement in `module` reaches (relative imports resolved; a top-level module's
    `from .x import` is its sibling `x`, as in a saved folder)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package(module, modules) else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)] if node.level > 1 else package
        base = ".".join([*package, base] if base else package)
    return [f"{base}.{alias.name}" if base else alias.name for alias in node.names] + [base]


def import_graph(sources: dict[str, str]) -> dict[str, set[str]]:
    """Edges module -> the project modules it imports, at module level or in a function: `from a.b import c` reaches
    `a.b.c` when that is a module, else `a.b`, and every package `__init__` on the way (`a`, `a.b`)."""
    graph = {name: set() for name in sources}
    for name, source in sources.items():
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in imported_names(node, name, sources):
                parts = target.split(".")
                graph[name] |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)
                                if ".".join(parts[:i]) in sources} - {name}
    return graph


def components(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components (Tarjan)."""
    index, low, stack, on_stack, result = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            result.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return result


def bundle_cycles(sources: dict[str, str]) -> list[set[str]]:
    return [c for c in components(import_graph(sources))
            if c & set(BUNDLE) and any(m == "mtl_st" or m.startswith("mtl_st.") for m in c)]


def relative_fallbacks(source: str) -> list[int]:
    """Lines of `from .x import` inside a `try:` (the fallback pattern of files that travel as remote code)."""
    return [inner.lineno for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Try)
            for statement in node.body for inner in ast.walk(statement)
            if isinstance(inner, ast.ImportFrom) and inner.level > 0]


def bundle_import_problems(module: str, source: str) -> list[str]:
    """A bundle file's imports that break its rule: at module level only ALLOWED_IN_BUNDLE; `mtl_st` only inside a
    function, within a `try:` block."""
    problems = []
    for node in ast.walk(with_parents(ast.parse(source))):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        roots = {name.split(".")[0] for name in imported_names(node, module, {}) if name}
        in_function = any(isinstance(a, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) for a in ancestors(node))
        in_try = any(isinstance(a, ast.Try) and any(node is n for s in a.body for n in ast.walk(s))
                     for a in ancestors(node))
        if "mtl_st" in roots and not (in_function and in_try):
            problems.append(f"{module}:{node.lineno} imports mtl_st outside a function's try block")
        if not in_function and roots - ALLOWED_IN_BUNDLE:
            problems.append(f"{module}:{node.lineno} imports {sorted(roots - ALLOWED_IN_BUNDLE)} at module level")
    return problems


def logger_names(source: str) -> list[int]:
    """Lines of `getLogger(...)` / `get_logger(...)` calls whose name is not `__name__`."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if func in ("getLogger", "get_logger") and not (
                    len(node.args) == 1 and isinstance(node.args[0], ast.Name) and node.args[0].id == "__name__"):
                lines.append(node.lineno)
    return lines


TYPE_NAMES = "|".join(TASK_TYPES)
DISPATCH = re.compile(rf"""[=!]=\s*["']({TYPE_NAMES})["']|["']({TYPE_NAMES})["']\s*[=!]=""")


def type_dispatch(source: str) -> list[int]:
    return [n for n, line in enumerate(source.splitlines(), 1) if DISPATCH.search(line)]


# ----------------------------------------------------------------------------- size
def test_no_module_has_more_than_450_lines():
    lines = {name: len(source.splitlines()) for name, source in SOURCES.items()}
    over = {name: count for name, count in lines.items() if count > OVER_THE_LIMIT.get(name, MAX_LINES)}
    assert over == {}, f"modules over {MAX_LINES} lines (or over their recorded size): {over}"
    back_under = [name for name in OVER_THE_LIMIT if lines.get(name, 0) <= MAX_LINES]
    assert back_under == [], f"{back_under} are within {MAX_LINES} lines now: drop them from OVER_THE_LIMIT"


# ----------------------------------------------------------------------------- imports
def test_no_relative_import_fallback_outside_the_bundle():
    assert relative_fallbacks("try:\n    from .tasks_mtl import x\nexcept ImportError:\n    from tasks_mtl import x\n")
    offenders = {name: relative_fallbacks(source) for name, source in SOURCES.items() if name not in BUNDLE}
    assert {name: lines for name, lines in offenders.items() if lines} == {}


def test_bundle_imports_only_torch_numpy_transformers_and_siblings():
    planted = "import yaml\nfrom mtl_st.errors import DataError\ndef f():\n    from mtl_st.interop import quantize\n"
    assert {problem.split()[0] for problem in bundle_import_problems("modeling_mtl", planted)} == {
        "modeling_mtl:1", "modeling_mtl:2", "modeling_mtl:4"}
    assert bundle_import_problems("modeling_mtl", "def f():\n    try:\n        import mtl_st.interop\n"
                                                  "    except ImportError:\n        pass\n") == []
    assert set(BUNDLE) <= set(SOURCES)
    problems = [problem for name in BUNDLE for problem in bundle_import_problems(name, SOURCES[name])]
    assert problems == []


def test_no_import_cycle_joins_the_bundle_and_mtl_st():
    planted = {"modeling_mtl": "def f():\n    try:\n        from mtl_st.interop import quantize\n"
                               "    except ImportError:\n        pass\n",
               "mtl_st": "", "mtl_st.interop": "from mtl_st import helpers\n", "mtl_st.helpers": "import tasks_mtl\n",
               "tasks_mtl": "def g():\n    import modeling_mtl\n"}
    assert bundle_cycles(planted) == [{"modeling_mtl", "mtl_st.interop", "mtl_st.helpers", "tasks_mtl"}]
    graph = import_graph(SOURCES)
    # Function-level imports (the bundle's lazy reach into the library) and package __init__ modules are in the graph.
    reached = set().union(*(graph[name] for name in BUNDLE))
    assert {"mtl_st.checkpoints", "mtl_st.onnx.export", "mtl_st.onnx", "mtl_st"} <= reached
    assert {"tasks_mtl", "postprocess_mtl"} <= graph["pipeline_mtl"]  # relative imports resolve to siblings
    assert bundle_cycles(SOURCES) == []


def test_bundle_modules_import_without_torch():
    """The task specs, the post-processing, the encode engine and the ONNX runtime run where torch is not installed."""
    code = ("import sys\nsys.modules['torch'] = None\n"
            "import tasks_mtl, postprocess_mtl, encoding_mtl, mtl_st.onnx.runtime\n"
            "assert sys.modules['torch'] is None\nprint('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"


def test_modeling_imports_without_pipeline_or_library(tmp_path):
    """The model files load where the pipeline and the installed library are not imported (no import cycle)."""
    for name in set(BUNDLE) - {"pipeline_mtl"}:
        (tmp_path / f"{name}.py").write_text(SOURCES[name], encoding="utf-8")
    code = ("import modeling_mtl, sys; "
            "loaded = [m for m in sys.modules if m == 'pipeline_mtl' or m.split('.')[0] == 'mtl_st']; "
            "assert not loaded, loaded")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------------- names
def test_mtl_st_loggers_are_named_by_module():
    assert logger_names("import logging\nlogger = logging.getLogger('mtl_st')\n") == [2]
    assert logger_names("from transformers.utils import logging\nlogger = logging.get_logger(__name__)\n") == []
    offenders = {name: logger_names(source) for name, source in SOURCES.items() if name.startswith("mtl_st")}
    assert {name: lines for name, lines in offenders.items() if lines} == {}


def test_no_type_dispatch_outside_the_task_type_classes():
    assert type_dispatch('if task["type"] == "sentence_similarity":\n') == [1]
    assert type_dispatch("if 'token_classification' != kind:\n") == [1]
    offenders = {name: type_dispatch(source) for name, source in SOURCES.items()}
    assert {name: lines for name, lines in offenders.items() if lines} == {}


# ----------------------------------------------------------------------------- packaging
def test_pyproject_ships_the_package_and_only_the_top_level_modules_that_stay():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    assert "mtl_st*" in setuptools["packages"]["find"]["include"]
    py_modules = set(setuptools["py-modules"])
    assert py_modules <= TOP_LEVEL_MODULES, sorted(py_modules - TOP_LEVEL_MODULES)
    assert {name for name in MODULES if "." not in name and name != "mtl_st"} == py_modules  # none left out
    # packages.find sees only folders with an __init__.py: every folder of mtl_st with code has one.
    folders = {path.parent for path in (REPO / "mtl_st").rglob("*.py") if "__pycache__" not in path.parts}
    assert sorted(str(f.relative_to(REPO)) for f in folders if not (f / "__init__.py").exists()) == []


"""The house's shape, read from the code itself: every import between forgetlab's modules (at module
level or inside a function) goes to a module on the same floor or a lower one, the imports form no
cycle, and no function in ``src/`` is longer than 80 lines or 50 statements or takes more than 8
parameters. The floors are the table in docs/architecture.md."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src"

# Bottom to top; a module imports only modules on its own floor or below (and no cycle within a floor).
FLOORS: list[tuple[str, list[str]]] = [
    (
        "foundation",
        ["errors", "paths", "caches", "runtime", "results", "selection", "wordnet", "evaluators", "plugins"],
    ),
    ("models", ["models", "models.*"]),
    ("methods", ["methods", "methods.*"]),
    ("data", ["data", "data.*"]),
    ("config", ["config", "presets"]),
    ("learning", ["train", "evaluate", "linear_probe", "regularisers", "regularisers.*", "unit_features"]),
    ("analysis", ["analysis", "analysis.*", "reporting", "reporting.*", "explanation.spectra"]),
    (
        "run",
        [
            "pretrain",
            "provenance",
            "trackers",
            "runner",
            "run_*",
            "data_check",
            "single_adapter",
            "explanation",
            "explanation.*",
        ],
    ),
    ("orchestration", ["sweep", "sweep_backends", "method_anatomy", "summary"]),
    ("entry points", ["", "__main__", "api", "cli"]),
]
MAX_FUNCTION_LINES = 80
MAX_FUNCTION_STATEMENTS = 50  # lines on which a statement starts (statement_lines)
MAX_PARAMETERS = 8  # settings travel as one object (runtime.Runtime, train.TaskPlan), not as a dozen parameters


def _modules() -> dict[str, Path]:
    modules = {}
    for path in (SOURCE / "forgetlab").rglob("*.py"):
        parts = path.relative_to(SOURCE / "forgetlab").with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def floor_of(module: str) -> int:
    """The floor of a module named relative to the package (``data.files``; ``""`` is the package)."""
    matches = []
    for index, (_, patterns) in enumerate(FLOORS):
        for pattern in patterns:
            if pattern == module or (
                pattern.endswith("*") and module.startswith(pattern[:-1]) and module != pattern[:-2]
            ):
                matches.append((len(pattern.rstrip("*")), index))
    if not matches:
        raise KeyError(
            f"module forgetlab.{module} has no floor: add it to FLOORS in tests/test_layout.py and docs/architecture.md"
        )
    return max(matches)[1]  # the most specific pattern wins


def imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """``module -> the forgetlab modules it imports`` (names relative to the package). Importing a
    module runs the ``__init__`` of every package above it first, so ``forgetlab.data.registry`` is an
    import of ``forgetlab.data`` too (not for a module inside that package, which its ``__init__`` may
    be importing, nor for ``forgetlab`` itself, whose ``__init__`` imports only ``errors`` and defers
    the rest to the call)."""
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        package = [part for part in package if part]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names if alias.name.split(".")[0] == "forgetlab"]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = [
                        "forgetlab",
                        *package[: len(package) - node.level + 1],
                        *([node.module] if node.module else []),
                    ]
                    base = ".".join(base)
                else:
                    base = node.module or ""
                if base.split(".")[0] == "forgetlab":
                    targets = [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                relative = target.split(".", 1)[1] if "." in target else ""
                while relative not in modules:
                    relative = relative.rsplit(".", 1)[0] if "." in relative else ""
                if relative != name:
                    edges[name].add(relative)
                edges[name].update(_packages_run_first(relative, name, modules))
    return edges


def _packages_run_first(target: str, source: str, modules: dict[str, Path]) -> set[str]:
    """The packages whose ``__init__`` importing ``target`` runs (see :func:`imports`), less those of ``source``."""
    parts = target.split(".")
    packages = {".".join(parts[:end]) for end in range(1, len(parts))}
    return {package for package in packages if package in modules and not f"{source}.".startswith(f"{package}.")}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    return found


def test_every_module_has_a_floor():
    unplaced = [name for name in _modules() if not _has_floor(name)]
    assert unplaced == []


def _has_floor(name: str) -> bool:
    try:
        floor_of(name)
    except KeyError:
        return False
    return True


def test_no_import_cycles():
    assert cycles(imports(_modules())) == []


def test_importing_a_module_imports_the_packages_above_it():
    edges = imports(_modules())
    assert (
        "data" in edges["config"] and "data.registry" in edges["config"]
    )  # config asks the registry, whose package runs first
    assert "data" not in edges["data.offline"]  # a package's own modules: its __init__ may be importing them
    assert "" not in edges["data.registry"]


def test_no_import_climbs_to_a_higher_floor():
    climbing = [
        f"forgetlab.{source} ({FLOORS[floor_of(source)][0]}) imports forgetlab.{target} ({FLOORS[floor_of(target)][0]})"
        for source, targets in imports(_modules()).items()
        for target in sorted(targets)
        if floor_of(target) > floor_of(source)
    ]
    assert climbing == []


def test_no_function_is_longer_than_80_lines():
    long = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"forgetlab.{name}.{node.name}: {lines} lines")
    assert long == []


def statement_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """The lines of a function's body on which a statement starts: its length as a reader counts it. The
    formatter lays one statement (a table of presets, a long call) over as many lines as it needs, so
    physical lines measure layout, not length."""
    return len(
        {statement.lineno for statement in ast.walk(node) if isinstance(statement, ast.stmt) and statement is not node}
    )


def test_no_function_is_longer_than_50_statements():
    long = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if (count := statement_lines(node)) > MAX_FUNCTION_STATEMENTS:
                    long.append(f"forgetlab.{name}.{node.name}: {count} statements")
    assert long == []


def test_statements_are_counted_as_the_rule_says():
    source = "def f(a):\n    x = [\n        1,\n        2,\n    ]\n    if a:\n        return x\n    return None\n"
    assert statement_lines(next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef))) == 4


def parameter_count(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> int:
    """The parameters a function takes: positional, keyword-only, ``*args`` and ``**kwargs`` one each;
    a leading ``self`` or ``cls`` is not counted."""
    arguments = node.args
    names = [argument.arg for argument in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]]
    count = len(names) + (arguments.vararg is not None) + (arguments.kwarg is not None)
    return count - (bool(names) and names[0] in ("self", "cls") and bool(arguments.posonlyargs or arguments.args))


def test_no_function_takes_more_than_8_parameters():
    crowded = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                count = parameter_count(node)
                if count > MAX_PARAMETERS:
                    crowded.append(
                        f"forgetlab.{name}.{getattr(node, 'name', '<lambda>')} (line {node.lineno}): {count} parameters"
                    )
    assert crowded == []


@pytest.mark.parametrize(
    "source,count",
    [
        ("def f(a, b, *, c=1): pass", 3),
        ("def f(self, a, *args, b, **kwargs): pass", 4),
        ("def f(cls, /, a): pass", 1),
        ("def f(*, self): pass", 1),
        ("lambda x, y=2: x", 2),
    ],
)
def test_parameters_are_counted_as_the_rule_says(source, count):
    node = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, (ast.FunctionDef, ast.Lambda)))
    assert parameter_count(node) == count


@pytest.mark.parametrize(
    "module,floor",
    [
        ("errors", "foundation"),
        ("data.files", "data"),
        ("data.registry", "data"),
        ("", "entry points"),
        ("runner", "run"),
    ],
)
def test_floors_resolve_the_most_specific_pattern(module, floor):
    assert FLOORS[floor_of(module)][0] == floor

"""The house: packages by pipeline stage, imports only downwards, no cycle, a tested public API.

Imports are read from the source (``ast``), every one of them: inside functions, under
``TYPE_CHECKING`` and from the package root (``from servecheck import …``), so neither a lazy
import nor an annotation-only one can hide an upward dependency or a cycle.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import servecheck

PACKAGE = Path(servecheck.__file__).parent

LAYERS = {
    "errors": 0,
    "formats": 1, "words": 1,
    "reference": 2, "tinymodels": 2,
    "collect": 3, "checks": 3,
    "report": 4,
    "servers": 5, "workflows": 5,
    "cli": 6,
}
"""A module may import from its own stage and the stages below it. ``collect`` and ``checks``
are siblings: neither may import the other. ``servecheck/__init__`` (the API) may import all."""


def modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
            for p in PACKAGE.rglob("*.py")}


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The servecheck modules ``path`` imports (a ``from M import name`` where ``M.name`` is a
    module counts as importing that module; ``from servecheck import name`` of a name that is
    no module counts as importing the package root)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names} & set(known)
            found.update(subs)
            if len(subs) < len(node.names):  # a name of the module itself, not a submodule
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {name for name in found if name in known}


def stage(module: str) -> str:
    return module.split(".")[1]


def test_every_module_belongs_to_a_stage() -> None:
    loose = [m for m in modules() if m != "servecheck" and stage(m) not in LAYERS]
    assert not loose, f"modules outside the pipeline's packages: {loose}"


def test_imports_go_downwards_only() -> None:
    """The package root imports every stage (its API), so it stands above them all: no module
    inside may import it, not even for ``__version__`` or a type."""
    known = modules()
    upward = []
    for module, path in known.items():
        if module == "servecheck":
            continue
        for target in imports(path, known):
            if target == "servecheck":
                upward.append(f"{module} imports the package root")
                continue
            mine, theirs = stage(module), stage(target)
            if mine != theirs and LAYERS[theirs] >= LAYERS[mine]:
                upward.append(f"{module} imports {target}")
    assert not upward, "\n".join(upward)


def test_no_import_cycle() -> None:
    """Zero cycles among servecheck's modules, the package root included, counting every import:
    one under ``TYPE_CHECKING`` or inside a function is a dependency too, and a cycle through it
    is a knot the next refactor trips on."""
    known = modules()
    graph = {m: imports(p, known) - {m} for m, p in known.items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                pytest.fail("import cycle: " + " → ".join([*path, m, t]))
            if not state.get(t):
                visit(t, [*path, m])
        state[m] = 2

    for m in sorted(graph):
        if not state.get(m):
            visit(m, [])


MAX_STATEMENTS = 230
"""About 350 lines at the formatter's width. Statements, not lines: a line count rewarded
packing 110-column lines, and five modules sat just under it that way."""


def statements(path: Path) -> int:
    return sum(isinstance(n, ast.stmt) for n in ast.walk(ast.parse(path.read_text())))


def test_modules_stay_small() -> None:
    long = {m: n for m, p in modules().items() if (n := statements(p)) > MAX_STATEMENTS}
    assert not long, f"modules over {MAX_STATEMENTS} statements (split them along a seam): {long}"


def test_the_report_renders_what_the_checks_computed() -> None:
    """The report reads results and the context, never a check: a check's sentence, tests and
    charts travel in its details, so a check added (here or by entry point) needs no report
    code, and nothing the report shows can drift from what the check computed."""
    known = modules()
    checks = {m for m in known if m.startswith("servecheck.checks.")
              and not m.startswith("servecheck.checks.core")}
    leaks = [f"{m} imports {t}" for m, p in known.items() if m.startswith("servecheck.report")
             for t in imports(p, known) if t in checks or t == "servecheck.checks"]
    assert not leaks, "\n".join(leaks)


def test_only_the_context_writes_its_private_state() -> None:
    """Helpers return values and the context applies them: no ``ctx._x = …`` (or
    ``ctx._x[i] = …``) outside ``checks/core/context.py``."""
    writes = []
    for module, path in modules().items():
        if module == "servecheck.checks.core.context":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, ast.AugAssign | ast.AnnAssign) else []
            for t in targets:
                while isinstance(t, ast.Subscript):
                    t = t.value
                if isinstance(t, ast.Attribute) and t.attr.startswith("_") and \
                        isinstance(t.value, ast.Name | ast.Attribute) and \
                        ast.unparse(t.value).split(".")[-1] == "ctx":
                    writes.append(f"{module}:{node.lineno} {ast.unparse(t)}")
    assert not writes, "\n".join(writes)


def test_tests_share_helpers_as_fixtures_only() -> None:
    """A test module imports no other test module and no conftest: shared helpers are fixtures
    (tests/conftest.py and the packages' own); plain data modules (tests/reference/cases.py) may
    be imported."""
    tests = Path(__file__).parent
    crossed = []
    for path in sorted(tests.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            crossed += [f"{path.relative_to(tests)} imports {n}" for n in names
                        if n.rsplit(".", 1)[-1] == "conftest" or n.rsplit(".", 1)[-1].startswith("test_")]
    assert not crossed, "\n".join(crossed)


def test_public_api_resolves_and_is_lazy() -> None:
    assert len(set(servecheck.__all__)) == len(servecheck.__all__)
    for name in servecheck.__all__:
        assert getattr(servecheck, name) is not None, name
        assert name in dir(servecheck)
    with pytest.raises(AttributeError):
        servecheck.no_such_name  # noqa: B018
    # importing the package alone must not load torch: a CLI's --help stays instant
    code = "import sys, servecheck; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_public_api_covers_what_a_user_calls() -> None:
    wanted = {"collect", "check", "compare", "probe", "open_target", "Target", "ResponseRecord",
              "Conversation", "Message", "Parameters", "CheckOptions", "CheckResult", "Finding",
              "Reference", "read_records", "expand", "InputError", "TargetError"}
    assert wanted <= set(servecheck.__all__)


def test_benchmarks_import_public_names_that_exist() -> None:
    """Benchmarks run rarely, so a moved or renamed name would go unseen until then: every
    ``servecheck`` import in them (inside functions too) must resolve, none may be private, and
    none may reach into the tests."""
    import importlib.util

    problems = []
    for path in sorted((PACKAGE.parent / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not node.module:
                continue
            if node.module.split(".")[0] == "tests":
                problems.append(f"{path.name}: imports {node.module}")
            if node.module.split(".")[0] != "servecheck":
                continue
            module = importlib.import_module(node.module)
            for alias in node.names:
                if alias.name.startswith("_"):
                    problems.append(f"{path.name}: private {node.module}.{alias.name}")
                elif not hasattr(module, alias.name) and \
                        importlib.util.find_spec(f"{node.module}.{alias.name}") is None:
                    problems.append(f"{path.name}: {node.module}.{alias.name} does not exist")
    assert not problems, "\n".join(problems)


def test_the_architecture_page_names_every_module() -> None:
    """docs/architecture.md says which room each module is in; a module it does not name (or a
    name it keeps after the module went) is a page out of date."""
    page = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"^\| `([a-z0-9_/]+\.py)` \|", page, re.MULTILINE))
    files = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")}
    assert not files - named, f"modules docs/architecture.md does not name: {sorted(files - named)}"
    assert not named - files, f"docs/architecture.md names modules that do not exist: " \
                              f"{sorted(named - files)}"

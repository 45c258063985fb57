"""The dependency rule (docs/architecture.md), read from every module's imports (ast, nothing imported):

    core ← pki ← wire ← runtime ← services ← tools        agent: core, pki, wire only

A package imports only from the layers below it and from itself; a service never imports another service
(they speak through wire); no cycles between packages; no importlib or __import__ to get around any of it.
Tests import shared helpers from tests/support/, never another test module.
Imports inside functions count like the others.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "cmglab"

# what each top-level package of cmglab may import (besides itself)
ALLOWED: dict[str, frozenset[str]] = {
    "core": frozenset(),
    "pki": frozenset({"core"}),
    "wire": frozenset({"core", "pki"}),
    "runtime": frozenset({"core", "pki", "wire"}),
    "services": frozenset({"core", "pki", "wire", "runtime"}),
    "agent": frozenset({"core", "pki", "wire"}),
    "tools": frozenset({"core", "pki", "wire", "runtime", "services", "agent"}),
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    target: str  # the imported module (or module.name), dotted
    line: int

    @property
    def where(self) -> str:
        return f"{self.module}:{self.line} imports {self.target}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> Iterator[Import]:
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield Import(module, target, node.lineno)
            for alias in node.names:  # `from cmglab.services import entra` names a package too
                yield Import(module, f"{target}.{alias.name}", node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "__import__":
            yield Import(module, "__import__", node.lineno)


def all_imports() -> list[Import]:
    return [i for path in sorted(PACKAGE.rglob("*.py")) for i in imports_of(path)]


def layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[:2] == ["cmglab", "__main__"]:  # `python -m cmglab`: the tools' CLI
        return "tools"
    return parts[1] if len(parts) > 1 and parts[0] == "cmglab" else None


def service(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[:2] == ["cmglab", "services"] else None


def unit(module: str) -> str:
    """The package a module belongs to for the cycle check: cmglab.<layer>.<package> (or the module)."""
    return ".".join(module.split(".")[:3])


def against_the_rule(imports: list[Import]) -> list[str]:
    out = []
    for i in imports:
        if i.target.split(".")[0] == "importlib" or i.target == "__import__":
            out.append(f"{i.where}: modules are imported by name, never through importlib")
            continue
        src, dst = layer(i.module), layer(i.target)
        if src is None or dst is None or src == dst:
            if src == dst == "services" and service(i.target) not in (None, service(i.module)):
                out.append(f"{i.where}: a service never imports another service (they meet in cmglab.wire)")
            continue
        if src not in ALLOWED:
            out.append(f"{i.where}: {src} is not a package of the layout")
        elif dst in ALLOWED and dst not in ALLOWED[src]:
            out.append(f"{i.where}: {src} may import {', '.join(sorted(ALLOWED[src])) or 'nothing else'}")
    return out


def cycles(imports: list[Import]) -> list[list[str]]:
    """Strongly connected groups of two or more packages (Tarjan), at cmglab.<layer>.<package> depth."""
    known = {module_name(p) for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for i in imports:
        target = i.target if i.target in known else i.target.rpartition(".")[0]
        if target in known and unit(i.module) != unit(target):
            graph[unit(i.module)].add(unit(target))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_import_follows_the_dependency_rule() -> None:
    assert against_the_rule(all_imports()) == []


def test_no_package_cycles() -> None:
    assert cycles(all_imports()) == []


def test_every_top_level_package_is_in_the_rule() -> None:
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(ALLOWED)


def test_test_helpers_do_not_ship_in_the_product() -> None:
    assert not [p for p in PACKAGE.rglob("*.py") if p.stem in ("testing", "conftest") or p.stem.startswith("test_")]


def against_the_test_rule(imports: list[Import]) -> list[str]:
    """A test module imports shared helpers from tests/support/, never another test module (or conftest), and
    imports by name: no importlib or __import__ in the tests either."""
    out = []
    for i in imports:
        parts = i.target.split(".")
        name = parts[1] if parts[0] == "tests" and len(parts) > 1 else parts[0]
        if parts[0] in ("importlib", "__import__") or name.startswith("test_") or name == "conftest":
            out.append(i.where)
    return out


def test_tests_import_helpers_from_support_only() -> None:
    imports = [i for path in sorted((ROOT / "tests").rglob("*.py")) for i in imports_of(path)]
    assert against_the_test_rule(imports) == []


@pytest.mark.parametrize(
    ("target", "broken"),
    [
        ("tests.test_mp_sts", True),
        ("tests.test_mp_sts.register", True),
        ("test_mp_sts", True),
        ("tests.conftest", True),
        ("importlib", True),
        ("__import__", True),
        ("tests.support.lab", False),
        ("tests.support.lab.lab_fixture", False),
        ("cmglab.wire.tracing", False),
    ],
)
def test_the_test_rule_catches_what_it_should(target: str, broken: bool) -> None:
    assert bool(against_the_test_rule([Import("tests.test_x", target, 1)])) is broken


@pytest.mark.parametrize(
    ("module", "target", "broken"),
    [
        ("cmglab.agent.device", "cmglab.services.management_point.store", True),
        ("cmglab.agent.device", "cmglab.runtime.lab", True),
        ("cmglab.agent.device", "cmglab.wire.tracing", False),
        ("cmglab.pki.labpki", "cmglab.runtime.lab", True),
        ("cmglab.services.cmg.app", "cmglab.services.management_point.store", True),
        ("cmglab.services.cmg.app", "cmglab.services.cmg.parts", False),
        ("cmglab.services.cmg.app", "cmglab.tools.cli", True),
        ("cmglab.tools.cli", "importlib", True),
        ("cmglab.tools.cli", "cmglab.services.entra.service", False),
    ],
)
def test_the_rule_catches_what_it_should(module: str, target: str, broken: bool) -> None:
    assert bool(against_the_rule([Import(module, target, 1)])) is broken


def test_the_cycle_check_finds_a_cycle() -> None:
    pair = [
        Import("cmglab.tools.fleet.cli", "cmglab.tools.cli", 1),
        Import("cmglab.tools.cli", "cmglab.tools.fleet.cli", 1),
    ]
    assert cycles(pair) == [["cmglab.tools.cli", "cmglab.tools.fleet"]]


SERVICES = sorted(p.name for p in (PACKAGE / "services").iterdir() if (p / "__init__.py").exists())


def top_level(path: Path) -> dict[str, ast.stmt]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)}


@pytest.mark.parametrize("name", SERVICES)
def test_every_service_has_the_one_shape(name: str) -> None:
    """parts.py `Parts.from_lab`, app.py `create_app(parts: Parts)`, errors.py `install_error_handler`,
    service.py `build(lab)` (docs/architecture.md, "A service")."""
    package = PACKAGE / "services" / name
    parts = top_level(package / "parts.py").get("Parts")
    assert isinstance(parts, ast.ClassDef), f"{name}/parts.py has no class Parts"
    assert "from_lab" in {n.name for n in parts.body if isinstance(n, ast.FunctionDef)}, f"{name}: no Parts.from_lab"
    create = top_level(package / "app.py").get("create_app")
    assert isinstance(create, ast.FunctionDef) and [
        (a.arg, ast.unparse(a.annotation or ast.Constant(None))) for a in create.args.args
    ] == [("parts", "Parts")], name
    assert "install_error_handler" in top_level(package / "errors.py") or name == "cmg_connection_point", name
    assert "build" in top_level(package / "service.py"), name

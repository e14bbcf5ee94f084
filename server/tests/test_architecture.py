"""The shape of the Python code: no import cycles, and a provider plugin's public face that is
exactly what it says.

Read from the source (with `ast`), not from `sys.modules`, so that an import inside a function —
a lazy import that hides a cycle from start-up — counts like any other.
"""

from __future__ import annotations

import ast
import importlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import callqos.server.providers as public_face

ROOT = Path(__file__).resolve().parents[2]
# Where each distribution's `callqos.*` modules live (PEP 420: `callqos` itself has no __init__).
SOURCE_ROOTS = {
    ROOT / "server": "callqos/server",
    ROOT / "clients" / "python": "callqos",
    ROOT / "conformance": "callqos/conformance",
}
GENERATED = ROOT / "clients" / "python" / "callqos" / "v1"  # protoc output: imports only protobuf
SKIPPED_DIRS = {"node_modules", "build", "dist", "__pycache__"}


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    is_package: bool

    @property
    def package(self) -> str:
        """The package relative imports in this module start from."""
        return self.name if self.is_package else self.name.rpartition(".")[0]


@dataclass(frozen=True)
class Import:
    importer: str
    target: str
    line: int


def modules_under(roots: dict[Path, str]) -> dict[str, Module]:
    """Every module in the packages `roots` names (source root → package directory in it)."""
    modules: dict[str, Module] = {}
    for source_root, top in roots.items():
        for path in sorted((source_root / top).rglob("*.py")):
            if path.is_relative_to(GENERATED) or SKIPPED_DIRS & set(path.parts):
                continue
            parts = list(path.relative_to(source_root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            name = ".".join(parts)
            modules[name] = Module(name, path, is_package)
    return modules


def ancestors(name: str) -> list[str]:
    """`a.b.c` → [`a`, `a.b`]: the packages Python imports before `a.b.c`."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imports_of(module: Module, modules: dict[str, Module]) -> Iterator[Import]:
    """Every import of one of our modules that running `module` can trigger, wherever the
    import statement is (module level, a function, `if TYPE_CHECKING:`), as Python runs it:

    - `import a.b.c` and `from a.b.c import x` run `a`, `a.b` and `a.b.c`;
    - `from a.b import c`, where `c` is a module, runs `a`, `a.b` and `a.b.c`;
    - `from a.b import x`, where `x` is not a module, needs `a.b` to have finished running, even
      when `a.b` is a package containing the importer.
    The packages that contain the importer are left out of the implicit imports: they are
    already running (or done) by the time the importer runs, so importing one of their
    submodules from inside them is no cycle."""
    own_packages = set(ancestors(module.name))

    def running(target: str, line: int) -> Iterator[Import]:
        for name in [*ancestors(target), target]:
            if name in modules and name not in own_packages and name != module.name:
                yield Import(module.name, name, line)

    tree = ast.parse(module.path.read_text(), str(module.path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield from running(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = module.package.split(".")
                base = ".".join(base_parts[: len(base_parts) - (node.level - 1)])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in modules:
                    yield from running(submodule, node.lineno)
                else:
                    yield from running(source, node.lineno)
                    if source in modules and source != module.name:
                        yield Import(module.name, source, node.lineno)  # needs it finished


def our_modules() -> dict[str, Module]:
    return modules_under(SOURCE_ROOTS)


def import_graph(modules: dict[str, Module]) -> dict[str, dict[str, int]]:
    """importer → {imported module: line of the first import statement that runs it}."""
    graph: dict[str, dict[str, int]] = {name: {} for name in modules}
    for module in modules.values():
        for found in imports_of(module, modules):
            graph[found.importer].setdefault(found.target, found.line)
    return graph


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's algorithm: the groups of modules that import each other, directly or not."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph[node]:
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups)


def a_cycle(graph: dict[str, dict[str, int]], group: list[str]) -> list[str]:
    """One concrete cycle through the first module of `group`, for the failure message."""
    members, start = set(group), group[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        node = frontier.pop(0)
        for successor in sorted(graph[node]):
            if successor == start:
                return [*paths[node], start]
            if successor in members and successor not in paths:
                paths[successor] = [*paths[node], successor]
                frontier.append(successor)
    raise AssertionError(f"no cycle through {start}")


def write_tree(root: Path, files: dict[str, str]) -> dict[str, Module]:
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    return modules_under({root: "pkg"})


def test_the_detector_sees_lazy_and_implicit_imports(tmp_path: Path) -> None:
    """The detector itself, on a made-up package: a cycle closed by an import inside a function
    and by the package a submodule import runs is found; a package importing its own
    submodules, which import their siblings, is not a cycle."""
    modules = write_tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "def later():\n    from pkg import b\n",
            "pkg/b.py": "from pkg.sub.c import x\n",  # runs pkg.sub first ...
            "pkg/sub/__init__.py": "from pkg import a\nfrom pkg.sub.c import x\n",  # ... which imports a
            "pkg/sub/c.py": "from pkg.sub import d\nfrom . import d as again\nx = 1\n",
            "pkg/sub/d.py": "import pkg.sub.c\n",  # c and d import each other: a cycle of two
        },
    )
    graph = import_graph(modules)
    assert graph["pkg.a"] == {"pkg.b": 2}
    assert set(graph["pkg.b"]) == {"pkg.sub", "pkg.sub.c"}
    assert set(graph["pkg.sub.c"]) == {"pkg.sub.d"}  # pkg.sub contains it: already running
    assert strongly_connected(graph) == [["pkg.a", "pkg.b", "pkg.sub"], ["pkg.sub.c", "pkg.sub.d"]]
    assert a_cycle(graph, ["pkg.a", "pkg.b", "pkg.sub"]) == ["pkg.a", "pkg.b", "pkg.sub", "pkg.a"]


def test_the_detector_sees_a_submodule_that_needs_its_package_finished(tmp_path: Path) -> None:
    modules = write_tree(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.face import helper\nVALUE = 1\n",
            "pkg/face.py": "from pkg import VALUE\n\ndef helper():\n    return VALUE\n",
        },
    )
    assert strongly_connected(import_graph(modules)) == [["pkg", "pkg.face"]]


def test_no_import_cycles() -> None:
    """No module of the server, the client and CLI, or the suite imports itself through others,
    not even through an import inside a function."""
    graph = import_graph(our_modules())
    cycles = []
    for group in strongly_connected(graph):
        path = a_cycle(graph, group)
        steps = [f"{a} (line {graph[a][b]}) → {b}" for a, b in itertools.pairwise(path)]
        cycles.append(f"{len(group)} modules import each other: {', '.join(group)}\n    " + "\n    ".join(steps))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


# The packages each distribution ships; a subpackage directly inside one is a component.
DISTRIBUTION_PACKAGES = ("callqos.server", "callqos.conformance", "callqos.client", "callqos.cli")


def component(module: str) -> str:
    """The part of a distribution a module belongs to: the subpackage directly inside the
    distribution's package that holds it (`callqos.server.providers.reference` →
    `callqos.server.providers`), or the module itself (`callqos.server.calls`)."""
    for package in DISTRIBUTION_PACKAGES:
        if module.startswith(package + "."):
            return package + "." + module.removeprefix(package + ".").split(".")[0]
    return module


def component_graph(graph: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """The import graph between components (imports inside one component left out)."""
    collapsed: dict[str, dict[str, int]] = {component(name): {} for name in graph}
    for importer, targets in graph.items():
        for target, line in targets.items():
            if component(target) != component(importer):
                collapsed[component(importer)].setdefault(component(target), line)
    return collapsed


def test_no_import_cycles_between_subpackages() -> None:
    """A subpackage depends on another, or the other on it, never both: the providers package
    must not import telemetry while telemetry's instruments import the provider contract, even
    where no single module closes the loop."""
    assert component("callqos.server.providers.reference") == "callqos.server.providers"
    assert component("callqos.server.calls") == "callqos.server.calls"
    graph = component_graph(import_graph(our_modules()))
    cycles = [" → ".join(a_cycle(graph, group)) for group in strongly_connected(graph)]
    assert not cycles, "subpackages that import each other:\n" + "\n".join(cycles)


# The request flow, as imports: a module may import the ones after it, never one before it. (A
# request reaches the store before the hub wakes watchers, but the hub reads events from the
# store, so in imports the hub comes first.)
FLOW = (
    ("service",),
    # The switchboard is the call manager with lines: it validates what providers offer.
    ("incoming",),
    ("validation",),
    ("calls", "idempotency", "lines", "leases", "ledger"),
    ("hosting",),
    ("events",),
    ("store",),
)


def test_the_request_flow_goes_one_way() -> None:
    """service → (switchboard →) validation → calls → provider host → event hub → store, in
    imports too: the validation knows nothing of the call manager, the call manager nothing of
    the service or the switchboard, the host nothing of calls, the store nothing above it."""
    step = {f"callqos.server.{name}": index for index, names in enumerate(FLOW) for name in names}

    def step_of(module: str) -> int | None:
        for prefix, index in step.items():
            if module == prefix or module.startswith(prefix + "."):
                return index
        return None

    graph = import_graph(our_modules())
    backwards = []
    for importer, targets in graph.items():
        for target, line in targets.items():
            here, there = step_of(importer), step_of(target)
            if here is not None and there is not None and there < here:
                backwards.append(f"{importer} (line {line}) imports {target}")
    assert not backwards, backwards
    assert step_of("callqos.server.store.sqlite") == len(FLOW) - 1


def test_every_public_name_of_the_provider_face_resolves() -> None:
    names = public_face.__all__
    assert len(names) == len(set(names)), "duplicates in __all__"
    for name in names:
        assert getattr(public_face, name, None) is not None, name
    # What a provider subclasses and answers with is there; the host's bookkeeping is not.
    assert {"Provider", "AdmissionRequest", "Grant", "Refusal", "RefusalKind", "ProviderHost"} <= set(names)
    assert {"ProviderInfo", "HostedProvider", "HostedProviders", "registry"}.isdisjoint(names)
    assert not hasattr(importlib.import_module("callqos.server.providers.base"), "ProviderInfo")


def test_shipped_providers_use_only_the_public_face() -> None:
    """The shipped providers are written as a third party's would be: from `callqos.server`
    they import the public face and nothing else."""
    modules = our_modules()
    for name in ("callqos.server.providers.reference", "callqos.server.providers.noqos"):
        tree = ast.parse(modules[name].path.read_text())
        sources = {
            node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("callqos.server")
        }
        plain = [
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
            if alias.name.startswith("callqos.server")
        ]
        assert sources == {"callqos.server.providers"} and not plain, (name, sources, plain)


def python_files_outside_the_server() -> Iterator[Path]:
    server_package = ROOT / "server" / "callqos" / "server"
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT)
        if any(part.startswith(".") or part in SKIPPED_DIRS for part in relative.parts):
            continue
        if path.is_relative_to(server_package) or path.is_relative_to(GENERATED):
            continue
        yield path


@pytest.mark.parametrize("path", list(python_files_outside_the_server()), ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_outside_the_server_imports_its_private_names(path: Path) -> None:
    """A broken provider, a client, the suite or a test uses what `callqos.server` makes public;
    an underscore name is the server's own business and may change without notice."""
    private = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and is_server(node.module or ""):
            private += [
                f"line {node.lineno}: from {node.module} import {alias.name}"
                for alias in node.names
                if is_private(node.module or "") or is_private(alias.name)
            ]
        elif isinstance(node, ast.Import):
            private += [
                f"line {node.lineno}: import {alias.name}"
                for alias in node.names
                if is_server(alias.name) and is_private(alias.name)
            ]
    assert not private, private


def is_server(module: str) -> bool:
    return module == "callqos.server" or module.startswith("callqos.server.")


def is_private(dotted: str) -> bool:
    """An underscore name in any part (`__main__` and the like are not private)."""
    return any(part.startswith("_") and not part.endswith("__") for part in dotted.split("."))
